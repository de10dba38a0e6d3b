"""Numba CPU kernels of IQ-LUT inference, bit-identical to ``iqlut_gpu.reference``.

Three layers, as in STUMPY: ``run_planes`` (public, whole model) -> ``launch_*``
(private launchers: validate arrays, cast scalars, derive the kernel-side tables, pick
the kernel) -> ``_k_*`` (jitted kernels). The CUDA launchers in ``cuda_backend.py`` take
the same arguments in the same order (a test checks).

Launcher arguments (all C-contiguous):

- ``x``     uint8 [P, c_in, H, W]    codes of P independent planes
- ``lut``   interp mode: ``(idx, wt, table)`` with
            ``idx`` uint8 [c_in, 256] (lower knot index per code, reference.interp_lut),
            ``wt`` int32 [c_in, 256] (weight 0..256 per code), ``table`` int8 [c_in, L, k, k, c_out];
            expanded mode: ``etab`` int16 [c_in, 256, k, k, c_out] (reference.expand_layer)
- ``bias``  int32 [c_out]
- ``plane`` uint8 [P, H, W]          the input planes (base of the last layer)
- ``up_off`` int32 [r], ``up_w`` int32 [r, T], ``up_den`` int (reference.upsample_filter)
- ``out``   uint8 [P, c_out, H, W] (hidden) or uint8 [P, H*r, W*r] (last)

Kernel-side tables (derived once per lut by ``_kernel_tables`` and memoised), laid out so
that one tap ``(c, dy, dx)`` reads one small contiguous slice that stays in L1 while a
whole row of outputs is accumulated:

- expanded: ``etab_t`` int16 [c_in, k, k, 256, c_out]   (``etab`` with the code axis moved in)
- interp:   ``tb`` int32 [c_in, k, k, L-1, c_out] = 256 * table[c, i]
            ``td`` int32 [c_in, k, k, L-1, c_out] = table[c, i+1] - table[c, i]
  so that ``table[i] * (256 - w) + table[i+1] * w == tb[i] + td[i] * w`` exactly
  (integer identity; every term fits int32).

One ``prange`` iteration computes one output row of one plane (all columns, all output
channels; for the last layer the r output rows of that input row): iterations write
disjoint rows, so no synchronisation is needed. Inside it the accumulator is an int32
[W, c_out] row buffer (``A`` of reference.accumulate; |A| < 2**31 because the loader bounds
bias and the window count). The edge clamp of the source row and columns is done once
per (channel, dy) into a padded row of codes (or of knot indices and weights). ``c_out``
is passed as a literal so the innermost loop over output channels has a compile-time
length and becomes straight vector code.
"""

from __future__ import annotations

import weakref

import numba
import numpy as np
from numba import njit, prange

# Compile flags in one place: parallel prange, on-disk cache, no Python objects.
JIT = dict(parallel=True, cache=True, nogil=True, fastmath=False)

MODES = ("interp", "expanded")

# Packed lanes: two int32 accumulators share one int64, each lane kept non-negative by an
# offset so that a 64-bit add never carries from the low lane into the high one.
_LANE_OFF = 32768  # added to every expanded window value v in [-32768, 32512]
_TD_OFF = 255  # added to every knot difference table[i+1] - table[i] in [-255, 255]


@njit(inline="always")
def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


@njit(inline="always")
def _requant(a, shift):
    if shift == 0:
        return a
    return (a + (1 << (shift - 1))) >> shift


# ----------------------------------------------------------------------------- row pieces


@njit(inline="always")
def _row_accumulate_expanded(x, p, y, etab_p, acc, codes):
    """acc[q, m] = sum over taps of the packed windows read by output column q (expanded form).

    Two output channels share one int64 lane pair; see ``_pack_lanes`` and ``_row_unpack``."""
    c_in, H, W = x.shape[1], x.shape[2], x.shape[3]
    k = etab_p.shape[1]
    R = k // 2
    C2 = etab_p.shape[4]
    for q in range(W):
        for m in range(C2):
            acc[q, m] = 0
    for c in range(c_in):
        for dy in range(k):
            src = x[p, c, _clamp(y - dy + R, 0, H - 1)]
            for j in range(W + 2 * R):  # codes[j] = X[c, sy, clamp(j - R)]
                codes[j] = src[_clamp(j - R, 0, W - 1)]
            for dx in range(k):
                tab = etab_p[c, dy, dx]  # [256, C2]
                off = 2 * R - dx  # source column q - (dx - R), padded by R
                for q in range(W):
                    code = codes[q + off]
                    for m in range(C2):
                        acc[q, m] += tab[code, m]


