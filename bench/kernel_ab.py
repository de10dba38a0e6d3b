"""A/B of the Numba kernels against another revision's, in one process.

``python -m bench.kernel_ab REV [--scale 4 ...] [--threads N] [--repeats 9] [--size WxH]
[--ensemble N]``

Loads ``kernels/numba_cpu.py`` as it is at git revision ``REV`` next to the working
tree's, checks that both give the same bytes on the shipped model of each scale (320x180
RGB by default, the bundled photo; the model as shipped, or run as an ``--ensemble N``
self-ensemble), then times them in interleaved repeats (A, B, A, B, ...; process
CPU time with one thread, wall time otherwise) and prints the median of each and their
ratio. Interleaving in one process is what makes a 5-10% change measurable on a shared
machine, where separate runs minutes apart differ by more than that.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KERNELS = "kernels/numba_cpu.py"


def load_revision(rev: str, name: str = "numba_cpu_ab"):
    """The kernels module of git revision ``rev``, imported under ``name``."""
    try:
        src = subprocess.run(["git", "show", f"{rev}:{KERNELS}"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"kernel_ab: cannot read {KERNELS} at {rev!r}: "
                         f"{getattr(e, 'stderr', '') or e}".strip())
    path = Path(tempfile.mkdtemp(prefix="iqlut_kernel_ab_")) / f"{name}.py"
    path.write_text(src.replace("cache=True", "cache=False"))  # no cache files for a copy
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Prepared:
    """A ``backends.Prepared`` that also answers ``model``, which kernels of revisions before
    the Prepared stopped holding its model read (``prepared.model.ensemble``)."""

    def __init__(self, prepared, model):
        self._prepared, self.model = prepared, model

    def __getattr__(self, name):
        return getattr(self._prepared, name)


def compare(a, b, model, planes: np.ndarray, mode: str, repeats: int, clock) -> dict:
    """Median seconds of ``a`` and ``b`` running ``model`` on ``planes``; bytes checked equal."""
    from iqlut_gpu.backends import prepare

    prepared = _Prepared(prepare(model), model)
    if not np.array_equal(a.run_planes(prepared, planes, mode), b.run_planes(prepared, planes, mode)):
        raise AssertionError(f"the two kernels disagree ({mode})")
    ta, tb = [], []
    for _ in range(repeats):
        t0 = clock()
        a.run_planes(prepared, planes, mode)
        ta.append(clock() - t0)
        t0 = clock()
        b.run_planes(prepared, planes, mode)
        tb.append(clock() - t0)
    ma, mb = float(np.median(ta)), float(np.median(tb))
    return {"a_s": ma, "b_s": mb, "b_speedup": ma / mb}


def photo_planes(width: int = 320, height: int = 180) -> np.ndarray:
    """uint8 [3, H, W]: the bench cases' input frame (``registry.bench_frames``) as planes."""
    from iqlut_gpu.planes import to_planes

    from .registry import bench_frames

    return to_planes(bench_frames((width, height), 1))[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernel_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("rev", help="git revision whose kernels are A (the working tree's are B)")
    p.add_argument("--scale", type=int, nargs="*", default=[2, 4])
    p.add_argument("--mode", nargs="*", default=["expanded", "interp"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--size", default="320x180", metavar="WxH", help="input frame size")
    p.add_argument("--ensemble", type=int, default=None,
                   help="passes to run each model with (default: as shipped)")
    args = p.parse_args(argv)
    from .model_ab import parse_size

    size = parse_size(args.size)

    import numba

    numba.set_num_threads(args.threads)
    from iqlut_gpu import default_model
    from iqlut_gpu.kernels import numba_cpu

    old = load_revision(args.rev)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    planes = photo_planes(*size)
    print(f"A = {args.rev}, B = working tree; {args.threads} thread(s), {args.repeats} "
          f"interleaved repeats, {size[0]}x{size[1]} RGB, "
          f"{'CPU' if args.threads == 1 else 'wall'} time, ensemble "
          f"{args.ensemble or 'as shipped'}")
    for scale in args.scale:
        for mode in args.mode:
            model = default_model(scale).with_ensemble(args.ensemble)
            r = compare(old, numba_cpu, model, planes, mode, args.repeats, clock)
            print(f"x{scale} {mode:8s} A {r['a_s'] * 1e3:7.2f} ms  B {r['b_s'] * 1e3:7.2f} ms  "
                  f"B is {r['b_speedup']:.3f}x faster", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
