"""Environment A/B: the same `iqlut` commands with and without environment settings, in
one run.

    python -m bench.env_ab NAME=VALUE [NAME=VALUE ...] [--rounds R] [--frames N]
                           [--size WxH] [--preset P ...] [--photos N] [--json PATH]

Some settings can only be tried in a new process, because a library reads them once when
it loads: the OpenMP runtime behind Numba's parallel kernels (GNU libgomp here) reads
``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT``, how long an idle worker thread spins before
it sleeps (libgomp's default: 300,000 spins, milliseconds on this CPU). A spinning thread
holds a core that x264, decoding or the PNG writer could use, while waking a sleeping
one costs each parallel region some microseconds. This module measures that trade as a
user feels it.

In each of ``R`` rounds (the two sides' order alternates), every case runs once in the
environment as it is (the names given removed: ``base``) and once with the settings
(``with``), each as a new process:

- ``video_<preset>``: ``iqlut video clip.mp4 -o out.mp4 --scale 2 --preset P``, on an
  H.264 4:2:0 clip with AAC (``video_pipeline.make_clip``; ``--size``, ``--frames``);
- ``folder``: ``iqlut upscale`` of a folder of ``--photos`` PNG photos (960x540, x4);
- ``kernels_x2_rgb``, ``kernels_x4_luma``: a child timing ``Upscaler`` calls on the peers
  bench's goal frames (``peers.input_size``; the median of 30 calls, start-up excluded):
  the kernels alone, where a sleeping thread can only cost.

Reported per case: each side's median seconds and the median of the per-round ratios
``with / base`` (below 1: the settings are faster). The commands' start-up is in the
first three, as a user pays it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .model_ab import parse_size

KERNEL_CASES = {"kernels_x2_rgb": (2, "rgb"), "kernels_x4_luma": (4, "luma")}
KERNEL_CALLS = 30


def parse_setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not name.replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def environments(settings: dict) -> dict:
    """``base``: this process's environment without the names in ``settings``; ``with``:
    the same plus ``settings``."""
    base = {k: v for k, v in os.environ.items() if k not in settings}
    return {"base": base, "with": {**base, **settings}}


def kernels_child(scale: int, color: str, calls: int = KERNEL_CALLS) -> float:
    """Median seconds of ``calls`` calls of a warm ``Upscaler`` on the goal frame."""
    from iqlut_gpu import Upscaler

    from .peers import input_size
    from .registry import Run, bench_frames
    from .timing import median_time

    frame = bench_frames(input_size(scale), 1)[0]
    up = Upscaler(scale, backend="cpu", ensemble=1, color=color)
    run = Run(lambda: up(frame))
    run.run()  # warm-up: tables, caches
    run.run()
    return median_time(run, calls)


def make_cases(tmp: Path, frames: int, size, presets, photos: int, kernel_calls: int) -> dict:
    """name -> (argv, parse) where ``parse(stdout, wall seconds)`` gives the case's seconds."""
    import numpy as np

    from iqlut_gpu.io import write_image

    from .registry import bench_frames
    from .video_pipeline import make_clip

    exe = [sys.executable, "-m", "iqlut_gpu"]
    cases = {}
    if frames:
        clip = tmp / "clip420.mp4"
        make_clip(clip, frames, size=size)
        for p in presets:
            cases[f"video_{p}"] = (exe + ["video", str(clip), "-o", str(tmp / f"out_{p}.mp4"),
                                          "--scale", "2", "--preset", p, "--overwrite",
                                          "--quiet"], lambda out, wall: wall)
    if photos:
        folder = tmp / "photos"
        folder.mkdir()
        for i, img in enumerate(bench_frames((960, 540), photos)):
            write_image(folder / f"{i:03d}.png", np.ascontiguousarray(img))
        cases["folder"] = (exe + ["upscale", str(folder), "-o", str(tmp / "out"), "--scale", "4",
                                  "--backend", "cpu", "--ensemble", "1", "--overwrite", "--quiet"],
                           lambda out, wall: wall)
    if kernel_calls:
        for name, (scale, color) in KERNEL_CASES.items():
            cases[name] = ([sys.executable, "-m", "bench.env_ab", "--child-kernels", str(scale),
                            color, str(kernel_calls)], lambda out, wall: float(out.split()[-1]))
    return cases


def measure(settings: dict, rounds: int = 4, frames: int = 90, size=(768, 576),
            presets=("ultrafast", "medium"), photos: int = 4, kernel_calls: int = KERNEL_CALLS,
            log=lambda m: None) -> dict:
    from .machine import describe

    machine = describe()
    envs = environments(settings)
    root = Path(__file__).resolve().parents[1]  # the children's cwd: ``-m`` finds bench there
    times: dict = {}
    with tempfile.TemporaryDirectory(prefix="iqlut-envab-") as tmp:
        cases = make_cases(Path(tmp), frames, size, presets, photos, kernel_calls)

        def run(name, side):
            argv, parse = cases[name]
            t0 = time.perf_counter()
            proc = subprocess.run(argv, env=envs[side], capture_output=True, text=True, cwd=root)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"{name} ({side}) failed: {proc.stderr.strip()[-400:]}")
            return parse(proc.stdout, wall)

        for name in cases:  # warm up: Numba's cache, the page cache
            run(name, "base")
        for r in range(rounds):
            sides = ("base", "with") if r % 2 == 0 else ("with", "base")
            for name in cases:
                for side in sides:
                    times.setdefault(name, {}).setdefault(side, []).append(run(name, side))
            log(f"round {r + 1}: " + ", ".join(
                f"{n} {t['with'][-1] / t['base'][-1]:.3f}" for n, t in times.items()))
    med = statistics.median
    return {"benchmark": "env_ab", "machine": machine, "settings": settings, "rounds": rounds,
            "video": {"size": "{}x{}".format(*size), "frames": frames, "presets": list(presets)},
            "photos": photos, "kernel_calls": kernel_calls,
            "cases": {name: {"base_s": round(med(t["base"]), 4), "with_s": round(med(t["with"]), 4),
                             "with_over_base": round(med(b / a for a, b in zip(t["base"], t["with"])), 3),
                             "per_round": [round(b / a, 3) for a, b in zip(t["base"], t["with"])]}
                      for name, t in times.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.env_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="*", type=parse_setting, metavar="NAME=VALUE")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--frames", type=int, default=90, help="video frames (0: no video cases)")
    p.add_argument("--size", type=parse_size, default=(768, 576), metavar="WxH",
                   help="video size (default 768x576)")
    p.add_argument("--preset", nargs="+", default=["ultrafast", "medium"], metavar="P")
    p.add_argument("--photos", type=int, default=4, help="photos in the folder case (0: none)")
    p.add_argument("--kernel-calls", type=int, default=KERNEL_CALLS,
                   help="calls per kernels case (0: no kernels cases)")
    p.add_argument("--json", type=Path, metavar="PATH")
    p.add_argument("--child-kernels", nargs=3, metavar=("SCALE", "COLOR", "CALLS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_kernels:
        scale, color, calls = args.child_kernels
        print(kernels_child(int(scale), color, int(calls)))
        return 0
    if not args.settings:
        p.error("give at least one NAME=VALUE")
    from .timing import emit

    res = measure(dict(args.settings), args.rounds, args.frames, args.size,
                  tuple(args.preset), args.photos, args.kernel_calls,
                  log=lambda m: print(m, file=sys.stderr))
    emit(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
