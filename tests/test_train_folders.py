"""Training on your own folders (train/folders.py, no torch): finding images in nested
folders, the checks and what they skip, the validation hold-out, the per-image LR cache
(made once, reused, made again when a file changes) and patch sampling from it."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from iqlut_gpu.evaluate import imresize
from iqlut_gpu.train import data, folders

import cases
from cases import SESSION_SEED


def _img(path, h, w, rng, channels=3, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (h, w, channels) if channels > 1 else (h, w)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


@pytest.fixture
def tree(tmp_path):
    """A nested folder: PNG and JPEG, gray and RGBA, hidden and non-image files, an LR
    folder, a broken file and a too-small image."""
    rng = np.random.default_rng(SESSION_SEED)
    root = tmp_path / "shots"
    _img(root / "img_10.png", 30, 28, rng)
    _img(root / "img_2.png", 26, 32, rng)
    _img(root / "a" / "b" / "deep.jpg", 40, 36, rng)
    _img(root / "a" / "gray.png", 24, 24, rng, channels=1)
    _img(root / "a" / "alpha.png", 24, 30, rng, channels=4)
    _img(root / "a" / "tiny.png", 6, 40, rng)
    _img(root / ".hidden" / "x.png", 30, 30, rng)
    _img(root / ".dot.png", 30, 30, rng)
    _img(root / "LR_bicubic" / "X2" / "img_2x2.png", 13, 16, rng)
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_find_images_walks_nested_folders_in_natural_order(tree, tmp_path):
    files, notes = folders.find_images([tree])
    assert [f.name for f in files] == ["shots/a/alpha.png", "shots/a/b/deep.jpg", "shots/a/broken.png",
                                       "shots/a/gray.png", "shots/a/tiny.png", "shots/img_2.png",
                                       "shots/img_10.png"]
    assert len(notes) == 1 and "LR_bicubic: an LR folder, not read" in notes[0]
    # the same file twice (a file argument and its folder) is used once; a file on its own
    again, _ = folders.find_images([tree / "img_2.png", tree])
    assert [f.name for f in again][0] == "img_2.png" and len(again) == len(files)
    with pytest.raises(folders.DataError, match="no such folder or file"):
        folders.find_images([tmp_path / "missing"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(folders.DataError, match=r"--data .*empty: no images \(looked for .png"):
        folders.find_images([tmp_path / "empty"])
    with pytest.raises(folders.DataError, match=r"--val .*notes.txt: not a folder or an image file"):
        folders.find_images([tree / "notes.txt"], "--val")


def test_usable_skips_broken_and_small_images_with_one_line_each(tree):
    files, _ = folders.find_images([tree])
    lines = []
    good = folders.usable(files, 24, lines.append)
    assert [f.path.name for f in good] == ["alpha.png", "deep.jpg", "gray.png", "img_2.png", "img_10.png"]
    assert len(lines) == 2 and all("\n" not in m for m in lines)
    assert lines[0].startswith("warning: skipped ") and "broken.png" in lines[0]
    assert lines[1].startswith("note: 1 image smaller than 24x24 skipped") and "tiny.png (40x6)" in lines[1]
    with pytest.raises(folders.DataError, match="no image is at least 50x50 pixels"):
        folders.usable(files[5:], 50, lambda m: None)  # two readable images, both small
    with pytest.raises(folders.DataError, match="none of the 1 image files could be used"):
        folders.usable([f for f in files if f.path.name == "broken.png"], 8, lambda m: None)


def _files(n):
    return [folders.ImageFile(f"d/img_{i}.png", folders.Path(f"/x/img_{i}.png")) for i in range(n)]


def test_holdout_is_a_fixed_fraction_never_trained_on():
    for n, k in ((2, 1), (5, 1), (14, 1), (15, 2), (40, 4), (800, folders.HOLDOUT_MAX)):
        files = _files(n)
        train, val = folders.holdout(files)
        assert len(val) == k and len(train) == n - k, n
        assert not {f.path for f in train} & {f.path for f in val}
        assert sorted(train + val, key=lambda f: f.name) == sorted(files, key=lambda f: f.name)
        # by name only: the order of the list does not change it
        assert set(folders.holdout(files[::-1])[1]) == set(val)
    # adding images keeps the ones held out unless they are outranked: 40 -> 41 changes at most one
    a, b = set(folders.holdout(_files(40))[1]), set(folders.holdout(_files(41))[1])
    assert len(a & b) >= 3
    with pytest.raises(folders.DataError, match="needs at least 2"):
        folders.holdout(_files(1))


def test_imresize_in_strips_is_imresize_bit_for_bit(monkeypatch):
    rng = np.random.default_rng(SESSION_SEED)
    planes = rng.integers(0, 256, (2, 37, 53), dtype=np.uint8)
    monkeypatch.setattr(folders, "STRIP_BYTES", 3000)  # strips of a few rows / columns
    for scale in (2, 3, 4):
        got = folders.imresize_planes(planes, 1.0 / scale)
        want = np.stack([imresize(p, 1.0 / scale) for p in planes])
        np.testing.assert_array_equal(got, want, err_msg=f"seed {SESSION_SEED}, x{scale}")


def test_the_cache_is_made_once_reused_and_made_again_when_a_file_changes(tmp_path, monkeypatch):
    rng = np.random.default_rng(SESSION_SEED)
    src = tmp_path / "imgs"
    a = _img(src / "a.png", 30, 26, rng)
    g = _img(src / "g.png", 22, 24, rng, channels=1)
    files, _ = folders.find_images([src])
    decoded = []
    real_read = folders.read_image
    monkeypatch.setattr(folders, "read_image", lambda p: decoded.append(p) or real_read(p))
    cache = str(tmp_path / "cache")
    entries = folders.prepare(files, 2, cache)
    assert len(decoded) == 2
    ea, eg = entries
    hr = np.load(ea.hr)
    np.testing.assert_array_equal(hr, a.transpose(2, 0, 1))
    np.testing.assert_array_equal(np.load(ea.lr), np.stack([imresize(p, 0.5) for p in hr]))
    assert (eg.planes, eg.lh, eg.lw) == (1, 11, 12)
    np.testing.assert_array_equal(np.load(eg.lr)[0], imresize(g, 0.5))
    # again: nothing decoded; another scale: only its LR is made (from the cached HR)
    assert folders.prepare(files, 2, cache) == entries and len(decoded) == 2
    e3 = folders.prepare(files, 3, cache)
    assert len(decoded) == 2 and e3[0].hr == ea.hr and e3[0].lr.endswith(".x3.npy")
    np.testing.assert_array_equal(np.load(e3[0].lr), np.stack([imresize(p[:30, :24], 1 / 3) for p in hr]))
    # the file changes: decoded again, the old entry (HR and both LR) removed
    b = _img(src / "a.png", 28, 28, rng)
    os.utime(src / "a.png", ns=(1, 1))
    new = folders.prepare(files, 2, cache)
    assert len(decoded) == 3 and new[0].hr != ea.hr
    np.testing.assert_array_equal(np.load(new[0].hr), b.transpose(2, 0, 1))
    assert sorted(p.name.split(".", 1)[1] for p in folders.Path(new[0].hr).parent.iterdir()) == ["hr.npy", "x2.npy"]


def test_prepare_skips_a_file_that_fails_to_decode(tmp_path):
    rng = np.random.default_rng(SESSION_SEED)
    _img(tmp_path / "d" / "good.png", 20, 20, rng)
    bad = tmp_path / "d" / "cut.png"
    _img(bad, 40, 40, rng)
    bad.write_bytes(bad.read_bytes()[:60])  # a header that reads, data that does not
    files, _ = folders.find_images([tmp_path / "d"])
    lines = []
    entries = folders.prepare(files, 2, str(tmp_path / "c"), lines.append)
    assert [e.name for e in entries] == ["d/good.png"]
    assert len(lines) == 1 and lines[0].startswith("warning: skipped ") and "cut.png" in lines[0]
    with pytest.raises(folders.DataError, match="none of the 1 images could be decoded"):
        folders.prepare(files[:1], 2, str(tmp_path / "c"), lambda m: None)


def test_prepare_in_several_threads_makes_the_same_entries(tmp_path, monkeypatch):
    rng = np.random.default_rng(SESSION_SEED)
    for i in range(5):
        _img(tmp_path / "d" / f"{i}.png", 20 + i, 24, rng)
    files, _ = folders.find_images([tmp_path / "d"])
    serial = folders.prepare(files, 2, str(tmp_path / "c1"))
    monkeypatch.setattr(folders.os, "cpu_count", lambda: 2)
    parallel = folders.prepare(files, 2, str(tmp_path / "c2"))
    for s, p in zip(serial, parallel):
        np.testing.assert_array_equal(np.load(s.lr), np.load(p.lr))
        assert (s.name, s.planes, s.lh, s.lw) == (p.name, p.planes, p.lh, p.lw)


def _source(tmp_path, rng, sizes, scale=2):
    for i, (h, w, c) in enumerate(sizes):
        _img(tmp_path / "s" / f"{i}.png", h, w, rng, channels=c)
    files, _ = folders.find_images([tmp_path / "s"])
    return folders.ImageSource(folders.prepare(files, scale, str(tmp_path / "c")), scale)


def _find(lo, hi, source, patch):
    """(image, plane, transform) a sampled pair was cut from, by brute force; or None."""
    planes = ((i, c, source.arrays(i)) for i in range(len(source))
              for c in range(source.arrays(i)[1].shape[0]))
    found = cases.patch_origin(lo, hi, (((i, c), hr[c], lr[c]) for i, c, (hr, lr) in planes),
                               source.scale, patch)
    return None if found is None else (*found[0], found[1])


def test_image_source_cuts_aligned_patches_of_the_cached_images(tmp_path):
    rng = np.random.default_rng(SESSION_SEED)
    # the third image is one patch tall (LR 4x10); a gray image counts one plane
    src = _source(tmp_path, rng, [(16, 18, 3), (14, 14, 1), (8, 21, 3)])
    lo, hi = src.sample(np.random.default_rng(SESSION_SEED), 40, 4)
    assert lo.shape == (40, 4, 4) and hi.shape == (40, 8, 8) and lo.dtype == hi.dtype == np.uint8
    seen_images, seen_t = set(), set()
    for a, b in zip(lo, hi):
        found = _find(a, b, src, 4)
        assert found is not None, f"seed {SESSION_SEED}: a pair that is no patch of the images"
        seen_images.add(found[0])
        seen_t.add(found[2])
    assert len(seen_t) > 1, f"seed {SESSION_SEED}"
    # images are drawn by their number of patch positions: 3*5*6=90, 1*4*4=16, 3*1*7=21
    cum = src._cumulative(4)
    np.testing.assert_array_equal(np.diff(np.concatenate([[0], cum])), [90, 16, 21])
    # a patch as wide as the smallest image: only the two larger ones have room
    lo, hi = src.sample(np.random.default_rng(SESSION_SEED), 12, 5)
    assert all(_find(a, b, src, 5)[0] in (0, 1) for a, b in zip(lo, hi))
    assert src.max_patch() == 4
    # the same generator state gives the same patches; it pickles as file names
    again = pickle.loads(pickle.dumps(src))
    assert again._arrays is None
    x1 = src.sample(np.random.default_rng(7), 8, 4)
    x2 = again.sample(np.random.default_rng(7), 8, 4)
    assert all(np.array_equal(u, v) for u, v in zip(x1, x2))


def test_mixed_source_takes_a_fixed_share_of_each_batch(tmp_path):
    rng = np.random.default_rng(SESSION_SEED)
    mine = _source(tmp_path, rng, [(16, 16, 1)])
    hr = np.full((2, 16, 16), 7, np.uint8)  # a bank of constant crops: its patches show
    bank = data.BankSource(hr, np.full((2, 8, 8), 7, np.uint8), 2)
    mixed = folders.MixedSource(mine, bank, 0.25)
    lo, hi = mixed.sample(np.random.default_rng(SESSION_SEED), 8, 4)
    from_bank = [bool((p == 7).all()) for p in hi]
    assert from_bank == [False] * 6 + [True] * 2
    assert mixed.max_patch() == 8


def test_validation_images_are_centre_crops_without_alpha(tree):
    files, _ = folders.find_images([tree])
    lines = []
    imgs = folders.validation_images([f for f in files if f.path.name in ("alpha.png", "gray.png",
                                                                            "broken.png", "deep.jpg")],
                                     20, lines.append)
    assert sorted(imgs) == ["shots/a/alpha.png", "shots/a/b/deep.jpg", "shots/a/gray.png"]
    assert imgs["shots/a/alpha.png"].shape == (20, 20, 3) and imgs["shots/a/gray.png"].shape == (20, 20)
    assert len(lines) == 1 and "broken.png" in lines[0]
