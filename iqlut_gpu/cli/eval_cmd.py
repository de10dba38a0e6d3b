"""``iqlut eval``: the SR evaluation protocol, on data set folders or on HR images.

- ``iqlut eval --dataset DIR... [--scale N]``: data sets as the field lays them out
  (``iqlut_gpu.datasets``: benchmark packs ``HR/`` + ``LR_bicubic/XN/``, DIV2K, BasicSR's
  ``GTmod12/`` + ``LRbicxN/``, HR alone, folders of these); one column per data set.
- ``iqlut eval [--scale N] INPUT...``: HR image files or folders of them, LR made with
  MATLAB bicubic (the form that came first; its JSON keeps its shape).

Both go through one loop, ``evaluate``: each HR image is cropped at the bottom and right
to a multiple of the scale, its LR is the given file (checked against the cropped HR
size) or MATLAB bicubic of it, and every method upscales the LR: bicubic (MATLAB
imresize), the ECNN baseline (the shipped ``ecnn_xN``), the shipped default IQ-LUT model
and each model file given, all with the same ``--ensemble``, backend and mode (one
``Upscaler`` per model, ``cli.common.upscaler_from_args``). Scores are Y-PSNR and SSIM on
BT.601 luma with a ``scale``-pixel border shaved (``iqlut_gpu.evaluate``), per image and
averaged per data set. A broken file stops the run with an error that names it: a mean
over part of a benchmark is not that benchmark's figure. User guide: docs/evaluation.md.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from . import CLIError
from .common import add_backend_args, add_color_arg, upscaler_from_args

OUT_SUFFIXES = (".json", ".csv")
MEAN_ROW = "(mean)"  # the image column of the mean rows in CSV (image names have suffixes)


def add_parser(sub) -> None:
    from ..ensemble import ENSEMBLES
    from ..model import SCALES

    p = sub.add_parser(
        "eval", help="evaluate on data sets or HR images: bicubic vs ECNN vs models",
        description="The SR evaluation protocol (HR cropped at the bottom/right to a multiple "
        "of the scale, LR from the data set or MATLAB bicubic, Y-PSNR and SSIM on BT.601 luma "
        "with a scale-pixel border shaved) for bicubic, the ECNN baseline, the shipped model "
        "and any model files, side by side. See docs/evaluation.md.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="HR image files or folders of them (without --dataset)")
    p.add_argument("--dataset", "-d", nargs="+", action="extend", default=[], metavar="DIR",
                   help="data set folders: HR/ (+ LR_bicubic/XN/), DIV2K's *_HR/ (+ "
                   "*_LR_bicubic/XN/), GTmod12/ (+ LRbicxN/), a folder of HR images, or a "
                   "folder of such data sets (benchmark/)")
    p.add_argument("--scale", type=int, choices=SCALES, default=None,
                   help="upscaling factor (default: the model files'; 4 for INPUT images; "
                   "required with --dataset when no model file is given)")
    p.add_argument("--model", action="append", dest="model_files", default=[], metavar="PATH",
                   help="a model file to compare (repeatable; its row is named by the file name)")
    p.add_argument("--models", nargs="+", action="extend", dest="model_files", metavar="PATH",
                   help="several model files to compare")
    p.add_argument("--no-default", action="store_true",
                   help="leave out the shipped default model (the iqlut row)")
    p.add_argument("--ecnn", metavar="PATH", help="ECNN baseline model (default: the shipped one)")
    p.add_argument("--no-ecnn", action="store_true", help="leave out the ECNN row")
    p.add_argument("--ensemble", type=int, choices=ENSEMBLES, default=None, metavar="N",
                   help="run every model as an N-pass self-ensemble (1, 2, 4 or 8; default: "
                   "each as its file says, shown in the passes column)")
    add_color_arg(p)
    add_backend_args(p)
    p.add_argument("--make-lr", action="store_true",
                   help="make the LR from HR with MATLAB bicubic even where the data set has LR files")
    p.add_argument("--per-image", action="store_true",
                   help="print each image's scores too, not only the means")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON to stdout instead of the table")
    fmt.add_argument("--csv", action="store_true", help="print CSV to stdout instead of the table")
    p.add_argument("-o", "--out", action="append", default=[], metavar="PATH",
                   help="also write the results to PATH: JSON or CSV by its suffix (.json, "
                   ".csv); repeatable; written atomically when the run ends")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------- the loop


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


def _scored(img: np.ndarray) -> tuple[np.ndarray, bool]:
    """The image as the protocol scores it, and whether an alpha channel was dropped: alpha
    is not part of the protocol; a one-channel image is gray (H, W)."""
    alpha = img.ndim == 3 and img.shape[2] in (2, 4)
    if alpha:
        img = img[..., :-1]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    return img, alpha


def _same_kind(lr: np.ndarray, hr: np.ndarray, pair) -> np.ndarray:
    """The LR as gray or colour like its HR, where that loses nothing (a colour file whose
    channels are equal is gray); a real colour/gray mismatch is an error."""
    from ..datasets import DatasetError

    if lr.ndim == hr.ndim:
        return lr
    if lr.ndim == 3:  # colour LR, gray HR
        if (lr == lr[..., :1]).all():
            return lr[..., 0]
        raise DatasetError(f"{pair.lr} is a colour image but its HR {pair.hr} is gray")
    if (hr == hr[..., :1]).all():  # gray LR, colour HR with equal channels
        return np.repeat(lr[..., None], hr.shape[2], axis=2)
    raise DatasetError(f"{pair.lr} is a gray image but its HR {pair.hr} is in colour")


def load_pair(pair, scale: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(HR cropped to a multiple of ``scale``, LR, alpha dropped) for one ``datasets.Pair``:
    the LR is the pair's file, or MATLAB bicubic of the HR when it has none."""
    from ..datasets import check_sizes
    from ..evaluate import degrade, modcrop
    from ..io import read_image

    img, alpha = _scored(read_image(pair.hr))
    if pair.lr is None:
        check_sizes(img.shape, None, scale, pair.hr, None)
        hr, lr = degrade(img, scale)
        return hr, lr, alpha
    lr, lr_alpha = _scored(read_image(pair.lr))
    check_sizes(img.shape, lr.shape, scale, pair.hr, pair.lr)
    hr = modcrop(img, scale)
    return hr, _same_kind(lr, hr, pair), alpha or lr_alpha


