"""The benchmark runner: ``python -m bench [--quick] [--filter TEXT] [--list] ...``.

For each selected case of ``bench.registry``: set up (inputs, tables), warm up (one call:
Numba compiles or loads its cache, CUDA compiles), then time repeats until at least
``--repeats`` runs and ``--min-time`` seconds (heavy CPU cases stop at 3 runs), each
synchronised (CUDA events on a GPU, wall clock otherwise; process CPU time is recorded
too, since this machine may be shared). Reported: median, min, max and the
interquartile spread, output megapixels per second, the error against the NumPy
reference on a crop, the work accounting and the achieved fraction of the measured
machine limits. Cases that cannot run here are recorded as skipped with the reason.

Writes ``bench/results/<machine>_<quick|full>.json`` and a PNG plot of throughput
against size (and time against batch) next to it, and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from . import accounting, end_to_end, machine, peers, registry, timing

RESULTS = Path(__file__).resolve().parent / "results"


def _time_case(case, run, repeats: int, min_time: float, max_runs: int) -> dict:
    run.run()
    run.sync()  # warm-up: compile / load caches, first-touch allocations
    walls, cpus = [], []
    timer = None
    if run.device_timer == "cupy":
        import cupy

        timer = (cupy.cuda.Event, lambda a, b: cupy.cuda.get_elapsed_time(a, b) / 1e3)
    elif run.device_timer == "torch":
        import torch

        timer = (lambda: torch.cuda.Event(enable_timing=True), lambda a, b: a.elapsed_time(b) / 1e3)
    limit = 3 if case.heavy else max_runs
    t_start = time.perf_counter()
    out = None
    while len(walls) < limit and (len(walls) < repeats or time.perf_counter() - t_start < min_time):
        c0 = time.process_time()
        if timer is not None:
            start, stop = timer[0](), timer[0]()
            # events on the stream the work is queued on (None: the current stream)
            start.record(run.stream) if run.stream is not None else start.record()
            out = run.run()
            stop.record(run.stream) if run.stream is not None else stop.record()
            stop.synchronize()
            walls.append(timer[1](start, stop))
        else:
            t0 = time.perf_counter()
            out = run.run()
            run.sync()
            walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        if case.heavy and len(walls) >= 1 and walls[0] > 20:
            break
    q = np.percentile(walls, [25, 75]) if len(walls) > 1 else (walls[0], walls[0])
    med = statistics.median(walls)
    res = {"runs": len(walls), "median_s": med, "min_s": min(walls), "max_s": max(walls),
           "iqr_s": float(q[1] - q[0]), "spread_pct": round(100 * (max(walls) - min(walls)) / med, 1),
           "cpu_median_s": statistics.median(cpus),
           "out_mpix_per_s": case.out_pixels / med / 1e6,
           "in_mpix_per_s": case.batch * case.size[0] * case.size[1] / med / 1e6}
    try:
        res["error"] = run.check(out)
    except Exception as e:  # a failing check is a result, not a crash
        res["error"] = {"check_failed": f"{type(e).__name__}: {e}"}
    return res


def _work(case, res, limits) -> dict | None:
    """Work per pixel and achieved fraction of the measured limits for kernel cases."""
    if case.backend not in ("cpu", "cuda"):
        return None
    model = registry.bench_model(case.scale)
    if case.layer is None:
        w = accounting.model_work(model, case.mode)["per_lr_pixel"]
    else:
        n = case.layer
        last = n == len(model.layers) - 1
        w = accounting.layer_work(model.layers[n], case.mode, case.scale if last else None,
                                  model.upsample if last else None)
    lr_px = case.planes * case.size[0] * case.size[1]
    t = res["median_s"]
    out = {"per_lr_pixel_per_plane": w,
           "table_entries_per_s": w["table_entries"] * lr_px / t,
           "macs_per_s": w["macs"] * lr_px / t,
           "dram_bytes_per_s": w["dram_bytes"] * lr_px / t}
    if case.backend == "cpu" and limits.get("cpu"):
        import numba

        # per core: work divided by the process CPU time (all threads), which stays honest
        # when the machine is shared and the threads do not all get a core
        cpu_s = max(res["cpu_median_s"], 1e-9)
        lim = limits["cpu"]
        out["threads"] = numba.get_num_threads()
        out["cpu_lane_adds_per_core_s"] = w["cpu_lane_adds"] * lr_px / cpu_s
        out["fraction_of_l1_table_add_rate_per_core"] = round(
            out["cpu_lane_adds_per_core_s"] / (lim["l1_table_add_gops"] * 1e9), 3)
        out["fraction_of_int32_add_rate_per_core"] = round(
            w["cpu_lane_adds"] * lr_px / cpu_s / (lim["int32_add_gops"] * 1e9), 3)
        out["fraction_of_copy_bandwidth_per_core"] = round(
            w["dram_bytes"] * lr_px / cpu_s / (lim["copy_gbs"] * 1e9), 4)
    if case.backend == "cuda" and limits.get("gpu"):
        out["fraction_of_d2d_copy_bandwidth"] = round(out["dram_bytes_per_s"] / (limits["gpu"]["d2d_copy_gbs"] * 1e9), 4)
    return out


def _find(results, name):
    for r in results:
        if r["name"] == name and "median_s" in r:
            return r
    return None


def goals(results) -> dict:
    """The issue's goals, as ratios within this run (x4, 320x180 -> 1280x720 RGB)."""
    size = "{}x{}".format(*registry.GOAL_SIZE)
    torch_cpu = _find(results, f"baseline/torch-cpu/x4/{size}/b1")
    cv = _find(results, f"baseline/opencv/x4/{size}/b1")
    ref = _find(results, f"baseline/reference/x4/{size}/b1")
    out = {}
    for mode in registry.MODES:
        nb = _find(results, f"model/cpu/{mode}/x4/{size}/b1")
        if nb is None:
            continue
        g = {"numba_ms": round(nb["median_s"] * 1e3, 2)}
        if torch_cpu:
            g["torch_cpu_ms"] = round(torch_cpu["median_s"] * 1e3, 1)
            g["speedup_vs_torch_cpu"] = round(torch_cpu["median_s"] / nb["median_s"], 2)
            g["goal_at_least_10x_faster_than_torch_cpu"] = g["speedup_vs_torch_cpu"] >= 10
        if cv:
            g["opencv_bicubic_ms"] = round(cv["median_s"] * 1e3, 3)
            g["time_vs_opencv"] = round(nb["median_s"] / cv["median_s"], 1)
            g["goal_at_most_60x_opencv"] = g["time_vs_opencv"] <= 60
        if ref:
            g["reference_ms"] = round(ref["median_s"] * 1e3, 1)
            g["speedup_vs_reference"] = round(ref["median_s"] / nb["median_s"], 1)
        # the same ratios on process CPU time (all threads): the work each one costs, less
        # sensitive to other load when the machine is shared
        if nb.get("cpu_median_s"):
            if torch_cpu and torch_cpu.get("cpu_median_s"):
                g["cpu_time_speedup_vs_torch_cpu"] = round(torch_cpu["cpu_median_s"] / nb["cpu_median_s"], 2)
            if cv and cv.get("cpu_median_s"):
                g["cpu_time_vs_opencv"] = round(nb["cpu_median_s"] / cv["cpu_median_s"], 1)
        out[mode] = g
    return out


