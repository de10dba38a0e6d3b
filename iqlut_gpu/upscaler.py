"""The one upscaling pipeline: ``Upscaler`` resolves what to run once, then runs it.

Every path that upscales goes through an ``Upscaler``: ``iqlut_gpu.upscale`` and
``upscale_frames``, the video pipeline, ``iqlut upscale``/``video``/``eval``, the trainer's
export check and the bench. Construction resolves, once:

- the model (a ``Model``, a file, or the shipped default for the scale) and the
  self-ensemble it runs with (``iqlut_gpu.ensemble``);
- the backend (``iqlut_gpu.backends.resolve``: "auto" honours ``IQLUT_BACKEND``, probes
  are cached) and the concrete table mode ("auto": expanded on the CPU, interp on a GPU);
- the tile size that bounds memory (``iqlut_gpu.tiling``);
- the colour mode: "rgb" runs every channel through the model, "luma" only the luma of
  RGB(A) images (``iqlut_gpu.color``: its detail is added to each channel's bicubic base).

Then an image takes one straight path::

    Upscaler.__call__(images)
      -> planes.to_planes            uint8 images -> planes [P, H, W]
      -> Upscaler.run_layout         luma mode: Y's detail on each channel's bicubic
      -> Upscaler.run_planes         tiles with halos; a device out of memory: smaller tiles
      -> backends.run_planes         the backend's whole-model run (kernels/...)
      -> planes.from_planes          planes -> the caller's layout

Images already on a CUDA device (CuPy arrays, torch CUDA tensors via DLPack) stay there
(``kernels/cuda_backend.upscale_device``). Streams of frames are batched by
``iqlut_gpu.frames`` (``Upscaler.frames``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from . import backends
from . import color as color_mod
from .model import SCALES, Model, default_model, load_model
from .planes import Layout, from_planes, to_planes
from .tiling import run_tiled

# Input pixels per tile side; larger images are processed in tiles. 2048 runs 1080p and 2K
# inputs whole: at 1024 a 1080p x4 took 1.1-1.28x as long and 1.3x the peak memory
# (the tiles' outputs beside the stitched one; bench/README.md, "End to end").
DEFAULT_TILE = 2048
MIN_TILE = 32
DEFAULT_SCALE = 4


def resolve_model(model=None, scale: int | None = None) -> Model:
    """``model`` as a ``Model``: a ``Model``, a model file, or None for the shipped default of
    ``scale`` (4 if None). A ``scale`` that contradicts the model's is a ValueError."""
    if scale is not None and scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if model is None:
        return default_model(DEFAULT_SCALE if scale is None else scale)
    if not isinstance(model, Model):
        model = load_model(model)
    if scale is not None and model.scale != scale:
        raise ValueError(f"the model is for x{model.scale}, but scale={scale} was asked for")
    return model


def _color_kernels():
    """The colour conversion for host planes: the Numba kernels where Numba runs, else the
    NumPy reference (bit-identical)."""
    if backends.probe("cpu") is None:
        from .kernels import numba_color

        return numba_color
    return color_mod


def _check_tile(tile) -> int:
    tile = DEFAULT_TILE if tile is None else int(tile)
    if tile < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    return tile


def check_choices(*, backend: str = "auto", mode: str = "auto", color: str = "rgb",
                  tile: int | None = None) -> None:
    """The ValueError that ``Upscaler`` raises for a backend name, table mode, colour mode
    or tile size that is not one of the choices, without resolving anything (no probe, no
    model): the cluster's driver checks a job with it before the workers build theirs."""
    backends.check_backend(backend)
    backends.check_mode(mode)
    color_mod.check(color)
    _check_tile(tile)


