"""Trainable networks: the IQ-LUT student, the ECNN baseline, the float CNN teacher.

All work on float code tensors (0..255) and share the primitives of ``torch_forward``,
so a model in its final (quantised) stage computes what its export computes.

IQ-LUT layer (``IQLayer``):

- knots: ``0 = s_0 < ... < s_{L-1} = 255`` from increments ``min_gap + softmax(logits) *
  (255 - (L-1) * min_gap)``, so any two learned knots are at least ``min_gap`` apart and
  rounding (``floor(s + 1/2)``) cannot make them collide. Stage 1 encodes with the hat
  basis of the float knots (knots learn); ``freeze_knots`` rounds them, and from then on
  the layer encodes with the exact integer lookup (``lut_encode``).
- table: conv weight ``255 * theta`` in units of output codes (theta is what Adam sees);
  ``quantize`` switches on int8 fake quantisation with a per-layer power-of-two shift
  ``S`` (the largest with ``max|weight| * 2**(S-8) <= 127``), straight-through rounding.
- output: ``round_half_up`` (straight through) of conv + bias, then ``clamp(base + delta)``.

ECNN layer (``ECNNLayer``): L = 256 uniform knots, i.e. a plain lookup of a
``[c_in, 256, k, k, c_out]`` table per source pixel, computed in gather form with
``embedding_bag`` (sum over input channels) and k*k shifted adds.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..model import DEFAULT_ARCH, Layer, Model, zero_model
from .torch_forward import (FixedUpsample, expanded_conv, hat_encode, pad_codes, ste_round,
                            table_to_weight, weight_to_table)
from ..reference import interp_lut
from .config import MAX_WIDTH

THETA_UNIT = 255.0


def choose_shift(max_abs: float) -> int:
    """Largest S (<= 16) with ``max_abs * 2**(S-8) <= 127``: the finest int8 step that fits."""
    if max_abs <= 0:
        return 16
    s = int(math.floor(math.log2(127.0 / max_abs))) + 8
    return int(min(max(s, 0), 16))


def fake_quant(w: torch.Tensor, shift: int) -> torch.Tensor:
    step = 2.0 ** (8 - shift)
    q = torch.clamp(ste_round(w / step), -128, 127)
    return q * step


def linear_init_gain(c_in: int, k: int, residual: bool, zero: bool) -> float:
    """Std of the random linear filter a layer starts as (0 for the last layer)."""
    if zero:
        return 0.0
    # residual: start near the identity; first layer: features of about the image's
    # spread; other plain layers: keep the spread of their input (ECNN has no residual)
    g = 0.1 if residual else (0.5 if c_in == 1 else 1.5)
    return g / math.sqrt(c_in * k * k)


class _QuantTable(torch.nn.Module):
    """What IQLayer and ECNNLayer share: float tables ``theta`` and biases ``beta`` (in units
    of THETA_UNIT), int8 fake quantisation with a per-layer power-of-two ``shift`` once
    ``start_quant`` has run (the ``quant`` and ``shift`` buffers)."""

    def float_weight(self) -> torch.Tensor:
        return self.theta * THETA_UNIT

    @torch.no_grad()
    def start_quant(self, shift: int | None = None) -> None:
        """int8 from here, at ``shift`` (None: the finest that fits the weights)."""
        self.shift.fill_(choose_shift(float(self.float_weight().abs().max()))
                         if shift is None else int(shift))
        self.quant.fill_(True)

    def weight_bias(self):
        w = self.float_weight()
        b = self.beta * THETA_UNIT
        if bool(self.quant):
            S = int(self.shift)
            w = fake_quant(w, S)
            b = ste_round(b * 2.0 ** S) / 2.0 ** S
        return w, b

    @torch.no_grad()
    def export(self) -> Layer:
        """The integer layer: int8 table (``_table_layout`` of the weights in code units
        times 2**S / 256), bias rounded at 2**S, the layer's knots (``_export_knots``)."""
        if not bool(self.quant):
            self.start_quant()
        S = int(self.shift)
        w, _ = self.weight_bias()
        table = self._table_layout(w.detach().double().cpu() * 2.0 ** (S - 8))
        table = torch.round(table).clamp(-128, 127).numpy().astype(np.int8)
        bias = np.floor(self.beta.detach().double().cpu().numpy() * THETA_UNIT * 2.0 ** S + 0.5)
        return Layer(knots=self._export_knots(), table=table, bias=bias.astype(np.int32),
                     shift=S, residual=self.residual)

    @torch.no_grad()
    def load_layer(self, layer: Layer) -> None:
        """Start from an exported integer layer: float tables equal to its int8 table
        (``table * 2**(8-S)`` code units), its bias; not yet quantised.

        A wider layer (more input and/or output channels, the same k, L and residual flag)
        takes ``layer`` as its first channels: tables from the extra inputs are zero, so the
        first outputs are ``layer``'s exactly; the extra outputs keep this layer's random
        start (new features of the old inputs)."""
        ci, L, k, _, co = layer.table.shape
        if ((L, k) != (self.L, self.k) or ci > self.c_in or co > self.c_out
                or bool(layer.residual) != bool(self.residual)):
            raise ValueError(f"cannot start a layer {self.spec()} from {layer.spec()}")
        table = self._table_layout(self.float_weight().detach().double().cpu())
        table[ci:] = 0
        table[:ci, ..., :co] = torch.from_numpy(layer.table.astype(np.float64)
                                                * 2.0 ** (8 - layer.shift))
        self.theta.copy_(self._weight_of(table).to(self.theta.dtype) / THETA_UNIT)
        self.beta[:co] = torch.from_numpy(layer.bias.astype(np.float64) / 2.0 ** layer.shift
                                          / THETA_UNIT).to(self.beta.dtype)

    def spec(self) -> dict:
        return {"c_in": self.c_in, "c_out": self.c_out, "k": self.k, "L": self.L,
                "residual": bool(self.residual)}