@njit(inline="always")
def _row_accumulate_interp(x, p, y, idx, wt, tb_p, td_p, acc, wsum, ii, ww):
    """Packed accumulation of the interpolating form: per tap ``tb_p[i] + td_p[i] * w`` (both
    with non-negative lanes), and ``wsum[q]`` = the sum of the weights w read by column q."""
    c_in, H, W = x.shape[1], x.shape[2], x.shape[3]
    k = tb_p.shape[1]
    R = k // 2
    C2 = tb_p.shape[4]
    for q in range(W):
        wsum[q] = 0
        for m in range(C2):
            acc[q, m] = 0
    for c in range(c_in):
        for dy in range(k):
            src = x[p, c, _clamp(y - dy + R, 0, H - 1)]
            for j in range(W + 2 * R):
                code = src[_clamp(j - R, 0, W - 1)]
                ii[j] = idx[c, code]
                ww[j] = wt[c, code]
            for dx in range(k):
                b0 = tb_p[c, dy, dx]  # [L-1, C2]
                d0 = td_p[c, dy, dx]
                off = 2 * R - dx
                for q in range(W):
                    i = ii[q + off]
                    w = ww[q + off]
                    wsum[q] += w
                    for m in range(C2):
                        acc[q, m] += b0[i, m] + d0[i, m] * w


@njit(inline="always")
def _row_unpack(acc, wsum, q, o, bias, lane_off, w_off):
    """A[o] at column q from the packed lanes: lane - lane_off - w_off * wsum[q] + bias[o]."""
    v = acc[q, o >> 1]
    lane = (v >> 32) if (o & 1) else (v & 0xFFFFFFFF)
    return np.int32(lane - lane_off - w_off * wsum[q]) + bias[o]


@njit(inline="always")
def _row_store_hidden(x, p, y, acc, wsum, bias, lane_off, w_off, shift, residual, out):
    W = x.shape[3]
    for o in range(bias.shape[0]):
        for q in range(W):
            a = _row_unpack(acc, wsum, q, o, bias, lane_off, w_off)
            base = np.int32(x[p, o, y, q]) if residual else np.int32(128)
            out[p, o, y, q] = _clamp(base + _requant(a, shift), 0, 255)


@njit(inline="always")
def _row_store_last(plane, p, y, acc, wsum, bias, lane_off, w_off, shift, up_off, up_w, up_den,
                    den_shift, V, out):
    """Rows y*r .. y*r + r-1 of the output: fixed upsample (reference.fixed_upsample) plus the
    pixel-shuffled deltas. The separable upsample sum is computed vertical-first into ``V``
    (int32 [r, W + pads]); integer sums are exact, so the result equals the reference's
    double sum."""
    H, W = plane.shape[1], plane.shape[2]
    r = up_off.shape[0]
    T = up_w.shape[1]
    lo = 0
    for a in range(r):
        lo = min(lo, up_off[a])
    pad_l = -lo
    Wp = V.shape[1]
    # V[a, j] = sum_i up_w[a, i] * plane[clamp(y + up_off[a] + i), clamp(j - pad_l)]
    for a in range(r):
        for j in range(Wp):
            V[a, j] = 0
        for i in range(T):
            wy = up_w[a, i]
            src = plane[p, _clamp(y + up_off[a] + i, 0, H - 1)]
            for j in range(Wp):
                V[a, j] += wy * np.int32(src[_clamp(j - pad_l, 0, W - 1)])
    d2 = up_den * up_den
    half = d2 // 2
    for a in range(r):
        orow = out[p, y * r + a]
        for q in range(W):
            for b in range(r):
                s = np.int64(0)
                base_j = q + up_off[b] + pad_l
                for t in range(T):
                    s += np.int64(up_w[b, t]) * np.int64(V[a, base_j + t])
                if den_shift >= 0:
                    u = (s + half) >> den_shift  # == floor division by a power of two
                else:
                    u = (s + half) // d2  # // floors, as in the reference
                base = _clamp(u, 0, 255)
                delta = _requant(_row_unpack(acc, wsum, q, a * r + b, bias, lane_off, w_off), shift)
                orow[q * r + b] = _clamp(base + delta, 0, 255)


# ----------------------------------------------------------------------------- kernels
# One prange iteration = one input row of one plane. Scratch rows are allocated per iteration.