def _goal_case_names() -> dict:
    size = "{}x{}".format(*registry.GOAL_SIZE)
    names = {f"numba_{m}": f"model/cpu/{m}/x4/{size}/b1" for m in registry.MODES}
    names["torch_cpu"] = f"baseline/torch-cpu/x4/{size}/b1"
    names["opencv"] = f"baseline/opencv/x4/{size}/b1"
    return names


def paired_goal_ratios(rounds: int, setup=None, log=lambda m: None) -> dict | None:
    """The goal ratios measured interleaved: in each round every contender (Numba in each
    mode, the PyTorch CPU forward, OpenCV) runs once after the other, in an order rotated
    from round to round, and the ratios are taken within the round. Load that comes and
    goes on a shared machine then hits both sides of a ratio alike; the separate cases'
    medians are minutes apart. OpenCV (about a millisecond) is timed as the median of 21
    calls per round, Numba as the median of 3. Returns None when a contender cannot run."""
    setup = setup or registry.setup
    names = _goal_case_names()
    by_name = {c.name: c for c in registry.registry()}
    runs = {}
    for key, name in names.items():
        try:
            runs[key] = setup(by_name[name])
        except registry.Skip as e:
            log(f"paired goal ratios: {name} skipped ({e})")
    if "torch_cpu" not in runs or "opencv" not in runs or len(runs) < 3:
        return None
    calls = {k: 21 if k == "opencv" else (3 if k.startswith("numba") else 1) for k in runs}
    keys = list(runs)
    per_round = timing.interleaved_rounds(runs, rounds, calls)

    def stats(vals):
        return {"median": round(statistics.median(vals), 2), "min": round(min(vals), 2),
                "max": round(max(vals), 2)}

    out = {"rounds": rounds, "method": "interleaved rounds, order rotated, ratios within each round",
           "median_ms": {k: round(statistics.median(t[k] for t in per_round) * 1e3, 3) for k in keys}}
    for k in keys:
        if not k.startswith("numba_"):
            continue
        vs_torch = [t["torch_cpu"] / t[k] for t in per_round]
        vs_cv = [t[k] / t["opencv"] for t in per_round]
        out[k[len("numba_"):]] = {
            "speedup_vs_torch_cpu": stats(vs_torch), "time_vs_opencv": stats(vs_cv),
            "goal_at_least_10x_faster_than_torch_cpu": statistics.median(vs_torch) >= 10,
            "goal_at_most_60x_opencv": statistics.median(vs_cv) <= 60}
    return out


