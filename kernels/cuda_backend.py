"""CUDA backend of IQ-LUT inference: the CuPy glue around ``cuda/iqlut.cu``.

Bit-identical to ``iqlut_gpu.reference`` (and to ``numba_cpu``). What lives here is what
needs CuPy; the launch planning (which kernel, which arguments, which geometry) is
CuPy-free in ``cuda_plan`` and shared with the test suite's host emulation.

- ``probe``: whether a CUDA driver with a device, CuPy and NVRTC are usable, or why not
  (the driver is asked first, without importing CuPy);
- the compile cache: each kernel specialisation is compiled once per device with NVRTC
  (one RawModule per model and mode) and memoised (CuPy also keeps its on-disk cache);
- ``CupyExecutor``: runs ``cuda_plan.Launch`` plans on one device;
- ``launch_hidden`` / ``launch_last``: one layer, with the same arguments in the same
  order as ``numba_cpu.launch_hidden`` / ``launch_last`` plus ``stream`` (a test checks);
- ``device_tables``: a model's tables uploaded once per device and mode;
- ``run_planes`` (whole model on planes) and ``upscale_device`` (images that live on a
  CUDA device: CuPy arrays, or DLPack producers such as torch CUDA tensors).

Frame batches with two streams and pinned buffers are ``cuda_stream.CudaStreamer``.
CuPy is imported only inside functions here, on first use: importing ``iqlut_gpu`` (or
this module) never imports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from functools import lru_cache

import numpy as np

from iqlut_gpu import ensemble
from iqlut_gpu.errors import DeviceOutOfMemory
from iqlut_gpu.memo import IdentityMemo
from iqlut_gpu.planes import from_planes, to_planes

from .cuda_plan import (BLOCK, MODES, SHARED_LIMIT, DeviceTables, Launch, kernels_for,
                        plan_hidden, plan_last, run_model, source)

COMPILE_OPTIONS = ("--std=c++17",)


# ----------------------------------------------------------------------------- probe


def driver_reason() -> str | None:
    """Why the CUDA driver offers no device, asked of the driver library itself through
    ctypes (a millisecond), or None when it counts at least one device. ``probe`` asks
    this first, so that a machine without a GPU does not pay CuPy's import (0.3 s of
    every ``iqlut`` command on the 2-core CPU) to learn it has none."""
    if sys.platform == "darwin":
        return "CUDA does not run on macOS"
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        driver = ctypes.CDLL(name)
    except OSError:
        return f"no CUDA driver is installed ({name} is not loadable)"
    rc = driver.cuInit(0)
    if rc:
        return f"the CUDA driver did not initialise (cuInit returned error {rc})"
    count = ctypes.c_int(0)
    rc = driver.cuDeviceGetCount(ctypes.byref(count))
    if rc or count.value < 1:
        return "the CUDA driver sees no device"
    return None


def probe() -> str | None:
    """None if the CUDA backend can run here, else the reason it cannot. Without a GPU
    the driver says so before CuPy is imported (``driver_reason``); a CuPy already
    imported (the test suite's stand-in, or the user's) is asked directly."""
    if "cupy" not in sys.modules:
        reason = driver_reason()
        if reason is not None:
            return reason
    try:
        import cupy
    except Exception as e:  # ImportError, or a CuPy that does not match the driver
        return (f"CuPy is not importable ({type(e).__name__}: {e}); "
                "install iqlut-gpu[cuda12] or iqlut-gpu[cuda13]")
    try:
        if not cupy.cuda.is_available():
            return "CuPy found no usable CUDA device (cupy.cuda.is_available() is False)"
    except Exception as e:
        return f"CuPy cannot query CUDA devices: {e}"
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as e:
        return f"NVRTC (needed to compile the kernels) is not loadable: {e}"
    return None


# ----------------------------------------------------------------------------- CuPy


_COMPILE_LOCK = threading.Lock()
_FUNCTIONS: dict = {}


def _compile(device_id: int, kernels) -> None:
    """Compile the missing ``kernels`` for device ``device_id`` in ONE NVRTC run (one
    RawModule), and memoise each function per (device, specialisation)."""
    missing = sorted({k for k in kernels if (device_id, k) not in _FUNCTIONS})
    if not missing:
        return
    import cupy

    with _COMPILE_LOCK, cupy.cuda.Device(device_id):
        missing = [k for k in missing if (device_id, k) not in _FUNCTIONS]
        if missing:
            module = cupy.RawModule(code=source(), options=COMPILE_OPTIONS,
                                    name_expressions=tuple(missing))
            for k in missing:
                _FUNCTIONS[(device_id, k)] = module.get_function(k)


def _function(device_id: int, kernel: str):
    """The compiled kernel ``kernel`` on device ``device_id``: compiled once, memoised."""
    fn = _FUNCTIONS.get((device_id, kernel))
    if fn is None:
        _compile(device_id, (kernel,))
        fn = _FUNCTIONS[(device_id, kernel)]
    return fn


def _handle(fn) -> int:
    """The CUfunction address of a compiled kernel, for the driver's occupancy calculator.
    CuPy 13 and 14's ``RawModule.get_function`` return a ``RawKernel``, whose ``kernel``
    is the ``cupy.cuda.function.Function`` that holds ``ptr``; older CuPy returned the
    ``Function`` itself. (Found on the first GPU run, 2026-12-04: the host emulation's
    stand-in had returned a Function.)"""
    return int(getattr(fn, "kernel", fn).ptr)


class CupyExecutor:
    """Runs ``Launch`` plans on one CUDA device through CuPy.

    The grid of each kernel is one wave of its grid-stride loop: as many blocks as the
    device runs at once, i.e. multiprocessors times the blocks per multiprocessor that
    CUDA's occupancy calculator allows for that specialisation (registers and shared
    memory decide: 3 to 8 on sm_90 for the shipped models), so no block waits for a second
    wave. ``max_blocks`` set to a number overrides it (tests)."""

    def __init__(self, device_id: int, block=BLOCK, shared_limit=SHARED_LIMIT):
        import cupy

        self.device_id = device_id
        self.block = tuple(block)
        self.shared_limit = shared_limit
        self.sms = int(cupy.cuda.Device(device_id).attributes["MultiProcessorCount"])
        self.max_blocks = None
        self._blocks: dict = {}

    def max_blocks_for(self, kernel: str) -> int:
        if self.max_blocks is not None:
            return self.max_blocks
        n = self._blocks.get(kernel)
        if n is None:
            import cupy

            fn = _function(self.device_id, kernel)
            with cupy.cuda.Device(self.device_id):
                per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                    _handle(fn), self.block[0] * self.block[1], 0)
            n = self._blocks[kernel] = self.sms * max(1, int(per_sm))
        return n

    def check_array(self, arr, name):
        import cupy

        if not isinstance(arr, cupy.ndarray):
            raise TypeError(f"{name} must be a cupy array on the device, got {type(arr).__name__}")
        if arr.device.id != self.device_id:
            raise ValueError(f"{name} is on device {arr.device.id}, the launch on device "
                             f"{self.device_id}")

    @staticmethod
    def address(arr) -> int:
        return int(arr.data.ptr)

    def launch(self, plan: Launch, stream=None):
        fn = _function(self.device_id, plan.kernel)
        ctx = stream if stream is not None else contextlib.nullcontext()
        with ctx:
            fn(plan.grid, plan.block, plan.args)


@lru_cache(maxsize=None)
def _executor_for_device(device_id: int) -> CupyExecutor:
    return CupyExecutor(device_id)


def _current_executor() -> CupyExecutor:
    import cupy

    return _executor_for_device(cupy.cuda.Device().id)


# ----------------------------------------------------------------------------- launchers


def launch_hidden(x, lut, bias, shift, residual, out, mode="interp", stream=None):
    """One hidden layer on the current device (mirrors ``numba_cpu.launch_hidden``).

    ``lut`` is ``(idx, wt, table)`` in interp mode, ``etab`` in expanded mode; all
    arrays are cupy arrays on the current device. The kernel is queued on ``stream``
    (a ``cupy.cuda.Stream``; None = the current stream) and ``out`` is returned at once.
    """
    ex = _current_executor()
    ex.launch(plan_hidden(ex, x, lut, bias, shift, residual, out, mode), stream)
    return out


def launch_last(x, lut, bias, shift, plane, up_off, up_w, up_den, out, mode="interp",
                stream=None):
    """The last layer fused with the fixed upsample and the pixel shuffle (mirrors
    ``numba_cpu.launch_last``); queued on ``stream``, returns ``out``."""
    ex = _current_executor()
    ex.launch(plan_last(ex, x, lut, bias, shift, plane, up_off, up_w, up_den, out, mode),
              stream)
    return out


_TABLES = IdentityMemo()


def device_tables(prepared, mode):
    """``DeviceTables`` of ``prepared`` on the current device, memoised per device and mode.

    The first call also compiles every kernel the model needs in ``mode`` in one NVRTC
    run (CuPy keeps the result in its on-disk cache for later processes). The tables are
    uploaded on a stream of their own and complete before they are returned (and cached),
    so any stream and any thread may read them at once."""
    import cupy

    ex = _current_executor()

    def upload():
        _compile(ex.device_id, kernels_for(prepared, (mode,), shared_limit=ex.shared_limit))
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            tables = DeviceTables(prepared, mode, cupy)
        stream.synchronize()  # cupy.asarray is asynchronous on the current stream
        return tables

    return _TABLES.get(prepared, upload, ex.device_id, mode)


_CUDA_DLPACK_DEVICES = (2, 13)  # DLPack device types kDLCUDA and kDLCUDAManaged


def is_device_array(obj) -> bool:
    """True for a CuPy array or any object whose ``__dlpack_device__`` is a CUDA device
    (e.g. a torch CUDA tensor). Imports nothing."""
    if not hasattr(obj, "__dlpack_device__"):  # numpy arrays answer (kDLCPU, 0)
        return False
    try:
        dev_type, _ = obj.__dlpack_device__()
    except Exception:
        return False
    return int(dev_type) in _CUDA_DLPACK_DEVICES


def as_device_planes(planes):
    """uint8 [P, H, W] planes as a cupy array on the current device, without a copy when
    they already are on the device (a cupy array, or any object with ``__dlpack__``
    living on a CUDA device). Returns (array, came_from_device)."""
    import cupy

    if isinstance(planes, cupy.ndarray):
        return planes, True
    if is_device_array(planes):
        return cupy.from_dlpack(planes), True
    return cupy.asarray(np.asarray(planes)), False


def _out_of_memory(e):
    return DeviceOutOfMemory(f"CUDA device out of memory: {e}")


def run_planes(prepared, planes, mode: str = "interp", stream=None):
    """Whole model on uint8 [P, H, W] planes -> uint8 [P, H*r, W*r] on the current device.

    numpy planes in -> numpy out (copied to the device and back; waits for the result).
    Device planes in (cupy, or ``__dlpack__`` on the device) -> cupy out, queued on
    ``stream`` without waiting: the caller synchronises (e.g. ``stream.synchronize()``).
    Device memory exhaustion raises ``iqlut_gpu.errors.DeviceOutOfMemory``.
    """
    import cupy

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ctx = stream if stream is not None else contextlib.nullcontext()
    try:
        with ctx:
            dev, on_device = as_device_planes(planes)
            if dev.dtype != np.uint8 or dev.ndim != 3:
                raise TypeError(f"planes must be uint8 [P, H, W], got {dev.dtype} {tuple(dev.shape)}")
            with cupy.cuda.Device(dev.device.id):
                dev = cupy.ascontiguousarray(dev)
                ex = _current_executor()
                tables = device_tables(prepared, mode)
                out = ensemble.run(
                    lambda q: run_model(ex, prepared, q, mode, tables,
                                        lambda shape, dtype: cupy.empty(shape, dtype), stream),
                    dev, prepared.ensemble, cupy)
                if on_device:
                    return out
                return cupy.asnumpy(out, stream=stream, blocking=True)
    except cupy.cuda.memory.OutOfMemoryError as e:
        raise _out_of_memory(e) from e


def upscale_device(images, prepared, mode: str = "interp", stream=None):
    """``iqlut_gpu.upscale`` for images on a CUDA device; returns a cupy array.

    ``images``: uint8 (H, W), (H, W, C) or (N, H, W, C), C in 1, 3, 4, as a cupy array or
    any CUDA ``__dlpack__`` object (taken without a copy; ``stream``, or the current
    stream, is the one handed to the producer, which orders its pending writes before
    it). Same layouts and checks as ``iqlut_gpu.planes.to_planes``; planes are split and
    joined on the device. The result has that layout, ``scale`` times larger, on the same
    device, queued on ``stream``: synchronise it before reading it from another stream.
    """
    import cupy

    ctx = stream if stream is not None else contextlib.nullcontext()
    with ctx:  # DLPack: the producer orders its pending writes before ``stream``
        arr = images if isinstance(images, cupy.ndarray) else cupy.from_dlpack(images)
        with cupy.cuda.Device(arr.device.id):
            planes, layout = to_planes(arr, xp=cupy)
            return from_planes(run_planes(prepared, planes, mode, stream), layout, xp=cupy)
