"""Smoke tests of the benchmark registry and runner (bench/ in the checkout): seconds, not speed."""

import json
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pytest
import cases

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import registry, runner, timing  # noqa: E402
from iqlut_gpu.planes import to_planes  # noqa: E402


def test_registry_covers_the_issue():
    cases = registry.registry()
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    groups = {c.group for c in cases}
    assert groups == {"model", "layer", "size", "batch", "baseline"}
    kernels = [c for c in cases if c.backend in ("cpu", "cuda")]
    for backend in ("cpu", "cuda"):
        for mode in ("interp", "expanded"):
            mine = [c for c in kernels if c.backend == backend and c.mode == mode]
            assert {c.scale for c in mine if c.group == "model"} == {2, 3, 4}
            assert {c.layer for c in mine if c.group == "layer"} == {0, 1, 2, 3}
            sizes = {c.size for c in mine if c.group in ("size", "model")}
            assert (64, 64) in sizes and (3840, 2160) in sizes and (320, 180) in sizes
            assert len({c.batch for c in mine if c.group in ("batch", "model")}) >= 4
    baselines = {c.backend for c in cases if c.group == "baseline"}
    assert baselines == {"opencv", "torch-cpu", "torch-cuda", "reference"}
    quick = {c.name for c in cases if c.quick}
    for name in ("model/cpu/interp/x4/320x180/b1", "model/cpu/expanded/x4/320x180/b1",
                 "baseline/opencv/x4/320x180/b1", "baseline/torch-cpu/x4/320x180/b1"):
        assert name in quick, name


def test_bench_model_has_default_architecture():
    from iqlut_gpu.model import DEFAULT_ARCH

    for scale in (2, 3, 4):
        m = registry.bench_model(scale)
        assert len(m.layers) >= len(DEFAULT_ARCH) and m.layers[0].k == DEFAULT_ARCH[0]["k"]
        assert m.layers[-1].c_out == scale * scale
        assert any(np.any(layer.table != 0) for layer in m.layers)


def test_runner_writes_valid_json_and_plot(tmp_path):
    try:
        import matplotlib  # noqa: F401 - the bench extra; the test extras may lack it
        plot = []
    except ImportError:
        plot = ["--no-plot"]
    out = tmp_path / "r.json"
    rc = runner.main(["--filter", "x4/64x64/b1", "--filter", "opencv", "--repeats", "2",
                      "--min-time", "0", "--no-limits", "--no-gpu", "--out", str(out), *plot])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "iqlut-bench" and doc["machine"]["cpu_model"]
    assert doc["machine"]["versions"]["numpy"] == np.__version__
    ran = [r for r in doc["results"] if "median_s" in r]
    assert ran, doc["results"]
    for r in ran:
        assert r["runs"] >= 2 and 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["out_mpix_per_s"] > 0
    if not plot:
        assert out.with_suffix(".png").stat().st_size > 1000


