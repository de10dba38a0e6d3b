"""The Numba kernels' specialised and general paths against the reference, bit for bit.

The row sums have compile-time-specialised loops for the shipped shapes (k = 3 and 5 with 8
lanes, k = 1 with 16, packed c_out <= 4) and a general loop for every other shape; the
stores have an 8-pixel vector body and a scalar tail. These cases reach each of them, at
the accumulator bounds the model loader allows (extreme tables, |bias| = MAX_ABS_BIAS,
shift 0 and MAX_SHIFT), in both modes.
"""

import numpy as np
import pytest

from iqlut_gpu import reference
from iqlut_gpu.backends import prepare
from iqlut_gpu.kernels import numba_cpu
from iqlut_gpu.model import MAX_ABS_BIAS, MAX_SHIFT, Layer, Model

from cases import case_rngs, random_knots


def _layer(rng, c_in, c_out, k, L, residual, extreme):
    if extreme:
        table = rng.choice(np.array([-128, 127], np.int8), size=(c_in, L, k, k, c_out))
        bias = rng.choice(np.array([-MAX_ABS_BIAS, MAX_ABS_BIAS], np.int32), size=c_out)
        shift = int(rng.choice([0, MAX_SHIFT]))
    else:
        table = rng.integers(-128, 128, size=(c_in, L, k, k, c_out)).astype(np.int8)
        bias = rng.integers(-5000, 5000, size=c_out).astype(np.int32)
        shift = int(rng.integers(4, 12))
    return Layer(knots=random_knots(rng, c_in, L), table=table, bias=bias, shift=shift,
                 residual=residual)


# (c_out of the hidden layer, its k, the last layer's k, scale): each row of the dispatch
SHAPES = [(8, 3, 3, 2), (8, 5, 1, 4), (4, 3, 3, 3), (3, 5, 3, 2), (1, 1, 1, 2), (2, 7, 5, 4),
          (9, 3, 3, 3), (16, 1, 1, 4), (12, 9, 1, 2), (24, 3, 3, 4), (17, 1, 3, 2),
          (64, 3, 3, 4)]


