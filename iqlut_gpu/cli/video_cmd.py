"""``iqlut video INPUT -o OUTPUT``: upscale a video; frame times, frame count and audio kept."""

from __future__ import annotations

from ..yuv import PLANES_CHOICES
from .cluster_run import add_cluster_arg
from .common import (add_backend_args, add_color_arg, add_model_args, check_batch_arg,
                     frame_progress, print_summary, upscaler_from_args)


def add_parser(sub) -> None:
    p = sub.add_parser("video", help="upscale a video",
                       description="Upscale every frame of a video. The output keeps every "
                       "frame's time (so the frame rate, variable rates too) and the frame count, "
                       "and its audio streams are copied unchanged. 8-bit YUV and gray video is "
                       "upscaled in its own planes (a 4:2:0 frame is half the work of RGB) and "
                       "written in the same layout. "
                       "The container follows OUTPUT's suffix (.mp4, .mkv, .mov, .webm, ...). "
                       "Nothing is written under OUTPUT unless the whole video is done.")
    p.add_argument("input", metavar="INPUT", help="video file")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output video file")
    add_model_args(p)
    add_color_arg(p)
    add_backend_args(p)
    p.add_argument("--batch", type=int, default=4, metavar="B",
                   help="frames per batch: one backend call per plane shape (default 4)")
    p.add_argument("--codec", default="libx264",
                   help="ffmpeg video encoder (default libx264; e.g. libx265, libvpx-vp9, ffv1)")
    p.add_argument("--crf", type=int, default=None, metavar="Q",
                   help="constant quality for x264/x265/vp9/av1 encoders, lower is better "
                   "(default 18)")
    p.add_argument("--preset", default=None, metavar="P",
                   help="the encoder's speed preset (libx264/libx265: ultrafast ... veryslow, "
                   "default medium; a faster preset takes less CPU for a somewhat larger file "
                   "at the same --crf; libsvtav1: 0-13, NVENC: p1-p7)")
    p.add_argument("--planes", choices=PLANES_CHOICES, default="auto",
                   help="yuv: upscale the source's own Y, U, V (or gray) planes, each at its "
                   "size, and encode the same layout (8-bit YUV 4:2:0/4:2:2/4:4:4 and gray "
                   "only); rgb: convert to RGB and back, three full planes; auto (default): "
                   "yuv where the source allows it, else rgb (the summary says which and why)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_cluster_arg(p)
    p.add_argument("--segment-seconds", type=float, default=None, metavar="S",
                   help="with --cluster: cut the video at the first keyframe after every S "
                   "seconds (default: about four segments per worker, at least 2 s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..video import plan_layout, probe, upscale_video
    from . import CLIError

    if args.cluster:  # segments on many workers: iqlut_gpu.cluster
        from . import cluster_run

        return cluster_run.video(args)
    if args.segment_seconds is not None:
        raise CLIError("--segment-seconds is for --cluster runs")
    check_batch_arg(args)
    upscaler = upscaler_from_args(args)
    scale, backend = upscaler.scale, upscaler.backend
    info = probe(args.input)
    plan_layout(info, args.planes, args.codec)  # a source that --planes refuses: say so now
    with frame_progress(args, info, f"x{scale} {backend}") as progress:
        stats = upscale_video(args.input, args.output, upscaler=upscaler, batch=args.batch,
                              codec=args.codec, crf=args.crf, overwrite=args.overwrite,
                              progress=progress, planes=args.planes, preset=args.preset)
    if not args.quiet:
        planes = "planes rgb" if stats.planes == "rgb24" else f"planes {stats.planes}"
        if stats.planes_reason:
            planes += f": {stats.planes_reason}"
        planes += "".join(f"; {n}" for n in stats.notes)
        print_summary(args, info, stats.frames, stats.output_size, scale,
                      f"backend {backend}, {planes}", stats.fps, stats.variable_rate)
    return 0
