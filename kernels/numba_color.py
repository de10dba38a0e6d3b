"""Numba kernels of luma mode's colour conversion, bit-identical to ``iqlut_gpu.color``,
and the parallel interleave of planes into frames that ``iqlut_gpu.planes.from_planes``
uses for large host outputs.

``split_planes`` / ``join_planes`` take and return the same arrays as their NumPy twins in
``iqlut_gpu.color`` (which hold the formulas and are the reference); here each is one
fused pass over the pixels, parallel over pixels (split, on the LR side) or rows of a
frame (join, on the HR side): disjoint outputs, instead of NumPy's dozen full-size temporaries. On the HR side
(``join_planes``) that is the difference between a conversion that costs a sizeable part of
the model's time and one that does not (``bench`` measures luma mode end to end).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_FLAGS = dict(parallel=True, cache=True, nogil=True, boundscheck=False)


@njit(inline="always")
def _clamp(v):
    return 0 if v < 0 else (255 if v > 255 else v)


@njit(**_FLAGS)
def _split(frames, y, rest):
    """frames uint8 [N, C, P] (P pixels) -> y [N, P], rest [N, C-1, P]; parallel over pixels
    (the LR side: few pixels, so no per-row jobs)."""
    for n in range(frames.shape[0]):
        for i in prange(frames.shape[2]):
            r, g, b = np.int32(frames[n, 0, i]), np.int32(frames[n, 1, i]), np.int32(frames[n, 2, i])
            y[n, i] = _clamp((19595 * r + 38470 * g + 7471 * b + 32768) >> 16)
            rest[n, 0, i] = _clamp(((-11058 * r - 21710 * g + 32768 * b + 32768) >> 16) + 128)
            rest[n, 1, i] = _clamp(((32768 * r - 27439 * g - 5329 * b + 32768) >> 16) + 128)
            for c in range(3, frames.shape[1]):
                rest[n, c - 1, i] = frames[n, c, i]


@njit(**_FLAGS)
def _join(y, rest, out):
    N, C, H, W = out.shape
    for job in prange(N * H):
        n, row = job // H, job % H
        for x in range(W):
            v = np.int32(y[n, row, x])
            cb = np.int32(rest[n, 0, row, x]) - 128
            cr = np.int32(rest[n, 1, row, x]) - 128
            out[n, 0, row, x] = _clamp(v + ((91881 * cr + 32768) >> 16))
            out[n, 1, row, x] = _clamp(v + ((-22554 * cb - 46802 * cr + 32768) >> 16))
            out[n, 2, row, x] = _clamp(v + ((116130 * cb + 32768) >> 16))
            for c in range(3, C):
                out[n, c, row, x] = rest[n, c - 1, row, x]


def split_planes(planes: np.ndarray, channels: int, xp=np):
    """``iqlut_gpu.color.split_planes`` for numpy planes."""
    P, H, W = planes.shape
    frames = np.ascontiguousarray(planes).reshape(P // channels, channels, H * W)
    y = np.empty((P // channels, H * W), np.uint8)
    rest = np.empty((P // channels, channels - 1, H * W), np.uint8)
    _split(frames, y, rest)
    return y.reshape(-1, H, W), rest.reshape(-1, H, W)


def join_planes(y: np.ndarray, rest: np.ndarray, channels: int, xp=np):
    """``iqlut_gpu.color.join_planes`` for numpy planes."""
    N, h, w = y.shape
    out = np.empty((N, channels, h, w), np.uint8)
    _join(np.ascontiguousarray(y), np.ascontiguousarray(rest).reshape(N, channels - 1, h, w), out)
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