@pytest.mark.parametrize("mode", ["expanded", "interp"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "c{}k{}-k{}x{}".format(*s))
def test_kernel_paths_match_reference(shape, mode):
    c_mid, k_mid, k_last, scale = shape
    for seed, rng in case_rngs(2, salt=hash(shape) % 1000):
        extreme = bool(seed % 2)
        first = _layer(rng, 1, c_mid, k_mid, int(rng.integers(2, 18)), False, extreme)
        mid = _layer(rng, c_mid, c_mid, 3, int(rng.integers(2, 18)), True, extreme)
        last = _layer(rng, c_mid, scale * scale, k_last, int(rng.integers(2, 18)), False, extreme)
        model = Model(scale=scale, upsample=str(rng.choice(["bicubic", "bilinear", "nearest"])),
                      layers=(first, mid, last))
        for h, w in ((3, 1), (9, 8), (10, 17), (17, 33)):
            planes = rng.integers(0, 256, size=(2, h, w)).astype(np.uint8)
            got = numba_cpu.run_planes(prepare(model), planes, mode)
            want = reference.upscale_planes(model, planes)
            assert np.array_equal(got, want), f"seed {seed}, {h}x{w}, {mode}"


def test_row_starts_fit_in_uint16_at_the_loader_limits():
    """The row sums keep each source pixel's table-row start as uint16 in units of
    ``_unit``; the largest tables the loader accepts (k = 9, 64 outputs, 256 knots) fit."""
    from iqlut_gpu.model import MAX_CHANNELS, MAX_K

    k, C = MAX_K, MAX_CHANNELS
    for pair, n in ((False, 256), (True, 255)):
        shape = (1, k, n, k, C) + ((2,) if pair else ())
        rows = numba_cpu._kernel_rows(np.zeros(shape, np.int16))  # asserts the bound
        unit = 8 if pair else 4
        assert rows.shape[3] % unit == 0 and (n - 1) * rows.shape[3] // unit < 65536


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("upsample", ["bicubic", "bilinear", "nearest"])
def test_last_layer_upsample_paths_match_reference(upsample, scale):
    """Every upsample of every scale through the last layer's store (bicubic x2 and x4 take
    the path specialised on their phases' offset pattern, the others the general one),
    with x4's k = 1, 8 -> 16 last layer (its row sums specialised on c_in = 8)."""
    for seed, rng in case_rngs(1, salt=scale * 10 + len(upsample)):
        first = _layer(rng, 1, 8, 3, int(rng.integers(2, 18)), False, False)
        last = _layer(rng, 8, scale * scale, 1 if scale == 4 else 3, int(rng.integers(2, 18)),
                      False, False)
        model = Model(scale=scale, upsample=upsample, layers=(first, last))
        planes = rng.integers(0, 256, size=(2, 11, 21)).astype(np.uint8)
        want = reference.upscale_planes(model, planes)
        for mode in ("expanded", "interp"):
            got = numba_cpu.run_planes(prepare(model), planes, mode)
            assert np.array_equal(got, want), f"seed {seed}, {mode}"


def test_offset_pattern_of_the_upsamples():
    """``_offset_pattern``: bit b set where phase b starts one tap after the lowest; -1 when
    some phase starts further on (then the store reads ``up_off`` as it is)."""
    for scale, want in ((2, 0b10), (3, 0b110), (4, 0b1100)):
        up_off, _, _ = reference.upsample_filter(scale, "bicubic")
        assert numba_cpu._offset_pattern(up_off) == want
    assert numba_cpu._offset_pattern(np.array([0, 0, 0], np.int32)) == 0
    assert numba_cpu._offset_pattern(np.array([-1, 1], np.int32)) == -1


@pytest.mark.parametrize("c_in", [8, 6, 7])
def test_k1_16_lane_row_sums_match_reference(c_in):
    """The k = 1, 16-lane row sums (x4's last layer): in expanded mode an even c_in reads
    two channels per step (``_vpair16``), an odd one a channel at a time; at the
    accumulator bounds (extreme tables, bias, shift) too, in both modes."""
    for seed, rng in case_rngs(2, salt=50 + c_in):
        extreme = bool(seed % 2)
        first = _layer(rng, 1, c_in, 3, int(rng.integers(2, 18)), False, extreme)
        last = _layer(rng, c_in, 16, 1, int(rng.integers(2, 18)), False, extreme)
        model = Model(scale=4, upsample="bicubic", layers=(first, last))
        planes = rng.integers(0, 256, size=(2, 7, 19)).astype(np.uint8)
        want = reference.upscale_planes(model, planes)
        for mode in ("expanded", "interp"):
            got = numba_cpu.run_planes(prepare(model), planes, mode)
            assert np.array_equal(got, want), f"seed {seed}, {mode}"


def _grouped_last_layer(rng, c_in, extreme):
    """A k = 1, c_in -> 16 layer whose channels each span at most 63 table units (16128
    after expansion), so that four of them sum to a range below 2**16 (the int16 group
    sums of ``_sums_k1_g4``), but with offsets that put the sums far outside int16."""
    base = rng.integers(-128, 65, size=(c_in, 1, 1, 1, 16))
    L = int(rng.integers(2, 18))
    span = rng.choice([0, 63], size=(c_in, L, 1, 1, 16)) if extreme else \
        rng.integers(0, 64, size=(c_in, L, 1, 1, 16))
    bias = rng.choice(np.array([-MAX_ABS_BIAS, MAX_ABS_BIAS], np.int32), size=16) if extreme \
        else rng.integers(-5000, 5000, size=16).astype(np.int32)
    return Layer(knots=random_knots(rng, c_in, L), table=(base + span).astype(np.int8),
                 bias=bias, shift=int(rng.choice([0, MAX_SHIFT])) if extreme
                 else int(rng.integers(4, 12)), residual=False)


@pytest.mark.parametrize("c_in", [8, 16])
def test_k1_grouped_row_sums_match_reference(c_in):
    """x4's last layer in expanded mode sums its channels four at a time in int16
    (``_k1_grouped_tables``, ``_sums_k1_g4``) when every group's sums span at most 2**16
    values, and then, with bicubic, stores from int16 deltas (``_row_store_x4``): layers
    built to take that path (and checked to), with group sums far outside int16, at the
    table extremes and |bias| = MAX_ABS_BIAS with shift 0 (deltas saturated to int16),
    widths with vector and scalar pixels, against the reference; with bilinear and
    nearest the same tables take the int32 path."""
    for i, (seed, rng) in enumerate(case_rngs(4, salt=70 + c_in)):
        extreme = i % 2 == 1
        first = _layer(rng, 1, c_in, 3, int(rng.integers(2, 18)), False, extreme)
        last = _grouped_last_layer(rng, c_in, extreme)
        upsample = ["bicubic", "bicubic", "bilinear", "nearest"][i]
        model = Model(scale=4, upsample=upsample, layers=(first, last))
        assert numba_cpu._k1_grouped_tables(prepare(model).lut(1, "expanded")) is not None
        for h, w in ((3, 1), (9, 71), (17, 130)):
            planes = rng.integers(0, 256, size=(2, h, w)).astype(np.uint8)
            want = reference.upscale_planes(model, planes)
            got = numba_cpu.run_planes(prepare(model), planes, "expanded")
            assert np.array_equal(got, want), f"seed {seed}, {h}x{w}"


def test_k1_grouped_tables_exact_at_the_int16_limit():
    """``_k1_grouped_tables``: a group whose sums span 65536 values (2**16 - 1 apart) is
    grouped, and its wrapped int16 sums plus ``corr`` give every extreme sum exactly; one
    more and it is refused (None: the layer keeps the int32 row sums); so are shapes the
    grouped sums do not cover. The shipped x4 model's last layer is grouped, its rows
    64-byte aligned."""
    etab = np.zeros((8, 256, 1, 1, 16), np.int16)
    hi = np.array([16384, 16384, 16384, 16383])  # four channels: 65535 from min to max
    etab[0:4, 1, 0, 0, :] = hi[:, None]
    etab[0:4, 2, 0, 0, :] = hi[:, None] // 3
    etab[4:8, :3, 0, 0, :] = -32768  # the other group: sums from -131072 to -65537
    etab[4:8, 1, 0, 0, :] += hi[:, None]
    etab[4:8, 2, 0, 0, :] += 5
    etab[:, 3:] = etab[:, :1]  # the other codes as code 0
    rows, corr = numba_cpu._k1_grouped_tables(etab)
    lanes = np.array(numba_cpu._PAIR_ORDER)
    g = rows[:, 0, :256][..., np.argsort(lanes)].astype(np.int64)  # [c, code, channel]
    for codes in np.ndindex(*(3,) * 8):
        want = sum(etab[c, codes[c], 0, 0].astype(np.int64) for c in range(8))
        got = corr.copy()
        for grp in (range(0, 4), range(4, 8)):
            s = sum(g[c, codes[c]] for c in grp)
            got += (s + 32768) % 65536 - 32768  # the int16 sum, wrapped
        assert np.array_equal(got, want), codes
    etab[0, 1, 0, 0, 3] += 1
    assert numba_cpu._k1_grouped_tables(etab) is None
    assert numba_cpu._k1_grouped_tables(np.zeros((6, 256, 1, 1, 16), np.int16)) is None
    assert numba_cpu._k1_grouped_tables(np.zeros((8, 256, 3, 3, 16), np.int16)) is None
    from iqlut_gpu import default_model

    x4 = prepare(default_model(4))
    grouped = numba_cpu._k1_grouped_tables(x4.lut(len(x4.layers) - 1, "expanded"))
    assert grouped is not None
    # rows on a 64-byte boundary: no 32-byte row read splits a cache line
    assert grouped[0].flags.c_contiguous and grouped[0].ctypes.data % 64 == 0
