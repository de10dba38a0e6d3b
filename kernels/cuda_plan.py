"""Launch planning of the CUDA kernels, independent of CuPy: what to launch, with which
arguments and geometry, for a layer or a whole model.

Three layers, as in ``numba_cpu``: a whole-model run (``run_model``) -> the plans of one
launch (``plan_hidden`` / ``plan_last``: validate arrays, cast scalars to the exact C
types, pick the kernel specialisation and the launch geometry) -> the templated kernels in
``cuda/iqlut.cu`` (their comments say what one thread computes). An *executor* runs the
plans: ``cuda_backend.CupyExecutor`` on a GPU, ``RecordingExecutor`` here (collects the
specialisations a model needs, to compile them ahead), and the host emulation of the test
suite (``tests/cuda_emu``), which runs the very same plans on the CPU. So everything but
the device itself is tested without a GPU. Nothing here imports CuPy.

Layouts are those of ``numba_cpu`` (all C-contiguous, on the executor's device):

- ``x``     uint8 [P, c_in, H, W]; ``plane`` uint8 [P, H, W]
- ``lut``   ``(idx uint8 [c_in, 256], wt int32 [c_in, 256], table int8 [c_in, L, k, k, c_out])``
  in ``"interp"`` mode, ``etab`` int16 [c_in, 256, k, k, c_out] in ``"expanded"`` mode
- ``bias``  int32 [c_out]; ``up_off`` int32 [r]; ``up_w`` int32 [r, T]; ``up_den`` int
- ``out``   uint8 [P, c_out, H, W] (hidden) or uint8 [P, H*r, W*r] (last)

Specialisation: C_IN, C_OUT, K, L (and r, T for the last layer) are template arguments,
so the accumulator lives in registers and the loops unroll; whether the interpolating
tables are staged in shared memory (they are when they fit in ``SHARED_LIMIT`` bytes,
the point of the interpolating mode) is one more.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from iqlut_gpu.kernels import aligned_copy

SOURCE_DIR = Path(__file__).with_name("cuda")
SOURCE_FILE = SOURCE_DIR / "iqlut.cu"
MODES = ("interp", "expanded")

BLOCK = (32, 8)  # threads per block (x, y): one output pixel per thread, a 32 x 8 tile
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


# ----------------------------------------------------------------------------- one launch


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


def padded_outputs(c_out: int, itemsize: int) -> int:
    """The row length the device tables use for ``c_out`` entries of ``itemsize`` bytes:
    ``c_out`` where such a row is a whole number of 4-byte words (the kernels read it with
    4, 8 or 16-byte loads), else the next power of two (x3's 9 outputs: 16), so that no row
    is read one entry at a time. The padding entries are zero and never used."""
    if (c_out * itemsize) % 4 == 0:
        return c_out
    return 1 << (c_out - 1).bit_length()


def _rows(cp, c_out, itemsize, what):
    if cp not in (c_out, padded_outputs(c_out, itemsize)):
        raise ValueError(f"{what} rows hold {cp} entries for {c_out} outputs (need {c_out} or "
                         f"{padded_outputs(c_out, itemsize)})")
    return cp


def _lut_spec(executor, lut, mode, c_in):
    """Validate ``lut`` for ``mode``; returns (arrays, k, L, row length)."""
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


def _geometry(executor, kernel, P, H, W):
    """One block per tile, at most the executor's grid for ``kernel`` (the grid-stride loop
    covers the rest)."""
    bx, by = executor.block
    n_tiles = P * (-(-H // by)) * (-(-W // bx))
    return (max(1, min(n_tiles, executor.max_blocks_for(kernel))), 1, 1), (bx, by, 1)


def _check_sizes(x):
    P, c_in, H, W = (int(s) for s in x.shape)
    if min(P, H, W) < 1 or not 1 <= c_in <= MAX_CHANNELS:
        raise ValueError(f"x has shape {tuple(x.shape)}: need P, H, W >= 1 and 1..{MAX_CHANNELS} channels")
    if max(P, H, W) > INT_MAX // 4 or H * W > INT_MAX // 16:
        raise ValueError(f"x has shape {tuple(x.shape)}: too large for one launch")
    return P, c_in, H, W


def plan_hidden(executor, x, lut, bias, shift, residual, out, mode="interp") -> Launch:
    """Validate the arguments of ``launch_hidden`` and build its ``Launch``."""
    _need(executor, x, "x", np.uint8, (None, None, None, None))
    P, c_in, H, W = _check_sizes(x)
    arrays, k, L, cp = _lut_spec(executor, lut, mode, c_in)
    _need(executor, bias, "bias", np.int32, (None,))
    c_out = int(bias.shape[0])
    if not 1 <= c_out <= MAX_CHANNELS:
        raise ValueError(f"c_out must be 1..{MAX_CHANNELS}, got {c_out}")
    _rows(cp, c_out, 1 if mode == "interp" else 2, "table")
    _need(executor, out, "out", np.uint8, (P, c_out, H, W))
    if residual and c_in != c_out:
        raise ValueError(f"a residual layer needs c_in == c_out, got {c_in} -> {c_out}")
    scalars = (_int(shift, "shift", 0, MAX_SHIFT), np.int32(1 if residual else 0))
    sizes = (np.int32(P), np.int32(H), np.int32(W))
    if mode == "interp":
        shared = c_in * 256 * 4 + int(np.prod(arrays[2].shape))
        use_shared = shared <= executor.shared_limit
        name = f"iqlut::hidden_interp<{c_in},{c_out},{cp},{k},{L},{_bool(use_shared)}>"
        grid, block = _geometry(executor, name, P, H, W)
        return Launch(name, grid, block, (x, *arrays, bias, *scalars, out, *sizes),
                      shared if use_shared else 0)
    name = f"iqlut::hidden_expanded<{c_in},{c_out},{cp},{k}>"
    grid, block = _geometry(executor, name, P, H, W)
    return Launch(name, grid, block, (x, *arrays, bias, *scalars, out, *sizes), 0)


def plan_last(executor, x, lut, bias, shift, plane, up_off, up_w, up_den, out,
               mode="interp") -> Launch:
    """Validate the arguments of ``launch_last`` and build its ``Launch``."""
    _need(executor, x, "x", np.uint8, (None, None, None, None))
    P, c_in, H, W = _check_sizes(x)
    arrays, k, L, cp = _lut_spec(executor, lut, mode, c_in)
    _need(executor, up_off, "up_off", np.int32, (None,))
    r = int(up_off.shape[0])
    c_out = r * r
    if r not in (2, 3, 4) or cp not in (c_out, padded_outputs(c_out, 1 if mode == "interp" else 2)):
        raise ValueError(f"the last layer needs scale r in 2..4 and r*r outputs, got r={r}, "
                         f"rows of {cp}")
    if type(up_off) is np.ndarray and up_off.max() - up_off.min() > 1:  # host values: check
        raise ValueError(f"up_off phases must lie within 1 of each other, got {up_off.tolist()}")
    _need(executor, up_w, "up_w", np.int32, (r, None))
    T = int(up_w.shape[1])
    if not 1 <= T <= 4:
        raise ValueError(f"up_w must have 1..4 taps, got {T}")
    _need(executor, bias, "bias", np.int32, (c_out,))
    _need(executor, plane, "plane", np.uint8, (P, H, W))
    _need(executor, out, "out", np.uint8, (P, H * r, W * r))
    scalars = (_int(shift, "shift", 0, MAX_SHIFT),)
    den = int(_int(up_den, "up_den", 1, 256))  # a template argument: divisions by a constant
    sizes = (np.int32(P), np.int32(H), np.int32(W))
    tail = (plane, up_off, up_w, out, *sizes)
    if mode == "interp":
        shared = c_in * 256 * 4 + int(np.prod(arrays[2].shape))
        use_shared = shared <= executor.shared_limit
        name = f"iqlut::last_interp<{c_in},{k},{L},{r},{cp},{T},{den},{_bool(use_shared)}>"
        grid, block = _geometry(executor, name, P, H, W)
        return Launch(name, grid, block, (x, *arrays, bias, *scalars, *tail),
                      shared if use_shared else 0)
    name = f"iqlut::last_expanded<{c_in},{k},{r},{cp},{T},{den}>"
    grid, block = _geometry(executor, name, P, H, W)
    return Launch(name, grid, block, (x, *arrays, bias, *scalars, *tail), 0)


# ----------------------------------------------------------------------------- whole model


def run_model(executor, prepared, planes, mode, tables, alloc, stream=None):
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
        executor.launch(plan_hidden(executor, x, tables(n), tables.bias(n), layer.shift,
                                     layer.residual, out, mode), stream)
        x = out
    n = len(prepared.layers) - 1
    out = alloc((P, H * r, W * r), np.uint8)
    up_off, up_w = tables.up
    executor.launch(plan_last(executor, x, tables(n), tables.bias(n), prepared.layers[n].shift,
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

    def max_blocks_for(self, kernel: str) -> int:
        return self.max_blocks

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
        run_model(rec, prepared, planes, mode, DeviceTables(prepared, mode, np),
                         lambda shape, dtype: np.empty(shape, dtype))
    return sorted(rec.kernels)


def _aligned(xp, a):
    """A C-contiguous copy of ``a`` in ``xp`` starting at a 16-byte aligned address (cupy
    allocations always do; a numpy copy is placed inside a slightly larger buffer)."""
    a = xp.ascontiguousarray(xp.asarray(a))
    return a if xp is not np else aligned_copy(a, 16)


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


def _pad_rows(table):
    """``table`` [..., c_out] with its rows padded by zeros to ``padded_outputs``."""
    c_out = table.shape[-1]
    cp = padded_outputs(c_out, table.dtype.itemsize)
    if cp == c_out:
        return table
    out = np.zeros(table.shape[:-1] + (cp,), table.dtype)
    out[..., :c_out] = table
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
                lut = tuple(_aligned(xp, a) for a in (idx, wt, _pad_rows(table)))
            else:
                lut = _aligned(xp, _pad_rows(lut))
            self._luts.append(lut)
            self._bias.append(xp.ascontiguousarray(xp.asarray(layer.bias)))
        up_off = np.asarray(prepared.up_off)
        if up_off.max() - up_off.min() > 1:  # store_last reads one (T+1)^2 patch
            raise ValueError(f"upsample offsets must lie within 1 of each other: {up_off}")
        self.up = (xp.ascontiguousarray(xp.asarray(up_off)),
                   xp.ascontiguousarray(xp.asarray(prepared.up_w)))

    def __call__(self, n):
        return self._luts[n]

    def bias(self, n):
        return self._bias[n]
