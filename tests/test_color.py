"""Luma mode: the integer luma, the detail added to each channel's bicubic base, the path."""

import numpy as np
import pytest

import cases
from iqlut_gpu import Upscaler, reference, upscale, upscale_frames
from iqlut_gpu import color
from iqlut_gpu.kernels import numba_color


def test_luma_is_bt601_full_range_rounded_and_grays_keep_their_value():
    v = np.arange(1 << 24, dtype=np.uint32)
    r, g, b = (v >> 16).astype(np.uint8), ((v >> 8) & 255).astype(np.uint8), (v & 255).astype(np.uint8)
    y = color.luma(r, g, b)
    assert y.dtype == np.uint8
    exact = 0.299 * r.astype(np.float64) + 0.587 * g + 0.114 * b
    # rounding (0.5) plus the 16-bit coefficients' own rounding (< 0.01 over 3 * 255)
    assert np.abs(y - exact).max() <= 0.51
    gray = (r == g) & (g == b)
    assert np.array_equal(y[gray], r[gray])


def test_join_adds_the_luma_detail_to_each_channel_base_and_keeps_alpha():
    for seed, rng in cases.case_rngs(3, salt=870):
        n, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
        y = rng.integers(0, 256, size=(n, h, w), dtype=np.int64).astype(np.uint8)
        base = rng.integers(0, 256, size=(n * 5, h, w), dtype=np.int64).astype(np.uint8)
        out = color.join_planes(y, base, 4).reshape(n, 4, h, w).astype(np.int64)
        bb = base.reshape(n, 5, h, w).astype(np.int64)
        for c in range(3):
            want = np.clip(bb[:, c + 1] + y.astype(np.int64) - bb[:, 0], 0, 255)
            assert np.array_equal(out[:, c], want), f"seed {seed} channel {c}"
        assert np.array_equal(out[:, 3], bb[:, 4]), f"seed {seed} alpha"


def test_gray_rgb_pixels_get_what_the_model_gives_the_gray_plane():
    rng = np.random.default_rng(cases.SESSION_SEED)
    model = cases.random_model(rng)
    gray = rng.integers(0, 256, size=(9, 8), dtype=np.int64).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    want = upscale(gray, model.scale, model=model, backend="reference")
    got = upscale(rgb, model.scale, model=model, backend="reference", color="luma")
    for c in range(3):
        assert np.array_equal(got[..., c], want), f"seed {cases.SESSION_SEED} channel {c}"


@pytest.mark.parametrize("channels", [3, 4])
def test_numba_kernels_equal_the_numpy_reference(channels):
    for seed, rng in cases.case_rngs(3, salt=900 + channels):
        n, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 20)), int(rng.integers(1, 20))
        planes = rng.integers(0, 256, size=(n * channels, h, w), dtype=np.int64).astype(np.uint8)
        want = color.split_planes(planes, channels)
        got = numba_color.split_planes(planes, channels)
        for a, b in zip(want, got):
            assert np.array_equal(a, b), f"seed {seed}"
        y = rng.integers(0, 256, size=(n, 3 * h, 2 * w), dtype=np.int64).astype(np.uint8)
        base = rng.integers(0, 256, size=(n * (channels + 1), 3 * h, 2 * w),
                            dtype=np.int64).astype(np.uint8)
        assert np.array_equal(numba_color.join_planes(y, base, channels),
                              color.join_planes(y, base, channels)), f"seed {seed}"


@pytest.mark.parametrize("channels", [3, 4])
def test_parallel_interleave_is_the_transposed_copy(channels, monkeypatch):
    from iqlut_gpu import planes as planes_mod

    for seed, rng in cases.case_rngs(3, salt=950 + channels):
        n, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 40)), int(rng.integers(1, 40))
        planes = rng.integers(0, 256, size=(n * channels, h, w), dtype=np.int64).astype(np.uint8)
        want = planes.reshape(n, channels, h, w).transpose(0, 2, 3, 1)
        assert np.array_equal(numba_color.interleave(planes, n, channels), want), f"seed {seed}"
        # from_planes takes the kernel from PARALLEL_BYTES on, and gives the same arrays
        layout = planes_mod.Layout(4 if n > 1 else 3, n, channels)
        monkeypatch.setattr(planes_mod, "PARALLEL_BYTES", 0)
        fast = planes_mod.from_planes(planes, layout, interleave=numba_color.interleave)
        slow = planes_mod.from_planes(planes, layout)
        assert fast.shape == slow.shape and fast.flags.c_contiguous, f"seed {seed}"
        assert np.array_equal(fast, slow), f"seed {seed}"


def test_upscaler_and_frames_interleave_large_outputs_in_parallel(monkeypatch):
    from iqlut_gpu import backends

    calls = []
    monkeypatch.setattr(backends, "host_interleave", lambda: lambda *a: calls.append(1)
                        or numba_color.interleave(*a))
    img = np.random.default_rng(cases.SESSION_SEED).integers(0, 256, (300, 300, 3), np.uint8)
    up = Upscaler(4, backend="cpu")  # 1200x1200x3 out: above PARALLEL_BYTES
    a = up(img)
    b = next(iter(up.frames([img])))
    assert len(calls) == 2 and np.array_equal(a, b)
    monkeypatch.setattr(backends, "host_interleave", lambda: None)
    assert np.array_equal(up(img), a), f"seed {cases.SESSION_SEED}"


