"""The training configuration: ``Config``, its checks, and the options of ``iqlut train``.

Everything a run is told lives here once: the fields of ``Config``, the command-line
options that set them (``add_arguments``, used by ``iqlut train`` and by ``python -m
iqlut_gpu.train.trainer``) and the checks (``Config.__post_init__``), which run whether
the config comes from the command line or from Python. A bad value raises ``ValueError``
with one line naming the option (``--time-budget``, not ``time_budget``): the CLI prints it
as ``iqlut train: error: ...``. Checks that need a file or a checkpoint (``--init``,
``--resume``) are the trainer's, when it reads them.

No torch here: ``iqlut --help`` builds these options, and a bad option is refused before
torch is imported.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..ensemble import ENSEMBLES

MAX_WIDTH = 32  # channels between layers (the CUDA kernels take up to 64)
MAX_HIDDEN = 16  # residual layers between the first and the last
WINDOWS = (1, 3, 5)  # the windows (k x k) --last-k and --hidden-k take
BF16 = ("auto", "on", "off")


@dataclass
class Config:
    scale: int = 4
    kind: str = "iqlut"  # or "ecnn"
    out: str = ""
    time_budget: float = 1800.0
    max_iters: int = 0  # 0: no limit (the time budget decides)
    seed: int = 0
    batch: int = 16
    patch: int = 36
    lr: float = 3e-4
    knot_lr: float = 5e-3
    lam: float = 0.5
    teacher_width: int = 32
    bf16: str = "off"  # the student's backward convs in bfloat16: auto | on | off
    threads: int = 0  # 0: torch's default
    val_every: float = 180.0
    ckpt_every: float = 120.0
    val_crop: int = 192
    limit_images: int = 0  # tests: use only the first N training images
    limit_val: int = 0  # tests: use only the first N validation images
    images: tuple = ()  # tests: train on these images only (names as in data.sources())
    arch: list = field(default_factory=list)  # layer specs; empty: iqlut_arch / ecnn_arch
    hidden: int | None = None  # with no arch: this many 8->8 layers (None: the default's)
    last_k: int | None = None  # with no arch: the last layer's window (None: the default's 3)
    # with no arch: each hidden layer's window (None: all 3); "3,3,1" (the option's text) is
    # parsed into [3, 3, 1]
    hidden_k: list | str | None = None
    width: int | None = None  # with no arch: channels between layers (None: the default's 8)
    init: str = ""  # start the student from this model file (LUTNet.load_model); not on resume
    init_note: dict = field(default_factory=dict)  # what init loaded (kept in checkpoints)
    calib_patches: int = 4096  # training patches for the last layer's bias refit (0: none)
    ensemble: int = 1  # train (validate, refit, export) the n-pass self-ensemble's output
    int8_only: bool = False  # with init: no float stage, fine-tune the int8 tables throughout

    def __post_init__(self):
        if isinstance(self.hidden_k, str):
            self.hidden_k = parse_windows(self.hidden_k)
        self._check()

    def _check(self) -> None:
        if self.scale not in (2, 3, 4):
            raise ValueError(f"--scale must be 2, 3 or 4, got {self.scale}")
        if self.kind not in ("iqlut", "ecnn"):
            raise ValueError(f"--kind must be iqlut or ecnn, got {self.kind!r}")
        if not self.time_budget > 0:
            raise ValueError("--time-budget must be positive")
        if self.max_iters < 0:
            raise ValueError("--max-iters must be 0 (no limit) or positive")
        if self.batch < 1 or self.patch < 1:
            raise ValueError("--batch and --patch must be positive")
        if self.bf16 not in BF16:
            raise ValueError(f"--bf16 must be auto, on or off, got {self.bf16!r}")
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"--ensemble must be one of {ENSEMBLES}, got {self.ensemble}")
        if self.hidden is not None and not 0 <= self.hidden <= MAX_HIDDEN:
            raise ValueError(f"--hidden must be between 0 and {MAX_HIDDEN}")
        if self.last_k is not None and self.last_k not in WINDOWS:
            raise ValueError(f"--last-k must be 1, 3 or 5, got {self.last_k}")
        if self.hidden_k is not None:
            if (not 1 <= len(self.hidden_k) <= MAX_HIDDEN
                    or any(k not in WINDOWS for k in self.hidden_k)):
                raise ValueError(f"--hidden-k takes 1 to {MAX_HIDDEN} windows, each 1, 3 or 5, "
                                 f"got {','.join(map(str, self.hidden_k))!r}")
            if self.hidden is not None and self.hidden != len(self.hidden_k):
                raise ValueError(f"--hidden {self.hidden} and --hidden-k with "
                                 f"{len(self.hidden_k)} windows disagree")
        if self.width is not None and not 1 <= self.width <= MAX_WIDTH:
            raise ValueError(f"--width must be between 1 and {MAX_WIDTH}")
        if self.int8_only and not self.init:
            raise ValueError("--int8-only fine-tunes a trained model: give it with --init MODEL")
        if self.init and self.kind != "iqlut":
            raise ValueError("--init starts an IQ-LUT student; it is not for --kind ecnn")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        """The config of parsed ``add_arguments`` options (``--resume`` and
        ``--no-progress`` are not the config's: they are ``train``'s arguments)."""
        given = vars(args)
        return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})

    def resolved_out(self) -> Path:
        prefix = "iqlut" if self.kind == "iqlut" else "ecnn"
        return Path(self.out or f"{prefix}_x{self.scale}.safetensors")


def parse_windows(text: str) -> list[int]:
    """``"3,3,1"`` -> ``[3, 3, 1]`` (the text of ``--hidden-k``)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--hidden-k takes odd windows separated by commas, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``iqlut train``: the everyday ones, then an "experimental" group
    (architecture, distillation and schedule variants used in docs/training.md's trials)."""
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--out", default="", help="model file to write (default iqlut_xN.safetensors; "
                   "the checkpoint is PATH.ckpt)")
    p.add_argument("--time-budget", type=float, default=1800.0, metavar="SECONDS",
                   help="training time, excluding data preparation (default 1800)")
    p.add_argument("--max-iters", type=int, default=0, help="stop after this many iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from PATH.ckpt if it exists")
    p.add_argument("--init", default="", metavar="MODEL",
                   help="start the student from this trained model file (e.g. a shipped "
                   "default); --hidden may add residual layers, which start as the identity")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=36, help="LR patch size")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--val-every", type=float, default=180.0, metavar="SECONDS")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    x = p.add_argument_group("experimental", "research options: other architectures, the "
                             "baseline, distillation and schedule variants (docs/training.md "
                             "records what each one measured)")
    x.add_argument("--kind", choices=("iqlut", "ecnn"), default="iqlut",
                   help="iqlut (default) or the ECNN baseline (L=256, no distillation)")
    x.add_argument("--lam", type=float, default=0.5, help="distillation weight (iqlut only)")
    x.add_argument("--hidden", type=int, default=None, metavar="N",
                   help="residual layers (8->8, or --width) between the first and the last "
                   "(default 2; the shipped x2 and x3 have 4, x4 3)")
    x.add_argument("--hidden-k", default=None, metavar="K,K,...",
                   help="each residual layer's window, in order (their number is the count "
                   "of windows; e.g. 3,3,3,1: three k = 3 layers, then a k = 1 one, which "
                   "costs a ninth of a k = 3 layer)")
    x.add_argument("--last-k", type=int, choices=WINDOWS, default=None, metavar="K",
                   help="the last layer's window (default 3; 1 is cheaper, see "
                   "docs/training.md)")
    x.add_argument("--width", type=int, default=None, metavar="C",
                   help="channels between layers (default 8); with --init a wider net takes "
                   "the model as its first channels (the extra ones start as new features "
                   "its later layers do not read yet)")
    x.add_argument("--ensemble", type=int, choices=ENSEMBLES, default=1, metavar="N",
                   help="train the N-pass rotation/flip self-ensemble's averaged output and "
                   "ship the model with it (N passes per upscale; 1: a single pass)")
    x.add_argument("--int8-only", action="store_true",
                   help="with --init: keep the model's knots and fine-tune its int8 tables for "
                   "the whole budget (no float stage)")
    x.add_argument("--bf16", choices=BF16, default="off",
                   help="run the student's backward convs in bfloat16 (the forward stays "
                   "exact; on a CPU 14%% more steps, no better model: see docs/training.md); "
                   "auto: where it is fast (CUDA, CPUs with AVX512-BF16/AMX)")
