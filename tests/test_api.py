"""The public API: layouts, backend selection, errors."""

import warnings

import numpy as np
import pytest

import iqlut_gpu
from iqlut_gpu import BackendUnavailable, backends, reference, upscale
from iqlut_gpu.model import zero_model


@pytest.fixture
def rng():
    return np.random.default_rng()


@pytest.mark.parametrize("shape", [(5, 6), (5, 6, 1), (5, 6, 3), (5, 6, 4), (2, 5, 6, 3), (1, 1, 1, 4)])
def test_layouts_round_trip(shape, rng):
    img = rng.integers(0, 256, size=shape).astype(np.uint8)
    out = upscale(img, 2, backend="cpu")
    r = 2
    if len(shape) == 2:
        assert out.shape == (shape[0] * r, shape[1] * r)
    elif len(shape) == 3:
        assert out.shape == (shape[0] * r, shape[1] * r, shape[2])
    else:
        assert out.shape == (shape[0], shape[1] * r, shape[2] * r, shape[3])
    assert out.dtype == np.uint8


def test_channels_are_independent_planes(rng):
    img = rng.integers(0, 256, size=(4, 5, 3)).astype(np.uint8)
    model = iqlut_gpu.default_model(3)
    out = upscale(img, 3, backend="reference")
    for c in range(3):
        assert np.array_equal(out[:, :, c], reference.upscale_planes(model, img[None, :, :, c])[0])


def test_shipped_models_are_trained_and_beat_their_own_bicubic_base():
    """On the bundled photo (downscaled with MATLAB bicubic), each shipped model must be
    closer to the original than its fixed bicubic base alone: the tables learned detail."""
    import os

    from PIL import Image

    from iqlut_gpu.evaluate import imresize, psnr, shave

    photo = os.path.join(os.path.dirname(__file__), "..", "iqlut_gpu", "data", "astronaut_256.png")
    hr = np.asarray(Image.open(photo).convert("L"))[:240, :240]
    for scale in (2, 3, 4):
        model = iqlut_gpu.default_model(scale)
        assert model.trained
        lr = imresize(hr, 1 / scale)
        base = reference.fixed_upsample(lr, scale, model.upsample).astype(np.uint8)
        sr = upscale(lr, scale, backend="cpu")
        gain = psnr(shave(sr, scale), shave(hr, scale)) - psnr(shave(base, scale), shave(hr, scale))
        assert gain > 0.3, (scale, gain)


SHIPPED_HIDDEN = {2: 4, 3: 4, 4: 3}  # residual 8->8 layers of each shipped IQ-LUT model
SHIPPED_LAST_K = {2: 3, 3: 3, 4: 1}  # the last layer's window (``--last-k``)
SHIPPED_ENSEMBLE = {2: 1, 3: 1, 4: 1}  # one pass by default (issue #22); --ensemble N opts in


def test_shipped_models_have_the_default_architecture():
    """The shipped IQ-LUT and ECNN files have the shapes training uses for their scale
    (``DEFAULT_ARCH``, x2 and x3 with four residual layers (``--hidden 4``), x4 with three
    and a k = 1 last layer (``--hidden 3 --last-k 1``); ECNN: DEFAULT_ARCH's shapes, 256
    uniform knots, no residual blocks); x2 and x3 run as 4-rotation ensembles."""
    from iqlut_gpu.model import DEFAULT_ARCH, default_model_path, load_model

    for scale in (2, 3, 4):
        want = [(s["c_in"], s["c_out"] or scale * scale, s["k"]) for s in DEFAULT_ARCH]
        specs = [DEFAULT_ARCH[0]] + [DEFAULT_ARCH[1]] * SHIPPED_HIDDEN[scale] + \
            [dict(DEFAULT_ARCH[-1], k=SHIPPED_LAST_K[scale])]
        iq = iqlut_gpu.default_model(scale)
        assert [(x.c_in, x.c_out, x.k) for x in iq.layers] == \
            [(s["c_in"], s["c_out"] or scale * scale, s["k"]) for s in specs], scale
        assert [(x.L, x.residual) for x in iq.layers] == [(s["L"], s["residual"]) for s in specs]
        assert iq.ensemble == SHIPPED_ENSEMBLE[scale]
        assert iq.ecnn_storage_bytes() / iq.storage_bytes() >= 15
        assert scale != 4 or iq.storage_bytes() <= 64 * 1024
        ecnn = load_model(default_model_path(scale).with_name(f"ecnn_x{scale}.safetensors"))
        assert [(x.c_in, x.c_out, x.k) for x in ecnn.layers] == want, scale
        assert all(x.L == 256 and not x.residual for x in ecnn.layers), scale


