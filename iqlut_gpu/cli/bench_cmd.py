"""``iqlut bench [--quick] [--filter TEXT] [--list] ...``: run the benchmarks.

The benchmark registry and runner live in the source checkout (``bench/`` next to
``iqlut_gpu/``), not in the installed package: they need OpenCV, matplotlib and
optionally torch, and write their results into ``bench/results/``. This subcommand
finds that folder (from the current directory upward, or beside the package of an
editable install) and hands it the rest of the command line: the options, and their
help (``iqlut bench --help``), are the runner's (``bench/runner.py``), as with
``python -m bench`` from the repository root. Nothing of ``bench`` is imported until then.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import CLIError


def add_parser(sub) -> None:
    # prefix_chars="+": this parser reads no "-" options of its own, so "--quick", "--help"
    # and the rest land, as given, in args.argv for the runner's parser
    p = sub.add_parser("bench", help="run the benchmarks (from a source checkout; "
                       "iqlut bench --help lists the options)",
                       description="Kernel and end-to-end benchmarks; needs the source "
                       "checkout's bench/ folder (same as `python -m bench` in the repository "
                       "root).", add_help=False, prefix_chars="+")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="OPTIONS",
                   help="the benchmark's options (iqlut bench --help)")
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

    return runner.main(args.argv, prog="iqlut bench")
