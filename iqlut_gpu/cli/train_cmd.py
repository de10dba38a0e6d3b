"""``iqlut train --scale N [--out PATH] [--time-budget S] [--seed S] [--resume]``.

Trains an IQ-LUT model (or, with ``--kind ecnn``, the ECNN baseline) with torch, which is
imported only when the command runs (``pip install iqlut-gpu[train]``).
"""

from __future__ import annotations

from . import CLIError


def add_arguments(p) -> None:
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--out", default="", help="model file to write (default iqlut_xN.safetensors; "
                   "the checkpoint is PATH.ckpt)")
    p.add_argument("--time-budget", type=float, default=1800.0, metavar="SECONDS",
                   help="training time, excluding data preparation (default 1800)")
    p.add_argument("--max-iters", type=int, default=0, help="stop after this many iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from PATH.ckpt if it exists")
    p.add_argument("--kind", choices=("iqlut", "ecnn"), default="iqlut",
                   help="iqlut (default) or the ECNN baseline (L=256, no distillation)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=36, help="LR patch size")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lam", type=float, default=0.5, help="distillation weight (iqlut only)")
    p.add_argument("--hidden", type=int, default=None, metavar="N",
                   help="residual layers (8->8, or --width) between the first and the last "
                   "(default 2; the shipped x2 and x3 have 4, x4 3)")
    p.add_argument("--last-k", type=int, choices=(1, 3, 5), default=None, metavar="K",
                   help="the last layer's window (default 3; 1 is cheaper, see the README)")
    p.add_argument("--hidden-k", default=None, metavar="K,K,...",
                   help="each residual layer's window, in order (their number is the count "
                   "of windows; e.g. 3,3,3,1: three k = 3 layers, then a k = 1 one, which "
                   "costs a ninth of a k = 3 layer)")
    p.add_argument("--width", type=int, default=None, metavar="C",
                   help="channels between layers (default 8); with --init a wider net takes "
                   "the model as its first channels (the extra ones start as new features "
                   "its later layers do not read yet)")
    p.add_argument("--init", default="", metavar="MODEL",
                   help="start the student from this trained model file (e.g. a shipped "
                   "default); --hidden may add residual layers, which start as the identity")
    p.add_argument("--ensemble", type=int, choices=(1, 2, 4, 8), default=1, metavar="N",
                   help="train the N-pass rotation/flip self-ensemble's averaged output and "
                   "ship the model with it (N passes per upscale; 1: a single pass)")
    p.add_argument("--int8-only", action="store_true",
                   help="with --init: keep the model's knots and fine-tune its int8 tables for "
                   "the whole budget (no float stage)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="off",
                   help="run the student's backward convs in bfloat16 (the forward stays "
                   "exact; on a CPU 14%% more steps, no better model: see the README); auto: "
                   "where it is fast (CUDA, CPUs with AVX512-BF16/AMX)")
    p.add_argument("--val-every", type=float, default=180.0, metavar="SECONDS")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (needs torch: the 'train' extra)",
                       description="Train an IQ-LUT model on the bundled/installed photos "
                       "(see iqlut_gpu/train/data.py), export it, check the integer runtime.")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from ..train.trainer import Config, train
        from ..train.net import MAX_WIDTH
    except ModuleNotFoundError as e:
        if e.name == "torch":
            raise CLIError("training needs torch: pip install 'iqlut-gpu[train]'") from None
        raise
    if args.time_budget <= 0:
        raise CLIError("--time-budget must be positive")
    if args.hidden is not None and not 0 <= args.hidden <= 16:
        raise CLIError("--hidden must be between 0 and 16")
    if args.width is not None and not 1 <= args.width <= MAX_WIDTH:
        raise CLIError(f"--width must be between 1 and {MAX_WIDTH}")
    hidden_k = None
    if args.hidden_k is not None:
        try:
            hidden_k = [int(v) for v in args.hidden_k.split(",")]
        except ValueError:
            raise CLIError(f"--hidden-k takes odd windows separated by commas, got "
                           f"{args.hidden_k!r}") from None
        if not 1 <= len(hidden_k) <= 16 or any(k not in (1, 3, 5) for k in hidden_k):
            raise CLIError(f"--hidden-k takes 1 to 16 windows, each 1, 3 or 5, got "
                           f"{args.hidden_k!r}")
        if args.hidden is not None and args.hidden != len(hidden_k):
            raise CLIError(f"--hidden {args.hidden} and --hidden-k with {len(hidden_k)} "
                           "windows disagree")
    cfg = Config(scale=args.scale, kind=args.kind, out=args.out, time_budget=args.time_budget,
                 max_iters=args.max_iters, seed=args.seed, batch=args.batch, patch=args.patch,
                 lr=args.lr, lam=args.lam, threads=args.threads, val_every=args.val_every,
                 bf16=args.bf16, hidden=args.hidden, last_k=args.last_k, hidden_k=hidden_k,
                 width=args.width,
                 init=args.init, ensemble=args.ensemble, int8_only=args.int8_only)
    if args.int8_only and not args.init:
        raise CLIError("--int8-only fine-tunes a trained model: give it with --init MODEL")
    if args.init and args.kind != "iqlut":
        raise CLIError("--init starts an IQ-LUT student; it is not for --kind ecnn")
    try:
        train(cfg, resume=args.resume, progress=not args.no_progress)
    except RuntimeError as e:
        raise CLIError(str(e)) from None
    return 0
