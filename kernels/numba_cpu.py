"""Numba CPU kernels of IQ-LUT inference, bit-identical to ``iqlut_gpu.reference``.

Three layers, as in STUMPY: ``run_planes`` (public, whole model) -> ``launch_*``
(private launchers: validate arrays, cast scalars, pick the kernel) -> ``_k_*`` (jitted
kernels). The CUDA launchers in ``cuda_backend.py`` take the same arguments in the same
order (a test checks).

Layouts (all C-contiguous):

- ``x``     uint8 [P, c_in, H, W]    codes of P independent planes
- ``idx``   uint8 [c_in, 256]        lower knot index per code  (reference.interp_lut)
- ``wt``    int32 [c_in, 256]        weight 0..256 per code     (reference.interp_lut)
- ``table`` int8  [c_in, L, k, k, c_out]
- ``etab``  int16 [c_in, 256, k, k, c_out]  expanded windows (reference.expand_layer)
- ``bias``  int32 [c_out]
- ``plane`` uint8 [P, H, W]          the input planes (base of the last layer)
- ``up_off`` int32 [r], ``up_w`` int32 [r, T], ``up_den`` int (reference.upsample_filter)
- ``out``   uint8 [P, c_out, H, W] (hidden) or uint8 [P, H*r, W*r] (last)

One ``prange`` iteration computes one output row of one plane (all columns, all output
channels): iterations write disjoint rows, so no synchronisation is needed.
"""

from __future__ import annotations

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


@njit(inline="always")
def _accumulate_interp(x, p, y, xq, idx, wt, table, bias, acc):
    """acc[:] = A[:, y, xq] of reference.accumulate (interpolating form)."""
    c_in, H, W = x.shape[1], x.shape[2], x.shape[3]
    k = table.shape[2]
    c_out = table.shape[4]
    R = k // 2
    for o in range(c_out):
        acc[o] = bias[o]
    for c in range(c_in):
        for dy in range(k):
            sy = _clamp(y - (dy - R), 0, H - 1)
            for dx in range(k):
                sx = _clamp(xq - (dx - R), 0, W - 1)
                code = x[p, c, sy, sx]
                i = np.int64(idx[c, code])
                w1 = np.int32(wt[c, code])
                w0 = np.int32(256) - w1
                for o in range(c_out):
                    acc[o] += np.int32(table[c, i, dy, dx, o]) * w0 + np.int32(table[c, i + 1, dy, dx, o]) * w1


@njit(inline="always")
def _accumulate_expanded(x, p, y, xq, etab, bias, acc):
    """acc[:] = A[:, y, xq] of reference.accumulate (expanded-table form)."""
    c_in, H, W = x.shape[1], x.shape[2], x.shape[3]
    k = etab.shape[2]
    c_out = etab.shape[4]
    R = k // 2
    for o in range(c_out):
        acc[o] = bias[o]
    for c in range(c_in):
        for dy in range(k):
            sy = _clamp(y - (dy - R), 0, H - 1)
            for dx in range(k):
                sx = _clamp(xq - (dx - R), 0, W - 1)
                code = x[p, c, sy, sx]
                for o in range(c_out):
                    acc[o] += np.int32(etab[c, code, dy, dx, o])


@njit(inline="always")
def _store_hidden(x, p, y, xq, acc, shift, residual, out):
    for o in range(acc.shape[0]):
        base = np.int32(x[p, o, y, xq]) if residual else np.int32(128)
        out[p, o, y, xq] = _clamp(base + _requant(acc[o], shift), 0, 255)


