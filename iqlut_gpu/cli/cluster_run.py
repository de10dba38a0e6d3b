"""``iqlut upscale ... --cluster SPEC`` and ``iqlut video ... --cluster SPEC``: the command
line over ``iqlut_gpu.cluster`` (the subcommands only add the options and hand over here).

Same inputs, outputs, messages and exit codes as the in-process commands: one line per
failed file (``iqlut upscale: error: ...``) and exit 1 at the end if any failed; a progress
bar of files (frames for a video) done across the cluster; a summary line naming the
backend and the number of workers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import CLIError

CLUSTER_HELP = ("run on a Dask cluster: local[:N] (N worker processes on this machine, "
                "default one per core), cuda[:N] (one worker per GPU), or a scheduler "
                "address such as tcp://host:8786; the inputs and the output must be on a "
                "filesystem every worker sees (needs the cluster extra: "
                "pip install 'iqlut-gpu[cluster]')")


def add_cluster_arg(p) -> None:
    p.add_argument("--cluster", metavar="SPEC", default=None, help=CLUSTER_HELP)


def _connect(args):
    from .. import cluster

    try:
        spec = cluster.parse_spec(args.cluster)
    except ValueError as e:
        raise CLIError(str(e)) from None
    return cluster.connect(spec, quiet=True)


def _cluster_error(e) -> CLIError:
    return CLIError(str(e))


def upscale(args) -> int:
    """``iqlut upscale`` on a cluster (the options are checked by ``upscale_cmd``)."""
    from .. import cluster
    from ..files import image_jobs
    from .common import FileReport, model_from_args

    model = model_from_args(args)
    try:  # bad inputs: before any cluster starts; listed once, here
        jobs = image_jobs(args.inputs, args.output)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not jobs:
        raise CLIError("no image files found in the inputs")
    connection = _connect(args)
    report = None
    where = "on the cluster"
    try:
        with connection as client:
            report = FileReport(args, len(jobs), model.scale)
            done = cluster.upscale_files(
                args.inputs, args.output, client=client, model=model, backend=args.backend,
                mode=args.mode, ensemble=args.ensemble, color=getattr(args, "color", "rgb"),
                batch=args.batch, png_level=args.png_level, overwrite=args.overwrite,
                skip_existing=getattr(args, "skip_existing", False),
                on_file=lambda r: report(r, where), jobs=jobs)
    except BaseException as e:
        if report is not None:
            report.abandon()
        if isinstance(e, cluster.ClusterError):
            raise _cluster_error(e) from None
        raise
    workers = f"{done.workers} worker{'s' if done.workers != 1 else ''}"
    return report.close(f"backend {done.backend or args.backend}, {workers}")


def video(args) -> int:
    """``iqlut video`` on a cluster."""
    from .. import cluster
    from ..video import check_output_path, probe
    from .common import check_batch_arg, frame_progress, model_from_args, print_summary

    check_batch_arg(args)
    model = model_from_args(args)
    info = probe(args.input)
    check_output_path(Path(args.input), Path(args.output), args.overwrite)  # before any cluster
    connection = _connect(args)
    try:
        with connection as client, \
                frame_progress(args, info, f"x{model.scale} cluster") as progress:
            report = cluster.upscale_video(
                args.input, args.output, client=client, model=model, backend=args.backend,
                mode=args.mode, ensemble=args.ensemble, batch=args.batch, codec=args.codec,
                crf=args.crf, overwrite=args.overwrite,
                segment_seconds=getattr(args, "segment_seconds", None), progress=progress,
                color=getattr(args, "color", "rgb"), planes=getattr(args, "planes", None),
                preset=getattr(args, "preset", None), info=info)
    except cluster.ClusterError as e:
        raise _cluster_error(e) from None
    if not args.quiet:
        for note in report.notes:
            print(f"iqlut video: note: {args.input}: {note}", file=sys.stderr)
        workers = f"{report.workers} worker{'s' if report.workers != 1 else ''}"
        print_summary(args, info, report.frames, report.output_size, model.scale,
                      f"backend {report.backend}, {report.segments} segments on {workers}",
                      report.fps)
    return 0