class IQLayer(_QuantTable):
    def __init__(self, c_in, c_out, k, L, residual=False, min_gap=1.0, zero_init=False,
                 bf16_grad=False):
        super().__init__()
        self.bf16_grad = bf16_grad  # expanded_conv's backward in bfloat16
        self.c_in, self.c_out, self.k, self.L, self.residual = c_in, c_out, k, L, residual
        self.min_gap = float(min_gap)
        self.knot_logits = torch.nn.Parameter(torch.zeros(c_in, L - 1))
        # Linear start: knot j of input channel c carries G[o, c] * (s_j - 127.5), so the layer
        # begins as an ordinary random conv filter bank of its input (smooth in the code).
        gain = linear_init_gain(c_in, k, residual, zero_init)
        g = torch.randn(c_out, c_in, 1, k, k) * gain
        centred = (torch.linspace(0, 255, L) - 127.5).view(1, 1, L, 1, 1)
        self.theta = torch.nn.Parameter((g * centred).reshape(c_out, c_in * L, k, k) / THETA_UNIT)
        self.beta = torch.nn.Parameter(torch.zeros(c_out))
        self.register_buffer("frozen", torch.tensor(False))
        self.register_buffer("quant", torch.tensor(False))
        self.register_buffer("shift", torch.tensor(16))
        self.register_buffer("idx", torch.zeros(c_in, 256, dtype=torch.long))
        self.register_buffer("w", torch.zeros(c_in, 256))
        self.register_buffer("int_knots", torch.zeros(c_in, L, dtype=torch.long))

    def knots(self) -> torch.Tensor:
        if bool(self.frozen):
            return self.int_knots.float()
        free = 255.0 - (self.L - 1) * self.min_gap
        inc = self.min_gap + torch.softmax(self.knot_logits, dim=1) * free
        cs = torch.cumsum(inc, dim=1)
        zeros = torch.zeros(self.c_in, 1, dtype=cs.dtype, device=cs.device)
        return torch.cat([zeros, cs[:, :-1], torch.full_like(zeros, 255.0)], dim=1)

    def rounded_knots(self) -> np.ndarray:
        if bool(self.frozen):
            return self.int_knots.cpu().numpy().astype(np.uint8)
        return np.floor(self.knots().detach().cpu().double().numpy() + 0.5).astype(np.uint8)

    @torch.no_grad()
    def freeze_knots(self) -> None:
        kn = self.rounded_knots()
        assert np.all(np.diff(kn.astype(int), axis=1) > 0), "knots collided"
        idx, w = interp_lut(kn)
        self.int_knots.copy_(torch.from_numpy(kn.astype(np.int64)))
        self.idx.copy_(torch.from_numpy(idx.astype(np.int64)))
        self.w.copy_(torch.from_numpy(w.astype(np.float32)))
        self.frozen.fill_(True)
        self.knot_logits.requires_grad_(False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Two-hot encoding of (already padded) codes; exact integer weights once frozen."""
        if bool(self.frozen):
            return hat_encode(x, self.knots().to(x.dtype), self.idx, self.w)
        return hat_encode(x, self.knots().to(x.dtype))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight_bias()
        enc = self.encode(pad_codes(x, self.k // 2))
        return ste_round(expanded_conv(enc, w, b, padded=True, bf16_grad=self.bf16_grad))

    def _table_layout(self, t: torch.Tensor) -> torch.Tensor:
        return weight_to_table(t, self.c_in, self.L)

    def _weight_of(self, table: torch.Tensor) -> torch.Tensor:
        return table_to_weight(table)

    @torch.no_grad()
    def load_layer(self, layer: Layer) -> None:
        """As ``_QuantTable.load_layer``, and float knots that round back to the layer's."""
        super().load_layer(layer)
        inc = np.diff(layer.knots.astype(np.float64), axis=1)
        free = 255.0 - (self.L - 1) * self.min_gap
        share = np.maximum(inc - self.min_gap, 1e-3) / free
        self.knot_logits[:len(share)] = torch.from_numpy(np.log(share)).to(self.knot_logits.dtype)

    def _export_knots(self) -> np.ndarray:
        return self.rounded_knots()


class ECNNLayer(_QuantTable):
    """ECNN: a 256-entry lookup per input code (uniform knots), gather form."""

    def __init__(self, c_in, c_out, k, residual=False, zero_init=False):
        super().__init__()
        self.c_in, self.c_out, self.k, self.L, self.residual = c_in, c_out, k, 256, residual
        # table[c*256 + x] = window [k, k, c_out] painted by code x of channel c; the same
        # linear start as IQLayer (a random conv filter bank, smooth in the code)
        gain = linear_init_gain(c_in, k, residual, zero_init)
        g = torch.randn(c_in, 1, k * k * c_out) * gain
        centred = (torch.arange(256, dtype=torch.float32) - 127.5).view(1, 256, 1)
        self.theta = torch.nn.Parameter((g * centred).reshape(c_in * 256, k * k * c_out) / THETA_UNIT)
        self.beta = torch.nn.Parameter(torch.zeros(c_out))
        self.register_buffer("quant", torch.tensor(False))
        self.register_buffer("shift", torch.tensor(16))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight_bias()
        N, C, H, W = x.shape
        k, R, co = self.k, self.k // 2, self.c_out
        codes = x.long().clamp(0, 255) + 256 * torch.arange(C, device=x.device).view(1, C, 1, 1)
        bags = codes.permute(0, 2, 3, 1).reshape(-1, C)
        win = F.embedding_bag(bags, w, mode="sum").view(N, H, W, k * k * co)
        win = win.permute(0, 3, 1, 2)  # [N, k*k*co, H, W]: the window each source pixel paints
        if R:
            win = F.pad(win, (R, R, R, R), mode="replicate")
        win = win.view(N, k, k, co, H + 2 * R, W + 2 * R)
        acc = b.view(1, co, 1, 1).expand(N, co, H, W).clone()
        for dy in range(-R, R + 1):
            for dx in range(-R, R + 1):
                # output q gets the window of source q - d at offset d
                acc = acc + win[:, dy + R, dx + R, :, R - dy:R - dy + H, R - dx:R - dx + W]
        return ste_round(acc)

    def _table_layout(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(self.c_in, 256, self.k, self.k, self.c_out)

    def _weight_of(self, table: torch.Tensor) -> torch.Tensor:
        return table.reshape(self.c_in * 256, self.k * self.k * self.c_out)

    def _export_knots(self) -> np.ndarray:
        return np.tile(np.arange(256, dtype=np.uint8), (self.c_in, 1))


class LUTNet(torch.nn.Module):
    """A chain of IQ-LUT (or ECNN) layers over a fixed upsample: codes in, codes out."""

    def __init__(self, scale: int, arch, kind: str = "iqlut", upsample: str = "bicubic",
                 min_gap: float = 1.0, bf16_grad: bool = False):
        super().__init__()
        self.scale, self.kind, self.upsample_kind = scale, kind, upsample
        self.arch = [dict(a) for a in arch]
        layers = []
        for n, a in enumerate(self.arch):
            last = n == len(self.arch) - 1
            c_out = a["c_out"] or scale * scale
            a["c_out"] = c_out
            if kind == "iqlut":
                layers.append(IQLayer(a["c_in"], c_out, a["k"], a["L"], a["residual"],
                                      min_gap=min_gap, zero_init=last, bf16_grad=bf16_grad))
            else:
                layers.append(ECNNLayer(a["c_in"], c_out, a["k"], a["residual"], zero_init=last))
        self.layers = torch.nn.ModuleList(layers)
        self.upsample = FixedUpsample(scale, upsample)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = codes
        for n, layer in enumerate(self.layers):
            delta = layer.delta(x)
            if n < len(self.layers) - 1:
                base = x if layer.residual else 128.0
                x = torch.clamp(base + delta, 0, 255)
        hr = self.upsample(codes) + F.pixel_shuffle(delta, self.scale)
        return torch.clamp(hr, 0, 255)

    def freeze_knots(self) -> None:
        for layer in self.layers:
            if isinstance(layer, IQLayer):
                layer.freeze_knots()

    def start_quant(self, like: Model | None = None) -> None:
        """int8 tables from here. ``like``: the model ``load_model`` loaded; its layers keep
        their shifts, so the net still computes it exactly (the finest shift that fits is
        one coarser for a table that holds -128, which would round it)."""
        loaded = {id(layer): src.shift for layer, src in self._loaded_pairs(like)} if like else {}
        for layer in self.layers:
            layer.start_quant(loaded.get(id(layer)))

    def _loaded_pairs(self, model: Model) -> list:
        """(layer of this net, layer of ``model``) as ``load_model`` pairs them."""
        extra = len(self.layers) - len(model.layers)
        return list(zip(list(self.layers[:-1 - extra]) + [self.layers[-1]], model.layers))

    @torch.no_grad()
    def load_model(self, model: Model) -> int:
        """Start from a trained model with the same first and last layer and at most as many
        residual layers: its layers are loaded in order, each extra residual layer (placed
        before the last) starts with zero tables, i.e. as the identity, so the net begins
        computing what ``model`` computes. Returns the number of layers added."""
        if model.scale != self.scale or model.upsample != self.upsample_kind:
            raise ValueError(f"the model is x{model.scale} over {model.upsample}, this net "
                             f"x{self.scale} over {self.upsample_kind}")
        extra = len(self.layers) - len(model.layers)
        hidden = list(self.layers[1:-1])
        if extra < 0 or len(model.layers) < 2 or not all(l.residual for l in hidden[len(hidden) - extra:]):
            raise ValueError(f"cannot start {len(self.layers)} layers from a model of "
                             f"{len(model.layers)}")
        for layer, src in self._loaded_pairs(model):
            layer.load_layer(src)
        for layer in hidden[len(hidden) - extra:]:
            layer.theta.zero_()
            layer.beta.zero_()
        return extra

    def export(self, provenance: dict | None = None) -> Model:
        return Model(scale=self.scale, upsample=self.upsample_kind,
                     layers=tuple(layer.export() for layer in self.layers), trained=True,
                     provenance=provenance or {})


class TeacherCNN(torch.nn.Module):
    """Float teacher for distillation: a small ReLU CNN (no LUT or quantisation limits)
    predicting the residual over the same fixed upsample."""

    def __init__(self, scale: int, width: int = 32, upsample: str = "bicubic"):
        super().__init__()
        self.scale = scale
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, width, 5, padding=2, padding_mode="replicate"), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1, padding_mode="replicate"), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1, padding_mode="replicate"), torch.nn.ReLU(),
            torch.nn.Conv2d(width, scale * scale, 3, padding=1, padding_mode="replicate"))
        torch.nn.init.zeros_(self.body[-1].weight)
        torch.nn.init.zeros_(self.body[-1].bias)
        self.upsample = FixedUpsample(scale, upsample)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        res = self.body(codes / 255.0 - 0.5) * 255.0
        return torch.clamp(self.upsample(codes) + F.pixel_shuffle(res, self.scale), 0, 255)


