"""The IQ-LUT forward in torch: the primitives the training network is built from, and
``module_from_model``, which runs an exported integer model through the same primitives.

Units (shared by training and by the exported-model module):

- activations are codes 0..255 held in a float tensor;
- a layer's hat-basis (two-hot) encoding of code ``x`` puts ``(256 - w) / 256`` on
  channel ``c*L + i`` and ``w / 256`` on channel ``c*L + i + 1`` (``i, w`` as in
  ``iqlut_gpu.reference.interp_lut``);
- a layer's conv weight is in units of output codes: ``weight = table * 2**(8 - S)`` and
  ``bias_f = bias / 2**S``, so ``conv(enc) + bias_f == A / 2**S`` exactly;
- requantisation ``floor(A / 2**S + 1/2)`` is ``round_half_up`` of that.

Every quantity is a dyadic rational, so in float64 the module reproduces
``iqlut_gpu.reference`` exactly (tested in tests/test_train_forward.py). In float32 the
conv's partial sums can lose low bits when ``S`` is large; results then differ from the
reference by at most one code on rare pixels.

The reference's expanded convolution is a true convolution (a source pixel paints its
window); ``torch.nn.functional.conv2d`` is a correlation, so the conv weight is the table
flipped in both spatial axes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..model import Model
from ..reference import interp_lut, upsample_filter

WEIGHT_SCALE = 256  # w runs 0..256


# ----------------------------------------------------------------------------- primitives


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """floor(x + 1/2), the reference's requantisation rounding (no gradient)."""
    return torch.floor(x + 0.5)


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round_half_up forward, identity gradient (straight-through estimator)."""
    return x + (round_half_up(x) - x).detach()


def lut_encode(codes: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, L: int) -> torch.Tensor:
    """Two-hot encoding from the integer lookup (frozen integer knots).

    codes: float [N, C, H, W] holding integers 0..255; idx: long [C, 256]; w: float [C, 256]
    (0..256). Returns [N, C*L, H, W] with (256 - w)/256 at channel c*L + i and w/256 at
    c*L + i + 1, exactly as ``reference.expand_layer`` weighs the two knots.
    """
    N, C, H, W = codes.shape
    x = codes.long().clamp(0, 255)
    chan = torch.arange(C, device=codes.device).view(1, C, 1, 1)
    i = idx[chan, x]  # [N, C, H, W]
    wt = w[chan, x].to(codes.dtype) / WEIGHT_SCALE
    enc = torch.zeros(N, C, L, H, W, dtype=codes.dtype, device=codes.device)
    enc.scatter_(2, i.unsqueeze(2), (1 - wt).unsqueeze(2))
    enc.scatter_add_(2, (i + 1).unsqueeze(2), wt.unsqueeze(2))
    return enc.view(N, C * L, H, W)


def hat_encode(codes: torch.Tensor, knots: torch.Tensor, idx: torch.Tensor | None = None,
               w: torch.Tensor | None = None) -> torch.Tensor:
    """Two-hot encoding with float (learnable) knots: the piecewise-linear hat basis.

    codes: float [N, C, H, W]; knots: float [C, L], increasing, 0 first, 255 last.
    Returns [N, C*L, H, W], differentiable with respect to ``codes`` and ``knots``
    (slope 1/gap between two knots). With ``idx, w`` (the integer lookup of frozen integer
    knots) the forward value is exactly ``lut_encode``'s and the gradient that of the hat
    basis (straight through); without them it is the exact hat basis, which differs from
    the reference only by its rounding of w to 1/256.
    """
    N, C, H, W = codes.shape
    L = knots.shape[1]
    flat = codes.permute(1, 0, 2, 3).reshape(C, -1)  # [C, M]
    if idx is None:
        i = torch.searchsorted(knots.detach().contiguous(), flat.detach().contiguous(), right=True) - 1
        i = i.clamp(0, L - 2)
    else:
        xi = flat.detach().long().clamp(0, 255)
        i = torch.gather(idx, 1, xi)
    lo = torch.gather(knots, 1, i)
    hi = torch.gather(knots, 1, i + 1)
    t = (flat - lo) / (hi - lo)
    if idx is not None:
        t_lut = torch.gather(w, 1, xi).to(t.dtype) / WEIGHT_SCALE
        t = t_lut + (t - t.detach())
    enc = torch.zeros(C, L, flat.shape[1], dtype=codes.dtype, device=codes.device)
    enc = enc.scatter(1, i.unsqueeze(1), (1 - t).unsqueeze(1))
    enc = enc.scatter_add(1, (i + 1).unsqueeze(1), t.unsqueeze(1))
    return enc.view(C * L, N, H, W).permute(1, 0, 2, 3)


def pad_codes(codes: torch.Tensor, R: int) -> torch.Tensor:
    """Replicate-pad codes by R (encoding then commutes with padding, and is cheaper)."""
    return F.pad(codes, (R, R, R, R), mode="replicate") if R else codes


class _Bf16GradConv(torch.autograd.Function):
    """``conv2d`` (no padding) whose forward runs in the inputs' dtype, exactly as without
    it, and whose backward (two thirds of a training step's conv work) runs in bfloat16.

    Only the gradients are rounded (relative error about 2**-9): the forward a model
    trains on, and so its fake quantisation and the export check, are unchanged. Whole
    training steps measured 1.15-1.25x faster on this project's CPU (AVX512-BF16, one
    thread); GPUs are not measured yet.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx = gw = gb = None
        if need_x or need_w:
            gx, gw, _ = torch.ops.aten.convolution_backward(
                grad.to(torch.bfloat16), x.to(torch.bfloat16), weight.to(torch.bfloat16), None,
                [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [need_x, need_w, False])
            gx = gx.to(x.dtype) if need_x else None
            gw = gw.to(weight.dtype) if need_w else None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether bfloat16 convolutions are fast here: a CUDA device, or a CPU whose oneDNN
    has bfloat16 kernels (AVX512-BF16 / AMX; elsewhere bfloat16 is emulated and slow)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available()
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def expanded_conv(enc: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  padded: bool = False, bf16_grad: bool = False) -> torch.Tensor:
    """Replicate-padded correlation with ``weight`` [c_out, C*L, k, k]: the expanded
    convolution. ``padded``: ``enc`` encodes codes already padded by ``pad_codes``.
    ``bf16_grad``: the backward in bfloat16 (``_Bf16GradConv``; the forward is the same)."""
    R = weight.shape[-1] // 2
    if R and not padded:
        enc = F.pad(enc, (R, R, R, R), mode="replicate")
    if bf16_grad and torch.is_grad_enabled() and (enc.requires_grad or weight.requires_grad):
        return _Bf16GradConv.apply(enc, weight, bias)
    return F.conv2d(enc, weight, bias)


def table_to_weight(table: torch.Tensor) -> torch.Tensor:
    """[c_in, L, k, k, c_out] table -> conv weight [c_out, c_in*L, k, k], flipped in both axes."""
    c_in, L, k, _, c_out = table.shape
    w = table.permute(4, 0, 1, 2, 3).reshape(c_out, c_in * L, k, k)
    return torch.flip(w, dims=(2, 3))


def weight_to_table(weight: torch.Tensor, c_in: int, L: int) -> torch.Tensor:
    """Inverse of ``table_to_weight``."""
    c_out, _, k, _ = weight.shape
    w = torch.flip(weight, dims=(2, 3)).reshape(c_out, c_in, L, k, k)
    return w.permute(1, 2, 3, 4, 0)


class FixedUpsample(torch.nn.Module):
    """The model's fixed integer upsample ``B`` (``reference.fixed_upsample``), exact.

    Input codes [N, 1, H, W] (float); output [N, 1, rH, rW] (same dtype), computed in
    float64 internally: integer weights, edge clamp, round half up, clamp to 0..255.
    """

    def __init__(self, scale: int, kind: str):
        super().__init__()
        offset, weights, denom = upsample_filter(scale, kind)
        T = weights.shape[1]
        lo = int(offset.min())
        hi = int((offset + T - 1).max())
        self.R = max(-lo, hi)
        size = 2 * self.R + 1
        kern = np.zeros((scale * scale, 1, size, size), np.float64)
        for a in range(scale):
            for b in range(scale):
                for i in range(T):
                    for j in range(T):
                        kern[a * scale + b, 0, offset[a] + i + self.R, offset[b] + j + self.R] = (
                            weights[a, i] * weights[b, j])
        self.scale = scale
        self.d2 = denom * denom
        self.register_buffer("kernel", torch.from_numpy(kern))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = codes.to(torch.float64)
        if self.R:
            x = F.pad(x, (self.R,) * 4, mode="replicate")
        acc = F.conv2d(x, self.kernel)
        base = torch.floor((acc + self.d2 // 2) / self.d2).clamp(0, 255)
        return F.pixel_shuffle(base, self.scale).to(codes.dtype)


# ----------------------------------------------------------------------------- exported model


class IntegerModel(torch.nn.Module):
    """An exported ``iqlut_gpu.Model`` run through the training primitives.

    forward: float [N, 1, H, W] codes 0..255 -> float [N, 1, rH, rW] codes 0..255.
    Layer n: ``lut_encode`` (integer knots) -> ``expanded_conv`` with the flipped table in
    output-code units -> ``round_half_up`` -> base (the input for a residual layer, 128
    otherwise) + delta, clamped; the last layer adds its pixel-shuffled deltas to the
    fixed upsample. Exact in float64 (the default).
    """

    def __init__(self, model: Model, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.scale = model.scale
        self.dtype = dtype
        self.specs = [layer.spec() for layer in model.layers]
        for n, layer in enumerate(model.layers):
            idx, w = interp_lut(layer.knots)
            S = int(layer.shift)
            table = torch.from_numpy(layer.table.astype(np.float64)) * 2.0 ** (8 - S)
            self.register_buffer(f"idx{n}", torch.from_numpy(idx.astype(np.int64)))
            self.register_buffer(f"w{n}", torch.from_numpy(w.astype(np.float64)).to(dtype))
            self.register_buffer(f"weight{n}", table_to_weight(table).to(dtype))
            self.register_buffer(f"bias{n}",
                                 (torch.from_numpy(layer.bias.astype(np.float64)) / 2.0 ** S).to(dtype))
        self.upsample = FixedUpsample(model.scale, model.upsample)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        plane = codes.to(self.dtype)
        x = plane
        n_layers = len(self.specs)
        for n, spec in enumerate(self.specs):
            enc = lut_encode(pad_codes(x, spec["k"] // 2), getattr(self, f"idx{n}"),
                             getattr(self, f"w{n}"), spec["L"])
            delta = round_half_up(expanded_conv(enc, getattr(self, f"weight{n}"),
                                                getattr(self, f"bias{n}"), padded=True))
            if n < n_layers - 1:
                base = x if spec["residual"] else 128.0
                x = (base + delta).clamp(0, 255)
            else:
                hr = self.upsample(plane) + F.pixel_shuffle(delta, self.scale)
                return hr.clamp(0, 255).to(codes.dtype)
        raise AssertionError("unreachable")


def module_from_model(model: Model, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A torch module that runs ``model`` as the training forward does (see module docstring).

    Input float [N, 1, H, W] codes 0..255, output [N, 1, rH, rW]; float64 reproduces the
    integer reference exactly, float32 to within one code on rare pixels. Move it with
    ``.to(device)`` like any module.
    """
    return IntegerModel(model, dtype=dtype).eval()
