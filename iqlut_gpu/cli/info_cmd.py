"""``iqlut info [MODEL | --scale N] [--json]``: layers, knots, storage, ECNN storage."""

from __future__ import annotations

import json

from . import CLIError


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="describe a model: layers, knots, storage",
                       description="Describe a model file (or the shipped default for --scale).")
    p.add_argument("model", nargs="?", metavar="MODEL", help="model file")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="describe the shipped default for this scale")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..model import default_model, default_model_path, load_model

    if args.model and args.scale:
        raise CLIError("give either MODEL or --scale, not both")
    path = args.model or str(default_model_path(args.scale or 4))
    model = load_model(args.model) if args.model else default_model(args.scale or 4)
    d = model.describe()
    d["path"] = path
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"model:      {path}")
    print(f"scale:      x{d['scale']}   upsample base: {d['upsample']}   trained: {str(d['trained']).lower()}")
    for n, (spec, knots) in enumerate(zip(d["layers"], d["knots"])):
        res = ", residual" if spec["residual"] else ""
        print(f"layer {n}:    {spec['c_in']}->{spec['c_out']}, k={spec['k']}, L={spec['L']}, "
              f"shift={spec['shift']}{res}")
        if spec["c_in"] == 1:
            print(f"            knots {knots}")
        else:
            print(f"            knots (channel 0 of {spec['c_in']}) {knots[0]}")
    if d["ensemble"] != 1:
        print(f"ensemble:   {d['ensemble']} rotated/flipped passes averaged (--ensemble 1: one pass)")
    print(f"storage:    {d['storage_bytes']:,} bytes (tables + knots + biases)")
    print(f"ECNN:       {d['ecnn_storage_bytes']:,} bytes for the same network with 256 uniform "
          f"knots ({d['ecnn_ratio']}x larger)")
    for key, value in sorted(d["provenance"].items()):
        print(f"{key + ':':<11} {value if not isinstance(value, (dict, list)) else json.dumps(value)}")
    return 0
