"""Tiles with halos: bit-identical to untiled runs; bounded memory; OOM retry."""

import tracemalloc

import numpy as np
import pytest

import cases
from iqlut_gpu import api, backends, upscale
from iqlut_gpu.tiling import spans


def test_spans_cover_exactly_once():
    for n, tile, halo in [(1, 4, 3), (10, 3, 2), (17, 17, 5), (100, 7, 0)]:
        covered = []
        for s0, s1, r0, r1 in spans(n, tile, halo):
            assert r0 <= s0 < s1 <= r1 and r0 == max(0, s0 - halo) and r1 == min(n, s1 + halo)
            covered += range(s0, s1)
        assert covered == list(range(n))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_tiled_equals_untiled(backend):
    for seed, rng in cases.case_rngs(3, salt=41):
        scale = int(rng.choice([2, 3, 4]))
        model = cases.default_arch_model(rng, scale) if rng.random() < 0.5 else cases.random_model(rng, scale)
        h, w = int(rng.integers(9, 30)), int(rng.integers(9, 30))
        img = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        whole = upscale(img, scale, model=model, backend=backend, tile=10_000)
        for tile in ((1, 4, 7) if backend == "cpu" else (8,)):  # the reference is slow
            tiled = upscale(img, scale, model=model, backend=backend, tile=tile)
            assert np.array_equal(tiled, whole), f"seed {seed}, tile {tile}, {h}x{w}"


def test_large_image_peak_memory_is_bounded():
    rng = np.random.default_rng()
    model = cases.default_arch_model(rng, 2)
    H = W = 1500
    img = rng.integers(0, 256, size=(H, W)).astype(np.uint8)
    upscale(img[:40, :40], 2, model=model, backend="cpu")  # compile outside the measurement
    tile = 256
    tracemalloc.start()
    out = upscale(img, 2, model=model, backend="cpu", tile=tile)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    halo = model.receptive_radius
    io_bytes = H * W + 2 * (H * 2) * (W * 2)  # input copy, output planes, output image
    per_tile = (tile + 2 * halo) ** 2 * (2 * 8 + 4 * 4)  # two 8-channel buffers + x2 output
    assert peak < io_bytes + 2 * per_tile, (peak, io_bytes, per_tile)
    # untiled the 8-channel layer buffers alone would be 2 * 8 * H * W bytes:
    assert peak < io_bytes + 2 * 8 * H * W // 4
    # spot-check the content against an untiled run of a corner
    corner = upscale(img[:50, :60], 2, model=model, backend="cpu", tile=10_000)
    halo_rows = 2 * (model.receptive_radius + 1)
    assert np.array_equal(out[:100 - halo_rows, :120 - halo_rows], corner[:100 - halo_rows, :120 - halo_rows])


def test_out_of_memory_retries_with_smaller_tiles(monkeypatch):
    rng = np.random.default_rng()
    model = cases.random_model(rng, scale=2)
    img = rng.integers(0, 256, size=(200, 150)).astype(np.uint8)
    expected = upscale(img, 2, model=model, backend="reference")
    real = backends.run_planes
    seen = []

    def picky(name, model, planes, mode="interp"):
        seen.append(planes.shape[1:])
        if max(planes.shape[1:]) > 100:
            raise backends.DeviceOutOfMemory("out of device memory (test)")
        return real("reference", model, planes, mode)

    monkeypatch.setattr(backends, "run_planes", picky)
    got = api.upscale(img, 2, model=model, backend="reference", tile=256)
    assert np.array_equal(got, expected)
    # the whole image failed, then 100-pixel tiles (read with their halo) failed, 50 worked
    assert seen[0] == (200, 150) and max(seen[1]) > 100 and all(max(s) <= 100 for s in seen[-4:])


def test_out_of_memory_gives_up_at_the_smallest_tile(monkeypatch):
    def always(name, model, planes, mode="interp"):
        raise backends.DeviceOutOfMemory("out of device memory (test)")

    monkeypatch.setattr(backends, "run_planes", always)
    with pytest.raises(MemoryError):
        api.upscale(np.zeros((80, 80), np.uint8), 2, backend="reference")
