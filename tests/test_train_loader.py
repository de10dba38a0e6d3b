"""The training loader (train/loader.py): batches are a function of (seed, iteration), the
same with 0 or 2 loader processes and from any start (a resume); device handling."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from iqlut_gpu.train import data, folders  # noqa: E402
from iqlut_gpu.train.loader import Batches, FixedBatches, batch_rng, default_workers, to_device  # noqa: E402
from iqlut_gpu.train.trainer import exact_float32, resolve_device  # noqa: E402

from cases import SESSION_SEED  # noqa: E402


@pytest.fixture(scope="module")
def image_source(tmp_path_factory):
    from PIL import Image

    tmp = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(SESSION_SEED)
    for i, (h, w) in enumerate([(40, 36), (30, 44), (24, 24)]):
        (tmp / "imgs" / "sub").mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp / "imgs" / ("sub" if i else "") / f"{i}.png")
    files, _ = folders.find_images([tmp / "imgs"])
    return folders.ImageSource(folders.prepare(files, 2, str(tmp / "cache")), 2)


def _take(batches, n):
    out = [next(batches) for _ in range(n)]
    batches.close()
    return out


@pytest.mark.parametrize("kind", ["images", "bank"])
def test_batches_are_the_same_with_0_or_2_workers_and_from_any_start(kind, image_source):
    rng = np.random.default_rng(SESSION_SEED)
    source = image_source if kind == "images" else data.BankSource(
        rng.integers(0, 256, (3, 24, 24), dtype=np.uint8), rng.integers(0, 256, (3, 12, 12), dtype=np.uint8), 2)
    seed = SESSION_SEED % 1000
    inline = _take(Batches(source, seed, 5, 6, "cpu", workers=0), 6)
    workers = _take(Batches(source, seed, 5, 6, "cpu", workers=2), 6)
    resumed = _take(Batches(source, seed, 5, 6, "cpu", start=3, workers=2), 3)
    for i, (x, y) in enumerate(inline):
        assert x.shape == (5, 1, 6, 6) and y.shape == (5, 1, 12, 12)
        assert x.dtype == y.dtype == torch.float32
        assert float(x.max()) <= 255 and float(y.max()) <= 1.0 and float(y.min()) >= 0
        # batch i is source.sample(batch_rng(seed, i)), whoever makes it
        lo, hi = source.sample(batch_rng(seed, i), 5, 6)
        assert torch.equal(x[:, 0], torch.from_numpy(lo).float()), f"seed {SESSION_SEED}, batch {i}"
        assert torch.equal(y[:, 0], torch.from_numpy(hi).float() / 255.0)
        assert torch.equal(x, workers[i][0]) and torch.equal(y, workers[i][1]), f"batch {i}"
    for i, (x, y) in enumerate(resumed):
        assert torch.equal(x, inline[3 + i][0]) and torch.equal(y, inline[3 + i][1])
    assert not torch.equal(inline[0][0], inline[1][0])  # batches differ


def test_fixed_batches_hand_out_one_batch():
    x, y = torch.zeros(2, 1, 3, 3), torch.ones(2, 1, 6, 6)
    fixed = FixedBatches(x, y)
    assert all(a is x and b is y for a, b in (next(fixed) for _ in range(3)))


def test_to_device_converts_uint8_on_the_device():
    lo = torch.tensor([[[0, 255], [7, 128]]], dtype=torch.uint8)
    x, y = to_device(lo, lo, torch.device("cpu"))
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32 and float(x[0, 0, 0, 1]) == 255.0
    assert float(y[0, 0, 0, 1]) == 1.0 and float(y[0, 0, 1, 0]) == pytest.approx(7 / 255)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line():
    with pytest.raises(ValueError) as e:
        resolve_device("cuda")
    msg = str(e.value)
    assert msg.startswith("--device cuda: torch ") and "sees no CUDA device" in msg and "\n" not in msg
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"


def test_default_workers_by_device():
    assert default_workers(torch.device("cpu"), cpus=16) == 0
    assert default_workers(torch.device("cuda"), cpus=16) == 8
    assert default_workers(torch.device("cuda"), cpus=64) == 8
    assert default_workers(torch.device("cuda"), cpus=6) == 3
    assert default_workers(torch.device("cuda"), cpus=1) == 0


def test_exact_float32_turns_tf32_off():
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None or not hasattr(conv, "fp32_precision"):
        pytest.skip("torch without the fp32_precision settings")
    before = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    try:
        exact_float32()
        assert conv.fp32_precision == "ieee" and torch.backends.cuda.matmul.fp32_precision == "ieee"
    finally:
        conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before


def test_loader_bench_measures_both_loaders_in_one_run(tmp_path, monkeypatch):
    """``loader_bench.measure`` on a tiny run: real and fixed blocks alternate, the ratio
    and the waiting share come out (no speed is asserted: that is the bench's job)."""
    from PIL import Image

    from iqlut_gpu.train.config import Config
    from iqlut_gpu.train.loader_bench import measure
    from iqlut_gpu.train.trainer import Trainer

    monkeypatch.setenv("IQLUT_DATA_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(SESSION_SEED)
    for i in range(3):
        (tmp_path / "d").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "d" / f"{i}.png")
    arch = [dict(c_in=1, c_out=2, k=1, L=5, residual=False), dict(c_in=2, c_out=None, k=1, L=5, residual=False)]
    cfg = Config(scale=2, data=(str(tmp_path / "d"),), out=str(tmp_path / "m.safetensors"), batch=2,
                 patch=6, lam=0.0, arch=arch, device="cpu", time_budget=1e12, val_crop=24)
    run = Trainer(cfg, log=lambda m: None, warn=lambda m: None)
    res = measure(run, rounds=2, steps=2, warmup=1)
    assert len(res["rounds"]) == 2 and all(set(r) == {"real", "fixed"} for r in res["rounds"])
    assert res["ratio"] > 0 and 0 <= res["waiting_share"] < 1 and res["loader_alone_batches_per_s"] > 0
    assert run.it == 1 + 2 * 2 * 2 and run._batches is None  # every step trained; loader closed