def scaling(results) -> dict:
    """Time per input pixel over sizes >= 256x256 for each backend/mode (x4, batch 1), and
    time per frame over batch sizes. Linear within 20%: max/min of ns per pixel <= 1.2."""
    out = {}
    for backend in ("cpu", "cuda"):
        for mode in registry.MODES:
            pts = []
            for r in results:
                c = r.get("case", {})
                if (c.get("backend") == backend and c.get("mode") == mode and c.get("scale") == 4
                        and c.get("batch") == 1 and c.get("layer") is None
                        and c.get("group") in ("size", "model") and "median_s" in r):
                    W, H = c["size"]
                    pts.append((W * H, r["median_s"], r.get("cpu_median_s")))
            pts.sort()
            big = [p for p in pts if p[0] >= 256 * 256]
            entry = {"ns_per_plane_pixel_by_input_pixels": {str(px): round(t / px / 3 * 1e9, 2) for px, t, _ in pts}}
            if len(big) >= 2:
                per = [t / px for px, t, _ in big]
                entry["max_over_min_ns_per_pixel_from_256x256"] = round(max(per) / min(per), 3)
                entry["linear_within_20pct"] = max(per) / min(per) <= 1.2
                if all(cpu for _, _, cpu in big):
                    # the same on process CPU time: less sensitive to other load on a shared machine
                    cper = [cpu / px for px, _, cpu in big]
                    entry["cpu_time_max_over_min_from_256x256"] = round(max(cper) / min(cper), 3)
                    entry["cpu_time_linear_within_20pct"] = max(cper) / min(cper) <= 1.2
            bat = sorted((r["case"]["batch"], r["median_s"]) for r in results
                         if r.get("case", {}).get("backend") == backend
                         and r["case"].get("mode") == mode and r["case"].get("layer") is None
                         and r["case"].get("group") in ("batch", "model") and r["case"].get("scale") == 4
                         and tuple(r["case"]["size"]) == registry.GOAL_SIZE and "median_s" in r)
            if bat:
                entry["ms_per_frame_by_batch"] = {str(b): round(t / b * 1e3, 2) for b, t in bat}
            if pts or bat:
                out[f"{backend}/{mode}"] = entry
    return out


def _case_dict(case) -> dict:
    return {"group": case.group, "backend": case.backend, "mode": case.mode, "scale": case.scale,
            "size": list(case.size), "batch": case.batch, "layer": case.layer,
            "planes": case.planes, "out_pixels": case.out_pixels}



def _panel(ax, series: dict, title: str, xlabel: str, ylabel: str, xbase: int) -> None:
    """One log-log panel: a line per label through its sorted (x, y) points."""
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", label=label)
    ax.set_xscale("log", base=xbase)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=8)

