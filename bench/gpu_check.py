"""The GPU check: one script, run first thing on a machine with a CUDA device (`make gpu-check`).

    python3 bench/gpu_check.py [--wheels .whl] [--budget 450] [--out DIR]

Runs, each step as a subprocess with its own time limit inside an overall budget (default
450 s, under 8 minutes with set-up), and keeps going when a step fails:

1. set-up: the checkout made importable as the installed package is (links
   ``iqlut_gpu/kernels`` and ``iqlut_gpu/train`` to the top-level folders, removed at the
   end), and the wheels in ``--wheels`` (made here by `make gpu-wheels`: imageio-ffmpeg,
   Dask and dask-cuda, which the device image lacks) installed offline into a temporary
   folder; nothing is installed into the image's Python;
2. bench: CUDA-event timings (median of repeats after warm-up, each checked against the
   reference on a crop) of x2 1920x1080 -> 3840x2160 (frames/s, interp and expanded),
   x4 960x540 -> 3840x2160 and x4 320x180 -> 1280x720 (both modes), the torch CUDA
   forward of the same x4 and x2 models, and the streamed frame path (upscale_frames,
   pinned buffers, two streams) at x2 1080p end to end, in both table modes, and its
   copies alone (host to device and back, pinned and pageable, GB/s; the host copy out
   of the pinned buffer into new memory that each streamed batch makes);
3. the `gpu` tests (pytest -m gpu): kernels against the reference on the device, streams,
   DLPack, the stream runner, video, the `cuda` cluster, a short training run;
4. the video pipeline on the GPU (bench/video_pipeline.py --backend cuda), and its planes
   A/B (the YUV path against the RGB path, 1280x720 x2, ultrafast), if imageio-ffmpeg
   could be installed, else a note why not;
5. compute-sanitizer memcheck, racecheck and initcheck on small upscales, one image at a
   time and through the streamed path (where the tool runs);
6. Nsight Compute (ncu, clocks left alone): speed of light, occupancy and launch figures
   of every kernel of the shipped x2 on a 1920x1080 frame, in both table modes.

Writes ``bench/results/<device>.json`` (device: the GPU's name, e.g. nvidia-h200) with every
step's outcome, and the logs beside it; copies both to ``$OUT`` when that is set (the
device tool brings back at most 8 files from there). Prints a short table last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


# ----------------------------------------------------------------------------- set-up


def link_subpackages() -> list[Path]:
    """Make ``iqlut_gpu.kernels`` and ``iqlut_gpu.train`` importable from the checkout
    itself, as setup.cfg's ``package_dir`` maps them in an install: a link
    ``iqlut_gpu/kernels -> ../kernels`` (and ``train``) where none is there. The check
    runs in the repository (``python -m``, pytest and the bench put it first on
    ``sys.path``), so a copy of the package elsewhere would be shadowed by the checkout's
    ``iqlut_gpu`` (seen on the first GPU run, 2026-12-04). Returns the links made, which
    ``main`` removes at the end."""
    made = []
    for name in ("kernels", "train"):
        link = ROOT / "iqlut_gpu" / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(Path("..") / name, target_is_directory=True)
            made.append(link)
    return made


def install_wheels(wheels: Path | None, dest: Path, log: list) -> tuple[Path | None, str]:
    if wheels is None or not wheels.is_dir() or not list(wheels.glob("*.whl")):
        return None, f"no wheels in {wheels} (make gpu-wheels makes them)"
    target = dest / "wheels"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--target", str(target), *map(str, sorted(wheels.glob("*.whl")))]
    res = subprocess.run(cmd, capture_output=True, text=True)
    log.append(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}")
    if res.returncode != 0:
        return None, f"pip install of the wheels failed (exit {res.returncode})"
    return target, "installed: " + ", ".join(p.name for p in sorted(wheels.glob("*.whl")))


def device_name() -> tuple[str, dict]:
    info = {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                              "clocks.max.sm", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        name, driver, mem, clock = [s.strip() for s in out.splitlines()[0].split(",")]
        info.update(gpu=name, driver=driver, memory=mem, max_sm_clock=clock)
    except Exception as e:  # no nvidia-smi, no GPU
        info["nvidia_smi"] = f"unavailable: {type(e).__name__}: {e}"
        name = "no-gpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"
    return slug, info


def run_step(name, cmd, env, limit, logs: dict) -> dict:
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                             timeout=max(5, limit))
        rc, out = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += f"\n[stopped after {limit:.0f} s]"
    logs[name] = f"$ {' '.join(map(str, cmd))}\n{out}"
    return {"exit": rc, "seconds": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------- bench (child)


def _time_events(run, stream, kind, repeats, warmup=2):
    """Median seconds of ``run`` timed with CUDA events on ``stream`` (cupy or torch)."""
    out = None
    for _ in range(warmup):
        out = run()
    times = []
    if kind == "torch":
        import torch

        torch.cuda.synchronize()
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = run()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1000)
    else:
        import cupy

        stream.synchronize()
        for _ in range(repeats):
            a, b = cupy.cuda.Event(), cupy.cuda.Event()
            a.record(stream)
            out = run()
            b.record(stream)
            b.synchronize()
            times.append(cupy.cuda.get_elapsed_time(a, b) / 1000)
    return statistics.median(times), min(times), max(times), out


def bench_child(out_path: Path) -> int:
    sys.path.insert(0, str(ROOT))

    from bench import registry

    results = []

    def record(label, frames_per_run, fn):
        t0 = time.perf_counter()
        try:
            rec = fn()
            rec.update(case=label, frames_per_s=round(frames_per_run / rec["median_s"], 2))
        except Exception as e:  # a failing case is recorded, the others still run
            rec = {"case": label, "error": f"{type(e).__name__}: {e}"}
        rec["wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(rec)
        print(json.dumps(rec), flush=True)
        out_path.write_text(json.dumps(results, indent=1))

    def registry_case(case, repeats):
        def fn():
            run = registry.setup(case)
            kind = "torch" if case.backend == "torch-cuda" else "cupy"
            med, lo, hi, out = _time_events(run.run, run.stream, kind, repeats)
            run.sync()
            check = run.check(out) if run.check else None
            return {"median_s": med, "min_s": lo, "max_s": hi, "repeats": repeats,
                    "check": check, "notes": run.notes}
        return fn

    for scale, size, batch in ((2, (1920, 1080), 1), (4, (960, 540), 1), (4, (320, 180), 4)):
        for mode in ("interp", "expanded"):
            case = registry.Case("gpu-check", "cuda", mode, scale, size, batch=batch)
            record(case.name, batch, registry_case(case, 10))
    for scale, size in ((4, (320, 180)), (2, (1920, 1080))):
        case = registry.Case("gpu-check", "torch-cuda", None, scale, size)
        record(case.name, 1, registry_case(case, 5))

    def streamed(mode, lend=True):
        """``lend``: the streamer lends each batch's output block (the default); False:
        every batch through the slots' reused buffers and copied out (the path before
        2026-12-04 evening, and past ``cuda_stream.LEND_MAX`` blocks held)."""
        def fn():
            from iqlut_gpu import upscale_frames
            from iqlut_gpu.kernels import cuda_stream

            frames = list(registry.bench_frames((1920, 1080), 8))
            stats = {}
            saved = cuda_stream.LEND_MAX
            cuda_stream.LEND_MAX = saved if lend else 0
            try:
                for _ in upscale_frames(frames, 2, backend="cuda", batch=4, mode=mode):
                    pass  # warm-up: kernels compiled, the pinned pool's blocks allocated
                t0 = time.perf_counter()
                for _ in range(3):
                    for _ in upscale_frames(frames, 2, backend="cuda", batch=4, mode=mode,
                                            stats=stats):
                        pass
                sec = (time.perf_counter() - t0) / 3
            finally:
                cuda_stream.LEND_MAX = saved
            return {"median_s": sec, "frames": len(frames), "stage_s": stats,
                    "notes": {"what": "upscale_frames x2, host frames in and out, batch 4, "
                              "wall clock per pass of 8 frames (3 passes), each frame "
                              "dropped before the next",
                              "outputs": "lent pinned blocks" if lend else "copied out"}}
        return fn

    for mode in ("interp", "expanded"):
        record(f"gpu-check/stream/cuda/{mode}/x2/1920x1080/b4 (end to end)", 8, streamed(mode))
    record("gpu-check/stream/cuda/expanded/x2/1920x1080/b4 (end to end, copied out)", 8,
           streamed("expanded", lend=False))

    def copy_case(direction, host_kind, layout):
        """The streamed path's copies alone: 4 RGB 3840x2160 frames (99.5 MB) between a
        device buffer and a pinned or pageable host buffer; ``planes``: from the model's
        plane order [N*3, H, W] into interleaved [N, H, W, 3] host frames, as the
        download of ``upscale_frames`` does."""
        def fn():
            import cupy
            import cupyx
            import numpy as np

            shape = (4, 2160, 3840, 3)
            n = int(np.prod(shape))
            if host_kind == "pinned":  # as the stream runner allocates its buffers
                host = cupyx.empty_pinned(shape, np.uint8)
            else:
                host = np.empty(shape, np.uint8)
            host[...] = 7
            stream = cupy.cuda.Stream(non_blocking=True)
            if layout == "planes":
                dev = cupy.zeros((4, 3, 2160, 3840), np.uint8).transpose(0, 2, 3, 1)
            else:
                dev = cupy.zeros(shape, np.uint8)

            def run():
                with stream:
                    if direction == "d2h":
                        dev.get(stream=stream, out=host, blocking=False)
                    else:
                        dev.set(host, stream=stream)
            med, lo, hi, _ = _time_events(run, stream, "cupy", 10)
            return {"median_s": med, "min_s": lo, "max_s": hi, "repeats": 10,
                    "GB_per_s": round(n / med / 1e9, 2), "bytes": n}
        return fn

    for direction, host_kind, layout in (("h2d", "pinned", "frames"), ("d2h", "pinned", "frames"),
                                         ("d2h", "pinned", "planes"),
                                         ("d2h", "pageable", "frames")):
        record(f"gpu-check/copy/{direction}/{host_kind}/{layout}/4x3840x2160x3", 4,
               copy_case(direction, host_kind, layout))

    def host_copy_out():
        """What the streamed path did after each download until its output blocks were
        lent (and still does past the lending limits, ``cuda_stream.LEND_MAX``): the batch
        copied out of the slot's pinned buffer into new memory the caller may keep (wall
        clock)."""
        import cupyx
        import numpy as np

        shape = (4, 2160, 3840, 3)
        n = int(np.prod(shape))
        pinned = cupyx.empty_pinned(shape, np.uint8)
        pinned[...] = 7
        times = []
        for _ in range(10):
            t = time.perf_counter()
            out = pinned.copy()
            times.append(time.perf_counter() - t)
            del out
        med = statistics.median(times)
        return {"median_s": med, "min_s": min(times), "max_s": max(times), "repeats": 10,
                "GB_per_s": round(n / med / 1e9, 2), "bytes": n}

    record("gpu-check/copy/host/pinned-to-new/4x3840x2160x3", 4, host_copy_out)
    return 0


def ncu_child() -> int:
    """The workload profiled by Nsight Compute: the shipped x2 on a 1920x1080 frame, once
    per table mode, between cudaProfilerStart and Stop (compilation and table uploads
    happen in a warm-up outside them)."""
    import cupy
    import numpy as np

    from iqlut_gpu import Upscaler

    frame = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    ups = {m: Upscaler(2, backend="cuda", mode=m) for m in ("expanded", "interp")}
    for up in ups.values():
        up(frame[:64, :64])
    cupy.cuda.runtime.deviceSynchronize()
    cupy.cuda.profiler.start()
    for up in ups.values():
        up(frame)
    cupy.cuda.runtime.deviceSynchronize()
    cupy.cuda.profiler.stop()
    print("ncu workload: ok")
    return 0


NCU_METRICS = ("Duration", "DRAM Throughput", "Memory Throughput", "L2 Cache Throughput",
               "Compute (SM) Throughput", "Achieved Occupancy", "Registers Per Thread",
               "Theoretical Occupancy", "Grid Size", "Block Size")


def ncu_summary(csv_path: Path) -> list:
    """One row per profiled kernel launch from ncu's ``--csv --page details`` output."""
    import csv

    lines = [ln for ln in csv_path.read_text(errors="replace").splitlines()
             if not ln.startswith("==")]
    rows: dict = {}
    for rec in csv.DictReader(lines):
        key = rec.get("ID")
        if key is None:
            continue
        row = rows.setdefault(key, {"kernel": rec.get("Kernel Name", "")[:120],
                                    "grid": rec.get("Grid Size"), "block": rec.get("Block Size")})
        if rec.get("Metric Name") in NCU_METRICS:
            row[f"{rec['Metric Name']} [{rec.get('Metric Unit', '')}]"] = rec.get("Metric Value")
    return list(rows.values())


