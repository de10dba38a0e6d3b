"""Scaling on a Dask cluster: a folder of photos and a short clip on 1 and 2 local workers
against the in-process run (issue #24).

``python -m bench.cluster [--photos 32] [--size 320x240] [--formats jpg,png] [--scale 4]
[--frames 48] [--clip-size 320x180] [--rounds 5] [--json PATH]``

Set-up, once: the photos (the bundled photo, resized to ``--size``, each shifted a little)
in each output format; an H.264 clip of ``--frames`` frames at 24 fps with a keyframe every
half second and an AAC tone; two ``distributed.LocalCluster``s of 1 and 2 worker processes, one
thread and one Numba thread (``NUMBA_NUM_THREADS=1``) each, started and kept for the run
(their start and close are timed once). This process runs with ``NUMBA_NUM_THREADS=1`` too.

Each round (the order rotated per round, ratios taken within it: the machine is shared):

- ``inproc``: ``iqlut upscale FOLDER -o OUT`` in a child process (bench/ does not import
  the CLI) with one Numba thread (its reader and writer threads overlap the files' I/O
  with the kernels), the job alone timed after a warm-up run in the same process;
- ``inproc_2t``: the same with one Numba thread per core (the default ``iqlut upscale``);
- ``w1``, ``w2``: ``iqlut_gpu.cluster.upscale_files`` on the 1- and 2-worker cluster (the
  job: model plugin, tasks, files; not the cluster's start), timed as the child times
  ``iqlut``: the job run twice in a row, the second timed; the first is reported apart
  (``w1_first_over_inproc``: one worker's job as it comes after the round's other jobs,
  its caches and pages taken by them);
- the clip the same way with ``iqlut video`` / ``iqlut_gpu.cluster.upscale_video``
  (segments of half a second: one keyframe interval).

Reported: medians, throughput (files or frames per second), ``w2 / w1`` speedup and its
efficiency (speedup / 2), ``w1 / inproc`` (the cluster path's cost with one worker); the CPU
seconds per photo or frame of every configuration (this process, which holds the scheduler,
the worker processes and their ffmpeg children: robust to other load on a shared machine,
unlike the wall times); the CPU seconds per photo of its parts (decoding, kernels, encoding;
one thread, in this process); the bytes per photo in and out; the cores an idle 2-worker
cluster uses with Dask's default settings and with ``cluster.LEAN_DASK_CONFIG``; and the
scheduler's overhead per task (``overhead``: 400 empty tasks through the 2-worker cluster, and the
round trip of one).
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # before anything imports Numba

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from .model_ab import parse_size  # noqa: E402

CLIP_FPS = 24
CLIP_GOP = 12  # a keyframe every half second
SEGMENT_SECONDS = 0.5  # the clip's segments on the cluster: one keyframe interval each


def make_photos(folder: Path, n: int, size, fmt: str) -> None:
    import numpy as np

    from iqlut_gpu.io import write_image

    from .registry import bench_frames

    w, h = size
    big = bench_frames((w + 2 * n, h + n), 1)[0]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_image(folder / f"{i:03d}.{fmt}", np.ascontiguousarray(big[i:i + h, 2 * i:2 * i + w]))


def make_clip(path: Path, frames: int, size) -> None:
    import numpy as np

    from iqlut_gpu.video import ffmpeg_exe

    from .registry import bench_frames

    w, h = size
    big = bench_frames((w + 2 * frames, h + frames), 1)[0]
    raw = b"".join(np.ascontiguousarray(big[i:i + h, 2 * i:2 * i + w]).tobytes()
                   for i in range(frames))
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(CLIP_FPS),
           "-i", "pipe:0", "-f", "lavfi",
           "-i", f"sine=frequency=440:sample_rate=44100:duration={frames / CLIP_FPS}",
           "-c:a", "aac", "-c:v", "libx264", "-crf", "18", "-g", str(CLIP_GOP),
           "-keyint_min", str(CLIP_GOP), "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=raw, check=True)


def cpu_parts(src: Path, scale: int, fmt: str) -> dict:
    """CPU seconds per photo of its parts, one thread, in this process (median over 8
    photos, after one untimed pass over them: a process's first decodes and encodes cost
    2-4x the later ones, which are what a folder job runs)."""
    from iqlut_gpu import Upscaler
    from iqlut_gpu.io import read_image, write_image

    files = sorted(src.iterdir())[:8]
    up = Upscaler(scale, backend="cpu")
    parts = {"decode": [], "kernels": [], "encode": []}
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:  # untimed
            write_image(Path(tmp) / f"o.{fmt}", up(read_image(f)))
        for f in files:
            t = time.process_time()
            image = read_image(f)
            parts["decode"].append(time.process_time() - t)
            t = time.process_time()
            out = up(image)
            parts["kernels"].append(time.process_time() - t)
            t = time.process_time()
            write_image(Path(tmp) / f"o.{fmt}", out)
            parts["encode"].append(time.process_time() - t)
    return {k: round(statistics.median(v), 4) for k, v in parts.items()}


def overhead(client, n: int = 400) -> dict:
    """The scheduler's cost per task: n empty tasks at once (per task), and one at a time."""
    def noop(i):
        return i

    client.gather(client.map(noop, range(20), pure=False))  # warm
    t = time.perf_counter()
    client.gather(client.map(noop, range(n), pure=False))
    batch = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for i in range(20):
        client.submit(noop, i, pure=False).result()
    one = (time.perf_counter() - t) / 20
    return {"per_task_in_bulk_ms": round(batch * 1000, 3), "round_trip_ms": round(one * 1000, 3)}


