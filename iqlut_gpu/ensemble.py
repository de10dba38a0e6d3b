"""Dihedral self-ensemble: run a model on up to eight rotated/flipped copies of the input
and average the results (the SR-LUT family's rotation ensemble; test-time augmentation).

A model's ``ensemble`` is n in ``ENSEMBLES``: the output is the mean of the model run on
the first n transforms of ``TRANSFORMS`` (rotations by 0, 90, 180, 270 degrees, then the
same after a left-right flip), each result transformed back, in integers:

    S = sum_t  T_t^-1( model( T_t(planes) ) )
    out = S >> log2(n), plus one where the remainder S mod n is above n/2, or equals n/2
          and S >> log2(n) is odd (round half to even)

Half to even, not half up: half up adds 1/(2n) of a code to every pixel on average (a
quarter code for n = 2), a bias that costs tenths of a dB on near-flat images
(docs/design.md, "Self-ensemble"; the measurement is in docs/models.md).

Every backend applies it around its own single pass (the same array operations, only
``xp`` differs: numpy or cupy), so results stay bit-identical across backends. The
model's edge clamping and tiling halos are the same in every orientation, so tiles stay
exact too. The cost is n passes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ENSEMBLES = (1, 2, 4, 8)
TRANSFORMS = tuple((k, flip) for flip in (False, True) for k in range(4))  # (quarter turns, flip)


def rot90(a, k: int):
    """``np.rot90(a, k, axes=(1, 2))`` with array methods only (numpy and cupy alike)."""
    k %= 4
    if k == 1:
        return a[:, :, ::-1].swapaxes(1, 2)
    if k == 2:
        return a[:, ::-1, ::-1]
    if k == 3:
        return a.swapaxes(1, 2)[:, :, ::-1]
    return a


def forward(a, k: int, flip: bool):
    return rot90(a[:, :, ::-1] if flip else a, k)


def inverse(a, k: int, flip: bool):
    a = rot90(a, -k)
    return a[:, :, ::-1] if flip else a


def check(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {n!r}")
    return int(n)


def add(acc, out):
    """The uint16 sum so far (None before the first pass) plus ``out`` (uint8)."""
    if acc is None:
        return out.astype(np.uint16)  # 8 * 255 fits
    acc += out
    return acc


def integer_mean(total, n: int):
    """``total / n`` rounded half to even, as uint8 (n a power of two; integer arrays, numpy
    or cupy): what ``np.round(total / n)`` gives, in shifts and masks."""
    if n == 1:
        return total.astype(np.uint8)
    q = total >> (n.bit_length() - 1)
    rem = total & (n - 1)
    half = n // 2
    return (q + ((rem > half) | ((rem == half) & ((q & 1) == 1)))).astype(np.uint8)


def run(run_once: Callable, planes, n: int, xp=np, add: Callable = add,
        mean: Callable = integer_mean):
    """``run_once`` (uint8 [P, H, W] -> uint8 [P, H*r, W*r], contiguous in, any array out)
    under an n-transform ensemble; ``xp`` is the array module of ``planes``. ``add`` and
    ``mean`` may be a backend's fused forms of the sum and the mean, with the same
    results (the Numba ones: ``kernels/numba_ensemble.py``)."""
    n = check(n)
    if n == 1:
        return run_once(planes)
    acc = None
    for k, flip in TRANSFORMS[:n]:
        acc = add(acc, inverse(run_once(xp.ascontiguousarray(forward(planes, k, flip))), k, flip))
    return mean(acc, n)
