"""``iqlut eval --scale N [--model PATH] INPUT... [--json]``: the SR evaluation protocol.

Each INPUT (an HR image, or a folder of them) is cropped to a multiple of the scale,
downscaled by MATLAB-compatible bicubic, and upscaled again by MATLAB bicubic, by the
ECNN baseline (the shipped ``ecnn_xN`` model, if present) and by the model. Y-PSNR and
SSIM (BT.601 luma, r-pixel border shaved) are averaged over the inputs; the table also
gives each method's storage in bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import CLIError
from .common import add_backend_args, add_model_args, upscaler_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate on HR images: bicubic vs ECNN vs the model",
                       description="Standard SR evaluation (modcrop, MATLAB bicubic LR, Y-PSNR and "
                       "SSIM with an r-pixel shave) of bicubic, the ECNN baseline and the model.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="HR image files or folders")
    add_model_args(p)
    add_backend_args(p)
    p.add_argument("--ecnn", metavar="PATH", help="ECNN baseline model (default: the shipped one)")
    p.add_argument("--no-ecnn", action="store_true", help="leave out the ECNN row")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def ecnn_path(scale: int) -> Path:
    from ..model import default_model_path

    return default_model_path(scale).with_name(f"ecnn_x{scale}.safetensors")


def collect_inputs(inputs) -> list[Path]:
    from ..io import IMAGE_SUFFIXES

    files = []
    for name in inputs:
        p = Path(name)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise CLIError(f"{p}: no such file or folder")
    if not files:
        raise CLIError("no images to evaluate")
    return files


def evaluate(files, scale: int, methods: dict) -> dict:
    """``methods``: name -> (upscaler: lr image -> sr image, e.g. an ``Upscaler``; storage
    bytes). Returns the results dict."""
    from ..evaluate import bicubic_upscale, degrade, y_metrics
    from ..io import read_image

    per_image = {}
    sums = {name: [0.0, 0.0] for name in ["bicubic", *methods]}
    for f in files:
        img = read_image(f)
        if img.ndim == 3 and img.shape[2] in (2, 4):
            img = img[..., :-1]  # alpha is not part of the protocol
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[..., 0]
        if min(img.shape[:2]) < 2 * scale + 11:
            raise CLIError(f"{f}: too small for the protocol at x{scale} ({img.shape[1]}x{img.shape[0]})")
        hr, lr = degrade(img, scale)
        row = {}
        for name, fn in [("bicubic", lambda x: bicubic_upscale(x, scale))] + [
                (n, m[0]) for n, m in methods.items()]:
            p, s = y_metrics(fn(lr), hr, scale)
            row[name] = {"psnr": round(p, 4), "ssim": round(s, 5)}
            sums[name][0] += p
            sums[name][1] += s
        per_image[str(f)] = row
    n = len(files)
    storage = {"bicubic": 0, **{name: m[1] for name, m in methods.items()}}
    mean = {name: {"psnr": round(v[0] / n, 4), "ssim": round(v[1] / n, 5),
                   "storage_bytes": storage[name]} for name, v in sums.items()}
    return {"scale": scale, "images": n, "mean": mean, "per_image": per_image}


def run(args) -> int:
    from ..model import load_model

    upscaler = upscaler_from_args(args)
    model, scale, backend = upscaler.model, upscaler.scale, upscaler.backend
    files = collect_inputs(args.inputs)
    methods = {}
    if not args.no_ecnn:
        path = Path(args.ecnn) if args.ecnn else ecnn_path(scale)
        if path.exists() or args.ecnn:
            ecnn = load_model(path)
            if ecnn.scale != scale:
                raise CLIError(f"{path} is an x{ecnn.scale} model, not x{scale}")
            # compared alike: the same passes, backend and mode
            methods["ecnn"] = (upscaler_from_args(args, model=ecnn), ecnn.ecnn_storage_bytes())
    methods["iqlut"] = (upscaler, model.storage_bytes())
    res = evaluate(files, scale, methods)
    res["backend"] = backend
    res["ensemble"] = model.ensemble
    res["model"] = args.model or f"default x{scale}"
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"x{scale} on {res['images']} image(s); Y-PSNR / SSIM, {scale}-pixel border shaved; "
          f"backend {backend}" + (f"; {model.ensemble}-pass self-ensembles" if model.ensemble != 1 else ""))
    print(f"{'method':<10} {'PSNR dB':>9} {'SSIM':>8} {'storage B':>11}")
    for name, m in res["mean"].items():
        print(f"{name:<10} {m['psnr']:9.3f} {m['ssim']:8.4f} {m['storage_bytes']:11,d}")
    if "ecnn" in res["mean"]:
        ratio = res["mean"]["ecnn"]["storage_bytes"] / max(1, res["mean"]["iqlut"]["storage_bytes"])
        print(f"IQ-LUT is {ratio:.1f}x smaller than ECNN")
    return 0
