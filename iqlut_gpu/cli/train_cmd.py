"""``iqlut train --scale N [--data DIR...] [--init MODEL] [--out PATH] [--time-budget S] ...``.

Trains an IQ-LUT model (or, with ``--kind ecnn``, the ECNN baseline) with torch, which is
imported only when the command runs (``pip install iqlut-gpu[train]``), on the installed
photos or on folders of your own HR images (``--data``). The options, and their checks,
are the training config's (``iqlut_gpu.train.config``); this module only registers them,
hands the config to the trainer and prints its lines about skipped files to stderr
(``iqlut train: warning: ...`` / ``iqlut train: note: ...``).
"""

from __future__ import annotations

import sys

from ..train.config import Config, add_arguments
from . import CLIError


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (needs torch: the 'train' extra)",
                       description="Train an IQ-LUT model on the installed photos (see "
                       "iqlut_gpu/train/data.py) or on your own images (--data DIR...), "
                       "optionally starting from a trained model (--init x2), export it and "
                       "check the integer runtime against torch. Recipes and what each option "
                       "measured: docs/training.md.")
    add_arguments(p)
    p.set_defaults(func=run)


def _warn(message: str) -> None:
    print(f"iqlut train: {message}", file=sys.stderr)


def run(args) -> int:
    cfg = Config.from_args(args)  # a bad option: ValueError, one line (cli.main prints it)
    try:
        from ..train.trainer import train
    except ModuleNotFoundError as e:
        if e.name == "torch":
            raise CLIError("training needs torch: pip install 'iqlut-gpu[train]'") from None
        raise
    try:
        train(cfg, resume=args.resume, progress=not args.no_progress, warn=_warn)
    except RuntimeError as e:
        raise CLIError(str(e)) from None
    return 0
