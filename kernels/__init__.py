"""Backends of the DCS op: registration (``kernels.op``), the PyTorch path (``kernels.cpu``), Triton.

Installed as ``dcspass.kernels``. The lowest layer: nothing here imports the rest of ``dcspass``.
"""

from __future__ import annotations

import contextlib

from . import op


def _load_triton_backend() -> None:
    # Triton ships with PyTorch's CUDA wheels; without it every call takes the PyTorch path.
    with contextlib.suppress(ImportError):
        from . import triton_backend  # noqa: F401  (registers itself on import)


# Importing Triton costs about a second: only the first call on a CUDA tensor pays it.
op.register_backend_loader(lambda t: t.is_cuda, _load_triton_backend)

__all__ = ["op"]
