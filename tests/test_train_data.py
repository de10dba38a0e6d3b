"""The training sampler: LR/HR patch pairs stay aligned under the dihedral transforms."""

from __future__ import annotations

import numpy as np

from iqlut_gpu.train import data

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
    for i in range(len(lr)):
        for y in range(N_LR - PATCH + 1):
            for x in range(N_LR - PATCH + 1):
                lp = lr[i, y:y + PATCH, x:x + PATCH]
                hp = hr[i, y * SCALE:(y + PATCH) * SCALE, x * SCALE:(x + PATCH) * SCALE]
                for t in range(8):
                    a, b = data.dihedral(lp, hp, t)
                    if np.array_equal(a, lo) and np.array_equal(b, hi):
                        return i, t
    return None


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
    trained with (a resumed run continues it from the checkpoint's generator state)."""
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
