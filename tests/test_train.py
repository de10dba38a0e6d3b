"""A tiny training run end to end: it learns, exports a valid model, and the integer
runtime reproduces the torch forward."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from iqlut_gpu import reference  # noqa: E402
from iqlut_gpu.model import load_model  # noqa: E402
from iqlut_gpu.train import data  # noqa: E402
from iqlut_gpu.train.net import LUTNet, arch_storage, ecnn_arch, iqlut_arch  # noqa: E402
from iqlut_gpu.train.torch_forward import module_from_model  # noqa: E402
from iqlut_gpu.train.trainer import Config, train  # noqa: E402

from cases import SESSION_SEED  # noqa: E402

TINY_ARCH = [dict(c_in=1, c_out=4, k=3, L=9, residual=False),
             dict(c_in=4, c_out=4, k=3, L=5, residual=True),
             dict(c_in=4, c_out=None, k=1, L=5, residual=False)]


TEXTURED = ("skimage/brick", "skimage/gravel")  # bundled with scikit-image: always there


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQLUT_DATA_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _mse(module, lo, hi):
    with torch.no_grad():
        out = module(torch.from_numpy(lo.astype(np.float64))[:, None])[:, 0]
    return float(((out - torch.from_numpy(hi.astype(np.float64))) ** 2).mean())


def test_tiny_training_run_learns_and_exports(cache):
    torch.set_num_threads(1)
    seed = SESSION_SEED % 1000
    out = cache / "tiny_x2.safetensors"
    cfg = Config(scale=2, out=str(out), time_budget=1e9, max_iters=60, seed=seed, batch=4,
                 patch=16, lr=3e-4, lam=0.5, teacher_width=8, val_every=1e9, ckpt_every=1e9,
                 val_crop=48, images=TEXTURED, limit_val=2, arch=[dict(a) for a in TINY_ARCH])
    summary = train(cfg, progress=False, log=lambda m: None)
    model = load_model(out)  # the loader accepts it
    assert model.trained and model.scale == 2
    assert model.provenance["seed"] == seed and model.provenance["iterations"] == 60
    assert model.provenance["bias_calibration"]["patches"] == cfg.calib_patches  # the refit ran
    # the integer runtime reproduces the torch forward on the validation images
    assert abs(summary["validation"]["export_minus_torch_db"]) <= 0.05, f"seed {SESSION_SEED}"
    # lower loss than the starting point (zero last layer: the bicubic base) on training patches
    hr, lr = data.build_bank(2, names=TEXTURED, log=lambda m: None)
    lo, hi = data.sample_batch(np.random.default_rng(seed), hr, lr, 2, 16, 16)
    from iqlut_gpu.model import zero_model
    before = _mse(module_from_model(zero_model(2, arch=TINY_ARCH)), lo, hi)
    after = _mse(module_from_model(model), lo, hi)
    assert after < before, f"seed {SESSION_SEED}: mse {after} !< {before}"
    # and the NumPy reference runs it, equal to the torch module
    plane = lo[0]
    np.testing.assert_array_equal(
        reference.upscale_plane(model, plane),
        module_from_model(model)(torch.from_numpy(plane.astype(np.float64))[None, None])[0, 0]
        .detach().numpy())


def test_resume_continues_from_checkpoint(cache):
    out = cache / "tiny_x3.safetensors"
    base = dict(scale=3, out=str(out), time_budget=1e9, seed=1, batch=2, patch=12, lam=0.0,
                val_every=1e9, ckpt_every=0.0, val_crop=48, images=TEXTURED[:1], limit_val=1,
                arch=[dict(a) for a in TINY_ARCH])
    train(Config(max_iters=4, **base), progress=False, log=lambda m: None)
    assert out.with_name(out.name + ".ckpt").exists()
    s = train(Config(max_iters=7, **base), resume=True, progress=False, log=lambda m: None)
    assert s["iterations"] == 7
    assert load_model(out).provenance["iterations"] == 7


def test_resume_keeps_the_checkpoints_layers(cache):
    """A run started with other layers (``--hidden``, or an older default) resumes with the
    layers it has; asking for other layers explicitly is an error, not a silent restart."""
    out = cache / "tiny_x3.safetensors"
    base = dict(scale=3, out=str(out), time_budget=1e9, seed=1, batch=2, patch=12, lam=0.0,
                val_every=1e9, ckpt_every=0.0, val_crop=48, images=TEXTURED[:1], limit_val=1)
    train(Config(max_iters=3, arch=[dict(a) for a in TINY_ARCH], **base), progress=False,
          log=lambda m: None)
    s = train(Config(max_iters=5, **base), resume=True, progress=False, log=lambda m: None)
    assert s["iterations"] == 5
    assert [layer.L for layer in load_model(out).layers] == [a["L"] for a in TINY_ARCH]
    with pytest.raises(ValueError, match=r"has 3 layers \(windows \[3, 3, 1\], width 4\), "
                       r"not the 4 \(windows \[5, 3, 3, 3\], width 8\)"):
        train(Config(max_iters=6, hidden=2, **base), resume=True, progress=False,
              log=lambda m: None)
    with pytest.raises(ValueError, match=r"not the 3 \(windows \[5, 3, 3\], width 8\) asked for"):
        train(Config(max_iters=6, hidden=1, last_k=3, **base), resume=True, progress=False,
              log=lambda m: None)
    with pytest.raises(ValueError, match=r"not the 3 \(windows \[5, 1, 3\], width 8\) asked for"):
        train(Config(max_iters=6, hidden_k=[1], **base), resume=True, progress=False,
              log=lambda m: None)
    with pytest.raises(ValueError, match=r"not the 4 \(windows \[5, 3, 3, 3\], width 12\)"):
        train(Config(max_iters=6, width=12, **base), resume=True, progress=False,
              log=lambda m: None)


def test_hidden_sets_the_number_of_8_to_8_layers():
    assert iqlut_arch(4) == iqlut_arch(4, hidden=2) and len(iqlut_arch(2)) == 4
    arch = iqlut_arch(2, hidden=5)
    assert len(arch) == 7 and all(a["residual"] and a["c_in"] == a["c_out"] == 8 for a in arch[1:-1])
    assert arch[0] == iqlut_arch(2)[0] and arch[-1] == iqlut_arch(2)[-1]
    assert [(a["L"], a["residual"]) for a in ecnn_arch(2, hidden=5)] == [(256, False)] * 7
    assert len(iqlut_arch(3, hidden=0)) == 2
    with pytest.raises(ValueError):
        iqlut_arch(3, hidden=-1)


def test_last_k_sets_the_last_layers_window():
    assert iqlut_arch(4, last_k=3) == iqlut_arch(4)
    arch = iqlut_arch(4, hidden=3, last_k=1)
    assert [a["k"] for a in arch] == [5, 3, 3, 3, 1]
    assert arch[:-1] == iqlut_arch(4, hidden=3)[:-1]
    assert dict(arch[-1], k=3) == iqlut_arch(4)[-1]
    assert [a["k"] for a in ecnn_arch(4, hidden=3, last_k=1)] == [5, 3, 3, 3, 1]
    for bad in (0, 2, -1):
        with pytest.raises(ValueError, match="last_k must be odd"):
            iqlut_arch(4, last_k=bad)
    # a k = 1 last layer holds 1/9 of a k = 3 one: one more hidden layer for less storage,
    # and the storage rule still holds
    iq, ecnn = arch_storage(arch, 4)
    assert iq < arch_storage(iqlut_arch(4), 4)[0] and ecnn / iq >= 15.0


def test_hidden_k_sets_each_hidden_layers_window():
    assert iqlut_arch(4, hidden_k=(3, 3)) == iqlut_arch(4) == iqlut_arch(4, hidden=2, hidden_k=[3, 3])
    arch = iqlut_arch(4, last_k=1, hidden_k=(3, 3, 3, 1, 1))
    assert [a["k"] for a in arch] == [5, 3, 3, 3, 1, 1, 1]
    assert arch[:4] == iqlut_arch(4, hidden=3)[:4] and arch[-1] == iqlut_arch(4, last_k=1)[-1]
    assert all(a["residual"] and a["c_in"] == a["c_out"] == 8 and a["L"] == 16 for a in arch[1:-1])
    assert [a["k"] for a in ecnn_arch(4, 5, 1, (3, 3, 3, 1, 1))] == [5, 3, 3, 3, 1, 1, 1]
    assert len(iqlut_arch(2, hidden_k=())) == 2
    with pytest.raises(ValueError, match="hidden_k gives 5 windows for 4 hidden layers"):
        iqlut_arch(4, hidden=4, hidden_k=(3, 3, 3, 1, 1))
    for bad in (0, 2, -3):
        with pytest.raises(ValueError, match="hidden_k must be odd"):
            iqlut_arch(4, hidden_k=(3, bad))
    # a k = 1 residual layer is a ninth of a k = 3 one: two of them keep the storage rule
    iq, ecnn = arch_storage(arch, 4)
    assert iq - arch_storage(iqlut_arch(4, hidden=3, last_k=1), 4)[0] == 2 * (8 * 16 * 8 + 8 * 16 + 4 * 8)
    assert ecnn / iq >= 15.0


def test_a_net_started_from_a_model_with_k1_layers_added_computes_that_model():
    """``--init`` with ``--hidden-k ...,1,1``: the added k = 1 residual layers start as the
    identity too, and the net (and its export) computes the model exactly."""
    from iqlut_gpu.model import default_model

    model = default_model(4).with_ensemble(1)
    ks = [layer.k for layer in model.layers[1:-1]]
    net = LUTNet(4, iqlut_arch(4, last_k=model.layers[-1].k, hidden_k=ks + [1, 1])).double()
    assert net.load_model(model) == 2
    net.freeze_knots()
    net.start_quant(like=model)
    planes = np.random.default_rng(SESSION_SEED).integers(0, 256, (2, 11, 14), dtype=np.uint8)
    with torch.no_grad():
        got = net(torch.from_numpy(planes.astype(np.float64))[:, None])[:, 0].numpy()
    want = reference.upscale_planes(model, planes)
    np.testing.assert_array_equal(got, want, err_msg=f"seed {SESSION_SEED}")
    exported = net.export()
    assert [layer.k for layer in exported.layers][-3:] == [1, 1, model.layers[-1].k]
    np.testing.assert_array_equal(reference.upscale_planes(exported, planes), want,
                                  err_msg=f"seed {SESSION_SEED}")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_a_net_started_from_a_model_computes_that_model(scale):
    """``LUTNet.load_model``: the shipped model's layers in order, two extra residual layers
    that start as the identity; with the model's knots (which the float knots round back to)
    and shifts, the net's forward is the model's integer output exactly."""
    from iqlut_gpu.model import default_model

    model = default_model(scale).with_ensemble(1)  # the net is one pass
    arch = iqlut_arch(scale, hidden=len(model.layers), last_k=model.layers[-1].k)
    net = LUTNet(scale, arch).double()
    assert net.load_model(model) == 2
    net.freeze_knots()
    sources = list(model.layers[:-1]) + [None, None, model.layers[-1]]
    for layer, src in zip(net.layers, sources):
        if src is not None:
            np.testing.assert_array_equal(layer.rounded_knots(), src.knots)
            layer.shift.fill_(src.shift)
        layer.quant.fill_(True)
    planes = np.random.default_rng(SESSION_SEED).integers(0, 256, (2, 13, 17), dtype=np.uint8)
    with torch.no_grad():
        got = net(torch.from_numpy(planes.astype(np.float64))[:, None])[:, 0].numpy()
    np.testing.assert_array_equal(got, reference.upscale_planes(model, planes),
                                  err_msg=f"seed {SESSION_SEED}")
    # an identity layer exports as zero tables: the exported model computes the same
    np.testing.assert_array_equal(reference.upscale_planes(net.export(), planes), got)


def test_width_sets_the_channels_between_layers():
    arch = iqlut_arch(2, hidden=4, width=12)
    assert [(a["c_in"], a["c_out"]) for a in arch] == [(1, 12)] + [(12, 12)] * 4 + [(12, None)]
    assert [dict(a, c_in=0, c_out=0) for a in arch] == [
        dict(a, c_in=0, c_out=0) for a in iqlut_arch(2, hidden=4)]
    assert iqlut_arch(4, width=8) == iqlut_arch(4)
    assert [(a["c_in"], a["L"]) for a in ecnn_arch(2, width=12)][1:] == [(12, 256)] * 3
    for bad in (0, 33):
        with pytest.raises(ValueError, match="width must be"):
            iqlut_arch(2, width=bad)
    # tables grow with the width, the ECNN's with it: the storage rule holds at any width
    iq, ecnn = arch_storage(arch, 2)
    assert iq > 2 * arch_storage(iqlut_arch(2, hidden=4), 2)[0] and ecnn / iq >= 15.0


def test_a_wider_net_started_from_a_model_computes_that_model():
    """``--init`` with ``--width``: the model fills each layer's first channels, tables from
    the extra channels are zero, so the net (and its export) computes the model exactly
    while the extra channels already carry new features of the input."""
    from iqlut_gpu.model import default_model

    torch.manual_seed(SESSION_SEED)
    model = default_model(2).with_ensemble(1)
    hidden = len(model.layers) - 2
    net = LUTNet(2, iqlut_arch(2, hidden=hidden + 1, width=12)).double()
    assert net.load_model(model) == 1
    net.freeze_knots()
    net.start_quant(like=model)
    for layer, src in zip(net.layers[1:-2], model.layers[1:-1]):
        np.testing.assert_array_equal(layer.rounded_knots()[:8], src.knots)
    planes = np.random.default_rng(SESSION_SEED).integers(0, 256, (2, 11, 14), dtype=np.uint8)
    x = torch.from_numpy(planes.astype(np.float64))[:, None]
    with torch.no_grad():
        got = net(x)[:, 0].numpy()
        extra = torch.clamp(128.0 + net.layers[0].delta(x), 0, 255)[:, 8:]
    want = reference.upscale_planes(model, planes)
    np.testing.assert_array_equal(got, want, err_msg=f"seed {SESSION_SEED}")
    assert float(extra.std()) > 1.0, "the extra channels should start as features, not constants"
    exported = net.export()
    assert [(layer.c_in, layer.c_out) for layer in exported.layers][:2] == [(1, 12), (12, 12)]
    np.testing.assert_array_equal(reference.upscale_planes(exported, planes), want,
                                  err_msg=f"seed {SESSION_SEED}")
    with pytest.raises(ValueError, match="cannot start a layer"):  # never narrower
        LUTNet(2, iqlut_arch(2, hidden=hidden, width=6)).load_model(model)


def test_load_model_refuses_nets_it_cannot_start():
    from iqlut_gpu.model import default_model

    model = default_model(3)
    with pytest.raises(ValueError, match="cannot start 3 layers"):
        LUTNet(3, iqlut_arch(3, hidden=1)).load_model(model)
    with pytest.raises(ValueError, match="x3 over bicubic"):
        LUTNet(2, iqlut_arch(2)).load_model(model)
    with pytest.raises(ValueError, match="cannot start a layer"):
        LUTNet(3, ecnn_arch(3, hidden=len(model.layers) - 2), kind="ecnn").load_model(model)


def test_init_starts_a_run_from_a_model_and_resume_remembers_it(cache):
    first = cache / "tiny_x2.safetensors"
    base = dict(scale=2, time_budget=1e9, seed=5, batch=2, patch=12, lam=0.5, teacher_width=8,
                val_every=1e9, ckpt_every=0.0, val_crop=48, images=TEXTURED[:1], limit_val=1)
    train(Config(out=str(first), max_iters=3, arch=[dict(a) for a in TINY_ARCH], **base),
          progress=False, log=lambda m: None)
    # one layer deeper and two channels wider (--hidden, --width)
    deeper = [dict(TINY_ARCH[0], c_out=6)] + [dict(TINY_ARCH[1], c_in=6, c_out=6)] * 2 + [
        dict(TINY_ARCH[2], c_in=6)]
    out = cache / "warm" / "tiny_x2.safetensors"
    logs = []
    train(Config(out=str(out), max_iters=2, init=str(first), arch=[dict(a) for a in deeper], **base),
          progress=False, log=logs.append)
    assert any("1 identity layers added, widened from 4 to 6 channels" in m for m in logs), logs
    note = load_model(out).provenance["init"]
    assert note["file"] == first.name and note["layers_added"] == 1 and note["iterations"] == 3
    assert note["width_from"] == 4
    # resumed without --init, the run still says where it started
    train(Config(out=str(out), max_iters=4, arch=[dict(a) for a in deeper], **base), resume=True,
          progress=False, log=lambda m: None)
    model = load_model(out)
    assert model.provenance["init"] == note and model.provenance["iterations"] == 4


def test_resume_with_a_larger_budget_stretches_the_int8_stage(cache):
    out = cache / "tiny_x2.safetensors"
    base = dict(scale=2, out=str(out), time_budget=1e9, seed=3, batch=2, patch=12, lam=0.0,
                val_every=1e9, ckpt_every=0.0, val_crop=48, images=TEXTURED[:1], limit_val=1,
                arch=[dict(a) for a in TINY_ARCH])
    train(Config(max_iters=5, **base), progress=False, log=lambda m: None)  # int8 from it 4
    ckpt = torch.load(out.with_name(out.name + ".ckpt"), weights_only=True)
    assert ckpt["quantised"] and ckpt["quant_point"][1] == 4
    logs = []
    s = train(Config(max_iters=20, **base), resume=True, progress=False, log=logs.append)
    assert s["iterations"] == 20
    ckpt = torch.load(out.with_name(out.name + ".ckpt"), weights_only=True)
    assert ckpt["quant_point"][1] == 4  # stayed in the int8 stage, which began at iteration 4
    assert not any("knots frozen" in m for m in logs)
    assert abs(s["validation"]["export_minus_torch_db"]) <= 0.05


def test_sigterm_saves_a_checkpoint_like_ctrl_c(cache, monkeypatch):
    import os
    import signal
    out = cache / "tiny_x2.safetensors"
    real, calls = data.sample_batch, []

    def sample_then_terminate(*a, **kw):
        calls.append(1)
        if len(calls) == 3:  # a scheduler's kill arrives during the third step
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(data, "sample_batch", sample_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        train(Config(scale=2, out=str(out), time_budget=1e9, max_iters=50, seed=1, batch=2,
                     patch=12, lam=0.0, val_every=1e9, ckpt_every=1e9, val_crop=48,
                     images=TEXTURED[:1], limit_val=1, arch=[dict(a) for a in TINY_ARCH]),
              progress=False, log=lambda m: None)
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
    ckpt = torch.load(out.with_name(out.name + ".ckpt"), weights_only=True)
    assert ckpt["iteration"] == 2 and not out.exists()


def test_lr_schedule_and_suspended_steps():
    from iqlut_gpu.train.trainer import QUANT_AT, _lr_factor, counted_step_time
    assert _lr_factor(0.0) == pytest.approx(1.0)
    assert _lr_factor(QUANT_AT, QUANT_AT) == pytest.approx(0.3)
    assert _lr_factor(1.0, QUANT_AT) == pytest.approx(0.0)
    # an extended run (its int8 stage began at 0.3 of the new budget) continues the cosine
    assert _lr_factor(0.3, 0.3) == pytest.approx(0.3)
    assert 0.0 < _lr_factor(0.65, 0.3) < 0.3
    assert _lr_factor(0.65, 0.3) == pytest.approx(0.15)
    # a step of 600 s when steps take 0.5 s was a suspension: it counts as a usual step
    assert counted_step_time(600.0, 0.5) == 0.5
    assert counted_step_time(0.7, 0.5) == 0.7
    assert counted_step_time(3.0, None) == 3.0


@pytest.mark.parametrize("kind", ["iqlut", "ecnn"])
def test_quantised_net_equals_its_export(kind):
    torch.manual_seed(SESSION_SEED)
    # float64 throughout: the export rounds the weights the net holds, so the net must not
    # change precision after it (theta * 255 in float32 and in float64 can round to
    # different int8 steps, which made this test fail for rare seeds, e.g. 50777586)
    net = LUTNet(3, (iqlut_arch if kind == "iqlut" else ecnn_arch)(3), kind=kind).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.01)
    net.freeze_knots()
    net.start_quant()
    model = net.export()
    x = torch.randint(0, 256, (2, 1, 9, 14)).double()
    with torch.no_grad():
        a = net(x)
        b = module_from_model(model)(x)
    assert torch.equal(a, b), f"seed {SESSION_SEED}"


@pytest.mark.parametrize("kind", ["iqlut", "ecnn"])
def test_bias_refit_zeroes_the_mean_error_and_keeps_the_export_exact(kind, cache):
    from iqlut_gpu.train.calibrate import calibrate_bias, phase_errors
    torch.manual_seed(SESSION_SEED)
    arch = [dict(a) for a in (TINY_ARCH if kind == "iqlut" else ecnn_arch(2, 0))]
    net = LUTNet(2, arch, kind=kind).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.002)
        net.layers[-1].beta += torch.tensor([0.9, -0.6, 0.3, 1.4], dtype=torch.float64) / 255.0
    net.freeze_knots()
    net.start_quant()
    hr, lr = data.build_bank(2, names=TEXTURED[:1], log=lambda m: None)
    rng = np.random.default_rng(SESSION_SEED)
    lo, hi = data.sample_batch(rng, hr, lr, 2, 256, 16)  # other patches than the refit's
    before, mse_before = phase_errors(net, lo, hi, "cpu")
    report = calibrate_bias(net, hr, lr, 16, "cpu", seed=SESSION_SEED % 1000, patches=1024)
    after, mse_after = phase_errors(net, lo, hi, "cpu")
    assert report["rounds"] >= 1 and report["mse_after"] < report["mse_before"]
    assert np.abs(report["mean_error_after"]).max() < 0.1, f"seed {SESSION_SEED}: {report}"
    # on patches it did not see: the offsets are gone up to sampling noise
    assert np.abs(before).max() > 0.25, f"seed {SESSION_SEED}: {before}"
    assert np.abs(after).max() < 0.2 and mse_after < mse_before, f"seed {SESSION_SEED}: {after}"
    model = net.export()  # the integer model computes the refit net exactly
    x = torch.from_numpy(lo[:8]).double()[:, None]
    with torch.no_grad():
        assert torch.equal(net(x), module_from_model(model)(x)), f"seed {SESSION_SEED}"


def test_shipped_architecture_meets_the_storage_rule():
    for s in (2, 3, 4):
        iq, ecnn = arch_storage(iqlut_arch(s), s)
        assert ecnn / iq >= 15.0
    assert arch_storage(iqlut_arch(4), 4)[0] <= 64 * 1024


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ensemble_net_is_the_runtime_ensemble_bit_for_bit(n):
    from iqlut_gpu.train.net import EnsembleNet
    torch.manual_seed(SESSION_SEED + n)
    net = LUTNet(3, iqlut_arch(3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.01)
    net.freeze_knots()
    net.start_quant()
    model = net.export().with_ensemble(n)
    rng = np.random.default_rng(SESSION_SEED)
    for shape in ((2, 9, 14), (1, 12, 12)):  # not square (pass by pass), square (batched)
        planes = rng.integers(0, 256, shape, dtype=np.uint8)
        with torch.no_grad():
            got = EnsembleNet(net, n)(torch.from_numpy(planes.astype(np.float64))[:, None])[:, 0]
        np.testing.assert_array_equal(got.numpy(), reference.upscale_planes(model, planes),
                                      err_msg=f"seed {SESSION_SEED}, n {n}, shape {shape}")


def test_phase_map_says_which_channels_an_ensemble_phase_averages():
    from iqlut_gpu.train.calibrate import phase_map
    np.testing.assert_array_equal(phase_map(3, 1), np.eye(9))
    for r in (2, 3, 4):
        for n in (2, 4, 8):
            m = phase_map(r, n)
            np.testing.assert_allclose(m.sum(axis=1), 1.0)  # every phase: n passes
            np.testing.assert_allclose(m.sum(axis=0), 1.0)  # every channel: n phases in all
    # x2 under four rotations: each phase is the mean of all four channels
    np.testing.assert_allclose(phase_map(2, 4), np.full((4, 4), 0.25))
    # x3: the centre phase is channel 4 in every orientation
    assert phase_map(3, 8)[4, 4] == 1.0


def test_ensemble_training_exports_the_ensemble_it_trained(cache):
    torch.set_num_threads(1)
    seed = SESSION_SEED % 1000
    out = cache / "tiny_ens_x2.safetensors"
    cfg = Config(scale=2, out=str(out), time_budget=1e9, max_iters=20, seed=seed, batch=4,
                 patch=16, lam=0.5, teacher_width=8, val_every=1e9, ckpt_every=1e9,
                 val_crop=48, images=TEXTURED, limit_val=2, calib_patches=512,
                 arch=[dict(a) for a in TINY_ARCH], ensemble=4)
    summary = train(cfg, progress=False, log=lambda m: None)
    model = load_model(out)
    assert model.ensemble == 4 and "4-pass" in model.provenance["ensemble_how"]
    # the runtime (four passes, integer mean) is the torch ensemble it was trained as, exactly
    assert summary["validation"]["export_minus_torch_db"] == 0.0, f"seed {SESSION_SEED}"
    # the refit saw the ensemble: on its own (fixed) sample, the mean error is (near) zero
    assert np.abs(model.provenance["bias_calibration"]["mean_error_after"]).max() < 0.1, \
        f"seed {SESSION_SEED}: {model.provenance['bias_calibration']}"


def test_int8_only_starts_quantised_from_the_model_exactly(cache):
    """With int8_only the run starts in the int8 stage from the model it was given: zero
    steps export that model's function exactly (same knots; tables exact at the shift)."""
    torch.set_num_threads(1)
    seed = SESSION_SEED % 1000
    src = cache / "src_x2.safetensors"
    train(Config(scale=2, out=str(src), time_budget=1e9, max_iters=30, seed=seed, batch=4, patch=16,
                 lam=0.0, val_every=1e9, ckpt_every=1e9, val_crop=48, images=TEXTURED, limit_val=1,
                 calib_patches=0, arch=[dict(a) for a in TINY_ARCH]), progress=False, log=lambda m: None)
    out = cache / "ft_x2.safetensors"
    cfg = Config(scale=2, out=str(out), time_budget=1e9, max_iters=1, lr=0.0, seed=seed, batch=4,
                 patch=16, lam=0.0, val_every=1e9, ckpt_every=1e9, val_crop=48, images=TEXTURED,
                 limit_val=1, calib_patches=0, arch=[dict(a) for a in TINY_ARCH], init=str(src),
                 int8_only=True)
    train(cfg, progress=False, log=lambda m: None)
    a, b = load_model(src), load_model(out)
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_array_equal(la.knots, lb.knots)
    planes = np.random.default_rng(SESSION_SEED).integers(0, 256, (2, 11, 13), dtype=np.uint8)
    np.testing.assert_array_equal(reference.upscale_planes(a, planes),
                                  reference.upscale_planes(b, planes), err_msg=f"seed {SESSION_SEED}")
    with pytest.raises(ValueError, match="--int8-only fine-tunes a trained model"):
        train(Config(scale=2, out=str(cache / "x.safetensors"), int8_only=True, max_iters=1,
                     images=TEXTURED, limit_val=1), progress=False, log=lambda m: None)