def plot(results, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    series: dict = {}
    for r in results:
        c = r.get("case", {})
        if "median_s" not in r or c.get("scale") != 4 or c.get("batch") != 1 or c.get("layer") is not None:
            continue
        if c["group"] not in ("size", "model", "baseline"):
            continue
        label = c["backend"] + (f" {c['mode']}" if c.get("mode") else "")
        W, H = c["size"]
        series.setdefault(label, []).append((W * H, r["out_mpix_per_s"]))
    _panel(ax1, series, "throughput vs size", "input pixels per frame (x4, RGB, batch 1)",
           "output megapixels / s", xbase=10)
    bseries: dict = {}
    for r in results:
        c = r.get("case", {})
        if ("median_s" not in r or c.get("layer") is not None or c.get("scale") != 4
                or tuple(c.get("size", ())) != registry.GOAL_SIZE or c["group"] not in ("batch", "model", "baseline")):
            continue
        if c["backend"] in ("reference",) or c["backend"].startswith("torch"):
            continue
        label = c["backend"] + (f" {c['mode']}" if c.get("mode") else "")
        bseries.setdefault(label, []).append((c["batch"], r["median_s"] / c["batch"] * 1e3))
    _panel(ax2, bseries, "time per frame vs batch", "batch (RGB frames, 320x180 -> 1280x720)",
           "ms per frame", xbase=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(results) -> str:
    lines = [f"{'case':58s} {'median ms':>10s} {'spread%':>8s} {'out MP/s':>9s} {'err':>5s}"]
    for r in results:
        if "median_s" in r:
            e = r.get("error") or {}
            err = str(e.get("max_abs_err", "-")) if isinstance(e, dict) else "-"
            lines.append(f"{r['name']:58s} {r['median_s'] * 1e3:10.2f} {r['spread_pct']:8.1f} "
                         f"{r['out_mpix_per_s']:9.2f} {err:>5s}")
        else:
            lines.append(f"{r['name']:58s} {'skipped' if 'skipped' in r else 'FAILED':>10s}  "
                         f"{(r.get('skipped') or r.get('failed', ''))[:70]}")
    return "\n".join(lines)


def select(cases, quick: bool, filters, groups, no_gpu: bool):
    out = []
    for c in cases:
        if quick and not c.quick:
            continue
        if filters and not all(f in c.name for f in filters):
            continue
        if groups and c.group not in groups:
            continue
        if no_gpu and c.device == "gpu":
            continue
        out.append(c)
    return out


GROUPS = ("model", "layer", "size", "batch", "baseline")


def build_parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    """The benchmark's options (``python -m bench``, and ``iqlut bench``, which hands its
    command line over to ``main``)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the quick subset (about a minute)")
    p.add_argument("--filter", action="append", default=[], metavar="TEXT",
                   help="only cases whose name contains TEXT (repeatable: all must match)")
    p.add_argument("--group", action="append", default=[], choices=GROUPS,
                   help="only cases of this group (repeatable)")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("--repeats", type=int, default=5, help="minimum timed runs per case (default 5)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="keep repeating until this many seconds per case (default 1)")
    p.add_argument("--max-runs", type=int, default=50, help="at most this many timed runs per case")
    p.add_argument("--rounds", type=int, default=7,
                   help="interleaved rounds for the goal ratios (Numba vs PyTorch CPU vs OpenCV, "
                        "x4 320x180) when those cases are selected; 0: off (default 7)")
    p.add_argument("--no-gpu", action="store_true", help="skip GPU cases without probing")
    p.add_argument("--no-limits", action="store_true", help="skip the machine-limit microbenchmarks")
    p.add_argument("--threads", type=int, help="Numba threads (default: Numba's default)")
    p.add_argument("--peers", type=Path, default=peers.default_dir(), metavar="DIR",
                   help="the peer networks' graphs (ESPCN_xN.pb, FSRCNN_xN.pb, FSRCNN-small_xN.pb) "
                   "timed beside iqlut in interleaved rounds (bench/peers.py; default: the "
                   "shared copy beside the checkout, if present)")
    p.add_argument("--no-peers", action="store_true", help="skip the peer rounds")
    p.add_argument("--no-e2e", action="store_true",
                   help="skip the end-to-end measure (iqlut upscale of a 1080p photo, x4, to PNG)")
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/<machine>_<quick|full>.json)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    return p


def main(argv=None, prog: str = "python -m bench") -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run; ``prog`` names the command in
    the help and in usage errors."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(build_parser(prog).parse_args(argv), argv)


def run(args, argv) -> int:
    """Run the selected cases (``args`` as parsed by ``build_parser``); returns the exit code."""
    cases = select(registry.registry(), args.quick, args.filter, args.group, args.no_gpu)
    if args.list:
        for c in cases:
            print(c.name + ("  [quick]" if c.quick else ""))
        print(f"{len(cases)} cases", file=sys.stderr)
        return 0
    if not cases:
        print("bench: no case matches the selection", file=sys.stderr)
        return 1
    if args.threads:
        import numba

        numba.set_num_threads(args.threads)
    t_all = time.perf_counter()
    info = machine.describe()
    limits = {}
    if not args.no_limits:
        limits["cpu"] = machine.cpu_limits(quick=args.quick)
        limits["gpu"] = machine.gpu_limits()
    gpu_reason = info.get("gpu_unavailable")
    results = []
    selected = {c.name for c in cases}
    for i, case in enumerate(cases):
        entry = {"name": case.name, "case": _case_dict(case)}
        print(f"[{i + 1}/{len(cases)}] {case.name} ...", end=" ", file=sys.stderr, flush=True)
        try:
            if case.device == "gpu" and (args.no_gpu or gpu_reason) and case.backend == "cuda":
                raise registry.Skip(gpu_reason or "--no-gpu")
            run = registry.setup(case)
            entry.update(_time_case(case, run, args.repeats, args.min_time, args.max_runs))
            entry["notes"] = run.notes
            w = _work(case, entry, limits)
            if w:
                entry["work"] = w
            print(f"{entry['median_s'] * 1e3:.2f} ms", file=sys.stderr)
        except registry.Skip as e:
            entry["skipped"] = str(e)
            print(f"skipped: {e}", file=sys.stderr)
        except Exception as e:
            entry["failed"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc(limit=5)
            print(f"FAILED: {e}", file=sys.stderr)
        results.append(entry)
    goal_summary = goals(results)
    if args.rounds > 0 and selected & set(_goal_case_names().values()):
        print(f"paired goal ratios: {args.rounds} interleaved rounds ...", file=sys.stderr, flush=True)
        try:
            paired = paired_goal_ratios(args.rounds, log=lambda m: print(m, file=sys.stderr))
        except Exception as e:  # the cases' results are still written
            paired = {"failed": f"{type(e).__name__}: {e}"}
            print(f"paired goal ratios FAILED: {e}", file=sys.stderr)
        if paired is not None:
            goal_summary["paired"] = paired
    whole_suite = not (args.filter or args.group)
    peer_runs, e2e = [], None
    if whole_suite and not args.no_peers and args.rounds > 0:
        for scale in (4,) if args.quick else registry.SCALES:
            print(f"peers x{scale}: {args.rounds} interleaved rounds ...", file=sys.stderr, flush=True)
            peer_runs.append(peers.speed(scale, args.peers, args.rounds,
                                         log=lambda m: print(m, file=sys.stderr)))
        goal_summary["peers"] = {f"x{r['scale']}": r.get("goals", {}) for r in peer_runs}
    if whole_suite and not args.no_e2e and not args.quick:
        print("end to end: iqlut upscale 1920x1080 x4 to PNG ...", file=sys.stderr, flush=True)
        e2e = end_to_end.measure(rounds=3, log=lambda m: print(m, file=sys.stderr))
        goal_summary["end_to_end"] = {"single_over_kernels": e2e["over_kernels"]["single"],
                                      "goal_at_most_1.5x": e2e["goal_single_at_most_1.5x_kernels"]}
    doc = {
        "kind": "iqlut-bench", "version": 1,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(argv),
        "quick": args.quick, "machine": info, "limits": limits,
        "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "numba_threading_layer": _threading_layer(),
        "wall_s": round(time.perf_counter() - t_all, 1),
        "goals": goal_summary, "scaling": scaling(results),
        "work_per_model": {f"x{s}/{m}": accounting.model_work(registry.bench_model(s), m)
                           for s in registry.SCALES for m in registry.MODES},
        "peers": peer_runs, "end_to_end": e2e,
        "results": results,
    }
    tag = machine.machine_tag(info)
    path = args.out or RESULTS / f"{tag}_{'quick' if args.quick else 'full'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default))
    os.replace(tmp, path)
    print(_table(results))
    print("goals:", json.dumps(doc["goals"], indent=1))
    print("scaling:", json.dumps(doc["scaling"], indent=1))
    for r in peer_runs:
        print(f"peers x{r['scale']} ({r['input']} in), median ms: "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["median_ms"].items()))
    print(f"wrote {path}")
    if not args.no_plot:
        png = path.with_suffix(".png")
        title = (f"iqlut bench on {info['cpu_model']} ({info['cpu_affinity']} cores"
                 + (f", {info['gpu']['name']}" if info.get("gpu") else ", no GPU")
                 + f"), {doc['created_utc']}, load {info['loadavg_at_start'][0]:.1f}")
        plot(results, png, title)
        print(f"wrote {png}")
    return 0


def _threading_layer():
    try:
        import numba

        return numba.threading_layer()
    except Exception:  # no parallel Numba function ran in this process
        return None


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
