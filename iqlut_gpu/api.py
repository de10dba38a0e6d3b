"""Public Python API: ``upscale`` (arrays in, arrays out) and ``upscale_frames`` (streams).

Both build one ``iqlut_gpu.upscaler.Upscaler`` (model, backend, mode, tiling and ensemble
resolved once) and run it; keep an ``Upscaler`` yourself to resolve once for many calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from .upscaler import Upscaler


def upscale(images, scale: int = 4, *, model=None, backend: str = "auto",
            mode: str = "auto", tile: int | None = None, ensemble: int | None = None,
            color: str = "rgb") -> np.ndarray:
    """Upscale uint8 images by ``scale`` with an IQ-LUT model.

    images: uint8 ``(H,W)``, ``(H,W,3)``, ``(H,W,4)`` or a batch ``(N,H,W,C)``; returns the
    same layout ``scale`` times larger. ``model``: a ``Model``, a path, or None for the
    shipped default of that scale. ``backend``: "auto", "cpu", "cuda" or "reference"
    (``IQLUT_BACKEND`` overrides "auto"). ``mode``: "interp" (two table reads per source
    pixel, small tables), "expanded" (tables expanded at load time, one read) or "auto"
    (the faster one for the backend: expanded on the CPU, interp on the GPU); all give
    identical results. ``tile``: images larger than this many pixels on a side are
    processed in tiles with halos, bit-identically, to bound memory (default 2048).
    ``ensemble``: average 1, 2, 4 or 8 rotated/flipped passes (``iqlut_gpu.ensemble``;
    that many times the work, a little better quality); None: the model's own.
    ``color``: "rgb" (every channel through the model) or "luma" (only the BT.601 luma of
    RGB(A) images; chroma and alpha by the fixed bicubic base: about a third of the work;
    ``iqlut_gpu.color``).
    """
    return Upscaler(scale, model=model, backend=backend, mode=mode, tile=tile,
                    ensemble=ensemble, color=color)(images)


def upscale_frames(frames: Iterable[np.ndarray], scale: int = 4, *, model=None,
                   backend: str = "auto", batch: int = 4, mode: str = "auto",
                   ensemble: int | None = None, color: str = "rgb",
                   stats: dict | None = None) -> Iterator[np.ndarray]:
    """Yield each frame of ``frames`` upscaled by ``scale``, in order.

    frames: any iterable of uint8 ``(H,W)`` or ``(H,W,C)`` arrays (C in 1, 3, 4); it is
    read lazily. Consecutive frames of the same shape are batched, up to ``batch`` per
    backend call; a change of shape starts a new batch. ``model``, ``backend``, ``mode``,
    ``ensemble`` and ``color`` are as for ``upscale``, and each output equals ``upscale(frame, ...)``
    bit for bit. ``stats``: an optional dict into which the seconds spent in "upload"
    (frames to planes, and to the device on a GPU), "kernels" and "download" are added.

    Raises TypeError/ValueError for a frame of the wrong type or shape (when it is reached).
    """
    return Upscaler(scale, model=model, backend=backend, mode=mode, ensemble=ensemble,
                    color=color).frames(frames, batch, stats)
