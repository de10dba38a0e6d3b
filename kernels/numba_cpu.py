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
def _row_accumulate_expanded(x, p, y, etab_t, bias, acc, codes, C):
    """acc[q, :] = A[:, y, q] of reference.accumulate for every column q (expanded form)."""
    c_in, H, W = x.shape[1], x.shape[2], x.shape[3]
    k = etab_t.shape[1]
    R = k // 2
    for q in range(W):
        for o in range(C):
            acc[q, o] = bias[o]
    for c in range(c_in):
        for dy in range(k):
            src = x[p, c, _clamp(y - dy + R, 0, H - 1)]
            for j in range(W + 2 * R):  # codes[j] = X[c, sy, clamp(j - R)]
                codes[j] = src[_clamp(j - R, 0, W - 1)]
            for dx in range(k):
                tab = etab_t[c, dy, dx]  # [256, C]
                off = 2 * R - dx  # source column q - (dx - R), padded by R
                for q in range(W):
                    code = codes[q + off]
                    for o in range(C):
                        acc[q, o] += tab[code, o]


@njit(inline="always")
def _row_accumulate_interp(x, p, y, idx, wt, tb, td, bias, acc, ii, ww, C):
    """acc[q, :] = A[:, y, q] of reference.accumulate for every column q (interpolating form)."""
    c_in, H, W = x.shape[1], x.shape[2], x.shape[3]
    k = tb.shape[1]
    R = k // 2
    for q in range(W):
        for o in range(C):
            acc[q, o] = bias[o]
    for c in range(c_in):
        for dy in range(k):
            src = x[p, c, _clamp(y - dy + R, 0, H - 1)]
            for j in range(W + 2 * R):
                code = src[_clamp(j - R, 0, W - 1)]
                ii[j] = idx[c, code]
                ww[j] = wt[c, code]
            for dx in range(k):
                b0 = tb[c, dy, dx]  # [L-1, C]
                d0 = td[c, dy, dx]
                off = 2 * R - dx
                for q in range(W):
                    i = ii[q + off]
                    w = ww[q + off]
                    for o in range(C):
                        acc[q, o] += b0[i, o] + d0[i, o] * w


@njit(inline="always")
def _row_store_hidden(x, p, y, acc, shift, residual, out):
    W = x.shape[3]
    for o in range(acc.shape[1]):
        for q in range(W):
            base = np.int32(x[p, o, y, q]) if residual else np.int32(128)
            out[p, o, y, q] = _clamp(base + _requant(acc[q, o], shift), 0, 255)


@njit(inline="always")
def _row_store_last(plane, p, y, acc, shift, up_off, up_w, up_den, den_shift, out):
    """Rows y*r .. y*r + r-1 of the output: fixed upsample (reference.fixed_upsample) plus the
    pixel-shuffled deltas. The separable upsample sum is computed vertical-first; integer sums
    are exact, so the result equals the reference's double sum."""
    H, W = plane.shape[1], plane.shape[2]
    r = up_off.shape[0]
    T = up_w.shape[1]
    lo = 0
    hi = 0
    for a in range(r):
        lo = min(lo, up_off[a])
        hi = max(hi, up_off[a] + T - 1)
    pad_l = -lo
    Wp = W + pad_l + hi
    # V[a, j] = sum_i up_w[a, i] * plane[clamp(y + up_off[a] + i), clamp(j - pad_l)]
    V = np.empty((r, Wp), np.int32)
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
                orow[q * r + b] = _clamp(base + _requant(acc[q, a * r + b], shift), 0, 255)


# ----------------------------------------------------------------------------- kernels


@njit(**JIT)
def _k_hidden_interp(x, idx, wt, tb, td, bias, shift, residual, out, C):
    numba.literally(C)
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    R = tb.shape[1] // 2
    for row in prange(P * H):
        p = row // H
        y = row - p * H
        acc = np.empty((W, C), np.int32)
        ii = np.empty(W + 2 * R, np.int32)
        ww = np.empty(W + 2 * R, np.int32)
        _row_accumulate_interp(x, p, y, idx, wt, tb, td, bias, acc, ii, ww, C)
        _row_store_hidden(x, p, y, acc, shift, residual, out)


@njit(**JIT)
def _k_hidden_expanded(x, etab_t, bias, shift, residual, out, C):
    numba.literally(C)
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    R = etab_t.shape[1] // 2
    for row in prange(P * H):
        p = row // H
        y = row - p * H
        acc = np.empty((W, C), np.int32)
        codes = np.empty(W + 2 * R, np.int32)
        _row_accumulate_expanded(x, p, y, etab_t, bias, acc, codes, C)
        _row_store_hidden(x, p, y, acc, shift, residual, out)


