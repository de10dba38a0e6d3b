"""How much of the remaining error a *linear* filter could still remove (a diagnostic).

``python -m iqlut_gpu.train.probe --scale N [--model PATH] [--taps T] [--json]``

Two least-squares fits on training crops (the bank of ``iqlut_gpu.train.data``), each a
linear map from an LR pixel's T x T window (and a constant) to its r x r HR sub-pixels,
scored on the validation split (Y-PSNR, the protocol of ``iqlut_gpu.evaluate``):

- ``linear``: the best linear upscaler of this data, against MATLAB bicubic: what a
  learned fixed base (in place of the model's bicubic base) could start from;
- ``model+linear``: the same fit to the model's own error (HR minus the model's
  output), added to the model's output: what a learned linear base could still add *on
  top of* the trained model. Near zero means the model has already learned every linear
  part of the mapping, so a learned linear base would not raise its quality.

Needs the training data (``train/get_data.sh``) and numpy only (not torch).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .. import backends
from ..evaluate import bicubic_upscale, degrade, psnr, rgb_to_y, shave
from ..model import default_model_path, load_model
from ..planes import to_planes
from . import data


def window_offsets(taps: int) -> np.ndarray:
    """Offsets of a T x T window around an LR pixel: -T/2+1..T/2 for even T (the HR
    block of an LR pixel lies right of its centre), -(T-1)/2..(T-1)/2 for odd T."""
    if taps < 1:
        raise ValueError(f"taps must be >= 1, got {taps}")
    h = taps // 2
    return np.arange(-h + 1, h + 1) if taps % 2 == 0 else np.arange(-h, h + 1)


def features(plane: np.ndarray, taps: int) -> np.ndarray:
    """[H, W, T*T + 1]: each LR pixel's window (edge-replicated) and a constant 1."""
    offs = window_offsets(taps)
    pad = int(np.abs(offs).max())
    p = np.pad(plane.astype(np.float64), pad, mode="edge")
    h, w = plane.shape
    cols = [p[pad + dy:pad + dy + h, pad + dx:pad + dx + w] for dy in offs for dx in offs]
    return np.stack(cols + [np.ones((h, w))], axis=-1)


def unphase(blocks: np.ndarray, scale: int) -> np.ndarray:
    """[h, w, r*r] -> [h*r, w*r]: sub-pixel ``a*r + b`` of LR pixel (y, x) goes to HR
    pixel (y*r + a, x*r + b), the order ``fit`` samples its targets in."""
    h, w, _ = blocks.shape
    return blocks.reshape(h, w, scale, scale).transpose(0, 2, 1, 3).reshape(h * scale, w * scale)


def fit(lr: np.ndarray, target: np.ndarray, scale: int, taps: int, samples: int,
        rng: np.random.Generator) -> np.ndarray:
    """Least-squares weights [T*T + 1, r*r] from LR windows to target blocks.

    ``lr`` [M, h, w] LR planes, ``target`` [M, h*r, w*r] float; ``samples`` LR pixels
    drawn at random (away from the border, so no padded pixel enters the fit)."""
    M, h, w = lr.shape
    offs = window_offsets(taps)
    lo, hi = -int(offs.min()), int(offs.max())
    if h - lo - hi < 1 or w - lo - hi < 1:
        raise ValueError(f"{h}x{w} planes are too small for a {taps}x{taps} window")
    idx = rng.integers(0, M, samples)
    ys = rng.integers(lo, h - hi, samples)
    xs = rng.integers(lo, w - hi, samples)
    X = np.empty((samples, len(offs) ** 2 + 1))
    k = 0
    for dy in offs:
        for dx in offs:
            X[:, k] = lr[idx, ys + dy, xs + dx]
            k += 1
    X[:, k] = 1.0
    Y = np.stack([target[idx, ys * scale + a, xs * scale + b]
                  for a in range(scale) for b in range(scale)], axis=-1)
    weights, *_ = np.linalg.lstsq(X, Y, rcond=None)
    return weights


