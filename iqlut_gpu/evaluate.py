"""The SR community's evaluation protocol, in NumPy only (docs/design.md, "Evaluation
protocol"; docs/evaluation.md for ``iqlut eval``).

- ``imresize``: MATLAB-compatible bicubic resize (cubic kernel a = -0.5, antialiased when
  shrinking, symmetric padding, output size ``ceil(size * s)``; both passes in float64,
  uint8 input rounded (half to even) and clipped once at the end). Matches the verified
  MATLAB vectors in ``tests/data/imresize_matlab_bicubic.npz`` exactly, exact .5 ties
  included (``tests/test_imresize.py``).
- ``modcrop``: crop HR at the bottom and right to a multiple of the scale (MATLAB's
  ``modcrop``: ``img(1:h - mod(h, r), 1:w - mod(w, r), :)``).
- ``degrade``: the protocol's pair, (modcropped HR, MATLAB-bicubic LR).
- ``rgb_to_y``: BT.601 luma ``16 + (65.481 R + 128.553 G + 24.966 B) / 255`` (float; a
  gray image is its own luma; alpha is ignored).
- ``psnr`` and ``ssim`` (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid filtering);
  ``y_metrics``: both on Y with an ``r``-pixel border shaved.
- ``bicubic_upscale``: the bicubic row of every table (MATLAB imresize up by ``r``).

The loop over images and methods is ``iqlut_gpu.cli.eval_cmd.evaluate``; data set folders
are found by ``iqlut_gpu.datasets``.
"""

from __future__ import annotations

import math

import numpy as np

# ----------------------------------------------------------------------------- imresize


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel with a = -0.5."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _contributions(in_len: int, out_len: int, scale: float):
    """Per output sample: input indices (0-based, symmetric-padded) and weights, both [out, P]."""
    antialias = scale < 1
    width = 4.0 / scale if antialias else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate of each output sample
    left = np.floor(u - width / 2)
    P = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(P)[None, :]  # 1-based
    dist = u[:, None] - idx
    w = scale * _cubic(scale * dist) if antialias else _cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx0 = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(w != 0, axis=0)
    return idx0[:, keep], w[:, keep]


def _resize_axis(img: np.ndarray, axis: int, scale: float, out_len: int) -> np.ndarray:
    idx, w = _contributions(img.shape[axis], out_len, scale)
    moved = np.moveaxis(img.astype(np.float64), axis, 0)  # [in, ...]
    gathered = moved[idx]  # [out, P, ...]
    wshape = w.shape + (1,) * (moved.ndim - 1)
    out = (gathered * w.reshape(wshape)).sum(axis=1)
    return np.moveaxis(out, 0, axis)


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` for a 2-D or HxWxC array.

    uint8 input gives uint8 output (rounded half to even and clipped after both passes);
    float input stays float64 (no rounding).
    """
    img = np.asarray(img)
    out = img.astype(np.float64)
    for axis in (0, 1):  # equal scales: rows first (the order does not change the result)
        out_len = int(math.ceil(img.shape[axis] * scale))
        out = _resize_axis(out, axis, scale, out_len)
    if img.dtype == np.uint8:
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- metrics


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom rows and right columns so that both sides are multiples of ``scale``."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma (16..235) as float64; a 2-D (gray) image is returned as float unchanged."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 2:
        return img
    if img.shape[2] == 4:
        img = img[..., :3]
    if img.shape[2] == 1:
        return img[..., 0]
    return 16.0 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0


def shave(img: np.ndarray, border: int) -> np.ndarray:
    if border <= 0:
        return img
    return img[border:-border, border:-border]


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering with the symmetric 1-D window ``g``."""
    n = len(g)
    h, w = img.shape
    rows = sum(g[i] * img[i:h - n + 1 + i, :] for i in range(n))
    return sum(g[j] * rows[:, j:w - n + 1 + j] for j in range(n))


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004): Gaussian window 11, sigma 1.5, valid region."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if min(a.shape) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after shaving, got {a.shape}")
    g = _gaussian_window()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    saa = _filter_valid(a * a, g) - mu_a * mu_a
    sbb = _filter_valid(b * b, g) - mu_b * mu_b
    sab = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (saa + sbb + c2)
    return float(np.mean(num / den))


def y_shaved(img: np.ndarray, scale: int) -> np.ndarray:
    """What the metrics compare: the luma with an r-pixel border shaved."""
    return shave(rgb_to_y(img), scale)


def y_metrics(sr: np.ndarray, hr: np.ndarray, scale: int,
              hr_y: np.ndarray | None = None) -> tuple[float, float]:
    """(Y-PSNR, Y-SSIM) of an upscaled image against the (modcropped) HR, r-pixel shave.
    ``hr_y``: ``y_shaved(hr, scale)`` if the caller already has it (several methods, one HR)."""
    if sr.shape != hr.shape:
        raise ValueError(f"shape mismatch: {sr.shape} vs {hr.shape}")
    ys = y_shaved(sr, scale)
    yh = y_shaved(hr, scale) if hr_y is None else hr_y
    return psnr(ys, yh), ssim(ys, yh)


def degrade(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's pair: (modcropped HR, MATLAB-bicubic LR), both uint8."""
    hr = modcrop(np.asarray(hr, np.uint8), scale)
    return hr, imresize(hr, 1.0 / scale)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic row of the table: MATLAB imresize up by ``scale`` (uint8)."""
    return imresize(np.asarray(lr, np.uint8), float(scale))