@njit(**JIT)
def _k_last_interp(x, idx, wt, tb, td, bias, shift, plane, up_off, up_w, up_den, den_shift,
                   out, C):
    numba.literally(C)
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    R = tb.shape[1] // 2
    for row in prange(P * H):
        p = row // H
        y = row - p * H
        acc = np.empty((W, C), np.int32)
        ii = np.empty(W + 2 * R, np.int32)
        ww = np.empty(W + 2 * R, np.int32)
        _row_accumulate_interp(x, p, y, idx, wt, tb, td, bias, acc, ii, ww, C)
        _row_store_last(plane, p, y, acc, shift, up_off, up_w, up_den, den_shift, out)


@njit(**JIT)
def _k_last_expanded(x, etab_t, bias, shift, plane, up_off, up_w, up_den, den_shift, out, C):
    numba.literally(C)
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    R = etab_t.shape[1] // 2
    for row in prange(P * H):
        p = row // H
        y = row - p * H
        acc = np.empty((W, C), np.int32)
        codes = np.empty(W + 2 * R, np.int32)
        _row_accumulate_expanded(x, p, y, etab_t, bias, acc, codes, C)
        _row_store_last(plane, p, y, acc, shift, up_off, up_w, up_den, den_shift, out)


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


def _interp_tables(table: np.ndarray):
    t = table.astype(np.int32).transpose(0, 2, 3, 1, 4)  # [c_in, k, k, L, c_out]
    tb = np.ascontiguousarray(t[:, :, :, :-1] * 256)
    td = np.ascontiguousarray(t[:, :, :, 1:] - t[:, :, :, :-1])
    return tb, td


def _expanded_tables(etab: np.ndarray):
    return np.ascontiguousarray(etab.transpose(0, 2, 3, 1, 4))  # [c_in, k, k, 256, c_out]


def _den_shift(up_den: int) -> int:
    d2 = int(up_den) * int(up_den)
    return d2.bit_length() - 1 if d2 & (d2 - 1) == 0 else -1


def launch_hidden(x, lut, bias, shift, residual, out, mode="interp", stream=None):
    """One hidden layer. ``lut`` is ``(idx, wt, table)`` in interp mode, ``etab`` in expanded mode.

    ``stream`` is ignored (it keeps the signature equal to ``cuda_backend.launch_hidden``)."""
    _need(x, "x", np.uint8, 4)
    _need(bias, "bias", np.int32, 1)
    _need(out, "out", np.uint8, 4)
    if mode == "interp":
        idx, wt, table = lut
        _need(idx, "idx", np.uint8, 2), _need(wt, "wt", np.int32, 2), _need(table, "table", np.int8, 5)
        tb, td = _kernel_tables(table, _interp_tables)
        _k_hidden_interp(x, idx, wt, tb, td, bias, np.int64(shift), bool(residual), out,
                         int(table.shape[4]))
    elif mode == "expanded":
        _need(lut, "etab", np.int16, 5)
        etab_t = _kernel_tables(lut, _expanded_tables)
        _k_hidden_expanded(x, etab_t, bias, np.int64(shift), bool(residual), out, int(lut.shape[4]))
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return out


def launch_last(x, lut, bias, shift, plane, up_off, up_w, up_den, out, mode="interp",
                stream=None):
    """The last layer fused with the fixed upsample and the pixel shuffle.

    ``stream`` is ignored (it keeps the signature equal to ``cuda_backend.launch_last``)."""
    _need(x, "x", np.uint8, 4)
    _need(bias, "bias", np.int32, 1)
    _need(plane, "plane", np.uint8, 3)
    _need(up_off, "up_off", np.int32, 1)
    _need(up_w, "up_w", np.int32, 2)
    _need(out, "out", np.uint8, 3)
    den_shift = np.int64(_den_shift(up_den))
    if mode == "interp":
        idx, wt, table = lut
        _need(idx, "idx", np.uint8, 2), _need(wt, "wt", np.int32, 2), _need(table, "table", np.int8, 5)
        tb, td = _kernel_tables(table, _interp_tables)
        _k_last_interp(x, idx, wt, tb, td, bias, np.int64(shift), plane, up_off, up_w,
                       np.int64(up_den), den_shift, out, int(table.shape[4]))
    elif mode == "expanded":
        _need(lut, "etab", np.int16, 5)
        etab_t = _kernel_tables(lut, _expanded_tables)
        _k_last_expanded(x, etab_t, bias, np.int64(shift), plane, up_off, up_w, np.int64(up_den),
                         den_shift, out, int(lut.shape[4]))
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