def test_runner_kernel_case_checks_against_reference(tmp_path):
    out = tmp_path / "k.json"
    rc = runner.main(["--filter", "size/cpu/expanded/x4/64x64", "--repeats", "1", "--min-time", "0",
                      "--no-limits", "--no-gpu", "--no-plot", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    (r,) = doc["results"]
    assert r["error"]["max_abs_err"] == 0 and r["error"]["checked_values"] > 0, r["error"]
    w = r["work"]["per_lr_pixel_per_plane"]
    assert w["table_entries"] > 0 and w["macs"] >= w["table_entries"]


def test_goal_and_scaling_summaries_from_results():
    def res(name, group, backend, mode, size, t, batch=1):
        return {"name": name, "median_s": t,
                "case": {"group": group, "backend": backend, "mode": mode, "scale": 4,
                         "size": list(size), "batch": batch, "layer": None}}

    results = [res("model/cpu/interp/x4/320x180/b1", "model", "cpu", "interp", (320, 180), 0.05),
               res("baseline/torch-cpu/x4/320x180/b1", "baseline", "torch-cpu", None, (320, 180), 1.0),
               res("baseline/opencv/x4/320x180/b1", "baseline", "opencv", None, (320, 180), 0.001),
               res("size/cpu/interp/x4/256x256/b1", "size", "cpu", "interp", (256, 256), 0.05 * 65536 / 57600),
               res("size/cpu/interp/x4/640x360/b1", "size", "cpu", "interp", (640, 360), 0.2 * 1.3)]
    g = runner.goals(results)["interp"]
    assert g["speedup_vs_torch_cpu"] == 20 and g["goal_at_least_10x_faster_than_torch_cpu"]
    assert g["time_vs_opencv"] == 50 and g["goal_at_most_60x_opencv"]
    s = runner.scaling(results)["cpu/interp"]
    assert s["max_over_min_ns_per_pixel_from_256x256"] == pytest.approx(1.3, abs=0.01)
    assert s["linear_within_20pct"] is False


def test_paired_goal_ratios_are_taken_within_rounds(monkeypatch):
    # stand-in runs on a fake clock: Numba 20 ms, torch 400 ms, OpenCV 0.5 ms
    from bench import registry

    clock = {"t": 0.0}
    base = {"cpu": 0.020, "torch-cpu": 0.400, "opencv": 0.0005}
    first_in_round = []

    def fake_setup(case):
        if case.backend == "cpu" and case.mode == "interp":
            raise registry.Skip("only expanded in this test")

        def run():
            clock["t"] += base[case.backend]

        return registry.Run(run)

    real_median = timing.median_time

    def median_time(run, n, clock=None):
        first_in_round.append(n)
        return real_median(run, n, clock)

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(timing, "median_time", median_time)
    out = runner.paired_goal_ratios(3, setup=fake_setup)
    g = out["expanded"]
    assert g["speedup_vs_torch_cpu"]["median"] == pytest.approx(20.0)
    assert g["time_vs_opencv"]["median"] == pytest.approx(40.0)
    assert g["goal_at_least_10x_faster_than_torch_cpu"] and g["goal_at_most_60x_opencv"]
    assert "interp" not in out and out["rounds"] == 3
    # the order rotates: each round starts with a different contender
    assert [first_in_round[0], first_in_round[3], first_in_round[6]] == [3, 1, 21]


def test_cli_bench_lists_cases_from_checkout():
    p = subprocess.run([sys.executable, "-m", "iqlut_gpu", "bench", "--list", "--quick"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "model/cpu/interp/x4/320x180/b1" in p.stdout


def test_cli_bench_outside_checkout_says_how(tmp_path):
    from iqlut_gpu.cli import bench_cmd

    if bench_cmd.find_checkout() is not None and (Path(bench_cmd.__file__).resolve().parents[2] == ROOT):
        # editable install: the package itself sits in the checkout, so it is always found
        assert bench_cmd.find_checkout() == ROOT
        return
    p = subprocess.run([sys.executable, "-m", "iqlut_gpu", "bench", "--list"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 1 and "checkout" in p.stderr and "Traceback" not in p.stderr


def test_cli_bench_hands_its_command_line_to_the_runner(capsys, monkeypatch):
    """`iqlut bench` parses no option itself: its help, usage errors and options are the
    runner's (bench/runner.py), the same as `python -m bench`."""
    from iqlut_gpu import cli

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: iqlut bench")
    assert "--filter TEXT" in out and "--no-plot" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--group", "nope"])
    assert e.value.code == 2 and "iqlut bench: error: argument --group" in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(runner, "run", lambda args, argv: seen.update(args=args, argv=argv) or 0)
    assert cli.main(["bench", "--quick", "--filter", "x4", "--no-plot"]) == 0
    assert seen["argv"] == ["--quick", "--filter", "x4", "--no-plot"]
    assert seen["args"].quick and seen["args"].filter == ["x4"] and seen["args"].no_plot


def test_kernel_ab_checks_bytes_and_times_both():
    from bench import kernel_ab

    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    from iqlut_gpu import default_model
    from iqlut_gpu.kernels import numba_cpu

    old = kernel_ab.load_revision("HEAD")
    assert old is not numba_cpu and hasattr(old, "run_planes")
    planes = kernel_ab.photo_planes(24, 20)
    r = kernel_ab.compare(old, numba_cpu, default_model(2), planes, "expanded", 2, time.perf_counter)
    assert r["a_s"] > 0 and r["b_s"] > 0 and r["b_speedup"] == r["a_s"] / r["b_s"]

    class Wrong:
        @staticmethod
        def run_planes(prepared, planes, mode):
            return np.zeros((planes.shape[0], planes.shape[1] * 2, planes.shape[2] * 2), np.uint8)

    with pytest.raises(AssertionError, match="disagree"):
        kernel_ab.compare(old, Wrong, default_model(2), planes, "expanded", 1, time.perf_counter)
    with pytest.raises(SystemExit, match="cannot read"):
        kernel_ab.load_revision("no-such-revision-xyz")


def test_kernel_floor_measures_every_layer():
    from bench import kernel_floor

    if not kernel_floor._has_avx2():
        pytest.skip("the floor loops are x86-64 AVX2 assembly")
    floor = kernel_floor.Floor(n=1000)
    res = kernel_floor.measure(4, "expanded", (24, 16), 1, floor)
    fl = res["floor"]
    assert fl["clock_ghz"] > 0.3 and 0 < fl["reg_cycles"] < 50 and 0 < fl["mem_cycles"] < 50
    kres = res["kernels"]["working tree"]
    assert [row["layer"] for row in kres["layers"]] == [0, 1, 2, 3, 4]
    for row in kres["layers"]:
        assert row["row_reads_per_px"] >= row["useful_per_px"] > 0 and row["cycles_per_read"] > 0
    assert kres["total"]["row_reads_per_px"] == sum(r["row_reads_per_px"] for r in kres["layers"])


def test_model_check_holds_for_a_self_ensemble():
    """The benchmark's correctness check runs the reference as the model runs (all passes)."""
    from iqlut_gpu import backends
    from iqlut_gpu.model import default_model

    model = default_model(2).with_ensemble(4)
    planes = to_planes(registry.bench_frames((48, 40), 1))[0]
    check = registry._model_crop_check(model, planes, lambda out: out, 2)
    assert check(backends.run_planes("cpu", model, planes))["max_abs_err"] == 0
    assert check(backends.run_planes("cpu", model.with_ensemble(1), planes))["max_abs_err"] > 0


def test_interleaved_rounds_rotate_the_order():
    """``timing.interleaved_rounds``, which ``bench.model_ab``, the peers and the goal ratios
    time with."""
    log, now = [], [0.0]
    cost = {"a": 3.0, "b": 5.0, "cv": 0.5}

    def clock():
        return now[0]

    def make(name):
        def run():
            log.append(name)
            now[0] += cost[name]
        return registry.Run(run)

    per_round = timing.interleaved_rounds({n: make(n) for n in cost}, 3, {"cv": 4}, clock)
    assert log[:3] == ["a", "b", "cv"]  # warm-up, once each
    rounds = log[3:]
    assert rounds == ["a", "b"] + ["cv"] * 4 + ["b"] + ["cv"] * 4 + ["a"] + ["cv"] * 4 + ["a", "b"]
    assert per_round == [{"a": 3.0, "b": 5.0, "cv": 0.5}] * 3


def test_model_ab_ratios_are_taken_within_rounds(monkeypatch):
    from bench import model_ab
    from iqlut_gpu import default_model

    raw = {"A": [1.0, 2.0, 4.0], "B": [1.5, 2.2, 6.0], "opencv": [0.1, 0.1, 0.2]}
    monkeypatch.setattr(timing, "interleaved_rounds", lambda runs, rounds, calls, clock:
                        [{k: v[i] for k, v in raw.items()} for i in range(rounds)])
    planes = to_planes(registry.bench_frames((16, 12), 1))[0]
    r = model_ab.compare({"A": default_model(2), "B": default_model(2)}, planes, "expanded", 3,
                         time.perf_counter, opencv_frame=registry.bench_frames((16, 12), 1)[0])
    assert r["models"]["A"]["time_vs_first"] == 1.0
    assert r["models"]["B"]["time_vs_first"] == round(2.2 / 2.0, 4)
    # per-round ratios 10, 20, 20 (A) and 15, 22, 30 (B): medians of ratios, not of times
    assert r["models"]["A"]["time_vs_opencv"] == {"median": 20.0, "min": 10.0, "max": 20.0}
    assert r["models"]["B"]["time_vs_opencv"] == {"median": 22.0, "min": 15.0, "max": 30.0}
    with pytest.raises(ValueError, match="one scale"):
        model_ab.compare({"A": default_model(2), "B": default_model(4)}, planes, "expanded", 1,
                         time.perf_counter, opencv_frame=planes[0])


def test_model_ab_command_runs_and_refuses_bad_models(tmp_path):
    from iqlut_gpu import default_model, save_model

    one_pass = tmp_path / "x2_one_pass.safetensors"
    save_model(default_model(2).with_ensemble(1), one_pass)
    cmd = [sys.executable, "-m", "bench.model_ab", "x2", str(one_pass), "--size", "24x16",
           "--repeats", "2", "--opencv", "--json"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert list(r["models"]) == ["x2", str(one_pass)] and r["size"] == [24, 16]
    for row in r["models"].values():
        assert row["median_ms"] > 0 and row["time_vs_opencv"]["median"] > 0
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    p = subprocess.run([sys.executable, "-m", "bench.model_ab", "x2", str(bad)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and p.stderr.startswith("model_ab: ") and "Traceback" not in p.stderr


def test_peers_skip_with_a_reason_and_run_beside_iqlut(tmp_path):
    """The peer networks (OpenCV dnn_superres) are contenders when their graphs are present;
    a missing or unreadable graph is a skip with the reason, not a failure."""
    from bench import peers

    with pytest.raises(registry.Skip, match="give --peers"):
        peers.load(None, "ESPCN", 4)
    with pytest.raises(registry.Skip, match="not found"):
        peers.load(tmp_path, "ESPCN", 4)
    (tmp_path / "ESPCN_x4.pb").write_bytes(b"not a graph")
    with pytest.raises(registry.Skip, match="cannot run|dnn_superres"):
        peers.load(tmp_path, "ESPCN", 4)
    shared = peers.default_dir()
    if shared is None:
        pytest.skip("no shared peer graphs beside the checkout")
    res = peers.speed(4, shared, rounds=1)
    assert {"iqlut-rgb", "iqlut-luma", "opencv-bicubic"} <= set(res["median_ms"])
    if "ESPCN" not in res["median_ms"]:
        pytest.skip(f"OpenCV here cannot run the shared graphs: {res}")
    assert res["time_vs_espcn"]["ESPCN"] == 1.0 and set(res["goals"]) == {
        "iqlut-luma <= 0.35x ESPCN", "iqlut-rgb <= 0.8x ESPCN"}
    out = peers.contenders(4, shared)["ESPCN"](np.zeros((6, 7, 3), np.uint8))
    assert out.shape == (24, 28, 3)


def test_peers_take_iqlut_as_an_ensemble_too():
    from bench import peers
    from iqlut_gpu import upscale

    fns = peers.contenders(2, None, ensembles=(2,))
    assert {"iqlut-rgb", "iqlut-luma", "iqlut-rgb-e2", "iqlut-luma-e2", "opencv-bicubic"} == set(fns)
    assert fns["iqlut-luma-e2"].model.ensemble == 2 and fns["iqlut-luma"].model.ensemble == 1
    img = np.random.default_rng(cases.SESSION_SEED).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    for color in ("rgb", "luma"):
        assert np.array_equal(fns[f"iqlut-{color}-e2"](img),
                              upscale(img, 2, ensemble=2, color=color, backend="cpu")), cases.SESSION_SEED


def test_end_to_end_measures_the_cli_beside_the_kernels():
    from bench import end_to_end

    res = end_to_end.measure(size=(24, 16), scale=2, folder=2, rounds=1, tiles=(8,))
    assert set(res["median_s"]) == {"kernels", "write", "single", "startup", "folder", "kernels_tile8"}
    assert all(v > 0 for v in res["median_s"].values())
    assert set(res["median_cpu_s"]) == set(res["median_s"])
    # the commands' CPU time is the children's: a Python start-up is never free
    assert res["median_cpu_s"]["startup"] > 0.05
    assert res["cpu_bound_over_kernels"] > 0
    assert set(res["over_kernels"]) == {"single", "folder"}
    assert set(res["tiles_over_kernels"]) == {"kernels_tile8"}  # 24x16 in 8-pixel tiles
    assert isinstance(res["work_over_kernels"], float)
    assert isinstance(res["goal_single_at_most_1.5x_kernels"], bool)
    assert res["max_rss_mb"]["commands"] > 10 and res["max_rss_mb"]["this_process"] > 10


def test_png_levels_times_every_level_and_pillow():
    from bench import png_levels
    from iqlut_gpu import png

    res = png_levels.measure(size=(96, 64), scale=2, rounds=1)
    keys = {f"ours {lv}" for lv in range(9)} | {"pillow 6", "pillow 1"}
    if png._isal is not None:
        keys |= {f"zlib-ng {lv}" for lv in png.ISAL_LEVEL}
    assert set(res["median_s"]) == keys == set(res["mb"]) == set(res["bytes"]) == set(res["over_default"])
    assert res["over_default"][f"ours {png.DEFAULT_LEVEL}"] == 1.0
    assert res["image"] == "192x128 RGB" and res["default_level"] == png.DEFAULT_LEVEL
    # stored is the largest file; every compressing level is smaller
    assert all(res["bytes"]["ours 0"] > v for k, v in res["bytes"].items() if k != "ours 0")
    assert res["bytes"]["ours 8"] < res["bytes"]["ours 1"]


def test_layer_inputs_are_the_hidden_layers_outputs():
    """bench.registry.layer_inputs (shared by the layer cases and kernel_floor) chains the
    hidden layers as the reference does; ``upto`` stops early."""
    from iqlut_gpu import default_model, reference
    from iqlut_gpu.backends import prepare

    model = default_model(4).with_ensemble(1)
    planes = np.random.default_rng(1).integers(0, 256, (2, 9, 13), dtype=np.uint8)
    xs = registry.layer_inputs(prepare(model), planes, "expanded")
    assert len(xs) == len(model.layers)
    want = planes[:, None]
    for n, x in enumerate(xs):
        assert np.array_equal(x, want), n
        if n < len(model.layers) - 1:
            want = np.stack([reference.hidden_layer(model.layers[n], w) for w in want])
    assert np.array_equal(registry._layer_inputs(model, 2, planes), xs[2])
    assert len(registry.layer_inputs(prepare(model), planes, upto=2)) == 3


def test_accounting_counts_the_lanes_the_kernels_add():
    """cpu_lane_adds is 8 lanes per row read: c_out <= 4 packs two pixels per read."""
    from bench.accounting import layer_work
    from iqlut_gpu.model import Layer

    def layer(c_out, k):
        return Layer(knots=np.zeros((8, 2), np.uint8), table=np.zeros((8, 2, k, k, c_out), np.int8),
                     bias=np.zeros(c_out, np.int32))

    assert layer_work(layer(4, 3), "expanded")["cpu_lane_adds"] == 4 * 8 * 3 * 4  # was 8 * 72
    assert layer_work(layer(8, 3), "expanded")["cpu_lane_adds"] == 8 * 72
    assert layer_work(layer(9, 3), "interp")["cpu_lane_adds"] == 16 * 72


def test_env_ab_runs_each_case_with_and_without_the_settings(tmp_path, monkeypatch):
    """bench.env_ab: each case as a new process on both sides, the settings only in the
    ``with`` side's environment (seen by a child), the names given removed from ``base``."""
    from bench import env_ab

    monkeypatch.setenv("IQLUT_ENVAB_PROBE", "outer")
    envs = env_ab.environments({"IQLUT_ENVAB_PROBE": "inner"})
    assert "IQLUT_ENVAB_PROBE" not in envs["base"] and envs["with"]["IQLUT_ENVAB_PROBE"] == "inner"
    assert envs["base"]["PATH"] == envs["with"]["PATH"]
    probe = [sys.executable, "-c", "import os; print(os.environ.get('IQLUT_ENVAB_PROBE', '-'))"]
    assert [subprocess.run(probe, env=envs[s], capture_output=True, text=True).stdout.strip()
            for s in ("base", "with")] == ["-", "inner"]
    with pytest.raises(Exception, match="NAME=VALUE"):
        env_ab.parse_setting("NOVALUE")
    assert env_ab.parse_setting("GOMP_SPINCOUNT=10000") == ("GOMP_SPINCOUNT", "10000")

    res = env_ab.measure({"GOMP_SPINCOUNT": "10000"}, rounds=2, frames=4, size=(32, 24),
                         presets=("ultrafast",), photos=1, kernel_calls=2)
    assert set(res["cases"]) == {"video_ultrafast", "folder", "kernels_x2_rgb", "kernels_x4_luma"}
    for name, case in res["cases"].items():
        assert case["base_s"] > 0 and case["with_s"] > 0, name
        assert len(case["per_round"]) == 2 and case["with_over_base"] > 0, name
    assert res["settings"] == {"GOMP_SPINCOUNT": "10000"} and res["machine"]["cpu_count"] >= 1


def test_luma_views_average_details_as_luma_mode_does():
    """bench.luma_views: the plain view is luma mode bit for bit, ``rgb`` is RGB mode, and
    every variant is reported against RGB mode on the validation split."""
    from bench import luma_views
    from iqlut_gpu import upscale

    fns = luma_views.variants(2)
    img = np.random.default_rng(cases.SESSION_SEED).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    assert np.array_equal(fns["luma"](img), upscale(img, 2, ensemble=1, color="luma", backend="cpu")), \
        cases.SESSION_SEED
    assert np.array_equal(fns["rgb"](img), upscale(img, 2, ensemble=1, backend="cpu")), cases.SESSION_SEED
    gray = img[..., 1]
    for name, fn in fns.items():
        assert fn(img).shape == (18, 22, 3) and fn(gray).shape == (18, 22), name
    try:
        res = luma_views.measure((2,), crop=48, limit=1)
    except (ImportError, FileNotFoundError) as e:  # the photos come with scikit-image
        pytest.skip(f"no validation images here: {e}")
    got = res["scales"]["2"]
    assert res["images"] == 1 and set(got["vs_rgb"]) == set(fns) - {"rgb"}
    assert all(np.isfinite(v) for v in got["y_psnr"].values())
