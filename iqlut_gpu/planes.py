"""Images <-> planes: the one conversion between what users hold and what backends run.

Backends work on uint8 planes ``[P, H, W]``: every colour (and alpha) channel of every
frame is an independent plane (docs/design.md, "Planes and codes"). Users hold images
``(H, W)``, ``(H, W, C)`` or batches ``(N, H, W, C)`` with C in 1, 3, 4. ``to_planes``
validates an image array and lays it out as planes; ``from_planes`` puts upscaled planes
back into the caller's layout. Both work on any array module with NumPy's indexing
(``xp``: numpy, or cupy for images that live on a GPU).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

CHANNELS = (1, 3, 4)


class Layout(NamedTuple):
    """How planes map back to images: the caller's ``ndim`` (2, 3 or 4), frames, channels."""

    ndim: int
    frames: int
    channels: int


def check_images(images, what: str = "images") -> None:
    """Raise TypeError/ValueError unless ``images`` is uint8 (H,W), (H,W,C) or (N,H,W,C),
    C in 1, 3, 4, and not empty. ``images`` may be a numpy or a cupy array."""
    if images.dtype != np.uint8:
        raise TypeError(f"{what} must be uint8, got {images.dtype}")
    shape = tuple(int(s) for s in images.shape)
    if images.ndim not in (2, 3, 4):
        raise ValueError(f"{what} must be (H,W), (H,W,C) or (N,H,W,C), got shape {shape}")
    if images.ndim >= 3 and shape[-1] not in CHANNELS:
        raise ValueError(f"{what} must have 1, 3 or 4 channels, got shape {shape}")
    if 0 in shape:
        raise ValueError(f"{what} must not be empty, got shape {shape}")


def to_planes(images, xp=np):
    """A validated image array as contiguous uint8 planes ``[N*C, H, W]`` (a copy), and the
    ``Layout`` that ``from_planes`` needs. ``xp``: the array module of ``images``."""
    if xp is np and not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
    check_images(images)
    if images.ndim == 2:
        batch = images[None, :, :, None]
    elif images.ndim == 3:
        batch = images[None]
    else:
        batch = images
    N, H, W, C = (int(s) for s in batch.shape)
    planes = xp.ascontiguousarray(batch.transpose(0, 3, 1, 2)).reshape(N * C, H, W)
    return planes, Layout(images.ndim, N, C)


# From this many bytes of host planes on, with more than one channel, ``from_planes``
# uses the ``interleave`` kernel it is given (the Upscaler passes Numba's where Numba runs):
# NumPy's transposed copy is single-threaded with strided stores (a 7680x4320 RGB output:
# about 200 ms, against 35 ms for the Numba kernel on two cores).
PARALLEL_BYTES = 1 << 20


def from_planes(planes, layout: Layout, xp=np, interleave=None):
    """Inverse of ``to_planes`` for (upscaled) planes ``[N*C, h, w]``: a new contiguous
    array in the layout the images came in. ``interleave(planes, N, C)``: an optional
    parallel kernel for large numpy planes (``kernels.numba_color.interleave``)."""
    ndim, N, C = layout
    _, H, W = planes.shape
    if interleave is not None and xp is np and C > 1 and planes.nbytes >= PARALLEL_BYTES:
        out = interleave(planes, N, C)
    else:
        out = xp.ascontiguousarray(planes.reshape(N, C, H, W).transpose(0, 2, 3, 1))
    if ndim == 2:
        return out[0, :, :, 0]
    if ndim == 3:
        return out[0]
    return out
