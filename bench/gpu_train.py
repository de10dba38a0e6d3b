"""Training on a lent GPU: bring the training photos over in parts, then `iqlut train`.

The device tool carries at most 64 MiB a call and the device reaches no network, while the
training sources are about 100 MB (the wallpaper packages; docs/training.md, "Getting the
data"). So the photos travel in parts, one part a call, into a machine that stays warm
between the calls (30 s), and the last call trains:

    python3 bench/gpu_train.py pack                # here: .gpudata/part1, part2 (git-ignored)
    # device call 1, carry [".gpudata/part1"]:
    python3 bench/gpu_train.py install
    # device call 2 at once (carry [".gpudata/part2"]): install the rest, check, train
    python3 bench/gpu_train.py install --complete && \\
        python3 bench/gpu_train.py train -- --scale 2 --init x2 --time-budget 420

``pack`` copies the wallpapers that ``iqlut_gpu.train.data.sources()`` reads (their
absolute paths kept under each part) and writes a manifest (name, path, size, SHA-256 of
every source, the bundled scikit-image and scikit-learn photos included) into every part.
``install`` copies what it finds under ``.gpudata`` to those paths (the device runs as
root); with ``--complete`` it then lists the sources as ``iqlut train`` will read them
there and compares them with the manifest: a missing or different wallpaper is an error,
and bundled photos that differ (the device's own scikit-image and scikit-learn) are
reported. ``train`` makes the checkout importable as
``bench/gpu_check.py`` does, runs ``python3 -m iqlut_gpu train`` with the given options
(``--out`` defaults to ``$OUT/iqlut_x<scale>_gpu.safetensors``) and keeps its log there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".gpudata"
PART_BYTES = 54 * 1000 * 1000  # with the working tree (~5 MB) under the 64 MiB of a call
CARRIED = ("mate", "plasma")  # the bundled photos come with the device's own packages


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest() -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from iqlut_gpu.train import data

    return [{"name": name, "path": path, "bytes": os.path.getsize(path), "sha256": sha256(path)}
            for name, path in data.sources().items()]


def pack(args) -> int:
    entries = manifest()
    carried = [e for e in entries if e["name"].split("/")[0] in CARRIED]
    if not carried:
        print("gpu_train pack: no wallpapers found: run `sh train/get_data.sh` first",
              file=sys.stderr)
        return 1
    if DATA.exists():
        shutil.rmtree(DATA)
    total = sum(e["bytes"] for e in carried)
    n = max(1, -(-total // args.part_bytes))
    while True:  # largest first into the emptiest part; one more part if one overflows
        parts: list[list[dict]] = [[] for _ in range(n)]
        sizes = [0] * n
        for e in sorted(carried, key=lambda e: -e["bytes"]):
            k = sizes.index(min(sizes))
            parts[k].append(e)
            sizes[k] += e["bytes"]
        if max(sizes) <= args.part_bytes or n >= len(carried):
            break
        n += 1
    for i, part in enumerate(parts, 1):
        dest = DATA / f"part{i}"
        for e in part:
            target = dest / e["path"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(e["path"], target)
        (dest / "manifest.json").write_text(json.dumps(
            {"parts": len(parts), "sources": entries}, indent=1) + "\n")
        print(f"{dest.relative_to(DATA.parent)}: {len(part)} files, "
              f"{sum(e['bytes'] for e in part) / 1e6:.1f} MB")
    print(f"{len(parts)} parts: one device call each, carry ['.gpudata/partN']")
    return 0


def install(args) -> int:
    found = sorted(DATA.glob("part*/manifest.json"))
    if not found:
        print(f"gpu_train install: nothing under {DATA} (carry ['.gpudata/partN'])",
              file=sys.stderr)
        return 1
    packed = json.loads(found[0].read_text())["sources"]
    copied = 0
    for m in found:
        part = m.parent
        for f in part.rglob("*"):
            if f.is_file() and f.name != "manifest.json":
                target = Path(args.root) / f.relative_to(part)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
                copied += 1
    print(f"installed {copied} files from {', '.join(p.parent.name for p in found)}")
    if not args.complete:
        return 0
    here = {e["name"]: e for e in manifest()}  # what iqlut train will read on this machine
    missing, differ, bundled = [], [], []
    for e in packed:
        mine = here.get(e["name"])
        same = mine is not None and mine["sha256"] == e["sha256"]
        if e["name"].split("/")[0] not in CARRIED:
            if not same:  # another scikit-image / scikit-learn: reported, the run goes on
                bundled.append(e["name"])
        elif mine is None:
            missing.append(e["name"])
        elif not same:
            differ.append(e["name"])
    extra = sorted(set(here) - {e["name"] for e in packed})
    if bundled or extra:
        print(f"note: bundled photos that differ or are missing here: {bundled or 'none'}; "
              f"sources here that were not packed: {extra or 'none'}")
    if missing or differ:
        print(f"gpu_train install: {len(missing)} wallpapers missing (a part not carried, or "
              f"the machine went cold between calls), {len(differ)} different: "
              f"{', '.join(missing + differ)[:300]}", file=sys.stderr)
        return 1
    print(f"all {sum(e['name'].split('/')[0] in CARRIED for e in packed)} wallpapers in place")
    return 0


def train(args) -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_check import link_subpackages

    opts = list(args.options)
    if opts[:1] == ["--"]:
        opts = opts[1:]
    out_dir = Path(os.environ.get("OUT") or ROOT / "out")
    out_dir.mkdir(parents=True, exist_ok=True)
    if "--out" not in opts:
        scale = opts[opts.index("--scale") + 1] if "--scale" in opts else "4"
        opts += ["--out", str(out_dir / f"iqlut_x{scale}_gpu.safetensors")]
    links = link_subpackages()
    try:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")]), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "iqlut_gpu", "train", "--no-progress", *opts]
        print("$ " + " ".join(cmd), flush=True)
        with open(out_dir / "train.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            return proc.wait()
    finally:
        for link in links:
            link.unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="here: the wallpapers into .gpudata/partN")
    p.add_argument("--part-bytes", type=int, default=PART_BYTES)
    p = sub.add_parser("install", help="there: copy the carried parts into place")
    p.add_argument("--complete", action="store_true",
                   help="every wallpaper must be in place (the last part's call)")
    p.add_argument("--root", default="/", help=argparse.SUPPRESS)  # (tests)
    p = sub.add_parser("train", help="there: iqlut train with the options after --")
    p.add_argument("options", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    return {"pack": pack, "install": install, "train": train}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