@njit(inline="always")
def _upsample_at(plane, p, y, xq, a, b, up_off, up_w, up_den):
    """B[y*r + a, x*r + b] of reference.fixed_upsample."""
    H, W = plane.shape[1], plane.shape[2]
    T = up_w.shape[1]
    s = np.int64(0)
    for i in range(T):
        sy = _clamp(y + up_off[a] + i, 0, H - 1)
        for j in range(T):
            sx = _clamp(xq + up_off[b] + j, 0, W - 1)
            s += np.int64(up_w[a, i]) * np.int64(up_w[b, j]) * np.int64(plane[p, sy, sx])
    d2 = np.int64(up_den) * np.int64(up_den)
    return _clamp((s + d2 // 2) // d2, 0, 255)  # // floors, as in the reference


@njit(inline="always")
def _store_last(plane, p, y, xq, acc, shift, up_off, up_w, up_den, out):
    r = up_off.shape[0]
    for a in range(r):
        for b in range(r):
            base = _upsample_at(plane, p, y, xq, a, b, up_off, up_w, up_den)
            out[p, y * r + a, xq * r + b] = _clamp(base + _requant(acc[a * r + b], shift), 0, 255)


@njit(**JIT)
def _k_hidden_interp(x, idx, wt, table, bias, shift, residual, out):
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    for row in prange(P * H):
        p, y = row // H, row % H
        acc = np.empty(table.shape[4], np.int32)
        for xq in range(W):
            _accumulate_interp(x, p, y, xq, idx, wt, table, bias, acc)
            _store_hidden(x, p, y, xq, acc, shift, residual, out)


@njit(**JIT)
def _k_hidden_expanded(x, etab, bias, shift, residual, out):
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    for row in prange(P * H):
        p, y = row // H, row % H
        acc = np.empty(etab.shape[4], np.int32)
        for xq in range(W):
            _accumulate_expanded(x, p, y, xq, etab, bias, acc)
            _store_hidden(x, p, y, xq, acc, shift, residual, out)


@njit(**JIT)
def _k_last_interp(x, idx, wt, table, bias, shift, plane, up_off, up_w, up_den, out):
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    for row in prange(P * H):
        p, y = row // H, row % H
        acc = np.empty(table.shape[4], np.int32)
        for xq in range(W):
            _accumulate_interp(x, p, y, xq, idx, wt, table, bias, acc)
            _store_last(plane, p, y, xq, acc, shift, up_off, up_w, up_den, out)


@njit(**JIT)
def _k_last_expanded(x, etab, bias, shift, plane, up_off, up_w, up_den, out):
    P, H, W = x.shape[0], x.shape[2], x.shape[3]
    for row in prange(P * H):
        p, y = row // H, row % H
        acc = np.empty(etab.shape[4], np.int32)
        for xq in range(W):
            _accumulate_expanded(x, p, y, xq, etab, bias, acc)
            _store_last(plane, p, y, xq, acc, shift, up_off, up_w, up_den, out)


# ----------------------------------------------------------------------------- launchers


def _need(arr, name, dtype, ndim):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != dtype or arr.ndim != ndim:
        raise TypeError(f"{name} must be {np.dtype(dtype).name} with {ndim} dims, "
                        f"got {arr.dtype} {arr.shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def launch_hidden(x, lut, bias, shift, residual, out, mode="interp"):
    """One hidden layer. ``lut`` is ``(idx, wt, table)`` in interp mode, ``etab`` in expanded mode."""
    _need(x, "x", np.uint8, 4)
    _need(bias, "bias", np.int32, 1)
    _need(out, "out", np.uint8, 4)
    if mode == "interp":
        idx, wt, table = lut
        _need(idx, "idx", np.uint8, 2), _need(wt, "wt", np.int32, 2), _need(table, "table", np.int8, 5)
        _k_hidden_interp(x, idx, wt, table, bias, np.int64(shift), bool(residual), out)
    elif mode == "expanded":
        _need(lut, "etab", np.int16, 5)
        _k_hidden_expanded(x, lut, bias, np.int64(shift), bool(residual), out)
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
    if mode == "interp":
        idx, wt, table = lut
        _need(idx, "idx", np.uint8, 2), _need(wt, "wt", np.int32, 2), _need(table, "table", np.int8, 5)
        _k_last_interp(x, idx, wt, table, bias, np.int64(shift), plane, up_off, up_w,
                       np.int64(up_den), out)
    elif mode == "expanded":
        _need(lut, "etab", np.int16, 5)
        _k_last_expanded(x, lut, bias, np.int64(shift), plane, up_off, up_w, np.int64(up_den), out)
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