# Per-layer L tuned for >= 15x less storage than ECNN at every scale (docs/design.md,
# "Starting architecture", began with L = 17 everywhere: 14.9x); the runtime's
# DEFAULT_ARCH is the one definition.
def iqlut_arch(scale: int, hidden: int | None = None, last_k: int | None = None,
               hidden_k=None, width: int | None = None) -> tuple:
    """The IQ-LUT layer specs trained for ``scale`` (the last layer's c_out is scale**2);
    ``hidden``: that many residual 8->8 layers between the first and the last instead of
    the default's two; ``last_k``: the last layer's window instead of the default's 3 (1:
    each LR pixel's r*r outputs from its own codes only, cheaper per layer than a k = 3
    last layer, so depth can move into the hidden layers); ``hidden_k``: the window of
    each residual layer in order, any sequence of ints (its length is the number of them;
    a k = 1 layer mixes each pixel's own eight codes, a ninth of a k = 3 layer's work and
    table); ``width``: the channels between layers instead of the default's 8 (table size
    and work grow as its square in the residual layers)."""
    arch = DEFAULT_ARCH
    if hidden is not None and hidden < 0:
        raise ValueError(f"hidden must be >= 0, got {hidden}")
    windows = [("last_k", last_k)] if last_k is not None else []
    for name, k in windows + [("hidden_k", k) for k in hidden_k or ()]:
        if k < 1 or k % 2 == 0:
            raise ValueError(f"{name} must be odd and >= 1, got {k}")
    if hidden_k is not None:
        if hidden is not None and hidden != len(hidden_k):
            raise ValueError(f"hidden_k gives {len(hidden_k)} windows for {hidden} hidden layers")
        hidden = len(hidden_k)
    if hidden is not None:
        ks = list(hidden_k) if hidden_k is not None else [arch[1]["k"]] * hidden
        arch = (arch[0],) + tuple(dict(arch[1], k=int(k)) for k in ks) + (arch[-1],)
    if last_k is not None:
        arch = arch[:-1] + (dict(arch[-1], k=last_k),)
    if width is not None:
        if not 1 <= width <= MAX_WIDTH:
            raise ValueError(f"width must be 1..{MAX_WIDTH}, got {width}")
        arch = ((dict(arch[0], c_out=width),) + tuple(dict(a, c_in=width, c_out=width)
                                                      for a in arch[1:-1])
                + (dict(arch[-1], c_in=width),))
    return arch