def test_bicubic_model_is_the_fixed_upsample():
    rng = np.random.default_rng(cases.SESSION_SEED)
    plane = rng.integers(0, 256, size=(1, 9, 13), dtype=np.int64).astype(np.uint8)
    for s in (2, 3, 4):
        got = reference.upscale_planes(color.bicubic_model(s), plane)[0]
        assert np.array_equal(got, reference.fixed_upsample(plane[0], s, "bicubic")), \
            f"x{s}, seed {cases.SESSION_SEED}"


def luma_by_hand(img, model):
    """Y through the model, its detail on each channel's bicubic base (alpha: its base),
    written out with the reference and the formulas of docs/design.md "Luma mode"."""
    r, g, b = (img[..., c].astype(np.int64) for c in range(3))
    y = ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).astype(np.uint8)
    bicubic = color.bicubic_model(model.scale)
    detail = (reference.upscale_planes(model, y[None])[0].astype(np.int64)
              - reference.upscale_planes(bicubic, y[None])[0])
    out = [np.clip(reference.upscale_planes(bicubic, img[None, ..., c])[0] + detail, 0, 255)
           for c in range(3)]
    out += [reference.upscale_planes(bicubic, img[None, ..., c])[0] for c in range(3, img.shape[-1])]
    return np.stack(out, axis=-1).astype(np.uint8)


@pytest.mark.parametrize("channels", [3, 4])
def test_luma_mode_is_y_through_the_model_on_every_backend(channels):
    for seed, rng in cases.case_rngs(2, salt=950 + channels):
        model = cases.random_model(rng)
        img = rng.integers(0, 256, size=(11, 7, channels), dtype=np.int64).astype(np.uint8)
        want = luma_by_hand(img, model)
        for backend in ("reference", "cpu"):
            got = upscale(img, model.scale, model=model, backend=backend, color="luma")
            assert np.array_equal(got, want), f"seed {seed} {backend}"
        tiled = upscale(img, model.scale, model=model, backend="cpu", color="luma", tile=4)
        assert np.array_equal(tiled, want), f"seed {seed} tiled"


def test_luma_mode_leaves_gray_images_alone_and_frames_agree():
    rng = np.random.default_rng(cases.SESSION_SEED)
    gray = rng.integers(0, 256, size=(8, 9), dtype=np.int64).astype(np.uint8)
    assert np.array_equal(upscale(gray, 2, backend="cpu", color="luma"), upscale(gray, 2, backend="cpu"))
    frames = [rng.integers(0, 256, size=s, dtype=np.int64).astype(np.uint8)
              for s in [(6, 5, 3), (6, 5, 3), (6, 5), (4, 4, 4), (6, 5, 3)]]
    got = list(upscale_frames(frames, 3, backend="cpu", batch=2, color="luma"))
    for i, (f, g) in enumerate(zip(frames, got)):
        assert np.array_equal(g, upscale(f, 3, backend="reference", color="luma")), f"frame {i}"


def test_bad_color_and_repr():
    with pytest.raises(ValueError, match="color must be one of"):
        Upscaler(2, color="yuv")
    assert "color='luma'" in repr(Upscaler(2, backend="cpu", color="luma"))


def test_cli_color_luma(run_cli, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(cases.SESSION_SEED)
    img = rng.integers(0, 256, size=(10, 12, 3), dtype=np.int64).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    proc = run_cli("upscale", "in.png", "-o", "out.png", "--scale", "2", "--color", "luma",
                   "--backend", "cpu")
    assert proc.returncode == 0, proc.stderr
    got = np.asarray(Image.open(tmp_path / "out.png"))
    assert np.array_equal(got, upscale(img, 2, backend="reference", color="luma"))
    bad = run_cli("upscale", "in.png", "-o", "x.png", "--color", "cmyk")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_eval_color_luma(run_cli, tmp_path):
    """iqlut eval --color luma scores the models in luma mode (what upscale --color luma writes)."""
    import json

    from PIL import Image

    from iqlut_gpu.evaluate import degrade, y_metrics

    photo = np.asarray(Image.open(cases.__file__.replace("tests/cases.py", "iqlut_gpu/data/astronaut_256.png")))
    img = np.ascontiguousarray(photo[60:124, 80:144, :3])
    Image.fromarray(img).save(tmp_path / "hr.png")
    proc = run_cli("eval", "--scale", "2", "--color", "luma", "--no-ecnn", "--backend", "cpu",
                   "--json", "hr.png")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    hr, lr = degrade(img, 2)
    want = y_metrics(upscale(lr, 2, backend="reference", color="luma"), hr, 2)[0]
    assert doc["color"] == "luma"
    assert abs(doc["mean"]["iqlut"]["psnr"] - want) < 1e-3
