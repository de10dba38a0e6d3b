"""The training data: LR/HR patch pairs stay aligned under the dihedral transforms; the bank."""

from __future__ import annotations

import numpy as np
import pytest

from iqlut_gpu.train import data

import cases
from cases import SESSION_SEED

SCALE, N_LR, PATCH = 2, 10, 4


def _bank(rng):
    """Four crops: two flat (a constant plane), two random noise."""
    lr = np.empty((4, N_LR, N_LR), np.uint8)
    lr[0], lr[1] = 40, 200
    lr[2:] = rng.integers(0, 256, (2, N_LR, N_LR))
    # HR: a distinct random image per crop, so a patch pair identifies its source
    hr = rng.integers(0, 256, (4, N_LR * SCALE, N_LR * SCALE)).astype(np.uint8)
    return hr, lr


def test_dihedral_moves_lr_and_hr_alike_through_all_eight_transforms():
    rng = np.random.default_rng(SESSION_SEED)
    lp = rng.integers(0, 256, (3, 5)).astype(np.uint8)  # not square: a transpose shows
    hp = np.kron(lp, np.ones((SCALE, SCALE), np.uint8))  # HR = nearest upsample of LR
    seen = set()
    for t in range(8):
        a, b = data.dihedral(lp, hp, t)
        assert np.array_equal(b, np.kron(a, np.ones((SCALE, SCALE), np.uint8))), f"t={t}"
        seen.add(a.tobytes() + bytes(a.shape))
    assert len(seen) == 8  # eight distinct transforms
    # bit 0 mirrors x, bit 1 mirrors y, bit 2 transposes after them
    assert np.array_equal(data.dihedral(lp, hp, 5)[0], lp[:, ::-1].T)
    assert np.array_equal(data.dihedral(lp, hp, 6)[0], lp[::-1].T)


def _source_of(lo, hi, hr, lr):
    """(crop index, transform) of a sampled pair, found by brute force; None if none matches."""
    return cases.patch_origin(lo, hi, ((i, hr[i], lr[i]) for i in range(len(lr))), SCALE, PATCH)


def test_pairs_are_aligned_patches_of_one_crop():
    rng = np.random.default_rng(SESSION_SEED)
    hr, lr = _bank(rng)
    lo, hi = data.sample_batch(rng, hr, lr, SCALE, 24, PATCH)
    assert lo.shape == (24, PATCH, PATCH) and hi.shape == (24, PATCH * SCALE, PATCH * SCALE)
    transforms = set()
    for a, b in zip(lo, hi):
        found = _source_of(a, b, hr, lr)
        assert found is not None, f"seed {SESSION_SEED}: a pair that is no patch of the bank"
        transforms.add(found[1])
    assert len(transforms) > 1, f"seed {SESSION_SEED}: no random transforms"


def test_the_random_stream_is_the_documented_one():
    """Crop, position, then one transform per patch: the stream the shipped models were
    trained with (each batch now draws it from its own generator, ``loader.batch_rng``)."""
    hr, lr = _bank(np.random.default_rng(SESSION_SEED))
    lo, hi = data.sample_batch(np.random.default_rng(SESSION_SEED + 1), hr, lr, SCALE, 16, PATCH)
    rng = np.random.default_rng(SESSION_SEED + 1)
    n = N_LR - PATCH + 1
    idx, ys, xs = rng.integers(0, 4, 16), rng.integers(0, n, 16), rng.integers(0, n, 16)
    for b in range(16):
        t = int(rng.integers(0, 8))
        y, x = ys[b], xs[b]
        lp = lr[idx[b], y:y + PATCH, x:x + PATCH]
        hp = hr[idx[b], y * SCALE:(y + PATCH) * SCALE, x * SCALE:(x + PATCH) * SCALE]
        lp, hp = data.dihedral(lp, hp, t)
        assert np.array_equal(lo[b], lp) and np.array_equal(hi[b], hp), f"seed {SESSION_SEED}"


def test_two_runs_building_the_same_bank_at_once_both_succeed(tmp_path, monkeypatch):
    """An IQ-LUT and an ECNN run started together build the same cached bank: both must
    get it (each writes its own temporary file, then renames), and no temporary is left."""
    import threading

    names = ("skimage/brick", "skimage/gravel")
    barrier = threading.Barrier(2, timeout=60)
    real_savez = np.savez

    def savez_together(*a, **kw):  # both writers inside savez at the same time
        barrier.wait()
        return real_savez(*a, **kw)

    monkeypatch.setattr(data.np, "savez", savez_together)
    results, errors = [], []

    def build():
        try:
            results.append(data.build_bank(2, cache_dir=str(tmp_path), names=names, log=lambda m: None))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 2 and all(np.array_equal(results[0][i], results[1][i]) for i in (0, 1))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 1 and left[0].startswith("bank_x2_") and left[0].endswith(".npz"), left


def test_bank_of_an_image_list_skips_images_smaller_than_a_crop(tmp_path):
    """``bank_of``: any (name, path) list, in order; an image smaller than a crop gives
    nothing (and takes no random numbers); the bank is cached by the list."""
    from PIL import Image

    rng = np.random.default_rng(SESSION_SEED)
    paths = {}
    for name, (h, w) in {"big": (250, 260), "small": (100, 300), "big2": (241, 240)}.items():
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[name])
    items = [(k, str(v)) for k, v in paths.items()]
    logs = []
    hr, lr = data.bank_of(items, 3, cache_dir=str(tmp_path / "cache"), log=logs.append)
    assert hr.shape == (2 * 2 * 3, data.CROP, data.CROP) and lr.shape == (12, 80, 80)
    assert any("small: smaller than 240 px, skipped" in m for m in logs), logs
    # the same bank without the small image: it took no random numbers
    hr2, lr2 = data.bank_of([items[0], items[2]], 3, cache_dir=str(tmp_path / "other"),
                            log=lambda m: None)
    np.testing.assert_array_equal(hr, hr2)
    np.testing.assert_array_equal(lr, lr2)
    assert len(list((tmp_path / "cache").glob("bank_x3_*.npz"))) == 1
    again = data.bank_of(items, 3, cache_dir=str(tmp_path / "cache"), log=logs.append)
    np.testing.assert_array_equal(again[0], hr)  # from the cache
    with pytest.raises(RuntimeError, match="no training image is at least 240x240"):
        data.bank_of(items[1:2], 3, cache_dir=str(tmp_path / "cache"), log=lambda m: None)
