"""The validation split and the validation table: bicubic / ECNN / IQ-LUT (docs/models.md).

``python -m iqlut_gpu.train.validate [--scale N ...] [--models DIR] [--crop PX] [--ensemble N] [--json]``

Uses the integer runtime (the CPU backend) on the validation images of
``iqlut_gpu.train.data`` (center crops of at most ``--crop`` pixels a side), the protocol
of ``iqlut_gpu.evaluate``. ``--ensemble N`` runs both models as N-pass self-ensembles
(default: as their files say).

Needs no torch: ``Validation`` (the split at one scale, scored by any upscaler) and
``runtime_upscaler`` (the integer runtime) live here, and the trainer uses them too (its
validation and export check).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..ensemble import ENSEMBLES
from ..evaluate import bicubic_upscale, imresize, modcrop, psnr, rgb_to_y, shave, ssim
from ..model import load_model
from ..upscaler import Upscaler
from . import data


class Validation:
    """The validation split at one scale: HR (modcropped) and MATLAB-bicubic LR images."""

    def __init__(self, scale: int, crop: int, images: dict | None = None, limit: int = 0):
        self.scale = scale
        imgs = images if images is not None else data.validation_images(crop, limit=limit)
        self.names, self.hr, self.lr = [], [], []
        for name, img in sorted(imgs.items()):
            hr = modcrop(img, scale)
            self.names.append(name)
            self.hr.append(hr)
            self.lr.append(imresize(hr, 1.0 / scale))

    def score(self, upscale) -> dict:
        """``upscale(lr uint8 image) -> uint8 image``; mean Y-PSNR / SSIM and per image."""
        per = {}
        for name, hr, lr in zip(self.names, self.hr, self.lr):
            sr = upscale(lr)
            ys, yh = shave(rgb_to_y(sr), self.scale), shave(rgb_to_y(hr), self.scale)
            per[name] = (psnr(ys, yh), ssim(ys, yh) if min(ys.shape) >= 11 else float("nan"))
        return {"psnr": float(np.mean([v[0] for v in per.values()])),
                "ssim": float(np.nanmean([v[1] for v in per.values()])),
                "per_image": {k: [round(v[0], 4), round(v[1], 5)] for k, v in per.items()}}

    def bicubic(self) -> dict:
        return self.score(lambda lr: bicubic_upscale(lr, self.scale))


def runtime_upscaler(model, backend: str = "cpu") -> Upscaler:
    """The integer runtime the exported ``model`` will run on (for the export check)."""
    return Upscaler(model=model, backend=backend)


def table(scale: int, models_dir: Path, crop: int, backend: str = "cpu",
          ensemble: int | None = None) -> dict:
    val = Validation(scale, crop)
    rows = {"bicubic": {**val.bicubic(), "storage_bytes": 0}}
    for name in ("ecnn", "iqlut"):
        path = models_dir / f"{name}_x{scale}.safetensors"
        if not path.exists():
            continue
        model = load_model(path).with_ensemble(ensemble)
        res = val.score(runtime_upscaler(model, backend))
        res["storage_bytes"] = model.ecnn_storage_bytes() if name == "ecnn" else model.storage_bytes()
        res["file_bytes"] = path.stat().st_size
        res["ensemble"] = model.ensemble
        res["provenance"] = {k: v for k, v in model.provenance.items() if k != "validation"}
        rows[name] = res
    return {"scale": scale, "val_crop": crop, "images": val.names, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m iqlut_gpu.train.validate")
    p.add_argument("--scale", type=int, nargs="*", default=[2, 3, 4])
    p.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / "iqlut_gpu" / "models"),
                   help="folder with iqlut_xN / ecnn_xN .safetensors")
    p.add_argument("--crop", type=int, default=data.VAL_CROP)
    p.add_argument("--ensemble", type=int, choices=ENSEMBLES, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    models = Path(args.models)
    if not models.exists():  # installed package: the models sit beside the code
        from ..model import default_model_path
        models = default_model_path(4).parent
    results = [table(s, models, args.crop, ensemble=args.ensemble) for s in args.scale]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("| scale | method | passes | Y-PSNR dB | SSIM | storage B | vs bicubic dB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        bic = r["rows"]["bicubic"]["psnr"]
        for name, row in r["rows"].items():
            print(f"| x{r['scale']} | {name} | {row.get('ensemble', 1)} | {row['psnr']:.3f} | {row['ssim']:.4f} | "
                  f"{row['storage_bytes']:,} | {row['psnr'] - bic:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
