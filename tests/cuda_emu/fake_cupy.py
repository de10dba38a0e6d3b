"""A stand-in for the small part of CuPy that ``kernels/cuda_backend.py`` uses, backed by
host memory and the kernel emulation, so the backend's CuPy glue (probe, RawModule
compilation and memoisation, device arrays, streams, DLPack, the api hook) runs on a
machine without a GPU.

It models CuPy's calling conventions as the backend relies on them (``RawModule(code=,
options=, name_expressions=)``, ``get_function(name)(grid, block, args)``, arrays with
``.device.id`` and ``.data.ptr``, ``__dlpack_device__`` of a CUDA device); it is no
substitute for a real device run (tests/test_cuda_gpu.py).
"""

from __future__ import annotations

import functools
import types

import numpy as np

from . import harness

CUDA_DEVICE = 2  # DLPack kDLCUDA


class _Ptr:
    def __init__(self, ptr):
        self.ptr = ptr


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """Host memory posing as device memory."""

    @property
    def device(self):
        return types.SimpleNamespace(id=0)

    @property
    def data(self):
        return _Ptr(self.ctypes.data)

    def __dlpack_device__(self):
        return (CUDA_DEVICE, 0)


def _dev(a):
    return a.view(ndarray)


def asarray(a, dtype=None):
    if isinstance(a, ndarray) and (dtype is None or a.dtype == dtype):
        return a
    return _dev(np.array(a, dtype=dtype, copy=True))


def ascontiguousarray(a, dtype=None):
    return _dev(np.ascontiguousarray(a, dtype=dtype))


def empty(shape, dtype=float):
    return _dev(np.empty(shape, dtype))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    return np.array(np.asarray(a), order=order, copy=True)


def from_dlpack(obj):
    """Zero-copy import of a (fake) device buffer: the capsule really points at host memory."""
    if int(obj.__dlpack_device__()[0]) != CUDA_DEVICE:
        raise ValueError("not a CUDA buffer")
    host = types.SimpleNamespace(__dlpack__=obj.__dlpack__, __dlpack_device__=lambda: (1, 0))
    return _dev(np.from_dlpack(host))


class _Function:
    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, grid, block, args, **kwargs):
        Stream.launched.append((self.name, Stream.current))
        lib = self.module.library()
        ex = harness.EmuExecutor(lib, block=block[:2], max_blocks=grid[0])
        host_args = tuple(np.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
        from iqlut_gpu.kernels.cuda_plan import Launch

        ex.launch(Launch(self.name, tuple(grid), tuple(block), host_args, 0))


class RawModule:
    """Records how it was built; compiles the emulation library on first use."""

    built: list = []

    def __init__(self, code=None, options=(), name_expressions=()):
        assert isinstance(code, str) and "iqlut" in code
        self.options = tuple(options)
        self.names = tuple(name_expressions)
        self._lib = None
        RawModule.built.append(self)

    def library(self):
        if self._lib is None:
            self._lib = harness.build(self.names)
        return self._lib

    def get_function(self, name):
        if name not in self.names:
            raise KeyError(f"{name} was not among the name expressions")
        return _Function(self, name)


class Stream:
    current = None
    launched: list = []

    def __init__(self, non_blocking=False):
        self._prev = []

    def __enter__(self):
        self._prev.append(Stream.current)
        Stream.current = self
        return self

    def __exit__(self, *exc):
        Stream.current = self._prev.pop()

    def synchronize(self):
        pass


class Device:
    def __init__(self, device_id=None):
        self.id = 0 if device_id is None else int(device_id)
        self.attributes = {"MultiProcessorCount": 2}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class OutOfMemoryError(MemoryError):
    pass


cuda = types.SimpleNamespace(
    is_available=lambda: True,
    Device=Device,
    Stream=Stream,
    memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
    nvrtc=types.SimpleNamespace(getVersion=lambda: (12, 9)),
)


def install(monkeypatch):
    """Make ``import cupy`` give this module and reset the backend's per-device caches."""
    import sys

    from iqlut_gpu import backends
    from iqlut_gpu.kernels import cuda_backend
    from iqlut_gpu.memo import IdentityMemo

    monkeypatch.setitem(sys.modules, "cupy", sys.modules[__name__])
    backends.reset()  # the probes answered without the stand-in
    monkeypatch.setattr(cuda_backend, "_FUNCTIONS", {})
    monkeypatch.setattr(cuda_backend, "_TABLES", IdentityMemo())
    fresh = functools.lru_cache(maxsize=None)(cuda_backend._executor_for_device.__wrapped__)
    monkeypatch.setattr(cuda_backend, "_executor_for_device", fresh)
    monkeypatch.setattr(RawModule, "built", [])
    monkeypatch.setattr(Stream, "launched", [])
    monkeypatch.setattr(Stream, "current", None)
