"""What several subcommands share: arguments, the Upscaler they name, the file report."""

from __future__ import annotations

import contextlib
import sys

from ..backends import BACKENDS
from ..color import COLORS
from ..ensemble import ENSEMBLES
from ..model import SCALES


def add_model_args(p) -> None:
    p.add_argument("--scale", type=int, choices=SCALES, default=None,
                   help="upscaling factor (default: the model's, or 4 for the shipped model)")
    p.add_argument("--model", metavar="PATH",
                   help="model file (default: the shipped model for --scale)")
    p.add_argument("--ensemble", type=int, choices=ENSEMBLES, default=None, metavar="N",
                   help="average N rotated/flipped passes (1, 2, 4 or 8; N times the time, "
                   "better quality; default: as the model file says, 1 for the shipped models)")


def add_color_arg(p) -> None:
    p.add_argument("--color", choices=COLORS, default="rgb",
                   help="rgb: every channel through the model (default); luma: only the luma "
                   "(BT.601 Y) through the model, chroma and alpha by bicubic: about a third "
                   "of the model's work for RGB images, 0.2-0.4 dB lower Y-PSNR (README, results)")


def add_backend_args(p) -> None:
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="compute backend (default: auto; IQLUT_BACKEND overrides auto)")
    p.add_argument("--mode", choices=("auto", "interp", "expanded"), default="auto",
                   help="table mode: interpolating (small), expanded at load time, or auto "
                   "(expanded on the CPU, interp on the GPU); the result is the same")


def check_batch_arg(args) -> None:
    """--batch checked by the library's one check (``frames.check_batch``), as a CLI error."""
    from ..frames import check_batch
    from . import CLIError

    try:
        check_batch(args.batch)
    except ValueError as e:
        raise CLIError(f"--{e}") from None


def model_from_args(args):
    """The model named by --model/--scale (as the file has it; --ensemble is applied by the
    Upscaler); a --scale that contradicts the file is an error."""
    from ..model import default_model, load_model

    if args.model:
        model = load_model(args.model)
        if args.scale is not None and model.scale != args.scale:
            raise ValueError(f"{args.model} is an x{model.scale} model, not x{args.scale}")
        return model
    return default_model(args.scale or 4)


def upscaler_from_args(args, model=None):
    """The ``Upscaler`` the options name: ``model`` (default: ``model_from_args``) run with
    --ensemble (and --color where the command has it) on --backend in --mode; resolved
    once for the whole command."""
    from ..upscaler import Upscaler

    return Upscaler(model=model if model is not None else model_from_args(args),
                    backend=args.backend, mode=args.mode, ensemble=getattr(args, "ensemble", None),
                    color=getattr(args, "color", "rgb"))


class FileReport:
    """What ``iqlut upscale`` prints about its files, in-process or on a cluster: a progress
    bar (several files), each failure on one line, each output on one line (a single file),
    and a summary. ``where``: the backend (and workers) for those lines."""

    def __init__(self, args, total: int, scale: int):
        self.args, self.total, self.scale = args, total, scale
        self.failed = self.written = self.skipped = 0
        self.bar = None
        if not args.quiet and total > 1:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=sys.stderr)

    def __call__(self, result, where: str) -> None:
        if result.error is not None:
            self.failed += 1
            msg = f"iqlut upscale: error: {result.error}"
            (self.bar.write(msg, file=sys.stderr) if self.bar else print(msg, file=sys.stderr))
        elif result.skipped:
            self.skipped += 1
        else:
            self.written += 1
            if not self.args.quiet and self.bar is None:
                (w, h), (W, H) = result.in_size, result.out_size
                print(f"{result.dst}: {w}x{h} -> {W}x{H} (x{self.scale}, {where}, "
                      f"{result.seconds * 1000:.1f} ms)")
        if self.bar is not None:
            self.bar.update(1)

    def abandon(self) -> None:
        """The run stopped (an error of the upscaler, Ctrl-C): the bar goes, no summary."""
        if self.bar is not None:
            self.bar.close()

    def close(self, where: str) -> int:
        if self.bar is not None:
            self.bar.close()
        if not self.args.quiet and self.total > 1:
            skipped = f", {self.skipped} skipped (already there)" if self.skipped else ""
            print(f"{self.written} of {self.total} images written to {self.args.output}"
                  f"{skipped} ({where})", file=sys.stderr)
        return 1 if self.failed else 0


@contextlib.contextmanager
def frame_progress(args, info, desc: str):
    """The progress bar of frames done (none with --quiet), in-process or on a cluster:
    yields ``progress(frames_done)`` (or None); the bar ends at 100% when the body ends
    (the total was estimated from the duration)."""
    if args.quiet:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=info.frames_estimate, unit="frame", file=sys.stderr, dynamic_ncols=True,
               desc=desc)
    try:
        yield lambda n: bar.update(n - bar.n)
        bar.total = bar.n
        bar.refresh()
    finally:
        bar.close()


def print_summary(args, info, frames: int, output_size, scale: int, details: str,
                  fps: float, variable_rate: bool = False) -> None:
    """The line ``iqlut video`` ends with (in-process or on a cluster)."""
    w, h = output_size
    audio = f", audio copied ({', '.join(info.audio)})" if info.audio else ", no audio"
    rate = ("at a variable frame rate, frame times kept" if variable_rate
            else f"at {float(info.fps):g} fps")
    print(f"{args.output}: {frames} frames {info.width}x{info.height} -> {w}x{h} "
          f"{rate}{audio} (x{scale}, {details}, {fps:.2f} frames/s)", file=sys.stderr)