def ecnn_arch(scale: int, hidden: int | None = None, last_k: int | None = None,
              hidden_k=None, width: int | None = None) -> tuple:
    """ECNN: the IQ-LUT shapes of ``scale`` with L = 256 and no residual blocks."""
    return tuple(dict(a, L=256, residual=False)
                 for a in iqlut_arch(scale, hidden, last_k, hidden_k, width))


def arch_storage(arch, scale: int) -> tuple[int, int]:
    """(IQ-LUT storage, ECNN storage) in bytes for an architecture."""
    model = zero_model(scale, arch=arch)
    return model.storage_bytes(), model.ecnn_storage_bytes()


class EnsembleNet(torch.nn.Module):
    """``net`` under the runtime's n-pass self-ensemble (``iqlut_gpu.ensemble``): the mean of
    ``net`` over the first n rotations/flips of the input, each transformed back, rounded
    half to even (straight through) as ``ensemble.integer_mean`` rounds it, so a quantised
    net's ensemble output is what the integer runtime computes with ``with_ensemble(n)``.

    Training through it (``iqlut train --ensemble n``) fits the tables to the averaged output
    the model ships with, rather than fitting each pass alone and averaging afterwards."""

    def __init__(self, net: LUTNet, n: int):
        super().__init__()
        from ..ensemble import TRANSFORMS, check
        self.net, self.n = net, check(n)
        self.transforms = TRANSFORMS[:self.n]

    @property
    def scale(self) -> int:
        return self.net.scale

    @property
    def layers(self):
        return self.net.layers

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if self.n == 1:
            return self.net(codes)
        ins = [torch.rot90(codes.flip(3) if flip else codes, k, dims=(2, 3))
               for k, flip in self.transforms]
        if all(x.shape == ins[0].shape for x in ins):  # square patches: one batched pass
            outs = self.net(torch.cat(ins)).chunk(self.n)
        else:
            outs = [self.net(x) for x in ins]
        total = 0
        for y, (k, flip) in zip(outs, self.transforms):
            y = torch.rot90(y, -k, dims=(2, 3))
            total = total + (y.flip(3) if flip else y)
        mean = total / self.n
        return mean + (torch.round(mean) - mean).detach()  # torch.round: half to even
