"""Numba kernels of the self-ensemble's sum and mean, bit-identical to ``iqlut_gpu.ensemble``.

``iqlut_gpu.ensemble.run`` adds each pass's output, transformed back, into a uint16 sum
and rounds the mean half to even (``integer_mean``), with array operations that every
backend shares. On the CPU those are a large part of an ensemble's cost: a transformed
back output is a transposed or reversed view, which NumPy adds element by element across
rows (no cache reuse), and the mean makes four full-size temporaries. Measured at x4 on a
1280x720 RGB output (2-core AMD EPYC): the sum and mean of a 2-pass ensemble took about
twice one pass of the model. Here the sum runs over 64x64 tiles (a transposed view's
reads stay in cache), parallel over tiles, and the mean is one fused pass; the results
are the same integers (``tests/test_ensemble.py`` checks every transform, n and shape).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_FLAGS = dict(parallel=True, cache=True, nogil=True, boundscheck=False)
TILE = 64  # output pixels per tile side


@njit(**_FLAGS)
def _add(acc, view):
    """acc[p, y, x] += view[p, y, x] (uint16 += uint8; view any strides), tile by tile."""
    P, H, W = acc.shape
    ty = (H + TILE - 1) // TILE
    tx = (W + TILE - 1) // TILE
    for t in prange(P * ty * tx):
        p = t // (ty * tx)
        y0 = (t % (ty * tx)) // tx * TILE
        x0 = (t % tx) * TILE
        for y in range(y0, min(H, y0 + TILE)):
            for x in range(x0, min(W, x0 + TILE)):
                acc[p, y, x] += view[p, y, x]


@njit(**_FLAGS)
def _mean(acc, shift, out):
    """out = acc / 2**shift rounded half to even (``ensemble.integer_mean``), by rows."""
    P, H, W = acc.shape
    mask = (1 << shift) - 1
    half = (mask + 1) >> 1
    for t in prange(P * H):
        p = t // H
        y = t % H
        for x in range(W):
            s = np.int32(acc[p, y, x])
            q = s >> shift
            rem = s & mask
            out[p, y, x] = q + ((rem > half) | ((rem == half) & ((q & 1) == 1)))


def add(acc, view: np.ndarray) -> np.ndarray:
    """``ensemble.run``'s ``add``: the uint16 sum so far (None before the first pass) plus
    the uint8 ``view`` (a pass's output transformed back)."""
    if acc is None:
        return view.astype(np.uint16)
    if view.ndim != 3:
        raise ValueError(f"ensemble sum needs [P, H, W] planes, got {view.shape}")
    _add(acc, view)
    return acc


def mean(acc: np.ndarray, n: int) -> np.ndarray:
    """``ensemble.run``'s ``mean``: ``ensemble.integer_mean(acc, n)`` for uint16 [P, H, W]."""
    if n == 1:
        return acc.astype(np.uint8)
    out = np.empty(acc.shape, np.uint8)
    _mean(np.ascontiguousarray(acc), np.int64(n.bit_length() - 1), out)
    return out
