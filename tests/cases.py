"""Shared test cases: random models and images that every backend is checked on.

Seeds are fresh each run; each case carries its seed so a failure can be reproduced
(``IQLUT_TEST_SEED=<seed>`` pins the session seed).
"""

from __future__ import annotations

import os
import secrets

import numpy as np

from iqlut_gpu.model import DEFAULT_ARCH, UPSAMPLES, Layer, Model

SESSION_SEED = int(os.environ.get("IQLUT_TEST_SEED") or secrets.randbits(32))

# Image sizes that hit the edge cases: single pixels, single rows/columns, odd sizes.
SIZES = [(1, 1), (1, 7), (7, 1), (2, 3), (5, 4), (13, 9), (17, 31)]


def random_knots(rng, c_in: int, L: int) -> np.ndarray:
    rows = []
    for _ in range(c_in):
        inner = np.sort(rng.choice(np.arange(1, 255), size=L - 2, replace=False))
        rows.append(np.concatenate([[0], inner, [255]]))
    return np.array(rows, np.uint8)


def random_layer(rng, c_in, c_out, k, L, residual, shift=None) -> Layer:
    table = rng.integers(-128, 128, size=(c_in, L, k, k, c_out), dtype=np.int64).astype(np.int8)
    if rng.random() < 0.2:  # extremes everywhere: the accumulator bounds
        table = rng.choice(np.array([-128, 127], np.int8), size=table.shape)
    return Layer(knots=random_knots(rng, c_in, L), table=table,
                 bias=rng.integers(-5000, 5000, size=c_out).astype(np.int32),
                 shift=int(rng.integers(0, 16) if shift is None else shift), residual=residual)


def random_model(rng, scale: int | None = None, upsample: str | None = None) -> Model:
    scale = scale or int(rng.choice([2, 3, 4]))
    upsample = upsample or str(rng.choice(UPSAMPLES))
    n_hidden = int(rng.integers(0, 3))
    layers, c = [], 1
    for _ in range(n_hidden):
        residual = c > 1 and rng.random() < 0.5
        c_out = c if residual else int(rng.integers(1, 5))
        layers.append(random_layer(rng, c, c_out, int(rng.choice([1, 3, 5])),
                                   int(rng.integers(2, 18)), residual))
        c = c_out
    layers.append(random_layer(rng, c, scale * scale, int(rng.choice([1, 3])),
                               int(rng.integers(2, 18)), False))
    return Model(scale=scale, upsample=upsample, layers=tuple(layers))


def default_arch_model(rng, scale: int) -> Model:
    """docs/design.md, "Starting architecture" (the shipped models' shape), random tables."""
    layers, c = [], 1
    for spec in DEFAULT_ARCH:
        c_out = spec["c_out"] or scale * scale
        layers.append(random_layer(rng, c, c_out, spec["k"], spec["L"], spec["residual"],
                                   shift=int(rng.integers(6, 12))))
        c = c_out
    return Model(scale=scale, upsample="bicubic", layers=tuple(layers))


def extreme_planes() -> np.ndarray:
    """Planes of only 0, only 255, and alternating 0/255 columns."""
    return np.stack([np.zeros((6, 5), np.uint8), np.full((6, 5), 255, np.uint8),
                     np.tile(np.array([0, 255], np.uint8), (6, 3))[:, :5]])


def random_planes(rng, n: int, h: int, w: int) -> np.ndarray:
    planes = rng.integers(0, 256, size=(n, h, w), dtype=np.int64).astype(np.uint8)
    if n > 1:
        planes[0] = 0  # extreme codes
        planes[-1] = 255
    return planes


def case_rngs(count: int, salt: int):
    """(seed, rng) pairs derived from the session seed; the seed goes into failure messages."""
    for i in range(count):
        seed = (SESSION_SEED * 1000003 + salt * 7919 + i) % (1 << 63)
        yield seed, np.random.default_rng(seed)


def patch_origin(lo, hi, planes, scale: int, patch: int):
    """Where a sampled training pair (LR ``lo``, HR ``hi``) was cut, by brute force:
    ``(key, transform)`` for the first of ``planes`` (``(key, hr, lr)``, 2-D arrays), the
    position and the ``train.data.dihedral`` transform that give exactly that pair; None if
    none does."""
    from iqlut_gpu.train import data

    for key, hr, lr in planes:
        lh, lw = lr.shape
        for y in range(lh - patch + 1):
            for x in range(lw - patch + 1):
                lp = lr[y:y + patch, x:x + patch]
                hp = hr[y * scale:(y + patch) * scale, x * scale:(x + patch) * scale]
                for t in range(8):
                    a, b = data.dihedral(lp, hp, t)
                    if np.array_equal(a, lo) and np.array_equal(b, hi):
                        return key, t
    return None
