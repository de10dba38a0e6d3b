"""Luma mode: the luma's detail from the model, added to every channel's bicubic base.

With ``color="luma"`` only the luma of an RGB(A) image goes through the model, as
OpenCV's ``dnn_superres`` does: a third of the model's work per RGB image. Gray images
are one plane either way. In exact integer arithmetic (``docs/design.md``, "Luma mode"):

    Y = (19595 R + 38470 G + 7471 B + 2**15) >> 16       BT.601 full range, rounded half up

Y goes through the model (``Y'``) and through the model family's fixed bicubic base alone
(``bicubic_model``: ``Yb``), as do R, G, B and alpha (``Rb``, ``Gb``, ``Bb``, ``Ab``), so
every backend computes them with the kernels it already has (bit-identical). The model's
detail on the luma, ``Y' - Yb``, is then added to each colour channel's base:

    R = clamp(Rb + Y' - Yb),  G = clamp(Gb + Y' - Yb),  B = clamp(Bb + Y' - Yb),  A = Ab

Adding the same detail to R, G and B changes the luma by exactly that detail (the
coefficients sum to 2**16) and leaves the chroma of the bicubic upscale; a gray pixel
(R = G = B = Y) gets exactly what the model gives its gray plane. Against converting to
YCbCr, upscaling Cb and Cr bicubically and converting back, this needs no inverse
conversion and loses no precision in the colour round trip (the chroma is never rounded
to 8 bits): 0.09-0.17 dB of Y-PSNR better on the validation split (``bench/README.md``).
The functions take numpy or cupy arrays (``xp``).
"""

from __future__ import annotations

import functools

import numpy as np

COLORS = ("rgb", "luma")
_HALF = 1 << 15


def luma(r, g, b, xp=np):
    """uint8 planes R, G, B (any equal shapes) -> the uint8 plane Y (full-range BT.601)."""
    r, g, b = (p.astype(xp.int32) for p in (r, g, b))
    return ((19595 * r + 38470 * g + 7471 * b + _HALF) >> 16).astype(xp.uint8)


def check(color: str) -> str:
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLORS}, got {color!r}")
    return color


@functools.lru_cache(maxsize=None)
def bicubic_model(scale: int):
    """The fixed integer bicubic upsample alone, as a model: one k = 1 layer with zero
    tables, so its output is exactly the base every IQ-LUT model adds its detail to, and
    every backend computes it with the kernels it already has (bit-identical)."""
    from .model import zero_model

    arch = (dict(c_in=1, c_out=None, k=1, L=2, residual=False),)
    return zero_model(scale, arch=arch, upsample="bicubic", shift=0)


def split_planes(planes, channels: int, xp=np):
    """Planes of N frames with 3 or 4 channels ``[N*C, H, W]`` (``planes.to_planes``) ->
    (luma ``[N, H, W]`` for the model, ``[N*(C+1), H, W]`` for the bicubic base: per frame
    Y, then the frame's own channels)."""
    P, H, W = planes.shape
    frames = planes.reshape(P // channels, channels, H, W)
    y = luma(frames[:, 0], frames[:, 1], frames[:, 2], xp)
    base = xp.concatenate([y[:, None], frames], axis=1)
    return xp.ascontiguousarray(y), xp.ascontiguousarray(base.reshape(-1, H, W))


def join_planes(y, base, channels: int, xp=np):
    """Upscaled planes of ``split_planes``' two parts (the model's ``Y'`` ``[N, h, w]``,
    the bicubic base ``[N*(C+1), h, w]``) -> RGB(A) planes ``[N*C, h, w]``: each colour
    channel's base plus ``Y' - Yb``, clamped; alpha its base."""
    N, h, w = y.shape
    base = base.reshape(N, channels + 1, h, w)
    detail = y[:, None].astype(xp.int16) - base[:, :1]
    rgb = xp.clip(base[:, 1:4] + detail, 0, 255).astype(xp.uint8)
    out = xp.concatenate([rgb, base[:, 4:]], axis=1)
    return out.reshape(N * channels, h, w)