def evaluate(items, scale: int, methods: dict, progress=None) -> dict:
    """The protocol on ``items`` (HR image paths, or ``datasets.Pair`` s with their LR
    files). ``methods``: name -> (upscaler: LR image -> SR image, e.g. an ``Upscaler``;
    storage bytes); a bicubic row comes first. ``progress(n)`` is called after each image.

    Returns ``{"scale", "images", "mean": {method: {psnr, ssim, storage_bytes}},
    "per_image": {image name: {method: {psnr, ssim}}}, "alpha_dropped": [names],
    "gray": [names], "lr_check": {...}}``: the mean is the plain average of the per-image
    scores (the field's convention); ``lr_check`` (only with LR files) counts the given LR
    images equal to MATLAB bicubic of their HR."""
    from ..datasets import Pair
    from ..evaluate import bicubic_upscale, imresize, y_metrics, y_shaved

    pairs = [it if isinstance(it, Pair) else Pair(str(it), Path(it)) for it in items]
    runs = {"bicubic": lambda lr: bicubic_upscale(lr, scale), **{n: m[0] for n, m in methods.items()}}
    sums = {name: [0.0, 0.0] for name in runs}
    per_image, alpha, gray = {}, [], []
    lr_check = {"images": 0, "equal": 0, "max_abs_diff": 0}
    for pair in pairs:
        hr, lr, dropped = load_pair(pair, scale)
        if dropped:
            alpha.append(pair.name)
        if hr.ndim == 2:
            gray.append(pair.name)
        if pair.lr is not None:
            diff = int(np.abs(imresize(hr, 1.0 / scale).astype(np.int16) - lr.astype(np.int16)).max())
            lr_check["images"] += 1
            lr_check["equal"] += diff == 0
            lr_check["max_abs_diff"] = max(lr_check["max_abs_diff"], diff)
        hr_y = y_shaved(hr, scale)
        row = {}
        for name, fn in runs.items():
            p, s = y_metrics(np.asarray(fn(lr)), hr, scale, hr_y)
            row[name] = {"psnr": round(p, 4), "ssim": round(s, 5)}
            sums[name][0] += p
            sums[name][1] += s
        per_image[pair.name] = row
        if progress is not None:
            progress(1)
    n = len(pairs)
    storage = {"bicubic": 0, **{name: m[1] for name, m in methods.items()}}
    mean = {name: {"psnr": round(v[0] / n, 4), "ssim": round(v[1] / n, 5),
                   "storage_bytes": storage[name]} for name, v in sums.items()}
    res = {"scale": scale, "images": n, "mean": mean, "per_image": per_image,
           "alpha_dropped": alpha, "gray": gray}
    if lr_check["images"]:
        res["lr_check"] = lr_check
    return res


