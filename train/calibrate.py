"""Bias refit after training: the last layer's biases that zero the mean error.

Each output sub-pixel phase (a, b) of an r x r block comes from one channel of the last
layer (``pixel_shuffle``: channel ``a*r + b``), whose bias shifts that phase's output by a
constant. The MSE-optimal such constant makes the phase's mean error zero; Adam's noisy
last steps do not always leave it there. A fraction of a code of mean error costs little
on textured photos but matters on near-flat images, whose errors are a fraction of a code
themselves (docs/training.md, "the bias refit", has what it measured).

The refit uses training patches only (a fixed, seeded sample, flips and rotations as in
training) and the quantised torch forward, which the integer runtime reproduces exactly,
so the export check still compares like with like. A few rounds (the output's rounding and
clamping make one step inexact); a round that does not lower the largest mean error, or
that raises the sample's MSE by more than the mean squared error it removes plus 0.1% (its
rounding noise), is undone.
"""

from __future__ import annotations

import numpy as np
import torch

from ..ensemble import TRANSFORMS, inverse
from .net import THETA_UNIT


def phase_map(scale: int, n: int = 1) -> np.ndarray:
    """``M[p, q]``: the share of an n-pass ensemble's passes in which output phase p
    (``a*r + b``) comes from last-layer channel q. A bias change ``db`` moves the ensemble's
    mean error per phase by ``M @ db`` (n = 1: the identity). A pass's output tile of r x r
    phases, transformed back, is the tile of channels in the original frame: r divides the
    output size, so one tile stands for the whole image."""
    r = scale
    tile = np.arange(r * r).reshape(1, r, r)
    m = np.zeros((r * r, r * r))
    for k, flip in TRANSFORMS[:n]:
        for p, q in enumerate(np.asarray(inverse(tile, k, flip)).reshape(-1)):
            m[p, q] += 1.0 / n
    return m


@torch.no_grad()
def phase_errors(net, lo: np.ndarray, hi: np.ndarray, device, chunk: int = 256):
    """Mean error (output - HR, codes) per output phase, and the MSE, over the sample
    (``net``: a ``LUTNet`` or an ``EnsembleNet`` around one)."""
    r = net.scale
    dtype = net.layers[-1].beta.dtype
    total = torch.zeros(r * r, dtype=torch.float64)
    sq, count = 0.0, 0
    for i in range(0, len(lo), chunk):
        x = torch.from_numpy(lo[i:i + chunk]).to(dtype)[:, None].to(device)
        y = torch.from_numpy(hi[i:i + chunk].astype(np.float64))
        e = net(x)[:, 0].double().cpu() - y
        n, h, w = e.shape
        total += e.reshape(n, h // r, r, w // r, r).sum(dim=(0, 1, 3)).reshape(-1)
        sq += float((e * e).sum())
        count += e.numel()
    return (total / (count / (r * r))).numpy(), sq / count


# The share of the MSE a bias round may cost beyond mean(e^2): the rounding noise of the
# sample's MSE (below; 0.1% is 0.004 dB).
MSE_NOISE = 1e-3


@torch.no_grad()
def calibrate_bias(net, source, patch: int, device, seed: int, patches: int = 4096,
                   rounds: int = 3) -> dict:
    """Refit ``net.layers[-1]``'s biases in place on ``patches`` patches of ``source`` (a
    training source: ``sample(rng, batch, patch)``, e.g. ``data.BankSource``); returns
    what it did (for provenance). Under an ensemble (``EnsembleNet``) a phase's error is
    the mean over passes of several channels' biases (``phase_map``); the refit is the
    least-squares (minimum-norm) step."""
    rng = np.random.default_rng([seed, 0xB1A5])  # its own stream: training's stays as it was
    lo, hi = source.sample(rng, patches, patch)
    was_training = net.training
    net.eval()
    last = net.layers[-1]
    step = np.linalg.pinv(phase_map(net.scale, getattr(net, "n", 1)))
    err, mse = phase_errors(net, lo, hi, device)
    report = {"patches": int(patches), "mean_error_before": [round(float(v), 4) for v in err],
              "mse_before": round(mse, 4), "rounds": 0}
    for _ in range(rounds):
        keep = last.beta.detach().clone()
        last.beta -= torch.from_numpy(step @ err / THETA_UNIT).to(last.beta.dtype).to(last.beta.device)
        new_err, new_mse = phase_errors(net, lo, hi, device)
        # Without rounding, removing a mean error e lowers the MSE by mean(e^2); with the
        # output rounded to codes, moving a bias re-rounds a share of the pixels, and the
        # sample's MSE moves by that noise either way, which grows with the errors
        # themselves (tiny runs: -e^2 = -0.012 expected, +0.005 seen at MSE 10; +0.026 at
        # MSE 73). So a round is kept when it lowers the largest mean error and costs at
        # most mean(e^2) + 0.1% of the MSE (0.004 dB), and undone otherwise.
        if (np.abs(new_err).max() >= np.abs(err).max()
                or new_mse > mse * (1 + MSE_NOISE) + float(np.mean(err ** 2))):
            last.beta.copy_(keep)
            break
        err, mse = new_err, new_mse
        report["rounds"] += 1
    report["mean_error_after"] = [round(float(v), 4) for v in err]
    report["mse_after"] = round(mse, 4)
    net.train(was_training)
    return report
