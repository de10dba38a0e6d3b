"""The cases every CUDA test runs (emulated and on a device): built from tests/cases.py.

Grouped so that tests can be parametrised by group; built once per session (fresh
seeds, each case carries its seed for the failure message).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

import cases
from iqlut_gpu.model import UPSAMPLES, default_model

class CudaBuffer:
    """An object with only the DLPack protocol, like a torch CUDA tensor."""

    def __init__(self, arr):
        self.arr = arr

    def __dlpack__(self, **kw):
        return self.arr.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.arr.__dlpack_device__()


GROUPS = ([f"x{s}-{u}" for s in (2, 3, 4) for u in UPSAMPLES]
          + ["default-arch", "extreme", "shipped", "ensemble"])


@lru_cache(maxsize=None)
def all_cases():
    """Every (group, seed, model, planes, label) of this module, built once per session."""
    out = []
    for scale in (2, 3, 4):
        for upsample in UPSAMPLES:
            group = f"x{scale}-{upsample}"
            for seed, rng in cases.case_rngs(2, salt=1000 + scale * 10 + UPSAMPLES.index(upsample)):
                model = cases.random_model(rng, scale=scale, upsample=upsample)
                for h, w in cases.SIZES:
                    out.append((group, seed, model, cases.random_planes(rng, 3, h, w), f"{h}x{w}"))
    for seed, rng in cases.case_rngs(3, salt=1099):
        scale = int(rng.choice([2, 3, 4]))
        out.append(("default-arch", seed, cases.default_arch_model(rng, scale),
                    cases.random_planes(rng, 2, 11, 14), f"x{scale} 11x14"))
    for seed, rng in cases.case_rngs(3, salt=1007):
        out.append(("extreme", seed, cases.random_model(rng), cases.extreme_planes(), "codes 0/255"))
    for seed, rng in cases.case_rngs(3, salt=1013):  # self-ensembles, on non-square planes
        n = int(rng.choice([2, 4, 8]))
        out.append(("ensemble", seed, cases.random_model(rng).with_ensemble(n),
                    cases.random_planes(rng, 2, 7, 12), f"ensemble {n} 7x12"))
    out.append(("ensemble", "n/a", default_model(3), np.random.default_rng().integers(
        0, 256, size=(2, 9, 8)).astype(np.uint8), "shipped x3 (4 rotations)"))
    for scale in (2, 3, 4):
        rng = np.random.default_rng()
        out.append(("shipped", "n/a", default_model(scale).with_ensemble(1),
                    rng.integers(0, 256, size=(2, 9, 8)).astype(np.uint8), f"default x{scale}"))
    return out


def group(name):
    return [c for c in all_cases() if c[0] == name]
