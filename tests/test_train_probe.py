"""The linear-probe diagnostic (iqlut_gpu.train.probe): its least-squares fits, its
sub-pixel bookkeeping, and its table against the evaluation protocol."""

from __future__ import annotations

import numpy as np
import pytest

from iqlut_gpu import backends
from iqlut_gpu.evaluate import bicubic_upscale, imresize, y_metrics
from iqlut_gpu.model import default_model_path, load_model
from iqlut_gpu.train import data, probe

from cases import SESSION_SEED


def test_window_offsets_even_and_odd_and_refusal():
    assert list(probe.window_offsets(6)) == [-2, -1, 0, 1, 2, 3]
    assert list(probe.window_offsets(5)) == [-2, -1, 0, 1, 2]
    assert list(probe.window_offsets(1)) == [0]
    with pytest.raises(ValueError, match="taps"):
        probe.window_offsets(0)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_unphase_puts_each_sub_pixel_into_its_lr_pixels_hr_block(scale):
    rng = np.random.default_rng(SESSION_SEED)
    blocks = rng.normal(size=(5, 7, scale * scale))
    hr = probe.unphase(blocks, scale)
    assert hr.shape == (5 * scale, 7 * scale)
    for y in range(5):
        for x in range(7):
            for a in range(scale):
                for b in range(scale):
                    assert hr[y * scale + a, x * scale + b] == blocks[y, x, a * scale + b]


@pytest.mark.parametrize("taps", [3, 4])
def test_fit_recovers_a_known_linear_upscaler(taps):
    """Targets made by a known linear map (windows and a constant): the fit finds it."""
    rng = np.random.default_rng(SESSION_SEED)
    scale = 3
    true = rng.normal(size=(taps * taps + 1, scale * scale))
    lr = rng.integers(0, 256, (3, 16, 18)).astype(np.uint8)
    target = np.stack([probe.apply(p, true, scale, taps) for p in lr])
    got = probe.fit(lr, target, scale, taps, 2000, rng)
    assert np.allclose(got, true, atol=1e-8), f"seed {SESSION_SEED}"
    # and the features edge-replicate: a constant plane gives sum(weights) * c + bias
    flat = np.full((4, 5), 7, np.uint8)
    out = probe.apply(flat, true, scale, taps)
    want = probe.unphase(np.broadcast_to(7 * true[:-1].sum(0) + true[-1], (4, 5, scale * scale)), scale)
    assert np.allclose(out, want)


def test_fit_refuses_planes_smaller_than_the_window():
    with pytest.raises(ValueError, match="too small"):
        probe.fit(np.zeros((1, 4, 4), np.uint8), np.zeros((1, 8, 8)), 2, 6, 10,
                  np.random.default_rng(0))


def test_probe_table_agrees_with_the_protocol(monkeypatch):
    """On a synthetic bank and split, the bicubic and model rows are the protocol's Y-PSNR
    of those upscalers (the model run once, not as its shipped ensemble)."""
    rng = np.random.default_rng(SESSION_SEED)
    scale = 2
    smooth = lambda h, w: np.clip(imresize(rng.integers(0, 256, (h // 4, w // 4, 3)).astype(np.uint8),
                                           4.0), 0, 255).astype(np.uint8)
    hr_crops = [smooth(48, 48)[..., c] for c in range(3) for _ in range(2)]
    hr_bank = np.stack(hr_crops)
    lr_bank = np.stack([imresize(c, 1.0 / scale) for c in hr_crops])
    val = {"a/rgb": smooth(40, 44), "b/gray": smooth(36, 40)[..., 1]}
    monkeypatch.setattr(data, "build_bank", lambda s, log=None: (hr_bank, lr_bank))
    monkeypatch.setattr(data, "validation_images", lambda crop: val)
    path = default_model_path(scale)
    res = probe.probe(scale, str(path), taps=4, planes=6, samples=3000, seed=SESSION_SEED)
    model = load_model(path).with_ensemble(1)
    for name, img in val.items():
        lr = imresize(img, 1.0 / scale)
        planes = lr[None] if lr.ndim == 2 else np.moveaxis(lr, -1, 0)
        sr = np.asarray(backends.run_planes("cpu", model, np.ascontiguousarray(planes)))
        sr = sr[0] if lr.ndim == 2 else np.moveaxis(sr, 0, -1)
        assert res["per_image"]["model"][name] == pytest.approx(y_metrics(sr, img, scale)[0], abs=1e-4)
        assert res["per_image"]["bicubic"][name] == pytest.approx(
            y_metrics(bicubic_upscale(lr, scale), img, scale)[0], abs=1e-4)
    m = res["mean_psnr"]
    assert res["model_vs_bicubic_db"] == pytest.approx(m["model"] - m["bicubic"])
    assert res["linear_on_model_db"] == pytest.approx(m["model+linear"] - m["model"])
    assert all(np.isfinite(v) for v in m.values())


def test_cli_without_training_data_is_one_line_and_exit_2(monkeypatch, capsys):
    def missing(scale, log=None):
        raise RuntimeError("no training images found (run train/get_data.sh)")
    monkeypatch.setattr(data, "build_bank", missing)
    assert probe.main(["--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no training images") and err.count("\n") == 1