def sanitizer_child() -> int:
    import numpy as np

    from iqlut_gpu import default_model, upscale

    img = np.random.default_rng(1).integers(0, 256, (37, 41, 3), dtype=np.int64).astype(np.uint8)
    for mode in ("interp", "expanded"):
        for scale in (2, 3, 4):
            got = upscale(img, scale, model=default_model(scale).with_ensemble(1),
                          backend="cuda", mode=mode)
            want = upscale(img, scale, model=default_model(scale).with_ensemble(1), backend="cpu")
            assert np.array_equal(got, want), (scale, mode)
    # the streamed path: pinned buffers, two streams, batches, a change of shape mid-stream
    from iqlut_gpu import upscale_frames

    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(5)]
    frames += [rng.integers(0, 256, (17, 23, 3), dtype=np.uint8) for _ in range(3)]
    for mode in ("interp", "expanded"):
        got = list(upscale_frames(frames, 2, backend="cuda", batch=3, mode=mode))
        want = [upscale(f, 2, backend="cpu") for f in frames]
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), mode
    print("sanitizer workload: ok")
    return 0


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all steps")
    ap.add_argument("--out", type=Path, default=None, help="also copy results here (default $OUT)")
    ap.add_argument("--child", choices=("bench", "sanitizer", "ncu"), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "bench":
        return bench_child(args.child_out)
    if args.child == "sanitizer":
        return sanitizer_child()
    if args.child == "ncu":
        return ncu_child()

    start = time.perf_counter()
    left = lambda: args.budget - (time.perf_counter() - start)  # noqa: E731
    slug, info = device_name()
    out_dir = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    logs: dict = {}
    setup_log: list = []
    report = {"device": slug, "machine": {**info, "python": platform.python_version(),
                                          "host": platform.node()},
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "steps": {}}
    tmp = Path(tempfile.mkdtemp(prefix="iqlut_gpu_check_"))
    links = link_subpackages()
    try:
        return run_checks(args, report, logs, setup_log, tmp, slug, info, out_dir, start, left,
                          links)
    finally:
        for link in links:
            link.unlink()


def run_checks(args, report, logs, setup_log, tmp, slug, info, out_dir, start, left,
               links) -> int:
    wheels_site, wheel_note = install_wheels(args.wheels, tmp, setup_log)
    report["steps"]["setup"] = {"package": "the checkout" + (
        f" (linked {', '.join(str(p.relative_to(ROOT)) for p in links)})" if links else ""),
        "wheels": wheel_note}
    paths = [str(ROOT)] + ([str(wheels_site)] if wheels_site else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1")
    versions = subprocess.run(
        [sys.executable, "-c", "import json, importlib.metadata as m\n"
         "v = {}\nfor p in ('cupy-cuda13x', 'cupy-cuda12x', 'nvidia-cuda-nvrtc', 'torch', "
         "'numpy', 'numba', 'imageio-ffmpeg'):\n"
         "    try: v[p] = m.version(p)\n    except Exception: pass\n"
         "try:\n    import cupy; v['nvrtc'] = list(cupy.cuda.nvrtc.getVersion()); "
         "v['cupy_devices'] = cupy.cuda.runtime.getDeviceCount()\n"
         "except Exception as e: v['cupy_error'] = repr(e)\n"
         "from iqlut_gpu.kernels import cuda_backend\nv['probe'] = cuda_backend.probe()\n"
         "print(json.dumps(v))"], capture_output=True, text=True, env=env, cwd=ROOT)
    try:
        report["machine"]["packages"] = json.loads(versions.stdout.strip().splitlines()[-1])
    except Exception:
        report["machine"]["packages"] = {"error": versions.stderr[-2000:]}

    bench_json = tmp / "bench.json"
    report["steps"]["bench"] = run_step(
        "bench", [sys.executable, __file__, "--child", "bench", "--child-out", str(bench_json)],
        env, min(150, left() - 200), logs)
    report["bench"] = json.loads(bench_json.read_text()) if bench_json.exists() else []

    junit = tmp / "gpu_tests.xml"
    report["steps"]["gpu_tests"] = run_step(
        "gpu_tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                      "-rs", "--junitxml", str(junit), "tests"], env, min(200, left() - 110), logs)
    tail = logs["gpu_tests"].strip().splitlines()[-1:] or [""]
    report["steps"]["gpu_tests"]["summary"] = tail[0]

    if wheels_site is not None:
        vjson = tmp / "video_pipeline.json"
        report["steps"]["video"] = run_step(
            "video", [sys.executable, "-m", "bench.video_pipeline", "--backend", "cuda",
                      "--scale", "2", "--frames", "30", "--repeats", "1", "--out", str(vjson)],
            env, min(100, left() - 40), logs)
        if vjson.exists():
            report["video_pipeline"] = json.loads(vjson.read_text())
        pjson = tmp / "video_planes.json"
        report["steps"]["video_planes"] = run_step(
            "video_planes", [sys.executable, "-m", "bench.video_pipeline", "--backend", "cuda",
                             "--planes-ab", "--size", "1280x720", "--frames", "60", "--rounds",
                             "2", "--preset", "ultrafast", "--out", str(pjson)],
            env, min(120, left() - 120), logs)
        if pjson.exists():
            report["video_planes"] = json.loads(pjson.read_text())
    else:
        report["steps"]["video"] = {"skipped": f"imageio-ffmpeg missing: {wheel_note}"}

    sanitizer = shutil.which("compute-sanitizer")
    for tool in ("memcheck", "racecheck", "initcheck"):
        if sanitizer is None:
            report["steps"][f"sanitizer_{tool}"] = {"skipped": "compute-sanitizer not on PATH"}
            continue
        if left() < 25:
            report["steps"][f"sanitizer_{tool}"] = {"skipped": "out of time"}
            continue
        step = run_step(f"sanitizer_{tool}", [sanitizer, "--tool", tool, "--error-exitcode", "3",
                                               sys.executable, __file__, "--child", "sanitizer"],
                        env, min(60, left() - 10), logs)
        summary = [ln for ln in logs[f"sanitizer_{tool}"].splitlines() if "ERROR SUMMARY" in ln
                   or "RACECHECK SUMMARY" in ln]
        step["summary"] = summary[-1] if summary else None
        report["steps"][f"sanitizer_{tool}"] = step

    ncu = shutil.which("ncu")
    ncu_csv = tmp / "ncu.csv"
    if ncu is None:
        report["steps"]["ncu"] = {"skipped": "ncu not on PATH"}
    elif left() < 30:
        report["steps"]["ncu"] = {"skipped": "out of time"}
    else:
        report["steps"]["ncu"] = run_step(
            "ncu", [ncu, "--clock-control", "none", "--profile-from-start", "off",
                    "--section", "SpeedOfLight", "--section", "Occupancy", "--section",
                    "LaunchStats", "--csv", "--page", "details", "--log-file", str(ncu_csv),
                    sys.executable, __file__, "--child", "ncu"], env, min(120, left() - 5), logs)
        if ncu_csv.exists():
            try:
                report["ncu"] = ncu_summary(ncu_csv)
            except Exception as e:  # keep the raw file either way
                report["ncu"] = {"error": f"{type(e).__name__}: {e}"}

    report["seconds"] = round(time.perf_counter() - start, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result_path = RESULTS / f"{slug}.json"
    result_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    log_path = RESULTS / f"gpu_check_{slug}.log"
    log_path.write_text("\n\n".join(setup_log + [f"===== {k}\n{v}" for k, v in logs.items()]))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(result_path, out_dir / result_path.name)
        shutil.copy(log_path, out_dir / log_path.name)
        for name in ("video_pipeline", "video_planes"):
            if (tmp / f"{name}.json").exists():
                shutil.copy(tmp / f"{name}.json", out_dir / f"{name}_{slug}.json")
        if ncu_csv.exists():
            shutil.copy(ncu_csv, out_dir / f"ncu_{slug}.csv")

    print(f"\nGPU check on {info.get('gpu', slug)} in {report['seconds']} s -> {result_path}")
    for name, step in report["steps"].items():
        print(f"  {name:<18} {json.dumps(step)[:150]}")
    for rec in report["bench"]:
        if "error" in rec:
            print(f"  {rec['case']:<58} ERROR {rec['error'][:80]}")
        else:
            chk = rec.get("check") or {}
            print(f"  {rec['case']:<58} {rec['frames_per_s']:>9.2f} frames/s  "
                  f"{rec['median_s'] * 1000:>8.2f} ms  mismatches {chk.get('mismatches', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
