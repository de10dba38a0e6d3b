"""The evaluation protocol (iqlut_gpu.evaluate) and ``iqlut eval`` on tiny cases with
hand-computed answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from iqlut_gpu import evaluate as ev
from iqlut_gpu.cli import main
from iqlut_gpu.cli.eval_cmd import evaluate
from iqlut_gpu.io import read_image, write_image
from iqlut_gpu.model import default_model

from cases import SESSION_SEED


def test_y_of_gray_rgb_and_bt601_range():
    assert ev.rgb_to_y(np.zeros((1, 1, 3)))[0, 0] == pytest.approx(16.0)
    assert ev.rgb_to_y(np.full((1, 1, 3), 255.0))[0, 0] == pytest.approx(235.0)
    g = np.arange(12.0).reshape(3, 4)
    assert np.array_equal(ev.rgb_to_y(g), g)  # a gray image is its own luma


def test_psnr_hand_computed():
    a = np.zeros((4, 4))
    b = a.copy()
    b[0, 0] = 8.0  # MSE = 64 / 16 = 4
    assert ev.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 4))
    assert ev.psnr(a, a) == math.inf


def test_ssim_identity_and_symmetry():
    rng = np.random.default_rng([SESSION_SEED, 7])
    a = rng.integers(0, 256, (20, 23)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 10, a.shape), 0, 255)
    assert ev.ssim(a, a) == pytest.approx(1.0)
    assert ev.ssim(a, b) == pytest.approx(ev.ssim(b, a))
    assert ev.ssim(a, b) < 1.0
    with pytest.raises(ValueError):
        ev.ssim(a[:10], b[:10])


def test_modcrop_and_shave():
    img = np.zeros((10, 11, 3))
    assert ev.modcrop(img, 4).shape == (8, 8, 3)
    assert ev.shave(np.zeros((10, 12)), 3).shape == (4, 6)


def test_protocol_against_hand_computed_psnr():
    """An 'upscaler' that returns HR + d on every channel of the shaved interior and HR on
    the border: Y error is d * 219/255 on the interior, so Y-PSNR is known in closed form."""
    rng = np.random.default_rng([SESSION_SEED, 3])
    scale, d = 3, 6
    hr = rng.integers(20, 200, (40, 38, 3)).astype(np.uint8)
    hr_c, _ = ev.degrade(hr, scale)

    def oracle(lr):
        out = hr_c.astype(np.int64).copy()
        out[scale:-scale, scale:-scale] += d
        return out.astype(np.uint8)

    p, s = ev.y_metrics(oracle(None), hr_c, scale)
    want = 10 * math.log10(255 ** 2 / (d * 219 / 255) ** 2)
    assert p == pytest.approx(want, abs=1e-9)
    assert 0 < s < 1


def test_eval_function_on_files(tmp_path):
    rng = np.random.default_rng([SESSION_SEED, 5])
    hr = rng.integers(0, 256, (37, 45, 3)).astype(np.uint8)
    f = tmp_path / "hr.png"
    write_image(f, hr)
    scale = 2
    hr_c = ev.modcrop(hr, scale)
    res = evaluate([f], scale, {"oracle": (lambda lr: hr_c, 123)})
    assert res["mean"]["oracle"]["psnr"] == math.inf
    assert res["mean"]["oracle"]["storage_bytes"] == 123
    # the bicubic row is MATLAB bicubic down then up, scored on Y with a 2-pixel shave
    lr = ev.imresize(hr_c, 1 / scale)
    want = ev.psnr(ev.shave(ev.rgb_to_y(ev.imresize(lr, scale)), 2), ev.shave(ev.rgb_to_y(hr_c), 2))
    assert res["mean"]["bicubic"]["psnr"] == pytest.approx(round(want, 4), abs=1e-4)


def test_eval_cli_json_and_errors(tmp_path, capsys):
    rng = np.random.default_rng([SESSION_SEED, 9])
    f = tmp_path / "img.png"
    write_image(f, rng.integers(0, 256, (30, 34, 3)).astype(np.uint8))
    assert main(["eval", "--scale", "2", "--backend", "cpu", "--json", str(f)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["scale"] == 2 and res["images"] == 1
    assert {"bicubic", "iqlut"} <= set(res["mean"])
    assert res["mean"]["iqlut"]["storage_bytes"] > 0 and res["ensemble"] == default_model(2).ensemble
    # --ensemble runs both models so; the IQ-LUT row is then the API's ensemble result
    from iqlut_gpu import upscale
    hr_c = ev.modcrop(read_image(f), 2)
    for n in (1, 8):
        assert main(["eval", "--scale", "2", "--backend", "cpu", "--json", "--ensemble", str(n), str(f)]) == 0
        res_n = json.loads(capsys.readouterr().out)
        assert res_n["ensemble"] == n
        sr = upscale(ev.imresize(hr_c, 0.5), 2, backend="cpu", ensemble=n)
        want = ev.psnr(ev.shave(ev.rgb_to_y(sr), 2), ev.shave(ev.rgb_to_y(hr_c), 2))
        assert res_n["mean"]["iqlut"]["psnr"] == pytest.approx(want, abs=1e-4)
    assert main(["eval", "--scale", "2", str(tmp_path / "missing.png")]) == 1
    assert "no such file" in capsys.readouterr().err
    tiny = tmp_path / "tiny.png"
    write_image(tiny, np.zeros((8, 8, 3), np.uint8))
    assert main(["eval", "--scale", "4", str(tiny)]) == 1
    assert "too small" in capsys.readouterr().err


def test_metrics_agree_with_scikit_image():
    """An independent implementation of the same protocol pieces: scikit-image's BT.601
    Y (rgb2ycbcr), PSNR, and SSIM with the Gaussian window of Wang et al. (sigma 1.5,
    11 taps, population covariances), which is the SSIM of the SR papers' MATLAB code."""
    pytest.importorskip("skimage")
    from skimage.color import rgb2ycbcr
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng([SESSION_SEED, 21])
    img = rng.integers(0, 256, (31, 26, 3)).astype(np.uint8)
    y = ev.rgb_to_y(img)
    np.testing.assert_allclose(y, rgb2ycbcr(img)[..., 0], atol=1e-9)
    noisy = np.clip(y + rng.normal(0, 6, y.shape), 0, 255)
    assert ev.ssim(y, noisy) == pytest.approx(structural_similarity(
        y, noisy, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False), abs=1e-12)
    assert ev.psnr(y, noisy) == pytest.approx(peak_signal_noise_ratio(y, noisy, data_range=255), abs=1e-9)