@njit(**JIT)
def _k_hidden_interp(x, idx, wt, tb_p, td_p, bias, lane_off, shift, residual, out):
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    R = tb_p.shape[1] // 2
    for row in prange(P * H):
        p = row // H
        y = row - p * H
        acc = np.empty((W, tb_p.shape[4]), np.int64)
        wsum = np.empty(W, np.int64)
        ii = np.empty(W + 2 * R, np.int32)
        ww = np.empty(W + 2 * R, np.int64)
        _row_accumulate_interp(x, p, y, idx, wt, tb_p, td_p, acc, wsum, ii, ww)
        _row_store_hidden(x, p, y, acc, wsum, bias, lane_off, _TD_OFF, shift, residual, out)


@njit(**JIT)
def _k_hidden_expanded(x, etab_p, bias, lane_off, shift, residual, out):
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    R = etab_p.shape[1] // 2
    for row in prange(P * H):
        p = row // H
        y = row - p * H
        acc = np.empty((W, etab_p.shape[4]), np.int64)
        wsum = np.zeros(W, np.int64)
        codes = np.empty(W + 2 * R, np.uint8)
        _row_accumulate_expanded(x, p, y, etab_p, acc, codes)
        _row_store_hidden(x, p, y, acc, wsum, bias, lane_off, 0, shift, residual, out)


@njit(**JIT)
def _k_last_interp(x, idx, wt, tb_p, td_p, bias, lane_off, shift, plane, up_off, up_w, up_den,
                   den_shift, v_width, out):
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    R = tb_p.shape[1] // 2
    r = up_off.shape[0]
    for row in prange(P * H):
        p = row // H
        y = row - p * H
        acc = np.empty((W, tb_p.shape[4]), np.int64)
        wsum = np.empty(W, np.int64)
        ii = np.empty(W + 2 * R, np.int32)
        ww = np.empty(W + 2 * R, np.int64)
        V = np.empty((r, v_width), np.int32)
        _row_accumulate_interp(x, p, y, idx, wt, tb_p, td_p, acc, wsum, ii, ww)
        _row_store_last(plane, p, y, acc, wsum, bias, lane_off, _TD_OFF, shift, up_off, up_w,
                        up_den, den_shift, V, out)


@njit(**JIT)
def _k_last_expanded(x, etab_p, bias, lane_off, shift, plane, up_off, up_w, up_den, den_shift,
                     v_width, out):
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    R = etab_p.shape[1] // 2
    r = up_off.shape[0]
    for row in prange(P * H):
        p = row // H
        y = row - p * H
        acc = np.empty((W, etab_p.shape[4]), np.int64)
        wsum = np.zeros(W, np.int64)
        codes = np.empty(W + 2 * R, np.uint8)
        V = np.empty((r, v_width), np.int32)
        _row_accumulate_expanded(x, p, y, etab_p, acc, codes)
        _row_store_last(plane, p, y, acc, wsum, bias, lane_off, 0, shift, up_off, up_w, up_den,
                        den_shift, V, out)


# ----------------------------------------------------------------------------- launchers