def apply(lr_plane: np.ndarray, weights: np.ndarray, scale: int, taps: int) -> np.ndarray:
    """The fitted linear map on one LR plane: a float HR plane."""
    return unphase(features(lr_plane, taps) @ weights, scale)


def _image(planes: list[np.ndarray], like: np.ndarray) -> np.ndarray:
    out = [np.clip(np.round(p), 0, 255).astype(np.uint8) for p in planes]
    return out[0] if like.ndim == 2 else np.stack(out, axis=-1)


def probe(scale: int, model_path: str, taps: int = 6, planes: int = 1500,
          samples: int = 300_000, seed: int = 0, crop: int = data.VAL_CROP,
          backend: str = "cpu") -> dict:
    model = load_model(model_path).with_ensemble(1)
    hr_bank, lr_bank = data.build_bank(scale, log=lambda m: None)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(lr_bank), min(planes, len(lr_bank)), replace=False))
    lr = np.ascontiguousarray(lr_bank[pick])
    hr = hr_bank[pick].astype(np.float64)
    sr = np.asarray(backends.run_planes(backend, model, lr)).astype(np.float64)
    w_up = fit(lr, hr, scale, taps, samples, rng)
    w_res = fit(lr, hr - sr, scale, taps, samples, rng)

    rows = {"bicubic": {}, "linear": {}, "model": {}, "model+linear": {}}
    for name, img in sorted(data.validation_images(crop).items()):
        hr_img, lr_img = degrade(img, scale)
        lr_planes = to_planes(lr_img)[0]
        sr_img = np.asarray(backends.run_planes(backend, model, np.ascontiguousarray(
            np.stack(lr_planes))))
        outs = {
            "bicubic": bicubic_upscale(lr_img, scale),
            "linear": _image([apply(p, w_up, scale, taps) for p in lr_planes], lr_img),
            "model": _image(list(sr_img), lr_img),
            "model+linear": _image([s + apply(p, w_res, scale, taps)
                                    for p, s in zip(lr_planes, sr_img.astype(np.float64))], lr_img),
        }
        yh = shave(rgb_to_y(hr_img), scale)
        for key, out in outs.items():
            rows[key][name] = psnr(shave(rgb_to_y(out), scale), yh)
    mean = {k: float(np.mean(list(v.values()))) for k, v in rows.items()}
    return {"scale": scale, "model": str(model_path), "taps": taps, "planes": int(len(pick)),
            "samples": samples, "seed": seed, "val_crop": crop, "mean_psnr": mean,
            "linear_vs_bicubic_db": mean["linear"] - mean["bicubic"],
            "model_vs_bicubic_db": mean["model"] - mean["bicubic"],
            "linear_on_model_db": mean["model+linear"] - mean["model"],
            "per_image": {k: {n: round(p, 4) for n, p in v.items()} for k, v in rows.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m iqlut_gpu.train.probe", description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--model", default="", help="model file (default: the shipped one, one pass)")
    p.add_argument("--taps", type=int, default=6, help="LR window side of the linear maps")
    p.add_argument("--planes", type=int, default=1500, help="training planes to fit on")
    p.add_argument("--samples", type=int, default=300_000, help="LR pixels per fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        res = probe(args.scale, args.model or str(default_model_path(args.scale)), args.taps,
                    args.planes, args.samples, args.seed)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    m = res["mean_psnr"]
    print(f"x{args.scale}, {args.taps}x{args.taps} LR window, fitted on {res['planes']} training "
          f"planes ({args.samples:,} pixels), validation split (crop {res['val_crop']}), Y-PSNR dB:")
    print(f"  bicubic         {m['bicubic']:.3f}")
    print(f"  linear          {m['linear']:.3f}  ({res['linear_vs_bicubic_db']:+.3f} vs bicubic)")
    print(f"  model           {m['model']:.3f}  ({res['model_vs_bicubic_db']:+.3f} vs bicubic)")
    print(f"  model+linear    {m['model+linear']:.3f}  ({res['linear_on_model_db']:+.3f} vs model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
