"""``iqlut bench [--quick] [--filter TEXT] [--list] ...``: run the benchmarks.

The benchmark registry and runner live in the source checkout (``bench/`` next to
``iqlut_gpu/``), not in the installed package: they need OpenCV, matplotlib and
optionally torch, and write their results into ``bench/results/``. This subcommand
finds that folder (from the current directory upward, or beside the package of an
editable install) and runs it; ``python -m bench`` from the repository root does the same.
The options are defined here once and shared by both entry points.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import CLIError

GROUPS = ("model", "layer", "size", "batch", "baseline")


def add_bench_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="the quick subset (about a minute)")
    p.add_argument("--filter", action="append", default=[], metavar="TEXT",
                   help="only cases whose name contains TEXT (repeatable: all must match)")
    p.add_argument("--group", action="append", default=[], choices=GROUPS,
                   help="only cases of this group (repeatable)")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("--repeats", type=int, default=5, help="minimum timed runs per case (default 5)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="keep repeating until this many seconds per case (default 1)")
    p.add_argument("--max-runs", type=int, default=50, help="at most this many timed runs per case")
    p.add_argument("--rounds", type=int, default=7,
                   help="interleaved rounds for the goal ratios (Numba vs PyTorch CPU vs OpenCV, "
                        "x4 320x180) when those cases are selected; 0: off (default 7)")
    p.add_argument("--no-gpu", action="store_true", help="skip GPU cases without probing")
    p.add_argument("--no-limits", action="store_true", help="skip the machine-limit microbenchmarks")
    p.add_argument("--threads", type=int, help="Numba threads (default: Numba's default)")
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/<machine>_<quick|full>.json)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmarks (from a source checkout)",
                       description="Kernel and end-to-end benchmarks; needs the source checkout's "
                                   "bench/ folder (same as `python -m bench` in the repository root).")
    add_bench_arguments(p)
    p.set_defaults(func=run)


def find_checkout() -> Path | None:
    """The repository root that holds ``bench/runner.py``, or None."""
    here = Path.cwd().resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parents[2]]
    for root in candidates:
        if (root / "bench" / "runner.py").is_file() and (root / "bench" / "registry.py").is_file():
            return root
    return None


def run(args) -> int:
    root = find_checkout()
    if root is None:
        raise CLIError("the benchmarks live in the source checkout (bench/), which was not found "
                       "here or above; run `iqlut bench` or `python -m bench` inside a checkout of iqlut-gpu")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench import runner  # noqa: PLC0415 - found at run time

    return runner.run(args, sys.argv[2:] if len(sys.argv) > 2 else [])