# ---------------------------------------------------------------------------- methods


def _storage(model) -> int:
    """Storage as the table counts it: an ECNN model (256 uniform knots in every layer)
    stores no knots; others store tables, knots and biases (docs/design.md, "Storage")."""
    if all(layer.L == 256 for layer in model.layers):
        return model.ecnn_storage_bytes()
    return model.storage_bytes()


def _given_models(paths) -> list[tuple[Path, object]]:
    from ..io import IMAGE_SUFFIXES
    from ..model import load_model

    out = []
    for name in paths:
        p = Path(name)
        if p.suffix.lower() in IMAGE_SUFFIXES:
            raise CLIError(f"{p}: an image, not a model file (put INPUT images before --models, "
                           "or give models with --model PATH)")
        out.append((p, load_model(p)))
    return out


def _resolve_scale(args, given, dataset_mode: bool) -> int:
    if args.scale is not None:
        for p, m in given:
            if m.scale != args.scale:
                raise CLIError(f"{p} is an x{m.scale} model, not x{args.scale}")
        return args.scale
    scales = sorted({m.scale for _, m in given})
    if len(scales) > 1:
        listed = ", ".join(f"{p.name} x{m.scale}" for p, m in given)
        raise CLIError(f"the model files are of different scales ({listed}); evaluate one scale a call")
    if scales:
        return scales[0]
    if dataset_mode:
        raise CLIError("--scale N is required with --dataset when no model file is given "
                       "(the data sets hold LR files for several scales)")
    return 4


def _row_name(path: Path, taken: set) -> str:
    for name in (path.stem, f"{path.parent.name}/{path.stem}"):
        if name and name not in taken:
            return name
    k = 2
    while f"{path.stem}#{k}" in taken:
        k += 1
    return f"{path.stem}#{k}"


def build_methods(args, scale: int, given) -> tuple[dict, dict, list]:
    """(methods for ``evaluate``, per method {path, passes, storage_bytes}, notes). Rows:
    ecnn, iqlut (the shipped default), then each model file by its file name; a file given
    twice, or the shipped file itself, is one row."""
    import os

    from ..model import default_model, default_model_path, load_model

    rows: list[tuple[str, Path | None, object]] = []  # (name, file, model)
    notes = []
    if not args.no_ecnn:
        path = Path(args.ecnn) if args.ecnn else ecnn_path(scale)
        if args.ecnn or path.exists():
            ecnn = load_model(path)
            if ecnn.scale != scale:
                raise CLIError(f"{path} is an x{ecnn.scale} model, not x{scale}")
            rows.append(("ecnn", path, ecnn))
    if not args.no_default:
        rows.append(("iqlut", default_model_path(scale), default_model(scale)))
    seen = {os.path.realpath(p): name for name, p, _ in rows}
    taken = {"bicubic", *(name for name, _, _ in rows)}
    for p, m in given:
        key = os.path.realpath(p)
        if key in seen:
            notes.append(f"{p} is the {seen[key]} row already; shown once")
            continue
        name = _row_name(p, taken)
        taken.add(name)
        seen[key] = name
        rows.append((name, p, m))
    methods, info = {}, {"bicubic": {"path": None, "passes": None, "storage_bytes": 0}}
    for name, p, m in rows:
        up = upscaler_from_args(args, model=m)  # the same --ensemble, --color, backend, mode
        methods[name] = (up, _storage(m))
        info[name] = {"path": str(p), "passes": up.model.ensemble, "storage_bytes": _storage(m)}
    return methods, info, notes


