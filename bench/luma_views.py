"""Luma views: what a second look at the luma buys, against RGB mode's three channels.

    python -m bench.luma_views [--scale 2 3 4] [--crop 384] [--limit N] [--json PATH]

Luma mode (``iqlut_gpu.color``) runs one plane, Y, through the model; RGB mode runs R, G
and B, and the luma of its result averages three model outputs. On the validation split
(``train.data.validation_images``) RGB mode's Y-PSNR is 0.11-0.22 dB above luma mode's
(issue #22 asks for 0.05), and a rotation self-ensemble of luma passes closes only part
of it. This measures other second views of the same luma, each a model pass whose detail
(output minus the bicubic base, ``color.bicubic_model``) is averaged with the plain
pass's and added to every channel's bicubic base, as luma mode does:

- ``rot2``: the self-ensemble's second transform (``Upscaler(ensemble=2)``);
- ``invert``: the model on ``255 - Y``, its detail negated (the model sees other codes
  of its non-uniform knots);
- ``offset_-K_+K``: the model on ``Y - K`` and ``Y + K`` (clamped), two passes;
- ``rot2_invert``: the rotation pair and its inversion, four passes.

Reported: each variant's mean Y-PSNR (``evaluate.y_metrics``) and its difference to RGB
mode, per scale; the averages are of float details, rounded once (an experiment, not a
kernel: the product's luma mode stays as it is).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

OFFSETS = (1, 2, 4)


def variants(scale: int):
    """name -> function(lr uint8 image) -> upscaled uint8 image (same layout)."""
    from iqlut_gpu import Upscaler
    from iqlut_gpu.color import bicubic_model, luma

    one = Upscaler(scale, backend="cpu", ensemble=1)
    two = Upscaler(scale, backend="cpu", ensemble=2)
    bic = Upscaler(model=bicubic_model(scale), backend="cpu")

    def planes_of(lr):
        return np.ascontiguousarray(lr[None] if lr.ndim == 2 else lr.transpose(2, 0, 1))

    def image_of(planes, gray):
        return planes[0] if gray else planes.transpose(1, 2, 0)

    def detail(up, y):
        y = np.ascontiguousarray(y.astype(np.uint8))
        return up.run_planes(y).astype(np.int32) - bic.run_planes(y).astype(np.int32)

    def with_details(views):
        def fn(lr):
            planes = planes_of(lr)
            gray = lr.ndim == 2
            y = (planes if gray else luma(planes[0], planes[1], planes[2])[None]).astype(np.int32)
            d = np.round(sum(v(y) for v in views) / len(views)).astype(np.int32)
            out = np.clip(bic.run_planes(planes).astype(np.int32) + d, 0, 255).astype(np.uint8)
            return image_of(out, gray)
        return fn

    def plain(y):
        return detail(one, y)

    def rot2(y):
        return detail(two, y)

    def inverted(up):
        return lambda y: -detail(up, 255 - y)

    def shifted(k):
        return lambda y: detail(one, np.clip(y + k, 0, 255))

    out = {"rgb": one,
           "luma": with_details([plain]),
           "rot2": with_details([rot2]),
           "invert": with_details([plain, inverted(one)])}
    for k in OFFSETS:
        out[f"offset_-{k}_+{k}"] = with_details([shifted(-k), shifted(k)])
    out["rot2_invert"] = with_details([rot2, inverted(two)])
    return out


def measure(scales=(2, 3, 4), crop: int = 384, limit: int = 0, log=lambda m: None) -> dict:
    from iqlut_gpu.evaluate import degrade, y_metrics
    from iqlut_gpu.train import data

    from .machine import describe

    images = data.validation_images(crop, limit=limit)
    if not images:
        raise FileNotFoundError("no validation images here (scikit-image's and scikit-learn's "
                                "photos, train/get_data.sh's wallpapers)")
    res = {"benchmark": "luma_views", "machine": describe(), "images": len(images),
           "crop": crop, "scales": {}}
    for scale in scales:
        fns = variants(scale)
        sums = dict.fromkeys(fns, 0.0)
        for _, img in sorted(images.items()):
            hr, lr = degrade(img, scale)
            for name, fn in fns.items():
                sums[name] += y_metrics(fn(lr), hr, scale)[0]
        psnr = {k: v / len(images) for k, v in sums.items()}
        res["scales"][str(scale)] = {
            "y_psnr": {k: round(v, 4) for k, v in psnr.items()},
            "vs_rgb": {k: round(v - psnr["rgb"], 4) for k, v in psnr.items() if k != "rgb"}}
        log(f"x{scale}: " + ", ".join(f"{k} {v:+.3f}"
                                      for k, v in res["scales"][str(scale)]["vs_rgb"].items()))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.luma_views",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, nargs="+", default=[2, 3, 4], choices=(2, 3, 4))
    p.add_argument("--crop", type=int, default=384)
    p.add_argument("--limit", type=int, default=0, help="only the first N validation images")
    p.add_argument("--json", type=Path, metavar="PATH")
    args = p.parse_args(argv)
    from .timing import emit

    emit(measure(tuple(args.scale), args.crop, args.limit,
                 log=lambda m: print(m, file=sys.stderr)), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
