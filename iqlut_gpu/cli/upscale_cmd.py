"""``iqlut upscale INPUT... -o OUT``: upscale image files and folders of images.

The files go through ``iqlut_gpu.files.process_files`` (a reader thread, one
``Upscaler.frames`` stream with same-size files batched, a writer thread), or with
``--cluster`` through ``iqlut_gpu.cluster`` (``cluster_run``); either way each file's
result is reported the same way (``common.FileReport``): one line per failed file and the others
go on, a progress bar across files, a summary, exit 1 if any file failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..png import DEFAULT_LEVEL as DEFAULT_PNG_LEVEL
from . import CLIError
from .cluster_run import add_cluster_arg
from .common import (FileReport, add_backend_args, add_color_arg, add_model_args,
                     check_batch_arg, upscaler_from_args)

DEFAULT_BATCH = 8


def add_parser(sub) -> None:
    p = sub.add_parser("upscale", help="upscale images",
                       description="Upscale image files, or every image in the given folders. "
                       "One input file and an OUT that is not a folder: OUT is the output file. "
                       "Otherwise OUT is a folder (created if needed) and names are kept.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder")
    add_model_args(p)
    add_color_arg(p)
    add_backend_args(p)
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="B",
                   help=f"files per batch (default {DEFAULT_BATCH}); same-size images of a batch "
                   "go to the backend in one call")
    p.add_argument("--png-level", type=int, default=None, choices=range(10), metavar="0-9",
                   help="PNG compression: 0 none (largest), 1-2 fast, 9 smallest and slowest "
                   f"(default {DEFAULT_PNG_LEVEL}, chosen by measurement: bench/README.md)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave output files that exist and do the rest (a rerun after a crash "
                   "goes on where it stopped)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_cluster_arg(p)
    p.set_defaults(func=run)


def check_options(args) -> None:
    check_batch_arg(args)
    if args.overwrite and args.skip_existing:
        raise CLIError("--overwrite and --skip-existing exclude each other")


def run(args) -> int:
    from ..files import FileResult, image_jobs, process_files, skips, target_error

    check_options(args)
    if args.cluster:  # many workers, many machines: iqlut_gpu.cluster
        from . import cluster_run

        return cluster_run.upscale(args)
    upscaler = upscaler_from_args(args)
    jobs = image_jobs(args.inputs, args.output)
    if not jobs:
        raise CLIError("no image files found in the inputs")
    single = len(jobs) == 1 and jobs[0][1] == Path(args.output)
    if not single:
        try:
            Path(args.output).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CLIError(f"{args.output}: cannot create output folder ({e.strerror or e})") from None
    report = FileReport(args, len(jobs), upscaler.scale)
    where = f"backend {upscaler.backend}"
    todo = []
    for src, dst in jobs:
        if args.skip_existing and skips(src, dst):
            report(FileResult(src, dst, skipped=True), where)
        else:
            todo.append((src, dst))
    if not todo:
        report.abandon()
        if not args.quiet:
            print(f"nothing to do: every output exists in {args.output}", file=sys.stderr)
        return 0
    try:
        for result in process_files(upscaler, todo, batch=args.batch, png_level=args.png_level,
                                    check=lambda s, d: target_error(s, d, args.overwrite)):
            report(result, where)
    except BaseException:
        report.abandon()
        raise
    return report.close(where)
