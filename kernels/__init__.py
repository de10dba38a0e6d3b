"""Backends of IQ-LUT inference (installed as ``iqlut_gpu.kernels``).

- ``numba_cpu.py``: Numba CPU kernels (``backend="cpu"``).
- ``cuda/*.cu`` + ``cuda_backend.py``: CuPy RawKernel CUDA kernels (``backend="cuda"``).

Both are bit-identical to ``iqlut_gpu.reference``. Nothing here is imported until a
backend is used: importing ``iqlut_gpu`` needs neither Numba compilation nor CuPy.
"""