def _need(arr, name, dtype, ndim):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != dtype or arr.ndim != ndim:
        raise TypeError(f"{name} must be {np.dtype(dtype).name} with {ndim} dims, "
                        f"got {arr.dtype} {arr.shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


# Kernel-side tables, memoised per source array (id + weak reference, so a new array that
# reuses a freed id is never served stale tables).
_KTABLES: dict = {}


def _kernel_tables(arr: np.ndarray, make):
    key = id(arr)
    hit = _KTABLES.get(key)
    if hit is not None and hit[0]() is arr:
        return hit[1]
    for k_, (ref, _) in list(_KTABLES.items()):
        if ref() is None:
            del _KTABLES[k_]
    derived = make(arr)
    _KTABLES[key] = (weakref.ref(arr), derived)
    return derived


def _pack_lanes(v: np.ndarray) -> np.ndarray:
    """int64 [..., C] with values in [0, 2**31) -> int64 [..., ceil(C/2)]: channel 2m in the low
    32 bits, channel 2m+1 in the high 32 bits (0 when C is odd)."""
    C = v.shape[-1]
    if C % 2:
        v = np.concatenate([v, np.zeros(v.shape[:-1] + (1,), np.int64)], axis=-1)
    assert v.min() >= 0 and v.max() < (1 << 31)
    return np.ascontiguousarray(v[..., 0::2] | (v[..., 1::2] << 32))


def _interp_tables(table: np.ndarray):
    """(tb_p, td_p) int64 [c_in, k, k, L-1, ceil(c_out/2)]: packed 256*table[i] + _LANE_OFF and
    table[i+1] - table[i] + _TD_OFF, so that per tap and lane
    ``tb + td * w == table[i]*(256-w) + table[i+1]*w + _LANE_OFF + _TD_OFF * w``."""
    t = table.astype(np.int64).transpose(0, 2, 3, 1, 4)  # [c_in, k, k, L, c_out]
    tb = _pack_lanes(t[:, :, :, :-1] * 256 + _LANE_OFF)
    td = _pack_lanes(t[:, :, :, 1:] - t[:, :, :, :-1] + _TD_OFF)
    return tb, td


def _expanded_tables(etab: np.ndarray):
    """etab_p int64 [c_in, k, k, 256, ceil(c_out/2)]: packed ``etab + _LANE_OFF`` with the code
    axis moved inside the tap axes."""
    return _pack_lanes(etab.astype(np.int64).transpose(0, 2, 3, 1, 4) + _LANE_OFF)


def _lane_off(table_shape) -> np.int64:
    c_in, _, k, _, _ = table_shape
    return np.int64(_LANE_OFF * c_in * k * k)


def _den_shift(up_den: int) -> int:
    d2 = int(up_den) * int(up_den)
    return d2.bit_length() - 1 if d2 & (d2 - 1) == 0 else -1


def _v_width(W: int, up_off: np.ndarray, T: int) -> int:
    return W + max(0, -int(up_off.min())) + max(0, int(up_off.max()) + T - 1)


def launch_hidden(x, lut, bias, shift, residual, out, mode="interp"):
    """One hidden layer. ``lut`` is ``(idx, wt, table)`` in interp mode, ``etab`` in expanded mode."""
    _need(x, "x", np.uint8, 4)
    _need(bias, "bias", np.int32, 1)
    _need(out, "out", np.uint8, 4)
    if mode == "interp":
        idx, wt, table = lut
        _need(idx, "idx", np.uint8, 2), _need(wt, "wt", np.int32, 2), _need(table, "table", np.int8, 5)
        tb_p, td_p = _kernel_tables(table, _interp_tables)
        _k_hidden_interp(x, idx, wt, tb_p, td_p, bias, _lane_off(table.shape), np.int64(shift),
                         bool(residual), out)
    elif mode == "expanded":
        _need(lut, "etab", np.int16, 5)
        etab_p = _kernel_tables(lut, _expanded_tables)
        _k_hidden_expanded(x, etab_p, bias, _lane_off(lut.shape), np.int64(shift), bool(residual), out)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return out


def launch_last(x, lut, bias, shift, plane, up_off, up_w, up_den, out, mode="interp"):
    """The last layer fused with the fixed upsample and the pixel shuffle."""
    _need(x, "x", np.uint8, 4)
    _need(bias, "bias", np.int32, 1)
    _need(plane, "plane", np.uint8, 3)
    _need(up_off, "up_off", np.int32, 1)
    _need(up_w, "up_w", np.int32, 2)
    _need(out, "out", np.uint8, 3)
    den_shift = np.int64(_den_shift(up_den))
    v_width = np.int64(_v_width(x.shape[3], up_off, up_w.shape[1]))
    if mode == "interp":
        idx, wt, table = lut
        _need(idx, "idx", np.uint8, 2), _need(wt, "wt", np.int32, 2), _need(table, "table", np.int8, 5)
        tb_p, td_p = _kernel_tables(table, _interp_tables)
        _k_last_interp(x, idx, wt, tb_p, td_p, bias, _lane_off(table.shape), np.int64(shift), plane,
                       up_off, up_w, np.int64(up_den), den_shift, v_width, out)
    elif mode == "expanded":
        _need(lut, "etab", np.int16, 5)
        etab_p = _kernel_tables(lut, _expanded_tables)
        _k_last_expanded(x, etab_p, bias, _lane_off(lut.shape), np.int64(shift), plane, up_off,
                         up_w, np.int64(up_den), den_shift, v_width, out)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return out


def run_planes(prepared, planes: np.ndarray, mode: str = "interp") -> np.ndarray:
    """Whole model on uint8 [P, H, W] planes -> uint8 [P, H*r, W*r].

    ``prepared`` is an ``iqlut_gpu.backends.Prepared`` (lookup tables derived once per model).
    """
    planes = np.ascontiguousarray(planes, dtype=np.uint8)
    P, H, W = planes.shape
    r = prepared.scale
    x = planes[:, None]
    for n, layer in enumerate(prepared.layers[:-1]):
        out = np.empty((P, layer.c_out, H, W), np.uint8)
        launch_hidden(x, prepared.lut(n, mode), layer.bias, layer.shift, layer.residual, out, mode)
        x = out
    last = prepared.layers[-1]
    out = np.empty((P, H * r, W * r), np.uint8)
    launch_last(x, prepared.lut(len(prepared.layers) - 1, mode), last.bias, last.shift, planes,
                prepared.up_off, prepared.up_w, prepared.up_den, out, mode)
    return out
