"""Backends of the DCS op: registration (``kernels.op``), the PyTorch path (``kernels.cpu``), Triton."""

from __future__ import annotations

from . import op

try:  # Triton ships with PyTorch's CUDA wheels; without it every call takes the PyTorch path.
    from . import triton_backend
except ImportError:
    triton_backend = None
else:
    triton_backend.register()

__all__ = ["op", "triton_backend"]
