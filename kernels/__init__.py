"""Backends of IQ-LUT inference (installed as ``iqlut_gpu.kernels``).

- ``numba_cpu.py``: Numba CPU kernels (``backend="cpu"``).
- ``cuda/*.cu`` + ``cuda_backend.py``: CuPy RawKernel CUDA kernels (``backend="cuda"``).

Both are bit-identical to ``iqlut_gpu.reference``. Nothing here is imported until a
backend is used: importing ``iqlut_gpu`` needs neither Numba compilation nor CuPy.
"""

import numpy as np


def aligned_copy(a, align: int) -> np.ndarray:
    """``a`` as a C-contiguous NumPy array starting at an ``align``-byte boundary: ``a``
    itself when it already is one, else a copy placed inside a slightly larger buffer (the
    CUDA launchers need 16 bytes; the Numba x4 tables use 64 so that no row read splits a
    cache line)."""
    a = np.ascontiguousarray(a)
    if a.ctypes.data % align == 0:
        return a
    buf = np.empty(a.nbytes + align, np.uint8)
    start = -buf.ctypes.data % align
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out
