"""The dihedral self-ensemble (``iqlut_gpu.ensemble``, a model's ``ensemble``): its
transforms, its equivariance, every backend and path bit-identical, the file format."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cases
from iqlut_gpu import backends, ensemble, reference, upscale
from iqlut_gpu.model import ModelError, default_model, model_from_bytes, model_to_bytes


def test_transforms_are_the_dihedral_group_and_invert():
    a = np.arange(2 * 3 * 5).reshape(2, 3, 5)
    seen = set()
    for k in range(4):
        assert np.array_equal(ensemble.rot90(a, k), np.rot90(a, k, axes=(1, 2)))
    for k, flip in ensemble.TRANSFORMS:
        t = ensemble.forward(a, k, flip)
        assert np.array_equal(ensemble.inverse(t, k, flip), a)
        seen.add(np.ascontiguousarray(t).tobytes() + bytes(t.shape))
    assert len(seen) == 8


@pytest.mark.parametrize("bad", [0, 3, 16, True, 8.0, "8"])
def test_only_1_2_4_8_passes(bad):
    with pytest.raises(ValueError, match="ensemble must be one of"):
        ensemble.check(bad)
    with pytest.raises(ValueError):
        default_model(2).with_ensemble(bad)


def test_the_mean_rounds_half_to_even_in_integers():
    for n in ensemble.ENSEMBLES:
        total = np.arange(255 * n + 1, dtype=np.uint16)  # every sum n passes can make
        got = ensemble.integer_mean(total, n)
        assert got.dtype == np.uint8
        assert np.array_equal(got, np.round(total / n)), n  # numpy rounds half to even
        if n > 1:  # unbiased: over a period of 2n sums the rounding errors cancel
            assert (got[:2 * n].astype(int) * n - total[:2 * n].astype(int)).sum() == 0
    outs = iter([np.full((1, 2, 2), v, np.uint8) for v in (1, 2)])
    got = ensemble.run(lambda q: next(outs), np.zeros((1, 1, 1), np.uint8), 2)
    assert got.dtype == np.uint8 and np.all(got == 2)  # 3 / 2 = 1.5 -> 2 (even)
    outs = iter([np.full((1, 2, 2), v, np.uint8) for v in (2, 3)])
    assert np.all(ensemble.run(lambda q: next(outs), np.zeros((1, 1, 1), np.uint8), 2) == 2)  # 2.5 -> 2
    outs = iter([np.full((1, 2, 2), 255, np.uint8)] * 8)
    assert np.all(ensemble.run(lambda q: next(outs), np.zeros((1, 1, 1), np.uint8), 8) == 255)


def test_numba_sum_and_mean_equal_the_array_operations():
    """kernels/numba_ensemble (the CPU backend's fused sum and mean) against ensemble.add /
    integer_mean: every transform's view (transposed, reversed), every n, shapes around the
    64-pixel tile, sums at the rounding ties."""
    from iqlut_gpu.kernels import numba_ensemble

    for seed, rng in cases.case_rngs(6, salt=515):
        P, H, W = int(rng.integers(1, 4)), int(rng.integers(1, 140)), int(rng.integers(1, 140))
        for n in ensemble.ENSEMBLES:
            outs = [rng.integers(0, 256, (P, W, H) if k % 2 else (P, H, W), dtype=np.uint8)
                    for k, _ in ensemble.TRANSFORMS[:n]]
            if seed % 2:  # near-constant outputs: many sums at exactly half
                outs = [(o & 1) + 127 for o in outs]
            want = got = None
            for (k, flip), o in zip(ensemble.TRANSFORMS[:n], outs):
                want = ensemble.add(want, ensemble.inverse(o, k, flip))
                got = numba_ensemble.add(got, ensemble.inverse(o, k, flip))
                assert got.dtype == np.uint16 and np.array_equal(got, want), f"seed {seed}"
            assert np.array_equal(numba_ensemble.mean(got, n), ensemble.integer_mean(want, n)), \
                f"seed {seed} n {n} shape {(P, H, W)}"


@pytest.mark.parametrize("n", [4, 8])
def test_an_ensemble_is_equivariant_under_its_transforms(n):
    """Averaging over a group makes the model commute with the group's transforms exactly:
    ens(T x) = T ens(x) for the 4 rotations (n = 4) or all 8 transforms (n = 8)."""
    for seed, rng in cases.case_rngs(2, salt=4242 + n):
        model = cases.random_model(rng).with_ensemble(n)
        planes = cases.random_planes(rng, 2, 6, 9)
        base = reference.upscale_planes(model, planes)
        for k, flip in ensemble.TRANSFORMS[:n]:
            got = reference.upscale_planes(model, np.ascontiguousarray(ensemble.forward(planes, k, flip)))
            assert np.array_equal(got, ensemble.forward(base, k, flip)), f"seed {seed} {k} {flip}"


def test_cpu_matches_reference_with_every_ensemble():
    for seed, rng in cases.case_rngs(4, salt=4343):
        model = cases.random_model(rng)
        for n in ensemble.ENSEMBLES:
            m = model.with_ensemble(n)
            for h, w in [(1, 1), (1, 6), (5, 3), (9, 14)]:
                planes = cases.random_planes(rng, 2, h, w)
                expected = reference.upscale_planes(m, planes)
                for mode in ("interp", "expanded"):
                    got = backends.run_planes("cpu", m, planes, mode)
                    assert np.array_equal(got, expected), f"seed {seed} n={n} {h}x{w} {mode}"


def test_api_ensemble_tiles_exactly_and_passes_are_averaged():
    rng = np.random.default_rng(cases.SESSION_SEED)
    img = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    whole = upscale(img, 3, backend="cpu", ensemble=8)
    assert np.array_equal(upscale(img, 3, backend="cpu", ensemble=8, tile=8), whole), \
        f"seed {cases.SESSION_SEED}"
    # by hand: the mean of the 8 transformed single passes, rounded half to even
    planes = np.ascontiguousarray(np.moveaxis(img, -1, 0))
    total = sum(ensemble.inverse(reference.upscale_planes(
        default_model(3).with_ensemble(1), np.ascontiguousarray(ensemble.forward(planes, k, f))), k, f).astype(int)
        for k, f in ensemble.TRANSFORMS)
    assert np.array_equal(np.moveaxis(np.round(total / 8), 0, -1), whole)
    # the shipped models run one pass unless told otherwise (the files carry no ensemble)
    for s in (2, 3, 4):
        assert default_model(s).ensemble == 1
        assert np.array_equal(upscale(img, s, backend="cpu"), upscale(img, s, backend="cpu", ensemble=1))
    assert not np.array_equal(upscale(img, 2, backend="cpu"), upscale(img, 2, backend="cpu", ensemble=4))
    with pytest.raises(ValueError, match="ensemble must be one of"):
        upscale(img, 3, ensemble=3)


def test_file_format_version_2_only_for_ensembles():
    model = default_model(4)
    assert model.ensemble == 1 and model.with_ensemble(8) is model.with_ensemble(8)
    one = model_to_bytes(model)
    assert json.loads(one[8:8 + int.from_bytes(one[:8], "little")])["__metadata__"]["format_version"] == "1"
    data = model_to_bytes(model.with_ensemble(4))
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert header["__metadata__"]["format_version"] == "2"
    assert header["__metadata__"]["ensemble"] == "4"
    back = model_from_bytes(data)
    assert back.ensemble == 4 and back.describe()["ensemble"] == 4
    for meta, fragment in [({"ensemble": "3"}, "'ensemble' must be one of"),
                           ({"format_version": "1"}, "'ensemble' needs format version 2"),
                           ({"format_version": "3"}, "unsupported format version")]:
        bad = dict(header, __metadata__=dict(header["__metadata__"], **meta))
        raw = json.dumps(bad).encode()
        with pytest.raises(ModelError, match=fragment):
            model_from_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + len(data[8:8 + int.from_bytes(data[:8], "little")]):])
