"""Backends of the DCS op: registration (``kernels.op``), the PyTorch path (``kernels.cpu``), Triton."""

from __future__ import annotations

from . import op

__all__ = ["op"]
