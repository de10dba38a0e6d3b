"""Hand-computed cases pinning the reference arithmetic of docs/design.md, "One layer"
and "Last layer"."""

import numpy as np
import pytest

from iqlut_gpu import reference
from iqlut_gpu.model import Layer, Model, zero_model


def one_layer(table_value, knots=(0, 255), k=1, shift=0, bias=0, c_out=1):
    L = len(knots)
    table = np.zeros((1, L, k, k, c_out), np.int8)
    table[...] = np.array(table_value, np.int8).reshape((1, L, 1, 1, 1)) if np.ndim(table_value) else table_value
    return Layer(knots=np.array([knots], np.uint8), table=table,
                 bias=np.full(c_out, bias, np.int32), shift=shift, residual=False)


def test_interp_weights_at_and_between_knots():
    knots = np.array([[0, 10, 20, 255]], np.uint8)
    idx, w = reference.interp_lut(knots)
    # at knots: weight 0 on the lower knot's index, except 255 which is the top of the last gap
    assert (idx[0, 0], w[0, 0]) == (0, 0)
    assert (idx[0, 10], w[0, 10]) == (1, 0)
    assert (idx[0, 20], w[0, 20]) == (2, 0)
    assert (idx[0, 255], w[0, 255]) == (2, 256)
    # between: x=5 in [0,10): (5*256 + 5) // 10 = 128; x=3: (768 + 5) // 10 = 77
    assert (idx[0, 5], w[0, 5]) == (0, 128)
    assert (idx[0, 3], w[0, 3]) == (0, 77)
    # x=100 in [20,255): gap 235, (80*256 + 117) // 235 = 87
    assert (idx[0, 100], w[0, 100]) == (2, (80 * 256 + 117) // 235)


def test_interpolated_value_and_expansion():
    layer = one_layer([10, -20], knots=(0, 255))
    E = reference.expand_layer(layer)
    # v(x) = 10*(256-w) + (-20)*w with w = (x*256 + 127) // 255
    for x in (0, 1, 128, 254, 255):
        w = (x * 256 + 127) // 255
        assert E[0, x, 0, 0, 0] == 10 * (256 - w) - 20 * w
    assert E.dtype == np.int16


def test_requantize_rounds_negative_accumulators_by_flooring_shift():
    acc = np.array([-129, -128, -127, -1, 0, 127, 128, 129])
    # (A + 128) >> 8 with an arithmetic shift (floor): -129 -> floor(-1/256) = -1
    assert reference.requantize(acc, 8).tolist() == [-1, 0, 0, 0, 0, 0, 1, 1]
    assert reference.requantize(np.array([-384, -383, -385]), 8).tolist() == [-1, -1, -2]
    assert reference.requantize(acc, 0).tolist() == acc.tolist()


def test_hidden_layer_edge_clamping_with_hand_computed_gather():
    # k=3, one channel, table value 1 at window position (dy, dx) = (+1, 0) only (row 2, col 1):
    # a source pixel p paints +256 (w=0 at code 0 -> table[i=0]*256) onto p + (1, 0).
    # Gather: A[q] = v(X[clamp(q - (1,0))]) -> output row y reads source row y-1, clamped at 0.
    table = np.zeros((1, 2, 3, 3, 1), np.int8)
    table[0, 0, 2, 1, 0] = 1  # code 0 (knot 0) paints 1*256 at d = (+1, 0)
    layer = Layer(knots=np.array([[0, 255]], np.uint8), table=table,
                  bias=np.zeros(1, np.int32), shift=8, residual=False)
    x = np.array([[[0, 255], [255, 255], [0, 0]]], np.uint8)  # [1, 3, 2]
    out = reference.hidden_layer(layer, x)
    # code 255 has w=256 -> table[1] = 0 paints nothing; code 0 paints +1 after the shift.
    # row 0 reads row clamp(-1)=0: [0,255] -> [129, 128]; row 1 reads row 0; row 2 reads row 1.
    assert out[0].tolist() == [[129, 128], [129, 128], [128, 128]]


def test_residual_layer_adds_to_its_input_and_clamps():
    table = np.full((1, 2, 1, 1, 1), 127, np.int8)
    layer = Layer(knots=np.array([[0, 255]], np.uint8), table=table,
                  bias=np.zeros(1, np.int32), shift=0, residual=True)
    x = np.array([[[0, 200]]], np.uint8)
    assert reference.hidden_layer(layer, x)[0].tolist() == [[255, 255]]  # 127*256 added, clamped
    table[:] = -1
    assert reference.hidden_layer(layer, x)[0].tolist() == [[0, 0]]  # -256 added, clamped


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_upsample_filters_sum_to_their_denominator(scale):
    for kind in ("nearest", "bilinear", "bicubic"):
        off, w, den = reference.upsample_filter(scale, kind)
        assert (w.sum(axis=1) == den).all(), kind


def test_bilinear_x2_hand_computed():
    off, w, den = reference.upsample_filter(2, "bilinear")
    # phases at y - 1/4 and y + 1/4: taps (y-1, y) with weights (1, 3)/4 and (y, y+1) with (3, 1)/4
    assert off.tolist() == [-1, 0] and w.tolist() == [[1, 3], [3, 1]] and den == 4
    plane = np.array([[0, 100]], np.uint8)
    up = reference.fixed_upsample(plane, 2, "bilinear")
    # row phases all read row 0 (clamped); columns: x=0 phase0 -> (0*1 + 0*3)/4 = 0,
    # phase1 -> (0*3 + 100*1)/4 = 25; x=1 phase0 -> (0*1 + 100*3)/4 = 75; phase1 -> 100
    assert up.tolist() == [[0, 25, 75, 100], [0, 25, 75, 100]]


def test_bicubic_x2_weights_hand_computed():
    off, w, den = reference.upsample_filter(2, "bicubic")
    # a = -0.5 at fraction 3/4 (phase 0) : cubic(7/4), cubic(3/4), cubic(1/4), cubic(5/4)
    # = -0.0234375, 0.2265625, 0.8671875, -0.0703125 -> *256 = -6, 58, 222, -18
    assert off.tolist() == [-2, -1] and den == 256
    assert w.tolist() == [[-6, 58, 222, -18], [-18, 222, 58, -6]]


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("kind", ["nearest", "bilinear", "bicubic"])
def test_zero_model_is_exactly_the_fixed_upsample(scale, kind):
    rng = np.random.default_rng()
    plane = rng.integers(0, 256, size=(5, 7)).astype(np.uint8)
    model = zero_model(scale, upsample=kind)
    expected = reference.fixed_upsample(plane, scale, kind).astype(np.uint8)
    assert np.array_equal(reference.upscale_plane(model, plane), expected)


def test_constant_plane_stays_constant_under_every_base():
    for kind in ("nearest", "bilinear", "bicubic"):
        for scale in (2, 3, 4):
            up = reference.fixed_upsample(np.full((3, 4), 77, np.uint8), scale, kind)
            assert (up == 77).all(), (kind, scale)


def test_last_layer_pixel_shuffle_order():
    # c_out = r*r, k = 1: delta[a*r + b] lands at HR[y*r + a, x*r + b]
    r = 2
    table = np.zeros((1, 2, 1, 1, 4), np.int8)
    table[0, :, 0, 0, :] = [1, 2, 3, 4]  # both knots: constant windows -> v = [1,2,3,4]*256
    layer = Layer(knots=np.array([[0, 255]], np.uint8), table=table,
                  bias=np.zeros(4, np.int32), shift=8, residual=False)
    model = Model(scale=r, upsample="nearest", layers=(layer,))
    out = reference.upscale_plane(model, np.full((1, 2), 10, np.uint8))
    assert out.tolist() == [[11, 12, 11, 12], [13, 14, 13, 14]]
