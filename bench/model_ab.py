"""A/B of whole models on the Numba kernels, in one process.

``python -m bench.model_ab A B [C ...] [--mode expanded] [--threads N] [--repeats 21]
[--size 320x180] [--opencv]``

Each of A, B, ... is a model file or ``xN`` (the shipped default of scale N). All run on the
same input (the bench frame: the bundled photo at ``--size``, RGB) with the working tree's
kernels, each as it ships (its self-ensemble included), in interleaved repeats (A, B, ...,
A, B, ...; the order rotated each repeat), and the median of each and its ratio to A's are
printed. ``--opencv`` adds OpenCV's bicubic resize of the same frame to every repeat and
prints each model's time over it, the measure of the benchmark's "at most 60x OpenCV"
goal (``bench.runner.paired_goal_ratios`` takes it for the shipped model in the full run;
both time through ``timing.interleaved_rounds``).

This is the twin of ``bench.kernel_ab``, which holds the model and changes the kernels: a
model that costs 5% more than another is only measurable this way on a shared machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time

import numpy as np


def load(spec: str):
    """``xN``: the shipped default of scale N; anything else: a model file."""
    from iqlut_gpu.model import default_model, load_model

    m = re.fullmatch(r"x([234])", spec)
    return default_model(int(m.group(1))) if m else load_model(spec)


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m or int(m.group(1)) < 8 or int(m.group(2)) < 8:
        raise argparse.ArgumentTypeError(f"size is WxH with both at least 8, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def compare(models: dict, planes: np.ndarray, mode: str, repeats: int, clock,
            opencv_frame: np.ndarray | None = None) -> dict:
    """Interleaved medians of the models (by name) on ``planes``, each with its time over the
    first model's; given ``opencv_frame`` (the frame ``planes`` were cut from), also OpenCV's
    bicubic resize of it (median of 21 calls per round) and each model's median over the
    rounds of its time / OpenCV's time in the same round."""
    from iqlut_gpu.backends import prepare
    from iqlut_gpu.kernels import numba_cpu

    from . import timing
    from .registry import Run

    scales = {m.scale for m in models.values()}
    runs = {}
    for name, model in models.items():
        runs[name] = Run(lambda p=prepare(model): numba_cpu.run_planes(p, planes, mode))
    if opencv_frame is not None:
        import cv2

        if len(scales) != 1:
            raise ValueError("the OpenCV ratio compares models of one scale")
        (r,) = scales
        H, W = opencv_frame.shape[:2]
        runs["opencv"] = Run(lambda: cv2.resize(opencv_frame, (W * r, H * r),
                                                interpolation=cv2.INTER_CUBIC))
    per_round = timing.interleaved_rounds(runs, repeats, {"opencv": 21}, clock)
    raw = {name: [t[name] for t in per_round] for name in runs}
    first = statistics.median(raw[next(iter(models))])
    out = {"repeats": repeats, "mode": mode, "models": {}}
    for name in models:
        med = statistics.median(raw[name])
        row = {"median_ms": round(med * 1e3, 3), "time_vs_first": round(med / first, 4)}
        if "opencv" in raw:
            ratios = [a / b for a, b in zip(raw[name], raw["opencv"])]
            row["time_vs_opencv"] = {"median": round(statistics.median(ratios), 2),
                                     "min": round(min(ratios), 2), "max": round(max(ratios), 2)}
        out["models"][name] = row
    if "opencv" in raw:
        out["opencv_median_ms"] = round(statistics.median(raw["opencv"]) * 1e3, 4)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.model_ab",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model files, or xN for the shipped default of scale N; the first is A")
    p.add_argument("--mode", default="expanded", choices=("expanded", "interp"))
    p.add_argument("--threads", type=int, default=1,
                   help="Numba (and OpenCV) threads; 1 (default) times CPU time, more wall time")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--size", type=parse_size, default=(320, 180), metavar="WxH",
                   help="input frame size (default 320x180, the benchmark's goal size)")
    p.add_argument("--opencv", action="store_true",
                   help="also time OpenCV's bicubic resize and print each model's time over it")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if len(args.models) < 2 and not args.opencv:
        p.error("give at least two models (or one with --opencv)")
    if args.threads < 1 or args.repeats < 1:
        p.error("--threads and --repeats must be at least 1")

    import numba

    from iqlut_gpu.model import ModelError
    from iqlut_gpu.planes import to_planes

    from .registry import bench_frames

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    try:
        models = {}
        for spec in args.models:  # the same model twice is an A/A check: keep both
            models[spec if spec not in models else f"{spec} ({len(models) + 1})"] = load(spec)
    except (ModelError, OSError) as e:
        print(f"model_ab: {e}", file=sys.stderr)
        return 2
    frames = bench_frames(args.size, 1)
    cv_frame = None
    if args.opencv:
        import cv2

        cv2.setNumThreads(args.threads)
        cv_frame = frames[0]
    clock = time.process_time if args.threads == 1 else time.perf_counter
    try:
        result = compare(models, to_planes(frames)[0], args.mode, args.repeats, clock, cv_frame)
    except ValueError as e:
        print(f"model_ab: {e}", file=sys.stderr)
        return 2
    result.update(size=list(args.size), threads=args.threads,
                  clock="process CPU time" if args.threads == 1 else "wall time")
    if args.json:
        import json

        print(json.dumps(result, indent=1))
        return 0
    W, H = args.size
    print(f"{len(models)} models, {args.mode}, {W}x{H} RGB, {args.threads} thread(s), "
          f"{args.repeats} interleaved repeats, {result['clock']}")
    for name, row in result["models"].items():
        line = f"{name}: {row['median_ms']:8.2f} ms  {row['time_vs_first']:.3f}x A's time"
        if "time_vs_opencv" in row:
            v = row["time_vs_opencv"]
            line += f"  {v['median']:.1f}x OpenCV ({v['min']:.1f}-{v['max']:.1f})"
        print(line)
    if "opencv_median_ms" in result:
        print(f"OpenCV bicubic: {result['opencv_median_ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