# ---------------------------------------------------------------------------- output


def _check_outputs(paths) -> list[Path]:
    """-o targets, checked before any work: a known suffix and an existing folder."""
    out = []
    for name in paths:
        p = Path(name)
        if p.suffix.lower() not in OUT_SUFFIXES:
            raise CLIError(f"{p}: -o writes .json or .csv files (the suffix says which)")
        if p.is_dir():
            raise CLIError(f"{p}: is a folder")
        if not p.parent.is_dir():
            raise CLIError(f"{p}: no folder {p.parent} to write it in")
        out.append(p)
    return out


def _fmt(score: dict) -> str:
    return f"{score['psnr']:.3f} / {score['ssim']:.4f}"


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Columns padded to their widest cell; the first ``left`` columns flush left."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _summary(result: dict) -> str:
    scale, info, sets = result["scale"], result["methods"], result["datasets"]
    backend = result["backend"]
    head = (f"x{scale}; Y-PSNR dB / SSIM on BT.601 luma, {scale}-pixel border shaved; HR cropped "
            f"at the bottom/right to a multiple of {scale}"
            + (f"; backend {backend} ({result['mode']} tables)" if backend else "")
            + ("; luma mode (only Y through the models)" if result.get("color") == "luma" else ""))
    lines = [head]
    for d in sets:
        check = d.get("lr_check")
        same = f" ({check['equal']}/{check['images']} equal to MATLAB bicubic of HR)" if check else ""
        lines.append(f"  {d['name']}: {d['images']} image(s); LR {d['lr_source']}{same}")
    rows = []
    for name, m in info.items():
        rows.append([name, "-" if m["passes"] is None else str(m["passes"]),
                     f"{m['storage_bytes']:,}"] + [_fmt(d["mean"][name]) for d in sets])
    lines += ["", _table(["method", "passes", "storage B"] + [d["name"] for d in sets], rows)]
    if "ecnn" in info and "iqlut" in info:
        ratio = info["ecnn"]["storage_bytes"] / max(1, info["iqlut"]["storage_bytes"])
        lines.append(f"IQ-LUT (iqlut) is {ratio:.1f}x smaller than ECNN (ecnn)")
    return "\n".join(lines)


def _per_image(result: dict) -> str:
    names = list(result["methods"])
    blocks = []
    for d in result["datasets"]:
        rows = [[img] + [_fmt(row[m]) for m in names] for img, row in d["per_image"].items()]
        rows.append([MEAN_ROW] + [_fmt(d["mean"][m]) for m in names])
        blocks.append(f"{d['name']} (x{result['scale']})\n" + _table(["image", *names], rows))
    return "\n\n".join(blocks)


