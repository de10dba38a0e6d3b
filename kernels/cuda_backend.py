"""CUDA backend of IQ-LUT inference: CuPy RawModule kernels from ``cuda/iqlut.cu``.

Bit-identical to ``iqlut_gpu.reference`` (and to ``numba_cpu``). Three layers, as in
``numba_cpu``: ``run_planes`` (public, whole model) -> ``launch_hidden`` / ``launch_last``
(launchers: validate arrays, cast scalars to the exact C types, pick the specialisation
and the launch geometry) -> the templated kernels in ``cuda/iqlut.cu`` (their comments
say what one thread computes). The launchers take the same arguments in the same order
as ``numba_cpu.launch_hidden`` / ``launch_last`` plus ``stream`` (a test checks).

Layouts are those of ``numba_cpu`` (all C-contiguous, on the current CUDA device):

- ``x``     uint8 [P, c_in, H, W]; ``plane`` uint8 [P, H, W]
- ``lut``   ``(idx uint8 [c_in, 256], wt int32 [c_in, 256], table int8 [c_in, L, k, k, c_out])``
  in ``"interp"`` mode, ``etab`` int16 [c_in, 256, k, k, c_out] in ``"expanded"`` mode
- ``bias``  int32 [c_out]; ``up_off`` int32 [r]; ``up_w`` int32 [r, T]; ``up_den`` int
- ``out``   uint8 [P, c_out, H, W] (hidden) or uint8 [P, H*r, W*r] (last)

Specialisation: C_IN, C_OUT, K, L (and r, T for the last layer) are template arguments,
so the accumulator lives in registers and the loops unroll; whether the interpolating
tables are staged in shared memory (they are when they fit in ``SHARED_LIMIT`` bytes,
the point of the interpolating mode) is one more. Each specialisation is compiled once
per device with NVRTC and memoised (CuPy also keeps its on-disk kernel cache).

CuPy is imported only inside functions here, on first use: importing ``iqlut_gpu``
(or this module) never imports it.

The launch planning (``_plan_hidden`` / ``_plan_last``) is independent of CuPy: the
test suite runs the very same plans through a host emulation of the kernels
(``tests/cuda_emu``), so everything but the device itself is tested without a GPU.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from iqlut_gpu import ensemble

SOURCE_DIR = Path(__file__).with_name("cuda")
SOURCE_FILE = SOURCE_DIR / "iqlut.cu"
MODES = ("interp", "expanded")
COMPILE_OPTIONS = ("--std=c++17",)

BLOCK = (32, 8)  # threads per block (x, y): one output pixel per thread, a 32 x 8 tile
BLOCKS_PER_SM = 8  # the grid-stride loop's grid: this many blocks per multiprocessor
SHARED_LIMIT = 40 * 1024  # bytes of shared memory the interp tables may use (48 KiB static max)

MAX_CHANNELS, MAX_K, MAX_SHIFT = 64, 9, 24  # int32 accumulator bounds (see iqlut.cu)
INT_MAX = 2**31 - 1


@lru_cache(maxsize=None)
def source() -> str:
    """The CUDA C++ source of all kernels."""
    return SOURCE_FILE.read_text()


@dataclass(frozen=True)
class Launch:
    """One kernel launch, independent of how it is executed.

    ``kernel`` is the C++ name expression of the specialisation (e.g.
    ``iqlut::hidden_interp<1,8,5,17,true>``); ``args`` holds the arrays and numpy.int32
    scalars in the kernel's parameter order; ``shared_bytes`` is the static shared memory
    the specialisation declares (for the record; nothing dynamic is requested).
    """

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple
    shared_bytes: int


# ----------------------------------------------------------------------------- probe


def probe() -> str | None:
    """None if the CUDA backend can run here, else the reason it cannot."""
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


# ----------------------------------------------------------------------------- planning


def _need(executor, arr, name, dtype, shape):
    """Check array kind/device (via the executor), dtype, shape (None = any) and contiguity."""
    executor.check_array(arr, name)
    dtype = np.dtype(dtype)
    if arr.dtype != dtype or arr.ndim != len(shape):
        raise TypeError(f"{name} must be {dtype.name} with {len(shape)} dims, "
                        f"got {arr.dtype} {tuple(arr.shape)}")
    for got, want in zip(arr.shape, shape):
        if want is not None and got != want:
            raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected "
                             f"{tuple('*' if s is None else s for s in shape)}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def _need_aligned(executor, arr, name):
    """The kernels read table rows with 16-byte vector loads."""
    if executor.address(arr) % 16:
        raise ValueError(f"{name} must start at a 16-byte aligned address")


def _int(value, name, lo, hi) -> np.int32:
    """A scalar as the kernel's C ``int`` (CuPy would pass a Python int as long long)."""
    v = int(value)
    if v != value or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return np.int32(v)


