"""MATLAB-compatible bicubic imresize against the project's verified test vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iqlut_gpu.evaluate import imresize

# committed with the tests (provenance and keys: tests/data/README.md)
VECTORS = Path(__file__).resolve().parent / "data" / "imresize_matlab_bicubic.npz"


@pytest.fixture(scope="module")
def vectors():
    with np.load(VECTORS) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("kind", ["rgb", "gray"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_imresize_matches_vectors(vectors, kind, scale):
    img = vectors[kind]
    down = imresize(img, 1 / scale)
    up = imresize(img, scale)
    assert down.dtype == np.uint8 and up.dtype == np.uint8
    np.testing.assert_array_equal(down, vectors[f"{kind}_down{scale}"])
    np.testing.assert_array_equal(up, vectors[f"{kind}_up{scale}"])


def test_imresize_constant_image_stays_constant():
    img = np.full((13, 17), 77, np.uint8)
    for s in (1 / 4, 1 / 3, 1 / 2, 2, 3, 4):
        out = imresize(img, s)
        assert out.shape == (int(np.ceil(13 * s)), int(np.ceil(17 * s)))
        assert np.all(out == 77)


def test_imresize_commutes_with_flips_and_transpose():
    # the training pipeline augments (HR, LR) pairs by flips and 90-degree rotations
    rng = np.random.default_rng()
    img = rng.integers(0, 256, (24, 36)).astype(np.uint8)
    for s in (1 / 2, 1 / 3, 1 / 4):
        lr = imresize(img, s)
        np.testing.assert_array_equal(imresize(img[::-1], s), lr[::-1])
        np.testing.assert_array_equal(imresize(img[:, ::-1], s), lr[:, ::-1])
        np.testing.assert_array_equal(imresize(img.T, s), lr.T)