class Upscaler:
    """Model, backend, table mode, ensemble and tiling, resolved once (see the module doc).

    ``scale``: 2, 3 or 4, or None for the model's (4 for the shipped default). ``model``: a
    ``Model``, a path or None (the shipped default). ``backend``: "auto", "cpu", "cuda" or
    "reference". ``mode``: "auto", "interp" or "expanded" (same results). ``tile``: input
    pixels per tile side (default 2048). ``ensemble``: 1, 2, 4 or 8 passes, or None for the
    model's own. ``color``: "rgb" (every channel through the model) or "luma" (only the
    luma of RGB(A) images; ``iqlut_gpu.color``). Raises ValueError/ModelError for a bad
    choice and BackendUnavailable for a backend that cannot run here.
    """

    def __init__(self, scale: int | None = None, *, model=None, backend: str = "auto",
                 mode: str = "auto", tile: int | None = None, ensemble: int | None = None,
                 color: str = "rgb"):
        check_choices(backend=backend, mode=mode, color=color, tile=tile)
        self.color = color
        self.model = resolve_model(model, scale).with_ensemble(ensemble)
        self.backend = backends.resolve(backend)
        self.mode = backends.concrete_mode(self.backend, mode)
        self.tile = _check_tile(tile)
        self.bicubic = None  # luma mode: the fixed bicubic base (iqlut_gpu.color), same backend
        if self.color == "luma":
            self.bicubic = Upscaler(model=color_mod.bicubic_model(self.scale),
                                    backend=self.backend, mode=self.mode, tile=self.tile)

    @property
    def scale(self) -> int:
        return self.model.scale

    def __repr__(self) -> str:
        return (f"Upscaler(x{self.scale}, backend={self.backend!r}, mode={self.mode!r}, "
                f"ensemble={self.model.ensemble}, tile={self.tile}, color={self.color!r})")

    def run_planes(self, planes: np.ndarray) -> np.ndarray:
        """uint8 planes [P, H, W] -> [P, H*r, W*r] (numpy) with bounded memory: planes
        larger than the tile on a side run in tiles with halos (bit-identical, see
        ``iqlut_gpu.tiling``); a device out of memory halves the tile and retries."""
        tile = self.tile
        _, H, W = planes.shape
        model = self.model

        def run(p):
            return backends.run_planes(self.backend, model, p, self.mode)

        while True:
            try:
                if H <= tile and W <= tile:
                    return np.asarray(run(planes))
                return run_tiled(run, planes, model.scale, tile, model.receptive_radius)
            except backends.DeviceOutOfMemory:
                if tile <= MIN_TILE:
                    raise
                tile = max(MIN_TILE, min(tile, max(H, W)) // 2)

    def __call__(self, images):
        """Upscale uint8 images ``(H,W)``, ``(H,W,C)`` or ``(N,H,W,C)`` (C in 1, 3, 4); the
        result has the same layout, ``scale`` times larger. A CuPy array or CUDA DLPack
        object is upscaled on its device and returned as a CuPy array."""
        from .kernels import cuda_backend  # imports no CuPy until a device array is seen

        if cuda_backend.is_device_array(images):
            if self.backend != "cuda":
                raise backends.BackendUnavailable(
                    f"images are on a CUDA device but backend {self.backend!r} was chosen; "
                    "use 'cuda' or 'auto'")
            if self.color != "rgb":
                raise ValueError("luma mode takes host (numpy) images; device arrays run "
                                 "color='rgb'")
            return cuda_backend.upscale_device(images, backends.prepare(self.model), self.mode)
        planes, layout = to_planes(images)
        return from_planes(self.run_layout(planes, layout), layout, interleave=backends.host_interleave())

    def run_layout(self, planes: np.ndarray, layout: Layout) -> np.ndarray:
        """``run_planes`` for the planes of images in ``layout`` (``planes.to_planes``): in
        luma mode the luma Y of RGB(A) frames goes through the model, Y and every channel
        through the bicubic base, and the luma's detail is added to each colour channel's
        base (``iqlut_gpu.color``)."""
        if self.bicubic is None or layout.channels not in (3, 4):
            return self.run_planes(planes)
        conv = _color_kernels()
        y, base = conv.split_planes(planes, layout.channels)
        return conv.join_planes(self.run_planes(y), self.bicubic.run_planes(base),
                                layout.channels)

    def frames(self, frames: Iterable[np.ndarray], batch: int | None = None,
               stats: dict | None = None, max_pixels: int | None = None) -> Iterator[np.ndarray]:
        """Each frame of ``frames`` upscaled, in order, up to ``batch`` frames (and
        ``max_pixels`` input pixels) per backend call (``iqlut_gpu.frames.upscale_stream``:
        lazy, bounded read-ahead, bit-identical to calling this upscaler on each frame)."""
        from . import frames as frames_mod

        return frames_mod.upscale_stream(self, frames, batch, stats, max_pixels)