def _bool(value) -> str:
    return "true" if value else "false"


def _lut_spec(executor, lut, mode, c_in):
    """Validate ``lut`` for ``mode``; returns (arrays, k, L, c_out)."""
    if mode == "interp":
        if not isinstance(lut, (tuple, list)) or len(lut) != 3:
            raise TypeError("lut must be (idx, wt, table) in interp mode")
        idx, wt, table = lut
        _need(executor, table, "table", np.int8, (c_in, None, None, None, None))
        _, L, k, k2, c_out = table.shape
        if k != k2 or k % 2 != 1 or k > MAX_K or not 2 <= L <= 256:
            raise ValueError(f"table shape {tuple(table.shape)}: need an odd square window "
                             f"<= {MAX_K} and 2..256 knots")
        _need(executor, idx, "idx", np.uint8, (c_in, 256))
        _need(executor, wt, "wt", np.int32, (c_in, 256))
        _need_aligned(executor, table, "table")
        return (idx, wt, table), k, L, c_out
    if mode == "expanded":
        _need(executor, lut, "etab", np.int16, (c_in, 256, None, None, None))
        _, _, k, k2, c_out = lut.shape
        if k != k2 or k % 2 != 1 or k > MAX_K:
            raise ValueError(f"etab shape {tuple(lut.shape)}: need an odd square window <= {MAX_K}")
        _need_aligned(executor, lut, "etab")
        return (lut,), k, None, c_out
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _geometry(executor, P, H, W):
    bx, by = executor.block
    n_tiles = P * (-(-H // by)) * (-(-W // bx))
    return (max(1, min(n_tiles, executor.max_blocks)), 1, 1), (bx, by, 1)


def _check_sizes(x):
    P, c_in, H, W = (int(s) for s in x.shape)
    if min(P, H, W) < 1 or not 1 <= c_in <= MAX_CHANNELS:
        raise ValueError(f"x has shape {tuple(x.shape)}: need P, H, W >= 1 and 1..{MAX_CHANNELS} channels")
    if max(P, H, W) > INT_MAX // 4 or H * W > INT_MAX // 16:
        raise ValueError(f"x has shape {tuple(x.shape)}: too large for one launch")
    return P, c_in, H, W


def _plan_hidden(executor, x, lut, bias, shift, residual, out, mode="interp") -> Launch:
    """Validate the arguments of ``launch_hidden`` and build its ``Launch``."""
    _need(executor, x, "x", np.uint8, (None, None, None, None))
    P, c_in, H, W = _check_sizes(x)
    arrays, k, L, c_out = _lut_spec(executor, lut, mode, c_in)
    if not 1 <= c_out <= MAX_CHANNELS:
        raise ValueError(f"c_out must be 1..{MAX_CHANNELS}, got {c_out}")
    _need(executor, bias, "bias", np.int32, (c_out,))
    _need(executor, out, "out", np.uint8, (P, c_out, H, W))
    if residual and c_in != c_out:
        raise ValueError(f"a residual layer needs c_in == c_out, got {c_in} -> {c_out}")
    scalars = (_int(shift, "shift", 0, MAX_SHIFT), np.int32(1 if residual else 0))
    sizes = (np.int32(P), np.int32(H), np.int32(W))
    grid, block = _geometry(executor, P, H, W)
    if mode == "interp":
        shared = c_in * 256 * 4 + int(np.prod(arrays[2].shape))
        use_shared = shared <= executor.shared_limit
        name = f"iqlut::hidden_interp<{c_in},{c_out},{k},{L},{_bool(use_shared)}>"
        return Launch(name, grid, block, (x, *arrays, bias, *scalars, out, *sizes),
                      shared if use_shared else 0)
    name = f"iqlut::hidden_expanded<{c_in},{c_out},{k}>"
    return Launch(name, grid, block, (x, *arrays, bias, *scalars, out, *sizes), 0)


def _plan_last(executor, x, lut, bias, shift, plane, up_off, up_w, up_den, out,
               mode="interp") -> Launch:
    """Validate the arguments of ``launch_last`` and build its ``Launch``."""
    _need(executor, x, "x", np.uint8, (None, None, None, None))
    P, c_in, H, W = _check_sizes(x)
    arrays, k, L, c_out = _lut_spec(executor, lut, mode, c_in)
    _need(executor, up_off, "up_off", np.int32, (None,))
    r = int(up_off.shape[0])
    if r not in (2, 3, 4) or c_out != r * r:
        raise ValueError(f"the last layer needs scale r in 2..4 and r*r outputs, got r={r}, "
                         f"c_out={c_out}")
    _need(executor, up_w, "up_w", np.int32, (r, None))
    T = int(up_w.shape[1])
    if not 1 <= T <= 4:
        raise ValueError(f"up_w must have 1..4 taps, got {T}")
    _need(executor, bias, "bias", np.int32, (c_out,))
    _need(executor, plane, "plane", np.uint8, (P, H, W))
    _need(executor, out, "out", np.uint8, (P, H * r, W * r))
    scalars = (_int(shift, "shift", 0, MAX_SHIFT),)
    den = _int(up_den, "up_den", 1, 256)
    sizes = (np.int32(P), np.int32(H), np.int32(W))
    grid, block = _geometry(executor, P, H, W)
    tail = (plane, up_off, up_w, den, out, *sizes)
    if mode == "interp":
        shared = c_in * 256 * 4 + int(np.prod(arrays[2].shape))
        use_shared = shared <= executor.shared_limit
        name = f"iqlut::last_interp<{c_in},{k},{L},{r},{T},{_bool(use_shared)}>"
        return Launch(name, grid, block, (x, *arrays, bias, *scalars, *tail),
                      shared if use_shared else 0)
    name = f"iqlut::last_expanded<{c_in},{k},{r},{T}>"
    return Launch(name, grid, block, (x, *arrays, bias, *scalars, *tail), 0)


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


class CupyExecutor:
    """Runs ``Launch`` plans on one CUDA device through CuPy."""

    def __init__(self, device_id: int, block=BLOCK, shared_limit=SHARED_LIMIT):
        import cupy

        self.device_id = device_id
        self.block = tuple(block)
        self.shared_limit = shared_limit
        sms = cupy.cuda.Device(device_id).attributes["MultiProcessorCount"]
        self.max_blocks = int(sms) * BLOCKS_PER_SM

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
    ex.launch(_plan_hidden(ex, x, lut, bias, shift, residual, out, mode), stream)
    return out


def launch_last(x, lut, bias, shift, plane, up_off, up_w, up_den, out, mode="interp",
                stream=None):
    """The last layer fused with the fixed upsample and the pixel shuffle (mirrors
    ``numba_cpu.launch_last``); queued on ``stream``, returns ``out``."""
    ex = _current_executor()
    ex.launch(_plan_last(ex, x, lut, bias, shift, plane, up_off, up_w, up_den, out, mode),
              stream)
    return out


# ----------------------------------------------------------------------------- model


def _run_planes_with(executor, prepared, planes, mode, tables, alloc, stream=None):
    """Whole model on device planes uint8 [P, H, W] -> uint8 [P, H*r, W*r].

    One launch per layer covers all P planes; the intermediate code planes are
    allocated with ``alloc(shape, dtype)`` and never leave the device. ``tables`` is a
    ``DeviceTables`` for ``mode`` on the executor's device.
    """
    P, H, W = (int(s) for s in planes.shape)
    r = prepared.scale
    x = planes.reshape(P, 1, H, W)
    for n, layer in enumerate(prepared.layers[:-1]):
        out = alloc((P, layer.c_out, H, W), np.uint8)
        executor.launch(_plan_hidden(executor, x, tables(n), tables.bias(n), layer.shift,
                                     layer.residual, out, mode), stream)
        x = out
    n = len(prepared.layers) - 1
    out = alloc((P, H * r, W * r), np.uint8)
    up_off, up_w = tables.up
    executor.launch(_plan_last(executor, x, tables(n), tables.bias(n), prepared.layers[n].shift,
                               planes, up_off, up_w, prepared.up_den, out, mode), stream)
    return out


class RecordingExecutor:
    """Plans launches on host (numpy) arrays without running them; ``kernels`` collects the
    specialisations a run needs (to compile them ahead: tests, compile_report.py)."""

    def __init__(self, block=BLOCK, max_blocks=1, shared_limit=SHARED_LIMIT):
        self.block, self.max_blocks, self.shared_limit = tuple(block), max_blocks, shared_limit
        self.kernels: set[str] = set()
        self.plans: list[Launch] = []

    def check_array(self, arr, name):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name} must be a numpy array here, got {type(arr).__name__}")

    @staticmethod
    def address(arr) -> int:
        return int(arr.ctypes.data)

    def launch(self, plan: Launch, stream=None):
        self.kernels.add(plan.kernel)
        self.plans.append(plan)


def kernels_for(prepared, modes=MODES, shared_limit=SHARED_LIMIT) -> list[str]:
    """The kernel specialisations (name expressions) running ``prepared`` needs."""
    rec = RecordingExecutor(shared_limit=shared_limit)
    planes = np.zeros((1, 1, 1), np.uint8)
    for mode in modes:
        _run_planes_with(rec, prepared, planes, mode, DeviceTables(prepared, mode, np),
                         lambda shape, dtype: np.empty(shape, dtype))
    return sorted(rec.kernels)


def _aligned(xp, a):
    """A C-contiguous copy of ``a`` in ``xp`` starting at a 16-byte aligned address (cupy
    allocations always do; a numpy copy is placed inside a slightly larger buffer)."""
    a = xp.ascontiguousarray(xp.asarray(a))
    if xp is not np or a.ctypes.data % 16 == 0:
        return a
    buf = np.empty(a.nbytes + 16, np.uint8)
    start = -buf.ctypes.data % 16
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def table_traffic(prepared, mode: str) -> list[dict]:
    """What the kernels read from the tables, per input (LR) pixel and layer, for ``mode``:
    ``taps`` (c_in*k*k source codes), ``entries`` (table values read) and ``bytes``
    (their size: int8 entries, two rows per tap, in interp; int16, one row, in
    expanded). For benchmarks: achieved reads/s = entries * pixels / seconds."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out = []
    for layer in prepared.layers:
        taps = layer.c_in * layer.k * layer.k
        rows = 2 if mode == "interp" else 1
        entries = taps * rows * layer.c_out
        out.append({"taps": taps, "entries": entries,
                    "bytes": entries * (1 if mode == "interp" else 2)})
    return out


class DeviceTables:
    """A model's tables for one device and array module, uploaded once per mode.

    ``xp`` is cupy (arrays on the current device) or numpy (host emulation).
    Calling it with a layer index gives that layer's lut for ``mode``.
    """

    def __init__(self, prepared, mode, xp):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self._luts, self._bias = [], []
        for n, layer in enumerate(prepared.layers):
            lut = prepared.lut(n, mode)
            if mode == "interp":
                idx, wt, table = lut
                # the kernels index the table with idx + 1: pin the values they trust
                if int(idx.max()) > layer.L - 2 or int(wt.min()) < 0 or int(wt.max()) > 256:
                    raise ValueError(f"layer {n}: interp lut out of range")
                lut = tuple(_aligned(xp, a) for a in (idx, wt, table))
            else:
                lut = _aligned(xp, lut)
            self._luts.append(lut)
            self._bias.append(xp.ascontiguousarray(xp.asarray(layer.bias)))
        self.up = (xp.ascontiguousarray(xp.asarray(prepared.up_off)),
                   xp.ascontiguousarray(xp.asarray(prepared.up_w)))

    def __call__(self, n):
        return self._luts[n]

    def bias(self, n):
        return self._bias[n]


_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def device_tables(prepared, mode):
    """``DeviceTables`` of ``prepared`` on the current device, memoised per device and mode.

    The first call also compiles every kernel the model needs in ``mode`` in one NVRTC
    run (CuPy keeps the result in its on-disk cache for later processes)."""
    import cupy

    per = _TABLES.setdefault(prepared, {})
    key = (cupy.cuda.Device().id, mode)
    if key not in per:
        ex = _current_executor()
        _compile(ex.device_id, kernels_for(prepared, (mode,), shared_limit=ex.shared_limit))
        per[key] = DeviceTables(prepared, mode, cupy)
    return per[key]


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
    from iqlut_gpu import backends

    return getattr(backends, "DeviceOutOfMemory", MemoryError)(f"CUDA device out of memory: {e}")


def run_planes(prepared, planes, mode: str = "interp", stream=None):
    """Whole model on uint8 [P, H, W] planes -> uint8 [P, H*r, W*r] on the current device.

    numpy planes in -> numpy out (copied to the device and back; waits for the result).
    Device planes in (cupy, or ``__dlpack__`` on the device) -> cupy out, queued on
    ``stream`` without waiting: the caller synchronises (e.g. ``stream.synchronize()``).
    Device memory exhaustion raises ``iqlut_gpu.backends.DeviceOutOfMemory``.
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
                    lambda q: _run_planes_with(ex, prepared, q, mode, tables,
                                               lambda shape, dtype: cupy.empty(shape, dtype), stream),
                    dev, prepared.model.ensemble, cupy)
                if on_device:
                    return out
                return cupy.asnumpy(out, stream=stream, blocking=True)
    except cupy.cuda.memory.OutOfMemoryError as e:
        raise _out_of_memory(e) from e


