"""Numba kernels of luma mode, bit-identical to ``iqlut_gpu.color``, and the parallel
interleave of planes into frames that ``iqlut_gpu.planes.from_planes`` uses for large host
outputs.

``split_planes`` / ``join_planes`` take and return the same arrays as their NumPy twins in
``iqlut_gpu.color`` (which hold the formulas and are the reference); here each is one
fused pass over the pixels, parallel over pixels (split, on the LR side) or rows of a
frame (join, on the HR side): disjoint outputs, instead of NumPy's full-size temporaries.
On the HR side (``join_planes``) that is the difference between a step that costs a
sizeable part of the model's time and one that does not (``bench`` measures luma mode
end to end).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_FLAGS = dict(parallel=True, cache=True, nogil=True, boundscheck=False)


@njit(inline="always")
def _clamp(v):
    return 0 if v < 0 else (255 if v > 255 else v)


@njit(**_FLAGS)
def _split(frames, y, base):
    """frames uint8 [N, C, P] (P pixels) -> y [N, P], base [N, C+1, P] (Y, then the
    frame's channels); parallel over pixels (the LR side: few pixels, so no row jobs)."""
    for n in range(frames.shape[0]):
        for i in prange(frames.shape[2]):
            r, g, b = np.int32(frames[n, 0, i]), np.int32(frames[n, 1, i]), np.int32(frames[n, 2, i])
            v = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16
            y[n, i] = v
            base[n, 0, i] = v
            for c in range(frames.shape[1]):
                base[n, c + 1, i] = frames[n, c, i]


@njit(**_FLAGS)
def _join(y, base, out):
    """out[n, c] = clamp(base[n, c+1] + y[n] - base[n, 0]) for R, G, B; alpha its base."""
    N, C, H, W = out.shape
    for job in prange(N * H):
        n, row = job // H, job % H
        for x in range(W):
            d = np.int32(y[n, row, x]) - np.int32(base[n, 0, row, x])
            for c in range(3):
                out[n, c, row, x] = _clamp(np.int32(base[n, c + 1, row, x]) + d)
            for c in range(3, C):
                out[n, c, row, x] = base[n, c + 1, row, x]


def split_planes(planes: np.ndarray, channels: int, xp=np):
    """``iqlut_gpu.color.split_planes`` for numpy planes."""
    P, H, W = planes.shape
    frames = np.ascontiguousarray(planes).reshape(P // channels, channels, H * W)
    y = np.empty((P // channels, H * W), np.uint8)
    base = np.empty((P // channels, channels + 1, H * W), np.uint8)
    _split(frames, y, base)
    return y.reshape(-1, H, W), base.reshape(-1, H, W)


def join_planes(y: np.ndarray, base: np.ndarray, channels: int, xp=np):
    """``iqlut_gpu.color.join_planes`` for numpy planes."""
    N, h, w = y.shape
    out = np.empty((N, channels, h, w), np.uint8)
    _join(np.ascontiguousarray(y), np.ascontiguousarray(base).reshape(N, channels + 1, h, w), out)
    return out.reshape(N * channels, h, w)


@njit(**_FLAGS)
def _interleave(planes, out):
    """planes uint8 [N, C, H, W] -> out [N, H, W, C]; parallel over rows of a frame."""
    N, C, H, W = planes.shape
    for job in prange(N * H):
        n, row = job // H, job % H
        if C == 3:  # the common case, unrolled
            p0, p1, p2, o = planes[n, 0, row], planes[n, 1, row], planes[n, 2, row], out[n, row]
            for x in range(W):
                o[x, 0] = p0[x]
                o[x, 1] = p1[x]
                o[x, 2] = p2[x]
        else:
            for x in range(W):
                for c in range(C):
                    out[n, row, x, c] = planes[n, c, row, x]


def interleave(planes: np.ndarray, frames: int, channels: int) -> np.ndarray:
    """uint8 planes ``[frames*channels, H, W]`` -> frames ``[frames, H, W, channels]`` (the
    transposed copy of ``iqlut_gpu.planes.from_planes``, in parallel)."""
    P, H, W = planes.shape
    out = np.empty((frames, H, W, channels), np.uint8)
    _interleave(np.ascontiguousarray(planes).reshape(frames, channels, H, W), out)
    return out