def to_csv(result: dict) -> str:
    """One row per (data set, image, method), then the means with image ``(mean)``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["scale", "dataset", "image", "method", "psnr", "ssim"])
    for d in result["datasets"]:
        for img, row in d["per_image"].items():
            for m, s in row.items():
                w.writerow([result["scale"], d["name"], img, m, s["psnr"], s["ssim"]])
        for m, s in d["mean"].items():
            w.writerow([result["scale"], d["name"], MEAN_ROW, m, s["psnr"], s["ssim"]])
    return buf.getvalue()


def _dataset_entry(d, res: dict) -> dict:
    entry = {"name": d.name, "path": str(d.root), "layout": d.layout, "hr_dir": str(d.hr_dir),
             "lr_dir": str(d.lr_dir) if d.lr_dir else None,
             "lr": "files" if d.lr_dir else "made", "lr_source": d.lr_source,
             "images": res["images"],
             "mean": {m: {"psnr": s["psnr"], "ssim": s["ssim"]} for m, s in res["mean"].items()},
             "per_image": res["per_image"], "alpha_dropped": res["alpha_dropped"], "gray": res["gray"]}
    if "lr_check" in res:
        entry["lr_check"] = res["lr_check"]
    return entry


def _listed(names: list[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def _notes_of(name: str, res: dict) -> list[str]:
    notes = []
    if res["alpha_dropped"]:
        notes.append(f"{name}: dropped the alpha channel of {len(res['alpha_dropped'])} image(s) "
                     f"({_listed(res['alpha_dropped'])}); the protocol scores colour only")
    if res["gray"]:
        notes.append(f"{name}: {len(res['gray'])} gray image(s) scored on their gray values as "
                     f"luma ({_listed(res['gray'])})")
    check = res.get("lr_check")
    if check and check["equal"] != check["images"]:
        notes.append(f"{name}: {check['images'] - check['equal']} of {check['images']} given LR "
                     f"image(s) differ from MATLAB bicubic of their HR (by up to "
                     f"{check['max_abs_diff']} levels); the given files are used (--make-lr "
                     "makes them instead)")
    return notes


def _write(path: Path, text: str) -> None:
    from ..io import atomic_write_bytes

    try:
        atomic_write_bytes(path, text.encode())
    except OSError as e:
        raise CLIError(f"{path}: cannot write ({e.strerror or e})") from None


# ---------------------------------------------------------------------------- the command


def _datasets(args, scale: int) -> tuple[list, list[str]]:
    from ..datasets import find_datasets, preflight, unique_names

    found, notes = [], []
    for folder in args.dataset:
        got, skipped = find_datasets(folder, scale, make_lr=args.make_lr)
        found += got
        notes += skipped
    found = unique_names(found)
    preflight(found, scale)
    return found, notes


def run(args) -> int:
    from ..datasets import Dataset

    given = _given_models(args.model_files)
    if args.dataset and args.inputs:
        raise CLIError("give INPUT images or --dataset folders, not both")
    if not args.dataset and not args.inputs:
        raise CLIError("nothing to evaluate: give --dataset DIR... or INPUT images")
    outputs = _check_outputs(args.out)
    scale = _resolve_scale(args, given, bool(args.dataset))
    if args.dataset:
        sets, notes = _datasets(args, scale)
    else:
        from ..datasets import Pair

        pairs = tuple(Pair(str(f), f) for f in collect_inputs(args.inputs))
        sets = [Dataset("inputs", Path("."), "hr-only", Path("."), None,
                        "made from HR with MATLAB bicubic", pairs)]
        notes = []
    methods, info, more = build_methods(args, scale, given)
    notes += more
    first = next(iter(methods.values()), None)
    backend, mode = (first[0].backend, first[0].mode) if first else (None, None)

    total = sum(len(d.pairs) for d in sets)
    bar = None
    if not args.quiet and total > 1:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, desc=f"x{scale}")
    results = []
    try:
        for d in sets:
            if bar is not None:
                bar.set_description(f"x{scale} {d.name}")
            results.append((d, evaluate(d.pairs, scale, methods, bar.update if bar else None)))
    finally:
        if bar is not None:
            bar.close()
    for d, res in results:
        notes += _notes_of(d.name, res)
    for note in notes:
        print(f"iqlut eval: note: {note}", file=sys.stderr)

    result = {"scale": scale, "backend": backend, "mode": mode, "color": args.color,
              "methods": info,
              "datasets": [_dataset_entry(d, res) for d, res in results]}
    if args.dataset:
        doc = result
    else:  # the INPUT form keeps the shape it has always had, with the methods added
        doc = dict(results[0][1])
        passes = [m["passes"] for n, m in info.items() if n == "iqlut"] or [
            m["passes"] for m in info.values() if m["passes"] is not None] or [None]
        doc.update(backend=backend, mode=mode, color=args.color, methods=info, ensemble=passes[0])
    json_text = json.dumps(doc, indent=2) + "\n"
    for path in outputs:
        _write(path, json_text if path.suffix.lower() == ".json" else to_csv(result))
    if args.json:
        sys.stdout.write(json_text)
    elif args.csv:
        sys.stdout.write(to_csv(result))
    else:
        print(_summary(result))
        if args.per_image:
            print()
            print(_per_image(result))
        for path in outputs:
            print(f"wrote {path}")
    return 0