def upscale_device(images, prepared, mode: str = "interp", stream=None):
    """``iqlut_gpu.upscale`` for images on a CUDA device; returns a cupy array.

    ``images``: uint8 (H, W), (H, W, C) or (N, H, W, C), C in 1, 3, 4, as a cupy array or
    any CUDA ``__dlpack__`` object (taken without a copy). Same layouts and checks as
    ``iqlut_gpu.api.to_planes``; the result has that layout, ``scale`` times larger, on
    the same device, queued on ``stream``.
    """
    import cupy

    arr = images if isinstance(images, cupy.ndarray) else cupy.from_dlpack(images)
    if arr.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {arr.dtype}")
    if arr.ndim not in (2, 3, 4):
        raise ValueError(f"images must be (H,W), (H,W,C) or (N,H,W,C), got shape {tuple(arr.shape)}")
    batch = arr[None, :, :, None] if arr.ndim == 2 else (arr[None] if arr.ndim == 3 else arr)
    N, H, W, C = (int(s) for s in batch.shape)
    if C not in (1, 3, 4):
        raise ValueError(f"images must have 1, 3 or 4 channels, got shape {tuple(arr.shape)}")
    if N == 0 or H == 0 or W == 0:
        raise ValueError(f"images must not be empty, got shape {tuple(arr.shape)}")
    r = prepared.scale
    ctx = stream if stream is not None else contextlib.nullcontext()
    with cupy.cuda.Device(arr.device.id), ctx:
        planes = cupy.ascontiguousarray(batch.transpose(0, 3, 1, 2)).reshape(N * C, H, W)
        out = run_planes(prepared, planes, mode, stream)
        out = cupy.ascontiguousarray(out.reshape(N, C, H * r, W * r).transpose(0, 2, 3, 1))
    if arr.ndim == 2:
        return out[0, :, :, 0]
    return out[0] if arr.ndim == 3 else out