def cpu_seconds(pids) -> float:
    """CPU time so far of the processes ``pids`` and of their children that have ended (the
    ffmpeg processes of a video)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def idle_cores(config: dict, seconds: float = 6.0) -> float:
    """Cores that a started, idle 2-worker LocalCluster uses (its processes' CPU time over
    ``seconds``), under the Dask settings ``config``."""
    import dask
    import distributed

    from iqlut_gpu import cluster

    with dask.config.set(config), cluster.environ_kept():  # Dask's defaults would stay in
        # this process's environment and reach the workers and children started after
        lc = distributed.LocalCluster(**cluster.local_cluster_kwargs(2, quiet=True))
    try:
        with distributed.Client(lc) as client:
            pids = [os.getpid(), *client.run(os.getpid).values()]
            time.sleep(1.0)
            c0 = cpu_seconds(pids)
            time.sleep(seconds)
            return round((cpu_seconds(pids) - c0) / seconds, 4)
    finally:
        lc.close()


_CHILD = """
import sys, os, time, json
from iqlut_gpu.cli import main
from bench.cluster import cpu_seconds
args = json.loads(sys.argv[1])
main(args)  # warm up: kernels loaded, caches
c, t = cpu_seconds([os.getpid()]), time.perf_counter()
main(args)
print(json.dumps([time.perf_counter() - t, cpu_seconds([os.getpid()]) - c]))
"""


def _child(args: list, threads: int) -> tuple[float, float]:
    """``iqlut`` in a child process with ``threads`` Numba threads: (seconds, CPU seconds) of
    one run after a warm-up run."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], env=env,
                         capture_output=True, text=True, check=True)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(photos: int = 32, size=(320, 240), formats=("jpg", "png"), scale: int = 4,
            frames: int = 48, clip_size=(320, 180), rounds: int = 5, log=lambda m: None) -> dict:
    import dask
    import distributed
    import numba

    from iqlut_gpu import cluster

    from .machine import describe

    if numba.config.NUMBA_NUM_THREADS != 1:
        raise SystemExit("run with NUMBA_NUM_THREADS=1 (this process is the one-thread baseline)")
    cluster._quiet_dask_logs()
    cores = cluster._cores()
    res = {"machine": describe(), "cores": cores, "photos": photos,
           "photo_size": "{}x{}".format(*size), "scale": scale, "clip_frames": frames,
           "clip_size": "{}x{}".format(*clip_size), "clip_fps": CLIP_FPS,
           "segment_seconds": SEGMENT_SECONDS, "rounds": rounds}
    me = os.getpid()
    res["idle_cores_2_workers"] = {"dask_defaults": idle_cores({}),
                                   "lean": idle_cores(cluster.LEAN_DASK_CONFIG)}
    log(f"idle cluster: {res['idle_cores_2_workers']}")
    with tempfile.TemporaryDirectory(prefix="iqlut-bench-cluster-") as tmp:
        tmp = Path(tmp)
        for fmt in formats:
            make_photos(tmp / f"in_{fmt}", photos, size, fmt)
        make_clip(tmp / "clip.mp4", frames, clip_size)
        clusters, clients, started, pids = {}, {}, {}, {}
        for n in (1, 2):
            kw = cluster.local_cluster_kwargs(n, quiet=True)
            kw["env"] = {"NUMBA_NUM_THREADS": "1"}
            t = time.perf_counter()
            with dask.config.set(cluster.LEAN_DASK_CONFIG), cluster.environ_kept():  # as
                # cluster.connect starts them
                clusters[n] = distributed.LocalCluster(**kw)
            clients[n] = distributed.Client(clusters[n])
            started[n] = time.perf_counter() - t
            pids[n] = [me, *clients[n].run(os.getpid).values()]
        res["cluster_start_s"] = {f"w{n}": round(v, 2) for n, v in started.items()}
        try:
            res["overhead"] = overhead(clients[2])
            log(f"scheduler overhead: {res['overhead']}")
            common = ["--scale", str(scale), "--backend", "cpu", "--quiet", "--overwrite"]
            jobs, units = {}, {}
            for fmt in formats:
                src, out = tmp / f"in_{fmt}", tmp / f"out_{fmt}"
                args = ["upscale", str(src), "-o", str(out), *common]
                res[f"cpu_per_photo_{fmt}_s"] = cpu_parts(src, scale, fmt)
                res[f"bytes_per_photo_{fmt}"] = {
                    "in": round(sum(f.stat().st_size for f in src.iterdir()) / photos)}
                jobs[f"{fmt}/inproc"] = ((lambda a=args: _child(a, 1)), None)
                jobs[f"{fmt}/inproc_2t"] = ((lambda a=args: _child(a, cores)), None)
                for n in (1, 2):
                    jobs[f"{fmt}/w{n}"] = ((lambda s=src, o=out, c=clients[n]: cluster.upscale_files(
                        [s], o, scale, client=c, backend="cpu", overwrite=True)), pids[n])
            vargs = ["video", str(tmp / "clip.mp4"), "-o", str(tmp / "clip_out.mp4"), *common]
            jobs["video/inproc"] = ((lambda: _child(vargs, 1)), None)
            jobs["video/inproc_2t"] = ((lambda: _child(vargs, cores)), None)
            for n in (1, 2):
                jobs[f"video/w{n}"] = ((lambda c=clients[n]: cluster.upscale_video(
                    tmp / "clip.mp4", tmp / "clip_out.mp4", scale, client=c, backend="cpu",
                    overwrite=True, segment_seconds=SEGMENT_SECONDS)), pids[n])
            for k in jobs:
                units[k] = frames if k.startswith("video/") else photos
            for name, (fn, who) in jobs.items():  # warm up: kernels in every process, caches
                if who is not None:
                    fn()
            for fmt in formats:
                out = tmp / f"out_{fmt}"
                res[f"bytes_per_photo_{fmt}"]["out"] = round(
                    sum(f.stat().st_size for f in out.iterdir()) / photos)
            keys = list(jobs)
            per_round, cpu_round, first_round = [], [], []
            for i in range(rounds):
                t, c, first = {}, {}, {}
                for k in keys[i % len(keys):] + keys[:i % len(keys)]:
                    fn, who = jobs[k]
                    if who is None:  # a child process measures itself
                        t[k], c[k] = fn()
                        continue
                    # As the child: an untimed run first (timed apart, as the job after
                    # the round's other jobs), then the timed run right after it.
                    t0 = time.perf_counter()
                    fn()
                    first[k] = time.perf_counter() - t0
                    c0, t0 = cpu_seconds(who), time.perf_counter()
                    fn()
                    t[k], c[k] = time.perf_counter() - t0, cpu_seconds(who) - c0
                per_round.append(t)
                cpu_round.append(c)
                first_round.append(first)
                log(f"round {i + 1} (load {os.getloadavg()[0]:.1f}): "
                    + ", ".join(f"{k} {v:.2f}s" for k, v in t.items())
                    + " (first runs: " + ", ".join(f"{k} {v:.2f}s" for k, v in first.items())
                    + ")")
        finally:
            t = time.perf_counter()
            for n in (1, 2):
                clients[n].close()
                clusters[n].close()
            res["cluster_close_s"] = round(time.perf_counter() - t, 2)
    res["median_s"] = {k: round(statistics.median(r[k] for r in per_round), 3) for k in keys}
    res["cpu_s_per_unit"] = {k: round(statistics.median(r[k] for r in cpu_round) / units[k], 4)
                             for k in keys}
    summary = {}
    for what in [*formats, "video"]:
        def ratio(a, b, what=what):
            return round(statistics.median(r[f"{what}/{a}"] / r[f"{what}/{b}"]
                                           for r in per_round), 3)

        speedup = ratio("w1", "w2")
        summary[what] = {
            "per_s": {k.split("/")[1]: round(units[k] / res["median_s"][k], 3) for k in keys
                      if k.startswith(what + "/")},
            "w2_speedup_over_w1": speedup, "w2_efficiency": round(speedup / 2, 3),
            "w1_over_inproc": ratio("w1", "inproc"), "w2_over_inproc_2t": ratio("w2", "inproc_2t"),
            # the cluster's job as it came after the round's other jobs (its untimed run)
            "w1_first_over_inproc": round(statistics.median(
                r[f"{what}/w1"] / p[f"{what}/inproc"] for r, p in zip(first_round, per_round)), 3),
            "cpu_w1_over_inproc": round(res["cpu_s_per_unit"][f"{what}/w1"]
                                        / res["cpu_s_per_unit"][f"{what}/inproc"], 3),
            "cpu_w2_over_w1": round(res["cpu_s_per_unit"][f"{what}/w2"]
                                    / res["cpu_s_per_unit"][f"{what}/w1"], 3)}
    res["summary"] = summary
    if "jpg" in summary:
        res["goal_w2_at_least_1.7x_w1_jpg"] = summary["jpg"]["w2_speedup_over_w1"] >= 1.7
    res["goal_w1_at_most_1.1x_inproc"] = {w: summary[w]["w1_over_inproc"] <= 1.1
                                         for w in summary}
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int, default=32)
    p.add_argument("--size", type=parse_size, default=(320, 240), metavar="WxH")
    p.add_argument("--formats", default="jpg,png", help="photo formats, comma-separated")
    p.add_argument("--scale", type=int, default=4, choices=(2, 3, 4))
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--clip-size", type=parse_size, default=(320, 180), metavar="WxH")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, metavar="PATH")
    args = p.parse_args(argv)
    res = measure(args.photos, args.size, tuple(args.formats.split(",")), args.scale,
                  args.frames, args.clip_size, args.rounds,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    from .timing import emit

    emit(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
