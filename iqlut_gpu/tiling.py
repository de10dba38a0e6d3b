"""Tiles with halos: bounded memory for large images, bit-identical to untiled runs.

An output pixel of the model depends only on input pixels within ``halo`` =
sum of the layers' window radii + 2 (the reach of the bicubic base) of it, and every layer
clamps coordinates at the image edge. So a tile cut with ``halo`` extra input pixels on
each side (fewer where the image ends, exactly where the untiled run clamps too) gives the
exact untiled values in its centre. Memory then grows with the tile, not the image:

    peak ~ input planes + output planes + P * (tile + 2*halo)**2 * (2 * max_channels + r*r)

bytes for P planes (the per-tile terms are the layer buffers of one tile).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np


def spans(n: int, tile: int, halo: int) -> Iterator[tuple[int, int, int, int]]:
    """Cut ``0..n`` into tiles: yields (core_start, core_stop, read_start, read_stop)."""
    for start in range(0, n, tile):
        stop = min(start + tile, n)
        yield start, stop, max(0, start - halo), min(n, stop + halo)


def run_tiled(run: Callable[[np.ndarray], np.ndarray], planes: np.ndarray, scale: int,
              tile: int, halo: int) -> np.ndarray:
    """``run`` (uint8 [P, h, w] -> [P, h*r, w*r]) applied tile by tile to ``planes``."""
    P, H, W = planes.shape
    r = scale
    out = np.empty((P, H * r, W * r), np.uint8)
    for y0, y1, ry0, ry1 in spans(H, tile, halo):
        for x0, x1, rx0, rx1 in spans(W, tile, halo):
            piece = np.asarray(run(np.ascontiguousarray(planes[:, ry0:ry1, rx0:rx1])))
            oy, ox = (y0 - ry0) * r, (x0 - rx0) * r
            out[:, y0 * r:y1 * r, x0 * r:x1 * r] = piece[:, oy:oy + (y1 - y0) * r, ox:ox + (x1 - x0) * r]
    return out
