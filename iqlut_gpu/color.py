"""Luma mode: RGB <-> YCbCr in exact integer arithmetic, and what runs on each plane.

With ``color="luma"`` an RGB(A) image is converted to YCbCr, only the luma plane Y goes
through the model, and Cb, Cr (and alpha) are upscaled with the fixed bicubic base
(``bicubic_model``: the model family's own integer bicubic, so every backend gives the
same bytes); then back to RGB. That is a third of the model's work per RGB image, as
OpenCV's ``dnn_superres`` does. Gray images are one plane either way.

The conversion is BT.601 in full range (the JPEG/JFIF convention: Y, Cb, Cr all 0..255,
Cb = Cr = 128 for grays), in 16-bit fixed point with rounding half up (an arithmetic
shift of ``v + 2**15``), clamped to 0..255:

    Y  = ( 19595 R + 38470 G +  7471 B + 2**15) >> 16              (0.299, 0.587, 0.114)
    Cb = (-11058 R - 21710 G + 32768 B + 2**15) >> 16 + 128        (-0.168736, -0.331264, 0.5)
    Cr = ( 32768 R - 27439 G -  5329 B + 2**15) >> 16 + 128        (0.5, -0.418688, -0.081312)

    R = Y + ((91881 (Cr-128) + 2**15) >> 16)                        (1.402)
    G = Y + ((-22554 (Cb-128) - 46802 (Cr-128) + 2**15) >> 16)      (-0.344136, -0.714136)
    B = Y + ((116130 (Cb-128) + 2**15) >> 16)                       (1.772)

Each row of coefficients is the real one times 2**16, rounded, with the rows of Cb and Cr
adjusted to sum to exactly zero (so a gray stays at 128) and Y's to 2**16 (so a gray keeps
its value). An RGB -> YCbCr -> RGB round trip is within 1 code per channel on every one
of the 2**24 colours (tests/test_color.py measures it); grays come back exactly. The
functions take numpy or cupy arrays (``xp``).
"""

from __future__ import annotations

import functools

import numpy as np

COLORS = ("rgb", "luma")
_ONE = 1 << 16
_HALF = 1 << 15


def _shift(v, xp):
    """``(v + 2**15) >> 16`` on int32 arrays: round half up."""
    return (v + _HALF) >> 16


def rgb_to_ycbcr(r, g, b, xp=np):
    """uint8 planes R, G, B (any equal shapes) -> uint8 planes Y, Cb, Cr."""
    r, g, b = (p.astype(xp.int32) for p in (r, g, b))
    y = _shift(19595 * r + 38470 * g + 7471 * b, xp)
    cb = _shift(-11058 * r - 21710 * g + 32768 * b, xp) + 128
    cr = _shift(32768 * r - 27439 * g - 5329 * b, xp) + 128
    return tuple(xp.clip(p, 0, 255).astype(xp.uint8) for p in (y, cb, cr))


def ycbcr_to_rgb(y, cb, cr, xp=np):
    """uint8 planes Y, Cb, Cr -> uint8 planes R, G, B (clamped to 0..255)."""
    y = y.astype(xp.int32)
    cb = cb.astype(xp.int32) - 128
    cr = cr.astype(xp.int32) - 128
    r = y + _shift(91881 * cr, xp)
    g = y + _shift(-22554 * cb - 46802 * cr, xp)
    b = y + _shift(116130 * cb, xp)
    return tuple(xp.clip(p, 0, 255).astype(xp.uint8) for p in (r, g, b))


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
    (luma ``[N, H, W]``, the rest ``[N*(C-1), H, W]``: Cb, Cr and alpha per frame)."""
    P, H, W = planes.shape
    frames = planes.reshape(P // channels, channels, H, W)
    y, cb, cr = rgb_to_ycbcr(frames[:, 0], frames[:, 1], frames[:, 2], xp)
    rest = xp.stack([cb, cr, *(frames[:, c] for c in range(3, channels))], axis=1)
    return xp.ascontiguousarray(y), xp.ascontiguousarray(rest.reshape(-1, H, W))


def join_planes(y, rest, channels: int, xp=np):
    """Inverse of ``split_planes`` for upscaled planes: -> RGB(A) planes ``[N*C, h, w]``."""
    N, h, w = y.shape
    rest = rest.reshape(N, channels - 1, h, w)
    r, g, b = ycbcr_to_rgb(y, rest[:, 0], rest[:, 1], xp)
    out = xp.stack([r, g, b, *(rest[:, c] for c in range(2, channels - 1))], axis=1)
    return out.reshape(N * channels, h, w)
