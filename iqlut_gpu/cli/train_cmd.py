"""``iqlut train --scale N [--out PATH] [--time-budget S] [--seed S] [--resume] ...``.

Trains an IQ-LUT model (or, with ``--kind ecnn``, the ECNN baseline) with torch, which is
imported only when the command runs (``pip install iqlut-gpu[train]``). The options, and
their checks, are the training config's (``iqlut_gpu.train.config``); this module only
registers them and hands the config to the trainer.
"""

from __future__ import annotations

from ..train.config import Config, add_arguments
from . import CLIError


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (needs torch: the 'train' extra)",
                       description="Train an IQ-LUT model on the bundled/installed photos "
                       "(see iqlut_gpu/train/data.py), export it, check the integer runtime. "
                       "Recipes and what each option measured: docs/training.md.")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = Config.from_args(args)  # a bad option: ValueError, one line (cli.main prints it)
    try:
        from ..train.trainer import train
    except ModuleNotFoundError as e:
        if e.name == "torch":
            raise CLIError("training needs torch: pip install 'iqlut-gpu[train]'") from None
        raise
    try:
        train(cfg, resume=args.resume, progress=not args.no_progress)
    except RuntimeError as e:
        raise CLIError(str(e)) from None
    return 0
