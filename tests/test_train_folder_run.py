"""``iqlut train --data DIR``: a few steps from a folder of images end to end (hold-out,
export, the export check), --val, --init by name, resuming the batch stream, device
defaults, and the errors a user meets, one line each."""

from __future__ import annotations

import types

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from iqlut_gpu import reference  # noqa: E402
from iqlut_gpu.model import default_model, load_model  # noqa: E402
from iqlut_gpu.train.config import CPU_BATCH, CPU_PATCH, GPU_BATCH, GPU_PATCH, Config  # noqa: E402
from iqlut_gpu.train.loader import batch_rng  # noqa: E402
from iqlut_gpu.train.torch_forward import module_from_model  # noqa: E402
from iqlut_gpu.train.trainer import Trainer, train  # noqa: E402

from cases import SESSION_SEED  # noqa: E402
from test_cli import assert_clean_failure  # noqa: E402

TINY_ARCH = [dict(c_in=1, c_out=4, k=3, L=9, residual=False),
             dict(c_in=4, c_out=4, k=3, L=5, residual=True),
             dict(c_in=4, c_out=None, k=1, L=5, residual=False)]


def _textured(h, w, rng):
    """A smooth image with some texture (learnable, unlike noise)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(x / (3 + c) + y / (5 + c)) for c in range(3)], -1) * 90 + 128
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """shots/: 7 usable images in nested folders (PNG and JPEG), a broken file, a tiny one."""
    monkeypatch.setenv("IQLUT_DATA_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(SESSION_SEED)
    root = tmp_path / "shots"
    for i in range(7):
        sub = root / ("day1" if i % 2 else "day2/raw")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_textured(60 + 4 * i, 64, rng)).save(sub / f"f{i}.{'jpg' if i % 3 == 0 else 'png'}")
    (root / "day1" / "broken.png").write_bytes(b"junk")
    Image.fromarray(_textured(10, 10, rng)).save(root / "day1" / "thumb.png")
    return root


def _cfg(tmp_path, **kw):
    base = dict(scale=2, out=str(tmp_path / "out" / "m_x2.safetensors"), time_budget=1e9, max_iters=6,
                seed=SESSION_SEED % 1000, batch=4, patch=12, lam=0.5, teacher_width=8, val_every=1e9,
                ckpt_every=0.0, val_crop=48, calib_patches=256, arch=[dict(a) for a in TINY_ARCH],
                device="cpu")
    base.update(kw)
    return Config(**base)


def test_train_from_a_folder_holds_out_validation_exports_and_resumes(folder, tmp_path):
    torch.set_num_threads(1)
    lines = []
    cfg = _cfg(tmp_path, data=(str(folder),))
    run = Trainer(cfg, log=lambda m: None, warn=lines.append)
    assert cfg.batch == 4 and run.workers == 0
    # the broken file and the tiny image: one line each
    assert len(lines) == 2 and lines[0].startswith("warning: skipped ") and "broken.png" in lines[0]
    assert lines[1].startswith("note: 1 image smaller than 24x24 skipped") and "thumb.png" in lines[1]
    trained = {e.name for e in run.source.entries}
    held = set(run.val.names)
    assert len(trained) == 6 and len(held) == 1 and not trained & held
    assert trained | held == {f"shots/{'day1' if i % 2 else 'day2/raw'}/f{i}.{'jpg' if i % 3 == 0 else 'png'}"
                              for i in range(7)}
    run.fit(progress=False)
    run.finish()
    summary = run.export()
    model = load_model(cfg.out)
    assert model.trained and model.provenance["iterations"] == 6
    assert "6 training images (18 planes) of " in model.provenance["dataset"]
    # the export check: the integer runtime scores what the torch forward does
    assert abs(summary["validation"]["export_minus_torch_db"]) <= 0.05, f"seed {SESSION_SEED}"
    planes = np.random.default_rng(SESSION_SEED).integers(0, 256, (2, 9, 11), dtype=np.uint8)
    np.testing.assert_array_equal(
        reference.upscale_planes(model, planes),
        module_from_model(model)(torch.from_numpy(planes.astype(np.float64))[:, None])[:, 0].detach().numpy())
    # a resumed run (given no --data: the checkpoint's) reads the cache and draws batch 6 next
    again = Trainer(_cfg(tmp_path, max_iters=8), resume=True, log=lambda m: None, warn=lambda m: None)
    assert again.it == 6 and again.cfg.data == (str(folder),)
    assert {e.name for e in again.source.entries} == trained
    x, y = next(again.batches)
    lo, hi = again.source.sample(batch_rng(cfg.seed, 6), 4, 12)
    assert torch.equal(x[:, 0], torch.from_numpy(lo).float()) and torch.equal(y[:, 0] * 255, torch.from_numpy(hi).float())
    again.close_batches()


def test_val_folder_replaces_the_holdout_and_is_never_trained_on(folder, tmp_path):
    lines = []
    run = Trainer(_cfg(tmp_path, data=(str(folder),), val=str(folder / "day2")), log=lambda m: None,
                  warn=lines.append)
    trained = {e.name for e in run.source.entries}
    assert run.val.names == ["day2/raw/f0.jpg", "day2/raw/f2.png", "day2/raw/f4.png", "day2/raw/f6.jpg"]
    assert trained == {"shots/day1/f1.png", "shots/day1/f3.jpg", "shots/day1/f5.png"}
    assert any(m.startswith("note: 4 images of --data are in --val too") for m in lines), lines


def test_init_by_name_trains_the_shipped_models_shape(folder, tmp_path):
    torch.set_num_threads(1)
    logs = []
    cfg = _cfg(tmp_path, data=(str(folder),), arch=[], init="x2", max_iters=1, calib_patches=0,
               batch=2, patch=8, lam=0.0)
    train(cfg, log=logs.append, progress=False, warn=lambda m: None)
    shipped = default_model(2)
    assert any("iqlut_x2.safetensors (6 layers, 0 identity layers added)" in m for m in logs), logs
    model = load_model(cfg.out)
    assert [(la.c_in, la.c_out, la.k, la.L, la.residual) for la in model.layers] == \
        [(la.c_in, la.c_out, la.k, la.L, la.residual) for la in shipped.layers]
    assert model.provenance["init"]["file"] == "iqlut_x2.safetensors"
    with pytest.raises(ValueError, match=r"^--init x3: the model is x3, this run is --scale 2$"):
        Trainer(_cfg(tmp_path, arch=[], init="x3", data=(str(folder),)), log=lambda m: None)


def test_data_errors_are_one_line(folder, tmp_path):
    (tmp_path / "empty").mkdir()
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(small / "a.png")
    Image.fromarray(np.zeros((30, 10, 3), np.uint8)).save(small / "b.png")
    cases = [(dict(data=(str(tmp_path / "empty"),)), r"^--data .*empty: no images \(looked for"),
             (dict(data=(str(small),)), r"^--data: no image is at least 24x24 pixels \(2 smaller ones"),
             (dict(data=(str(folder),), val=str(tmp_path / "empty")), r"^--val .*empty: no images"),
             (dict(data=(str(folder / "day1" / "f1.png"),)), r"needs at least 2 \(or give --val DIR\)"),
             (dict(data=(str(folder),), with_installed=True, installed_share=0.95, batch=8),
              r"^--installed-share 0.95 of --batch 8 is 8 installed patches per batch, 0 of --data"),
             (dict(data=(str(folder),), with_installed=True, installed_share=0.1, batch=4),
              r"is 0 installed patches per batch, 4 of --data: both need at least one"),
             (dict(images=("skimage/brick",), patch=200),
              r"^--patch 200: the installed photos' crops take LR patches of at most 120 pixels at x2$")]
    for kw, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            Trainer(_cfg(tmp_path, **kw), log=lambda m: None, warn=lambda m: None)


def test_sizes_by_device_unless_given_and_a_resume_keeps_its_own():
    def resolved(device, st=None, **kw):
        fake = types.SimpleNamespace(cfg=Config(**kw), device=torch.device(device))
        Trainer._resolve_sizes(fake, st)
        return fake.cfg.batch, fake.cfg.patch, fake.workers

    assert resolved("cpu") == (CPU_BATCH, CPU_PATCH, 0)
    b, p, w = resolved("cuda")
    assert (b, p) == (GPU_BATCH, GPU_PATCH) and w >= 0
    assert resolved("cuda", batch=8, patch=20, workers=2) == (8, 20, 2)
    assert resolved("cuda", st={"config": {"batch": 16, "patch": 36}}) [:2] == (16, 36)


def test_cli_errors_are_one_line(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("train", "--scale", "2", "--data", tmp_path / "empty", "--out", tmp_path / "m.safetensors")
    assert_clean_failure(proc, "iqlut train: error: --data ", "empty: no images")
    if not torch.cuda.is_available():
        proc = run_cli("train", "--scale", "2", "--device", "cuda", "--out", tmp_path / "m.safetensors")
        assert_clean_failure(proc, "iqlut train: error: --device cuda: torch ", "sees no CUDA device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing written


def test_a_validation_image_bicubic_reproduces_exactly_is_not_scored(folder, tmp_path):
    """A flat image's bicubic PSNR is infinite, which would make every mean infinite."""
    val = tmp_path / "val"
    val.mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(val / "flat.png")
    Image.fromarray(_textured(40, 44, np.random.default_rng(SESSION_SEED))).save(val / "busy.png")
    lines = []
    run = Trainer(_cfg(tmp_path, data=(str(folder),), val=str(val)), log=lambda m: None,
                  warn=lines.append)
    assert run.val.names == ["val/busy.png"] and np.isfinite(run.bic)
    assert any(m.startswith("note: 1 validation image not scored: bicubic reproduces its crop "
                            "exactly (val/flat.png)") for m in lines), lines
    (val / "busy.png").unlink()
    with pytest.raises(ValueError, match="no validation image to score"):
        Trainer(_cfg(tmp_path, data=(str(folder),), val=str(val)), log=lambda m: None,
                warn=lambda m: None)


@pytest.mark.gpu
@pytest.mark.parametrize("workers", [0, 2])
def test_a_short_cuda_run_exports_what_the_integer_runtime_computes(folder, tmp_path, workers):
    """Training on a GPU (run by the GPU check): loader processes handing pinned batches
    over (or none), the step on the device, the export and its check, and the exported
    file computing on the CPU what the float64 torch forward of it does."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    cfg = _cfg(tmp_path, data=(str(folder),), device="cuda", workers=workers)
    run = Trainer(cfg, log=lambda m: None, warn=lambda m: None)
    assert run.device.type == "cuda" and run.workers == workers
    run.fit(progress=False)
    run.finish()
    summary = run.export()
    model = load_model(cfg.out)
    assert model.trained and model.provenance["iterations"] == 6
    assert abs(summary["validation"]["export_minus_torch_db"]) <= 0.05, f"seed {SESSION_SEED}"
    planes = np.random.default_rng(SESSION_SEED).integers(0, 256, (2, 9, 11), dtype=np.uint8)
    np.testing.assert_array_equal(
        reference.upscale_planes(model, planes),
        module_from_model(model)(torch.from_numpy(planes.astype(np.float64))[:, None])[:, 0].detach().numpy())