def test_eval_inputs_with_model_files(tmp_path, capsys):
    """INPUT images with --model: the shipped default stays the iqlut row and each file gets
    a row named by its file name; the JSON keeps its shape, with the methods added."""
    import shutil

    from iqlut_gpu.model import default_model_path

    rng = np.random.default_rng([SESSION_SEED, 22])
    write_image(tmp_path / "a.png", rng.integers(0, 256, (30, 26, 3)).astype(np.uint8))
    write_image(tmp_path / "b.png", rng.integers(0, 256, (27, 33, 3)).astype(np.uint8))
    shutil.copy(default_model_path(2), tmp_path / "x2copy.safetensors")
    assert main(["eval", "--backend", "cpu", "-q", "--json", "--ensemble", "1", str(tmp_path),
                 "--model", str(tmp_path / "x2copy.safetensors")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["scale"] == 2 and res["images"] == 2 and res["ensemble"] == 1
    assert list(res["mean"]) == ["bicubic", "ecnn", "iqlut", "x2copy"]
    assert res["mean"]["x2copy"] == res["mean"]["iqlut"]
    assert res["methods"]["x2copy"]["path"] == str(tmp_path / "x2copy.safetensors")
    assert set(res["per_image"]) == {str(tmp_path / "a.png"), str(tmp_path / "b.png")}
