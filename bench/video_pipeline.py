"""Video pipeline benchmark: which stage bounds `iqlut video` on this machine, and what
do a video's own planes gain over RGB?

    python -m bench.video_pipeline [--frames 30] [--scale 2] [--backend cpu] [--batch 4]
                                   [--ensemble N] [--repeats 3] [--compare-io]
    python -m bench.video_pipeline --planes-ab [--size 768x576] [--frames 30] [--scale 2]
                                   [--backend cpu] [--ensemble 1] [--rounds 3] [--preset P]

``--planes-ab`` makes a 4:2:0 H.264 clip (+ AAC) and runs, in interleaved rounds (the
order of the two paths alternates from round to round), for the YUV path (the clip's own
planes: Y full size, U and V quarter size) and the RGB path (``--planes rgb``): the
whole ``upscale_video`` (decode, upscale and encode overlapped, libx264 crf 18 as
`iqlut video` does), and the kernels alone on the same decoded frames
(``yuv.upscale_plane_stream`` from memory; the backend calls' time). It reports frames/s
of each, the YUV/RGB ratio within each round, and the pipeline overhead (end to end over
kernels alone, minus 1) of each path; medians over rounds. Beside the wall-clock figures:
the overhead before the encoder's tail (the seconds from the last frame handed over to
the finished file, when x264 codes the frames of its look-ahead: all of a 30-frame clip)
and in CPU time (this process and its ffmpeg children; steadier than wall time on a
shared machine). Goals (issue #22, 2 cores, CPU, one pass): YUV at least 1.8x RGB's
frames/s end to end; overhead at most 20%. Results go to
``bench/results/video_planes[_<preset>]_<machine>.json``.

The stage mode (the default):

Makes a 720p clip (panned views of the bundled photo, with an AAC tone) and measures
each stage on its own, then the whole overlapped pipeline:

- decode: iqlut_gpu.video.read_frames (ffmpeg from imageio-ffmpeg, raw RGB over a pipe);
- upload, kernels, download: iqlut_gpu.upscale_frames with ``stats`` (on the CPU,
  upload/download are the frames <-> planes layout changes; on CUDA, pinned-host <->
  device copies timed with CUDA events);
- encode: iqlut_gpu.video.VideoWriter (libx264, crf 18, audio copied);
- end to end: iqlut_gpu.video.upscale_video (decode, upscale and encode overlapped).

Stage rates are frames per second of that stage alone (median over ``--repeats``, with
min and max); the slowest bounds the pipeline. ``--compare-io`` adds decode and encode
rates of imageio's PyAV plugin and of imageio-ffmpeg's own read/write generators, the
measurement behind the choice of video I/O. Results go to
``bench/results/video_pipeline_<machine>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .machine import machine_tag  # the result files' suffix

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PHOTO = ROOT / "iqlut_gpu" / "data" / "astronaut_256.png"


def machine() -> dict:
    """``bench.machine.describe()`` (the keys every bench result records) and the ffmpeg
    that the clips go through."""
    from .machine import describe

    info = describe()
    try:
        import imageio_ffmpeg

        info["imageio_ffmpeg"] = imageio_ffmpeg.__version__
        out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], capture_output=True,
                             text=True).stdout
        info["ffmpeg"] = out.split("\n")[0].split(" Copyright")[0]
    except ImportError:
        pass
    return info


def make_clip(path: Path, frames: int, size=(1280, 720), fps: int = 30) -> None:
    """A pan across the photo blown up to cover the frame, H.264 4:2:0 + an AAC tone."""
    from PIL import Image

    from iqlut_gpu.video import ffmpeg_exe

    w, h = size
    big = np.asarray(Image.open(PHOTO).convert("RGB").resize((1600, 1600), Image.BICUBIC))
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0",
           "-f", "lavfi", "-i", f"sine=frequency=440:duration={frames / fps}",
           "-c:v", "libx264", "-crf", "18", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for i in range(frames):
        x, y = (i * 9) % (1600 - w), (i * 5) % (1600 - h)
        proc.stdin.write(np.ascontiguousarray(big[y:y + h, x:x + w]).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("could not make the test clip")


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(frames: int, seconds: list[float]) -> dict:
    rates = sorted(frames / s for s in seconds)
    return {"fps_median": statistics.median(rates), "fps_min": rates[0], "fps_max": rates[-1],
            "seconds": seconds, "frames": frames}


def compare_io(clip: Path, frames_hr: list, fps: int, repeats: int, tmp: Path) -> dict:
    """Decode and encode rates of imageio's PyAV plugin and imageio-ffmpeg's generators."""
    import imageio_ffmpeg

    res = {}
    n = sum(1 for _ in imageio_ffmpeg.read_frames(str(clip))) - 1

    def dec_iff():
        gen = imageio_ffmpeg.read_frames(str(clip))
        next(gen)
        for _ in gen:
            pass

    def enc_iff():
        h, w = frames_hr[0].shape[:2]
        gen = imageio_ffmpeg.write_frames(str(tmp / "iff.mp4"), (w, h), fps=fps, codec="libx264",
                                          quality=None, output_params=["-crf", "18"],
                                          macro_block_size=1, ffmpeg_log_level="error")
        gen.send(None)
        for f in frames_hr:
            gen.send(f)
        gen.close()

    res["imageio_ffmpeg_decode"] = summary(n, timed(dec_iff, repeats))
    res["imageio_ffmpeg_encode"] = summary(len(frames_hr), timed(enc_iff, repeats))
    try:
        import av  # noqa: F401
        import imageio.v3 as iio
    except ImportError as e:
        res["pyav"] = f"not measured: {e}"
        return res

    def dec_pyav():
        for _ in iio.imiter(clip, plugin="pyav"):
            pass

    def enc_pyav():
        with iio.imopen(tmp / "pyav.mp4", "w", plugin="pyav") as out:
            out.init_video_stream("libx264", fps=fps)
            out._video_stream.options = {"crf": "18"}  # the plugin has no crf argument
            for f in frames_hr:
                out.write_frame(f)

    res["imageio_pyav_decode"] = summary(n, timed(dec_pyav, repeats))
    res["imageio_pyav_encode"] = summary(len(frames_hr), timed(enc_pyav, repeats))
    return res


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (ffmpeg)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def planes_ab(args, tmp: Path, info: dict) -> dict:
    """The YUV path against the RGB path, and each against its kernels alone (module doc)."""
    from iqlut_gpu import Upscaler
    from iqlut_gpu.video import DEFAULT_CRF, VideoWriter, probe, read_video, upscale_video
    from iqlut_gpu.yuv import source_format, upscale_plane_stream

    w, h = (int(v) for v in args.size.lower().split("x"))
    clip = tmp / "clip420.mp4"
    make_clip(clip, args.frames, size=(w, h))
    vinfo = probe(clip)
    assert vinfo.pix_fmt == "yuv420p", vinfo
    up = Upscaler(args.scale, backend=args.backend, ensemble=args.ensemble)
    paths = ("yuv", "rgb")
    decoded = {p: [f.planes for f in read_video(clip, vinfo, source_format(vinfo.pix_fmt, p))]
               for p in paths}
    assert all(len(v) == args.frames for v in decoded.values())
    list(upscale_plane_stream(up, decoded["yuv"][:1], 1))  # warm up: compile, tables
    # each path's output frames, kept for the encoder alone (the same encoder settings and
    # audio as upscale_video's; even sizes here, so no crop)
    outputs = {p: [tuple(np.array(x) for x in f)
                   for f in upscale_plane_stream(up, decoded[p], args.batch)] for p in paths}
    out_size = (w * args.scale, h * args.scale)

    def encode_alone(p) -> float:
        writer = VideoWriter(tmp / f"enc_{p}.mp4", out_size, vinfo.fps, crf=DEFAULT_CRF,
                             audio_from=clip, layout=source_format(vinfo.pix_fmt, p).layout,
                             preset=args.preset)
        t0 = time.perf_counter()
        try:
            for i, frame in enumerate(outputs[p]):
                writer.write(frame, i)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        return time.perf_counter() - t0
    print(f"planes A/B: {w}x{h} 4:2:0 H.264, {args.frames} frames, x{args.scale}, backend "
          f"{up.backend}, ensemble {up.model.ensemble}, batch {args.batch}, {args.rounds} rounds",
          file=sys.stderr)
    rounds = []
    for r in range(args.rounds):
        rec = {}
        for p in (paths if r % 2 == 0 else paths[::-1]):
            st = {}
            c0 = cpu_seconds()
            t0 = time.perf_counter()
            n = sum(1 for _ in upscale_plane_stream(up, decoded[p], args.batch, st))
            wall = time.perf_counter() - t0
            cpu_kernels = cpu_seconds() - c0
            assert n == args.frames
            c0 = cpu_seconds()
            s = upscale_video(clip, tmp / f"out_{p}.mp4", upscaler=up, batch=args.batch,
                              planes=p, overwrite=True, preset=args.preset)
            cpu_e2e = cpu_seconds() - c0
            c0 = cpu_seconds()
            enc = encode_alone(p)
            cpu_enc = cpu_seconds() - c0
            assert s.frames == args.frames and s.planes == ("yuv420p" if p == "yuv" else "rgb24")
            rec[p] = {"end_to_end_seconds": s.seconds, "end_to_end_fps": s.fps,
                      "kernels_seconds": st["kernels"], "kernels_fps": n / st["kernels"],
                      "upscale_stage_seconds": wall,
                      "overhead": s.seconds / st["kernels"] - 1,
                      "encode_alone_seconds": enc, "encode_alone_fps": n / enc,
                      "cpu_seconds_encode_alone": cpu_enc,
                      # what the pipeline adds to its two big jobs done one after the
                      # other on the same cores (both use every core alone)
                      "overhead_beyond_kernels_and_encoder":
                          s.seconds / (st["kernels"] + enc) - 1,
                      "cpu_overhead_beyond_kernels_and_encoder":
                          cpu_e2e / (cpu_kernels + cpu_enc) - 1,
                      "cpu_seconds_end_to_end": cpu_e2e, "cpu_seconds_kernels_alone": cpu_kernels,
                      "cpu_overhead": cpu_e2e / cpu_kernels - 1,
                      "encode_tail_seconds": s.encode_tail,
                      "overhead_before_encode_tail":
                          (s.seconds - s.encode_tail) / st["kernels"] - 1,
                      "busy_seconds_per_stage": s.stages}
            print(f"  round {r + 1} {p}: end to end {s.fps:.3f} frames/s, kernels alone "
                  f"{n / st['kernels']:.3f} frames/s, overhead {rec[p]['overhead']:+.1%} "
                  f"(before the encoder's tail of {s.encode_tail:.1f} s "
                  f"{rec[p]['overhead_before_encode_tail']:+.1%}; in CPU time "
                  f"{rec[p]['cpu_overhead']:+.1%}); encoder alone {n / enc:.3f} frames/s, "
                  f"end to end over kernels + encoder "
                  f"{rec[p]['overhead_beyond_kernels_and_encoder']:+.1%} (CPU "
                  f"{rec[p]['cpu_overhead_beyond_kernels_and_encoder']:+.1%})", file=sys.stderr)
        rec["yuv_over_rgb_end_to_end"] = rec["yuv"]["end_to_end_fps"] / rec["rgb"]["end_to_end_fps"]
        rec["yuv_over_rgb_kernels"] = rec["yuv"]["kernels_fps"] / rec["rgb"]["kernels_fps"]
        # CPU seconds per frame, RGB over YUV: what the fps ratio is on a machine of its own
        rec["yuv_over_rgb_cpu_time"] = (rec["rgb"]["cpu_seconds_end_to_end"]
                                         / rec["yuv"]["cpu_seconds_end_to_end"])
        rounds.append(rec)

    def med(key, path=None):
        return statistics.median(x[path][key] if path else x[key] for x in rounds)

    summary_ = {
        "yuv_over_rgb_end_to_end": med("yuv_over_rgb_end_to_end"),
        "yuv_over_rgb_kernels": med("yuv_over_rgb_kernels"),
        "yuv_over_rgb_cpu_time": med("yuv_over_rgb_cpu_time"),
        **{f"{p}_{k}": med(k, p) for p in paths
           for k in ("end_to_end_fps", "kernels_fps", "overhead", "cpu_overhead",
                     "overhead_before_encode_tail", "encode_tail_seconds", "encode_alone_fps",
                     "overhead_beyond_kernels_and_encoder",
                     "cpu_overhead_beyond_kernels_and_encoder")},
    }
    summary_["goal_yuv_at_least_1.8x_rgb"] = summary_["yuv_over_rgb_end_to_end"] >= 1.8
    summary_["goal_overhead_at_most_20%"] = max(summary_["yuv_overhead"],
                                                summary_["rgb_overhead"]) <= 0.20
    with_load = getattr(os, "getloadavg", None)
    return {"benchmark": "video_planes", "machine": info, "backend": up.backend,
            "scale": args.scale, "ensemble": up.model.ensemble, "batch": args.batch,
            "input": f"{w}x{h} H.264 yuv420p 30 fps + AAC", "frames": args.frames,
            "encoder": "libx264 crf 18, preset " + (args.preset or "medium (the default)"),
            "model": f"shipped default x{args.scale}, {up.model.ensemble} pass(es)",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_at_end": [round(x, 2) for x in with_load()] if with_load else None,
            "summary": summary_, "rounds": rounds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of decode and encode")
    ap.add_argument("--kernel-repeats", type=int, default=1,
                    help="repeats of the upscale stage and of the end-to-end run")
    ap.add_argument("--compare-io", action="store_true")
    ap.add_argument("--io-only", action="store_true",
                    help="decode and encode only (the encoder gets pixel-doubled frames), with "
                    "--compare-io: the three readers and writers in one time window")
    ap.add_argument("--ensemble", type=int, default=None,
                    help="passes of the model (default: the model's own)")
    ap.add_argument("--planes-ab", action="store_true",
                    help="the YUV path against the RGB path, and the pipeline overhead")
    ap.add_argument("--size", default="768x576", help="clip size for --planes-ab")
    ap.add_argument("--preset", default=None, help="libx264 preset for --planes-ab (default: "
                    "the encoder's, medium)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds for --planes-ab")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default: bench/results/)")
    args = ap.parse_args(argv)

    if args.planes_ab:
        info = machine()
        with tempfile.TemporaryDirectory(prefix="iqlut-bench-") as tmpdir:
            result = planes_ab(args, Path(tmpdir), info)
        sm = result["summary"]
        print(f"YUV/RGB end to end {sm['yuv_over_rgb_end_to_end']:.2f}x (kernels "
              f"{sm['yuv_over_rgb_kernels']:.2f}x, CPU time per frame "
              f"{sm['yuv_over_rgb_cpu_time']:.2f}x); overhead yuv {sm['yuv_overhead']:+.1%}, "
              f"rgb {sm['rgb_overhead']:+.1%}; in CPU time yuv {sm['yuv_cpu_overhead']:+.1%}, "
              f"rgb {sm['rgb_cpu_overhead']:+.1%}; over kernels + encoder alone yuv "
              f"{sm['yuv_overhead_beyond_kernels_and_encoder']:+.1%}, rgb "
              f"{sm['rgb_overhead_beyond_kernels_and_encoder']:+.1%} (medians of {args.rounds} rounds)",
              file=sys.stderr)
        preset = f"_{args.preset}" if args.preset else ""  # the committed files' names
        out = args.out or RESULTS / f"video_planes{preset}_{machine_tag(info)}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
        return 0

    from iqlut_gpu import default_model, upscale_frames
    from iqlut_gpu.backends import resolve
    from iqlut_gpu.video import VideoWriter, probe, read_frames, upscale_video

    info = machine()
    backend = resolve(args.backend)
    model = default_model(args.scale)
    result = {"benchmark": "video_pipeline", "machine": info, "backend": backend,
              "scale": args.scale, "batch": args.batch, "input": "1280x720 H.264 30 fps + AAC",
              "frames": args.frames, "model": "shipped default x%d" % args.scale,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="iqlut-bench-") as tmpdir:
        tmp = Path(tmpdir)
        clip = tmp / "clip720.mp4"
        make_clip(clip, args.frames)
        vinfo = probe(clip)
        print(f"clip: {vinfo.width}x{vinfo.height}, {args.frames} frames, backend {backend}, "
              f"x{args.scale}, batch {args.batch}", file=sys.stderr)

        decoded = []

        def decode():
            decoded.clear()
            decoded.extend(read_frames(clip, vinfo))  # fresh arrays, no copy needed

        stages = {"decode": summary(args.frames, timed(decode, args.repeats))}
        assert len(decoded) == args.frames, len(decoded)

        runs, upscaled = [], []
        if args.io_only:
            r = args.scale
            upscaled = [np.ascontiguousarray(f.repeat(r, 0).repeat(r, 1)) for f in decoded]
        else:
            # warm up (compilation, device tables) on one frame, then time the upscale stage
            list(upscale_frames(decoded[:1], args.scale, model=model, backend=backend, batch=1,
                                ensemble=args.ensemble))
        for _ in range(0 if args.io_only else args.kernel_repeats):
            st = {}
            t0 = time.perf_counter()
            upscaled = list(upscale_frames(decoded, args.scale, model=model, backend=backend,
                                           batch=args.batch, stats=st, ensemble=args.ensemble))
            st["total"] = time.perf_counter() - t0
            runs.append(st)
        if runs:
            for k in ("upload", "kernels", "download"):
                stages[k] = summary(args.frames, [r[k] for r in runs])
            stages["upscale_frames_total"] = summary(args.frames, [r["total"] for r in runs])

        def encode():
            h, w = upscaled[0].shape[:2]
            wr = VideoWriter(tmp / "enc.mp4", (w, h), vinfo.fps, codec="libx264", crf=18,
                             audio_from=clip)
            for f in upscaled:
                wr.write(f)
            wr.close()

        stages["encode"] = summary(args.frames, timed(encode, args.repeats))
        result["stages"] = stages

        e2e = []
        for _ in range(0 if args.io_only else args.kernel_repeats):
            st = upscale_video(clip, tmp / "out.mp4", args.scale, model=model, backend=backend,
                               batch=args.batch, overwrite=True, ensemble=args.ensemble)
            e2e.append(st)
        if e2e:
            result["end_to_end"] = summary(args.frames, [s.seconds for s in e2e])
            result["end_to_end"]["busy_seconds_per_stage"] = e2e[-1].stages
        if args.compare_io:
            result["io_comparison"] = compare_io(clip, upscaled, 30, args.repeats, tmp)

    per_stage = {k: v["fps_median"] for k, v in stages.items()
                 if k in ("decode", "upload", "kernels", "download", "encode")}
    bound = min(per_stage, key=per_stage.get)
    result["bounding_stage"] = bound
    print(f"{'stage':<10} {'frames/s':>10}   (alone, median of runs)", file=sys.stderr)
    for k, v in per_stage.items():
        print(f"{k:<10} {v:>10.2f}" + ("   <- bounds the pipeline" if k == bound else ""),
              file=sys.stderr)
    if "end_to_end" in result:
        print(f"{'pipeline':<10} {result['end_to_end']['fps_median']:>10.2f}   "
              "(end to end, overlapped)", file=sys.stderr)
    for k, v in result.get("io_comparison", {}).items():
        if isinstance(v, dict):
            print(f"{k:<24} {v['fps_median']:>8.2f} frames/s", file=sys.stderr)
    kind = "_io" if args.io_only else ""
    out = args.out or RESULTS / f"video_pipeline{kind}_{machine_tag(info)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
