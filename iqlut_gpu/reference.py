"""The NumPy reference of IQ-LUT inference: slow, readable, and the oracle.

Every backend (Numba in ``kernels/numba_cpu.py``, CUDA in ``kernels/cuda/iqlut.cu``)
is tested bit for bit against the functions here. All arithmetic is integer.

One layer (an IQ-Block), for input codes ``X[c, y, x]`` (uint8):

1. Interpolated non-uniform lookup. For code ``x`` and a channel's knots ``s`` (L of
   them), ``i`` is the largest index with ``s[i] <= x``, capped at ``L - 2``, and
   ``w = ((x - s[i]) * 256 + (s[i+1] - s[i]) // 2) // (s[i+1] - s[i])`` (0..256).
   The window painted by that code is
   ``v(x) = table[c, i] * (256 - w) + table[c, i+1] * w`` (int32, ``[k, k, c_out]``).
2. Expanded convolution, written as a gather with edge-clamped coordinates::

       A[c', q] = bias[c'] + sum_c sum_{d in [-R, R]^2} v_c(X[c, clamp(q - d)])[d + R, c']

3. Requantisation: ``delta = (A + 2**(S-1)) >> S`` (arithmetic shift; ``A`` if S = 0);
   hidden output ``clamp(base + delta, 0, 255)``, base = ``X[c']`` for a residual layer,
   else 128.

The last layer has ``c_out = r*r`` and adds its deltas, pixel-shuffled, to a fixed
integer upsample of the input plane::

    HR[y*r + a, x*r + b] = clamp(B[y*r + a, x*r + b] + delta[a*r + b, y, x], 0, 255)
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from . import ensemble
from .model import Layer, Model

F = 256  # interpolation weight scale: w runs 0..F


# ----------------------------------------------------------------------------- lookup


def interp_lut(knots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel and per code, the lower knot index ``i`` and the weight ``w``.

    knots: uint8 [c_in, L]. Returns ``idx`` uint8 [c_in, 256] and ``w`` int32 [c_in, 256].
    """
    c_in, L = knots.shape
    idx = np.zeros((c_in, 256), np.uint8)
    w = np.zeros((c_in, 256), np.int32)
    for c in range(c_in):
        s = [int(v) for v in knots[c]]
        for x in range(256):
            i = 0
            while i + 1 < L and s[i + 1] <= x:
                i += 1
            i = min(i, L - 2)
            gap = s[i + 1] - s[i]
            idx[c, x] = i
            w[c, x] = ((x - s[i]) * F + gap // 2) // gap
    return idx, w


def expand_layer(layer: Layer) -> np.ndarray:
    """The layer's interpolated windows for all 256 codes: int16 [c_in, 256, k, k, c_out].

    ``E[c, x] = v_c(x)``; values lie in [-32768, 32512], so int16 holds them exactly.
    """
    idx, w = interp_lut(layer.knots)
    table = layer.table.astype(np.int32)
    out = np.empty((layer.c_in, 256) + layer.table.shape[2:], np.int16)
    for c in range(layer.c_in):
        i = idx[c].astype(np.intp)
        wc = w[c][:, None, None, None]
        out[c] = table[c, i] * (F - wc) + table[c, i + 1] * wc
    return out


# ----------------------------------------------------------------------------- layers


def accumulate(layer: Layer, x: np.ndarray) -> np.ndarray:
    """``A`` of one layer for input codes ``x`` uint8 [c_in, H, W]; returns int64 [c_out, H, W]."""
    c_in, H, W = x.shape
    R = layer.k // 2
    windows = expand_layer(layer).astype(np.int64)  # [c_in, 256, k, k, c_out]
    acc = np.zeros((layer.c_out, H, W), np.int64) + layer.bias.astype(np.int64)[:, None, None]
    rows, cols = np.arange(H), np.arange(W)
    for c in range(c_in):
        v = windows[c][x[c]]  # [H, W, k, k, c_out]: the window each source pixel paints
        for dy in range(-R, R + 1):
            src_y = np.clip(rows - dy, 0, H - 1)
            for dx in range(-R, R + 1):
                src_x = np.clip(cols - dx, 0, W - 1)
                painted = v[src_y[:, None], src_x[None, :], dy + R, dx + R]  # [H, W, c_out]
                acc += np.moveaxis(painted, -1, 0)
    return acc


def requantize(acc: np.ndarray, shift: int) -> np.ndarray:
    """``(A + 2**(S-1)) >> S`` with an arithmetic (flooring) shift; ``A`` when S = 0."""
    acc = acc.astype(np.int64)
    if shift == 0:
        return acc
    return (acc + (1 << (shift - 1))) >> shift


def hidden_layer(layer: Layer, x: np.ndarray) -> np.ndarray:
    """One hidden layer: uint8 [c_in, H, W] -> uint8 [c_out, H, W]."""
    delta = requantize(accumulate(layer, x), layer.shift)
    base = x.astype(np.int64) if layer.residual else 128
    return np.clip(base + delta, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- upsample


def _cubic(t: Fraction, a: Fraction = Fraction(-1, 2)) -> Fraction:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return Fraction(0)


def _round_half_up(q: Fraction) -> int:
    return int((q + Fraction(1, 2)).__floor__())


def upsample_filter(scale: int, kind: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The fixed upsample as a separable integer filter, the same on both axes.

    Output sample ``y*r + a`` (phase ``a``) reads input samples
    ``clamp(y + offset[a] + t)`` for ``t`` in ``0..T-1`` with integer weights
    ``weights[a, t]`` that sum to ``denom``. Half-pixel centres: phase ``a`` sits at
    input coordinate ``y + (2a + 1 - r) / (2r)``.

    Returns ``offset`` int32 [r], ``weights`` int32 [r, T] and ``denom``:
    nearest T=1, denom 1; bilinear T=2, exact weights in units of 1/(2r);
    bicubic (a = -0.5) T=4, weights rounded half up to units of 1/256 with the
    rounding error put on the largest tap so that each phase sums to 256.
    """
    r = scale
    offsets, weights = [], []
    for a in range(r):
        pos = Fraction(2 * a + 1 - r, 2 * r)  # input coordinate relative to y
        base = pos.__floor__()
        frac = pos - base
        if kind == "nearest":
            offsets.append(0)
            weights.append([1])
        elif kind == "bilinear":
            offsets.append(base)
            weights.append([int((1 - frac) * 2 * r), int(frac * 2 * r)])
        elif kind == "bicubic":
            offsets.append(base - 1)
            exact = [_cubic(frac + 1), _cubic(frac), _cubic(1 - frac), _cubic(2 - frac)]
            taps = [_round_half_up(v * 256) for v in exact]
            taps[int(np.argmax(taps))] += 256 - sum(taps)
            weights.append(taps)
        else:
            raise ValueError(f"unknown upsample {kind!r}")
    denom = {"nearest": 1, "bilinear": 2 * r, "bicubic": 256}[kind]
    return np.array(offsets, np.int32), np.array(weights, np.int32), denom


def fixed_upsample(plane: np.ndarray, scale: int, kind: str) -> np.ndarray:
    """The base B of the last layer: uint8 [H, W] -> int64 [H*r, W*r] (already clamped 0..255).

    ``B = floor((sum_ij wy[a,i] * wx[b,j] * P[clamp(y+oy+i), clamp(x+ox+j)] + D*D//2) / (D*D))``
    """
    H, W = plane.shape
    r = scale
    offset, weights, denom = upsample_filter(scale, kind)
    P = plane.astype(np.int64)
    out = np.zeros((H * r, W * r), np.int64)
    for a in range(r):
        for b in range(r):
            acc = np.zeros((H, W), np.int64)
            for i, wy in enumerate(weights[a]):
                ys = np.clip(np.arange(H) + offset[a] + i, 0, H - 1)
                for j, wx in enumerate(weights[b]):
                    xs = np.clip(np.arange(W) + offset[b] + j, 0, W - 1)
                    acc += int(wy) * int(wx) * P[ys[:, None], xs[None, :]]
            d2 = denom * denom
            out[a::r, b::r] = np.clip((acc + d2 // 2) // d2, 0, 255)
    return out


def last_layer(layer: Layer, x: np.ndarray, plane: np.ndarray, scale: int, upsample: str) -> np.ndarray:
    """The last layer: codes uint8 [c_in, H, W] and the input plane uint8 [H, W] -> uint8 [H*r, W*r]."""
    r = scale
    delta = requantize(accumulate(layer, x), layer.shift)  # [r*r, H, W]
    H, W = plane.shape
    shuffled = delta.reshape(r, r, H, W).transpose(2, 0, 3, 1).reshape(H * r, W * r)
    return np.clip(fixed_upsample(plane, r, upsample) + shuffled, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- model


def upscale_plane(model: Model, plane: np.ndarray) -> np.ndarray:  # one pass (no ensemble)
    """Run the whole model on one uint8 [H, W] plane; returns uint8 [H*r, W*r]."""
    x = plane[None]
    for layer in model.layers[:-1]:
        x = hidden_layer(layer, x)
    return last_layer(model.layers[-1], x, plane, model.scale, model.upsample)


def upscale_planes(model: Model, planes: np.ndarray) -> np.ndarray:
    """uint8 [P, H, W] -> uint8 [P, H*r, W*r], plane by plane (and pass by pass for a model
    with a self-ensemble, ``iqlut_gpu.ensemble``)."""
    return ensemble.run(lambda q: np.stack([upscale_plane(model, p) for p in q]),
                        np.asarray(planes), model.ensemble)
