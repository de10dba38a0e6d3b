"""The torch forward (iqlut_gpu.train.torch_forward) against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from iqlut_gpu import reference  # noqa: E402
from iqlut_gpu.model import zero_model  # noqa: E402
from iqlut_gpu.train.torch_forward import (  # noqa: E402
    hat_encode, lut_encode, module_from_model, table_to_weight, weight_to_table)

from cases import SESSION_SEED, random_model, random_planes  # noqa: E402


def _run(module, plane):
    with torch.no_grad():
        out = module(torch.from_numpy(plane.astype(np.float64))[None, None])
    return out[0, 0].numpy()


@pytest.mark.parametrize("case", range(12))
def test_module_from_model_is_exact_in_float64(case):
    rng = np.random.default_rng([SESSION_SEED, case])
    model = random_model(rng)
    h, w = [(1, 1), (1, 7), (7, 1), (5, 4), (13, 9), (17, 31)][case % 6]
    plane = random_planes(rng, 2, h, w)[case % 2]
    want = reference.upscale_plane(model, plane)
    got = _run(module_from_model(model), plane)
    assert got.shape == want.shape, f"seed {SESSION_SEED} case {case}"
    np.testing.assert_array_equal(got, want.astype(np.float64),
                                  err_msg=f"seed {SESSION_SEED} case {case}")


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("upsample", ["nearest", "bilinear", "bicubic"])
def test_zero_model_is_the_fixed_upsample(scale, upsample):
    rng = np.random.default_rng([SESSION_SEED, scale])
    plane = random_planes(rng, 1, 9, 11)[0]
    model = zero_model(scale, upsample=upsample)
    got = _run(module_from_model(model), plane)
    np.testing.assert_array_equal(got, reference.fixed_upsample(plane, scale, upsample))


def test_hat_encoding_matches_lut_encoding_on_integer_knots():
    rng = np.random.default_rng([SESSION_SEED, 99])
    from cases import random_knots
    knots = random_knots(rng, 3, 9)
    idx, w = reference.interp_lut(knots)
    codes = torch.arange(256, dtype=torch.float64).view(1, 1, 16, 16).repeat(1, 3, 1, 1)
    a = lut_encode(codes, torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(w).double(), 9)
    b = hat_encode(codes, torch.from_numpy(knots.astype(np.float64)))
    # the reference rounds w to 1/256; the hat basis is exact
    assert float((a - b).abs().max()) <= 0.5 / 256 + 1e-12, f"seed {SESSION_SEED}"
    assert torch.allclose(a.view(1, 3, 9, 256).sum(2), torch.ones(1, 3, 256, dtype=torch.float64))


def test_table_weight_roundtrip_and_flip():
    t = torch.arange(2 * 3 * 5 * 5 * 4, dtype=torch.float64).view(2, 3, 5, 5, 4)
    w = table_to_weight(t)
    assert w.shape == (4, 6, 5, 5)
    assert w[1, 3 + 2, 0, 0] == t[1, 2, 4, 4, 1]  # flipped in both spatial axes
    assert torch.equal(weight_to_table(w, 2, 3), t)


@pytest.mark.parametrize("case", range(3))
def test_bf16_grad_conv_has_the_exact_forward_and_close_gradients(case):
    """expanded_conv(bf16_grad=True): the forward is bit for bit the float conv (so the
    training forward, fake quantisation and export check do not change); only the backward
    runs in bfloat16, its gradients within bfloat16's rounding of the float32 ones."""
    from iqlut_gpu.train.torch_forward import expanded_conv
    gen = torch.Generator().manual_seed(SESSION_SEED + case)
    c_in, c_out, k = [(17, 8, 5), (128, 8, 3), (128, 16, 3)][case]
    enc = torch.rand(2, c_in, 11, 13, generator=gen)
    weight = torch.randn(c_out, c_in, k, k, generator=gen)
    bias = torch.randn(c_out, generator=gen)
    grad_out = torch.randn(2, c_out, 11, 13, generator=gen)
    results = []
    for bf16 in (False, True):
        e, w, b = (t.clone().requires_grad_(True) for t in (enc, weight, bias))
        out = expanded_conv(e, w, b, bf16_grad=bf16)
        out.backward(grad_out)
        results.append((out.detach(), e.grad, w.grad, b.grad))
    (o32, e32, w32, b32), (o16, e16, w16, b16) = results
    assert torch.equal(o16, o32), f"seed {SESSION_SEED}"
    # the bias gradient stays float32 (summed in another order: atol for sums near zero)
    assert torch.allclose(b16, b32, rtol=1e-5, atol=1e-4), f"seed {SESSION_SEED}"
    for g16, g32 in ((e16, e32), (w16, w32)):
        rel = float((g16 - g32).norm() / g32.norm())
        assert 0 < rel < 2e-2, f"seed {SESSION_SEED}: relative gradient error {rel}"


def test_bf16_grad_conv_is_plain_without_gradients():
    from iqlut_gpu.train.torch_forward import bf16_supported, expanded_conv
    enc, weight = torch.rand(1, 4, 6, 6), torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        assert expanded_conv(enc, weight, None, bf16_grad=True).grad_fn is None
    assert isinstance(bf16_supported("cpu"), bool)


def test_lutnet_passes_bf16_grad_to_its_iq_layers():
    from iqlut_gpu.train.net import LUTNet, iqlut_arch
    assert all(layer.bf16_grad for layer in LUTNet(2, iqlut_arch(2), bf16_grad=True).layers)
    assert not any(layer.bf16_grad for layer in LUTNet(2, iqlut_arch(2)).layers)
