"""Public Python API: ``upscale`` (arrays in, arrays out)."""

from __future__ import annotations

import numpy as np

from . import backends
from .model import SCALES, Model, default_model, load_model
from .tiling import run_tiled

MODES = backends.MODES
DEFAULT_TILE = 1024  # input pixels per tile side; larger images are processed in tiles
MIN_TILE = 32


def _as_model(model, scale: int) -> Model:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if model is None:
        return default_model(scale)
    if not isinstance(model, Model):
        model = load_model(model)
    if model.scale != scale:
        raise ValueError(f"the model is for x{model.scale}, but scale={scale} was asked for")
    return model


def to_planes(images: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Validate an image array and view it as uint8 planes [P, H, W].

    Accepts (H, W), (H, W, C) and (N, H, W, C) with C in 1, 3, 4. Returns the planes
    (a contiguous copy) and the layout needed by ``from_planes``.
    """
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 2:
        batch = images[None, :, :, None]
    elif images.ndim == 3:
        batch = images[None]
    elif images.ndim == 4:
        batch = images
    else:
        raise ValueError(f"images must be (H,W), (H,W,C) or (N,H,W,C), got shape {images.shape}")
    N, H, W, C = batch.shape
    if C not in (1, 3, 4):
        raise ValueError(f"images must have 1, 3 or 4 channels, got shape {images.shape}")
    if N == 0 or H == 0 or W == 0:
        raise ValueError(f"images must not be empty, got shape {images.shape}")
    planes = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).reshape(N * C, H, W)
    return planes, (images.ndim, N, C)


def from_planes(planes: np.ndarray, layout: tuple) -> np.ndarray:
    """Inverse of ``to_planes`` for the upscaled planes."""
    ndim, N, C = layout
    _, H, W = planes.shape
    out = np.ascontiguousarray(planes.reshape(N, C, H, W).transpose(0, 2, 3, 1))
    if ndim == 2:
        return out[0, :, :, 0]
    if ndim == 3:
        return out[0]
    return out


def run_planes_bounded(name: str, model: Model, planes: np.ndarray, mode: str = "auto",
                       tile: int | None = None) -> np.ndarray:
    """``backends.run_planes`` with bounded memory: planes larger than ``tile`` pixels on a
    side are processed in tiles with halos (bit-identical, see ``iqlut_gpu.tiling``); if a
    device runs out of memory the tile is halved and the work retried.
    """
    tile = DEFAULT_TILE if tile is None else int(tile)
    if tile < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    _, H, W = planes.shape
    while True:
        try:
            if H <= tile and W <= tile:
                return np.asarray(backends.run_planes(name, model, planes, mode))
            return run_tiled(lambda p: backends.run_planes(name, model, p, mode), planes,
                             model.scale, tile, model.receptive_radius)
        except backends.DeviceOutOfMemory:
            if tile <= MIN_TILE:
                raise
            tile = max(MIN_TILE, min(tile, max(H, W)) // 2)


def _upscale_on_device(images, model: Model, name: str, mode: str):
    """Device arrays stay on the device (CUDA backend; kept in this one helper).

    A CuPy array, or any object whose ``__dlpack_device__`` is a CUDA device (e.g. a torch
    CUDA tensor, taken without a copy), is upscaled on its device and returned as a CuPy
    array of the same layout. Returns None for anything else (the host path).
    """
    from .kernels import cuda_backend  # imports no CuPy until a device array is seen

    if not cuda_backend.is_device_array(images):
        return None
    if name != "cuda":
        raise backends.BackendUnavailable(
            f"images are on a CUDA device but backend {name!r} was chosen; use 'cuda' or 'auto'")
    return cuda_backend.upscale_device(images, backends.prepare(model),
                                       backends.concrete_mode(name, mode))


def upscale(images, scale: int = 4, *, model=None, backend: str = "auto",
            mode: str = "auto", tile: int | None = None, ensemble: int | None = None) -> np.ndarray:
    """Upscale uint8 images by ``scale`` with an IQ-LUT model.

    images: uint8 ``(H,W)``, ``(H,W,3)``, ``(H,W,4)`` or a batch ``(N,H,W,C)``; returns the
    same layout ``scale`` times larger. ``model``: a ``Model``, a path, or None for the
    shipped default of that scale. ``backend``: "auto", "cpu", "cuda" or "reference"
    (``IQLUT_BACKEND`` overrides "auto"). ``mode``: "interp" (two table reads per source
    pixel, small tables), "expanded" (tables expanded at load time, one read) or "auto"
    (the faster one for the backend: expanded on the CPU, interp on the GPU); all give
    identical results. ``tile``: images larger than this many pixels on a side are
    processed in tiles with halos, bit-identically, to bound memory (default 1024).
    ``ensemble``: average 1, 2, 4 or 8 rotated/flipped passes (``iqlut_gpu.ensemble``;
    that many times the work, a little better quality); None: the model's own (1 for the
    shipped models).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    model = _as_model(model, scale).with_ensemble(ensemble)
    name = backends.resolve(backend)
    on_device = _upscale_on_device(images, model, name, mode)
    if on_device is not None:
        return on_device
    planes, layout = to_planes(images)
    return from_planes(run_planes_bounded(name, model, planes, mode, tile), layout)