def test_non_contiguous_and_negative_stride_views(rng):
    base = rng.integers(0, 256, size=(12, 14, 3)).astype(np.uint8)
    for view in (base[::2, ::-1], base[:, :, ::-1], base.transpose(1, 0, 2), base[1:-1, 2:, :]):
        assert np.array_equal(upscale(view, 2, backend="cpu"),
                              upscale(np.ascontiguousarray(view), 2, backend="cpu"))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bad_inputs_raise_the_same_errors_on_every_backend(backend):
    with pytest.raises(TypeError, match="uint8"):
        upscale(np.zeros((4, 4), np.float32), 2, backend=backend)
    with pytest.raises(TypeError, match="numpy array"):
        upscale([[1, 2], [3, 4]], 2, backend=backend)
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        upscale(np.zeros((4, 4, 2), np.uint8), 2, backend=backend)
    with pytest.raises(ValueError, match=r"\(H,W\)"):
        upscale(np.zeros((4,), np.uint8), 2, backend=backend)
    with pytest.raises(ValueError, match="empty"):
        upscale(np.zeros((0, 4), np.uint8), 2, backend=backend)
    with pytest.raises(ValueError, match="scale must be one of"):
        upscale(np.zeros((4, 4), np.uint8), 5, backend=backend)
    with pytest.raises(ValueError, match="model is for x2"):
        upscale(np.zeros((4, 4), np.uint8), 3, model=zero_model(2), backend=backend)


def test_unknown_backend_and_mode():
    with pytest.raises(ValueError, match="backend must be one of"):
        upscale(np.zeros((2, 2), np.uint8), 2, backend="tpu")
    with pytest.raises(ValueError, match="mode must be one of"):
        upscale(np.zeros((2, 2), np.uint8), 2, mode="fast")


def test_environment_variable_overrides_auto(monkeypatch, rng):
    monkeypatch.setenv("IQLUT_BACKEND", "reference")
    assert backends.resolve("auto") == "reference"
    assert backends.resolve("cpu") == "cpu"  # an explicit choice wins over the variable
    monkeypatch.setenv("IQLUT_BACKEND", "bogus")
    with pytest.raises(ValueError, match="IQLUT_BACKEND"):
        backends.resolve("auto")


def test_auto_falls_back_to_cpu_with_a_warning_and_cuda_raises_with_reason(monkeypatch):
    monkeypatch.delenv("IQLUT_BACKEND", raising=False)
    monkeypatch.setitem(backends.PROBES, "cuda", lambda: "no CUDA device (test)")
    monkeypatch.setattr(backends, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match="no CUDA device"):
        assert backends.resolve("auto") == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve("auto") == "cpu"  # warned once only
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        backends.resolve("cuda")


def test_importing_the_package_needs_no_torch_or_cupy():
    import subprocess
    import sys

    code = ("import sys, iqlut_gpu, iqlut_gpu.cli; "
            "bad = [m for m in ('torch', 'cupy', 'numba') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_model_path_accepted(tmp_path, rng):
    path = tmp_path / "m.safetensors"
    iqlut_gpu.save_model(zero_model(2, upsample="bilinear"), path)
    img = rng.integers(0, 256, size=(3, 3)).astype(np.uint8)
    assert np.array_equal(upscale(img, 2, model=path, backend="cpu"),
                          reference.fixed_upsample(img, 2, "bilinear").astype(np.uint8))


def test_auto_mode_picks_the_measured_winner_and_all_modes_agree(rng):
    assert backends.concrete_mode("cpu", "auto") == "expanded"
    assert backends.concrete_mode("cuda", "auto") == "expanded"  # measured on an H200
    assert backends.concrete_mode("cpu", "interp") == "interp"
    img = rng.integers(0, 256, size=(7, 9, 3)).astype(np.uint8)
    model = iqlut_gpu.default_model(2)
    results = [upscale(img, 2, model=model, backend="cpu", mode=m) for m in ("auto", "interp", "expanded")]
    assert all(np.array_equal(results[0], r) for r in results[1:])
