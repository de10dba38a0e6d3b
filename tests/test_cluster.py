"""iqlut_gpu.cluster and `--cluster`: folders and videos on Dask workers, and the faults.

One ``distributed.LocalCluster`` (2 worker processes, 1 thread each, as ``--cluster local:2``
starts it) serves the module; a test that kills a worker has one of its own. The workers run
the Numba CPU backend (bit-identical to the reference, checked elsewhere); the module first
runs it here so the kernels' on-disk cache is warm before the workers load them. Faults are
real: worker processes are killed with SIGKILL, a scheduler process is killed mid-job, an
``iqlut`` process is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

distributed = pytest.importorskip("distributed")
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

from iqlut_gpu import cluster, upscale  # noqa: E402
from iqlut_gpu.io import part_marker, read_image, remove_stale_parts, write_image  # noqa: E402

PHOTO = Path(__file__).parent.parent / "iqlut_gpu" / "data" / "astronaut_256.png"
BACKEND = "cpu"


def photo():
    return np.asarray(Image.open(PHOTO).convert("RGB"))


def make_photos(folder: Path, n: int, sizes=((48, 64), (40, 56))) -> dict:
    """n crops of the photo (two sizes, so batches mix shapes); returns name -> image."""
    folder.mkdir(parents=True, exist_ok=True)
    p, out = photo(), {}
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        img = np.ascontiguousarray(p[5 * i:5 * i + h, 7 * i:7 * i + w])
        write_image(folder / f"{i:02d}.png", img)
        out[f"{i:02d}.png"] = img
    return out


def expected(images: dict) -> dict:
    return {name: upscale(img, 2, backend=BACKEND) for name, img in images.items()}


def assert_outputs(out: Path, want: dict):
    for name, img in want.items():
        got = read_image(out / name)
        assert np.array_equal(got, img), name


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def this_host() -> str:
    marker = part_marker()  # ".iqlut-HOST-PID"
    return marker[len(".iqlut-"):marker.rindex("-")]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def client():
    upscale(photo()[:16, :16], 2, backend=BACKEND)  # the kernel cache, before the workers
    with cluster.connect("local:2", quiet=True) as c:
        yield c


@pytest.fixture
def own_client():
    """A cluster of its own, as ``client``'s, for a test that kills one of its workers:
    Dask's nanny restarts a killed worker, but whether and when it does is Dask's business
    (once on a loaded CI machine it had not after minutes), and the module's other tests
    must not depend on it."""
    upscale(photo()[:16, :16], 2, backend=BACKEND)
    with cluster.connect("local:2", quiet=True) as c:
        yield c


def worker_pids(client) -> dict:
    return client.run(os.getpid)


def kill_a_busy_worker(client) -> int:
    """SIGKILL a worker process that is running a task now; its pid."""
    pids = worker_pids(client)
    for _ in range(400):
        busy = [w for w, keys in client.processing().items() if keys and w in pids]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            return pids[busy[0]]
        time.sleep(0.005)
    raise AssertionError("no worker was busy")


# --------------------------------------------------------------------------- SPEC


def test_spec_parsing_and_local_cluster_options():
    assert cluster.parse_spec("local") == cluster.ClusterSpec("local")
    assert cluster.parse_spec("local:3") == cluster.ClusterSpec("local", 3)
    assert cluster.parse_spec("cuda") == cluster.ClusterSpec("cuda")
    assert cluster.parse_spec("cuda:2") == cluster.ClusterSpec("cuda", 2)
    for addr in ("tcp://10.0.0.5:8786", "tls://sched.example.org:8786", "host:8786"):
        assert cluster.parse_spec(addr) == cluster.ClusterSpec("address", address=addr)
    for bad in ("local:0", "local:x", "cuda:", "bogus", "", "tcp://"):
        with pytest.raises(ValueError, match="--cluster"):
            cluster.parse_spec(bad)
    cores = cluster._cores()
    kw = cluster.local_cluster_kwargs(2)
    assert (kw["n_workers"], kw["threads_per_worker"], kw["processes"]) == (2, 1, True)
    assert kw["env"] == {"NUMBA_NUM_THREADS": str(max(1, cores // 2))}
    assert cluster.local_cluster_kwargs()["n_workers"] == cores  # one worker per core
    assert cluster.local_cluster_kwargs(4 * cores)["env"]["NUMBA_NUM_THREADS"] == "1"


def test_the_module_cluster_is_two_processes_of_one_thread(client):
    nthreads = client.nthreads()
    assert sorted(nthreads.values()) == [1, 1]
    pids = set(worker_pids(client).values())
    assert len(pids) == 2 and os.getpid() not in pids
    assert set(client.run(lambda: os.environ.get("NUMBA_NUM_THREADS")).values()) \
        == {str(max(1, cluster._cores() // 2))}


class FakeCUDACluster:
    made: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        FakeCUDACluster.made.append(kwargs)


def test_cuda_spec_asks_dask_cuda_for_one_worker_per_gpu(monkeypatch):
    """Without a GPU: how `cuda` builds its cluster, with dask_cuda replaced by a recorder."""
    import inspect
    import types

    fake = types.ModuleType("dask_cuda")
    fake.LocalCUDACluster = FakeCUDACluster
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    FakeCUDACluster.made.clear()
    one_per_gpu = cluster.start_cluster("cuda")
    first_two = cluster.start_cluster(cluster.parse_spec("cuda:2"))
    assert one_per_gpu.kwargs["threads_per_worker"] == 1
    assert "n_workers" not in one_per_gpu.kwargs  # dask-cuda: one per CUDA_VISIBLE_DEVICES
    assert "CUDA_VISIBLE_DEVICES" not in one_per_gpu.kwargs
    assert "env" not in one_per_gpu.kwargs  # dask-cuda sets each worker's own device list
    assert one_per_gpu.kwargs["dashboard_address"] is None
    assert first_two.kwargs["n_workers"] == 2
    # every option is one LocalCUDACluster takes (it hands the rest to LocalCluster)
    known = set(inspect.signature(distributed.LocalCluster).parameters)
    try:
        import importlib

        monkeypatch.delitem(sys.modules, "dask_cuda")
        real = importlib.import_module("dask_cuda").LocalCUDACluster
        known |= set(inspect.signature(real).parameters)
    except Exception:  # dask-cuda needs CUDA bindings; LocalCluster's names must do
        known |= {"n_workers", "threads_per_worker"}
    assert set(first_two.kwargs) <= known, set(first_two.kwargs) - known


def test_cuda_spec_without_dask_cuda_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_cuda", None)
    with pytest.raises(cluster.ClusterError, match=r"needs dask-cuda.*cluster-cuda12"):
        cluster.start_cluster("cuda")


@pytest.mark.gpu
def test_cuda_cluster_on_a_gpu(tmp_path):
    from iqlut_gpu.kernels import cuda_backend

    reason = cuda_backend.probe()
    if reason is not None:
        pytest.skip(f"no usable CUDA device: {reason}")
    pytest.importorskip("dask_cuda", reason="dask-cuda is not installed (cluster-cuda12 extra)")
    images = make_photos(tmp_path / "in", 4)
    with cluster.connect("cuda", quiet=True) as c:
        n_gpus = len(c.nthreads())
        report = cluster.upscale_files([tmp_path / "in"], tmp_path / "out", 2, client=c,
                                       backend="cuda")
    assert n_gpus >= 1 and report.workers == n_gpus and report.backend == "cuda"
    assert report.failed == [] and report.written == 4
    assert_outputs(tmp_path / "out", expected(images))


# --------------------------------------------------------------------------- folders


def test_folder_on_two_workers_equals_the_in_process_run(client, tmp_path):
    images = make_photos(tmp_path / "in", 9)
    (tmp_path / "in" / "bad.png").write_bytes(b"not a png")
    seen = []
    report = cluster.upscale_files([tmp_path / "in"], tmp_path / "out", 2, client=client,
                                   backend=BACKEND, batch=2, on_file=seen.append)
    assert report.workers == 2 and report.backend == BACKEND
    assert report.written == 9 and len(seen) == 10
    [bad] = report.failed
    assert bad.src.name == "bad.png" and "not an image" in bad.error and "\n" not in bad.error
    assert_outputs(tmp_path / "out", expected(images))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(images)
    ok = next(r for r in report.results if r.src.name == "00.png")
    assert ok.in_size == (64, 48) and ok.out_size == (128, 96)


def test_a_job_waits_on_its_own_clients_loop(client, tmp_path, monkeypatch):
    """A job watches its futures on its client's event loop, never on the process's default
    client's: where the default is another client (a second cluster in the process), that
    loop heard of each finished task only at its next timer, up to Dask's tick late (one
    worker's folder job took 1.4x the in-process run in bench.cluster that way). With no
    default client at all the job must still run."""
    import distributed.client

    def no_default_client():
        raise ValueError("no default client: the job must use its own client's loop")

    monkeypatch.setattr(distributed.client, "default_client", no_default_client)
    images = make_photos(tmp_path / "in", 3)
    report = cluster.upscale_files([tmp_path / "in"], tmp_path / "out", 2, client=client,
                                   backend=BACKEND)
    assert report.written == 3 and not report.failed
    assert_outputs(tmp_path / "out", expected(images))


def test_a_backend_the_workers_lack_is_one_line(client, tmp_path):
    from iqlut_gpu.kernels import cuda_backend

    if cuda_backend.probe() is None:
        pytest.skip("this machine has a GPU")
    make_photos(tmp_path / "in", 2)
    with pytest.raises(cluster.ClusterError, match=r"^worker \S+ cannot run the upscaler: "):
        cluster.upscale_files([tmp_path / "in"], tmp_path / "out", 2, client=client,
                              backend="cuda")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("bad", [dict(backend="gpu"), dict(mode="fast"), dict(color="yuv"),
                                 dict(tile=0)])
def test_bad_choices_fail_on_the_driver_as_the_upscaler_says(bad, tmp_path, monkeypatch):
    """One check (upscaler.check_choices) for the Upscaler and the cluster's driver: the same
    ValueError before any Dask call, and the driver never resolves (probes) the backend."""
    from iqlut_gpu import backends
    from iqlut_gpu.upscaler import Upscaler

    make_photos(tmp_path / "in", 1)
    with pytest.raises(ValueError) as want:
        Upscaler(2, **bad)
    monkeypatch.setattr(backends, "resolve", lambda *a: pytest.fail("the driver resolved"))
    with pytest.raises(ValueError) as got:
        cluster.upscale_files([tmp_path / "in"], tmp_path / "out", 2, client=None, **bad)
    assert str(got.value) == str(want.value)
    if "tile" not in bad:  # a video has no tile option
        with pytest.raises(ValueError) as got:
            cluster.upscale_video(tmp_path / "no.mp4", tmp_path / "o.mp4", 2, client=None, **bad)
        assert str(got.value) == str(want.value)


def test_our_workers_keep_glibc_adaptive_mmap(client):
    """The clusters started here leave out Dask's MALLOC_TRIM_THRESHOLD_ (it made every
    output image be mapped afresh: 15-20% slower per photo) and keep its thread limits."""
    env = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
    assert set(env.values()) == {(None, "1")}


def test_starting_a_cluster_leaves_this_process_environment_alone(monkeypatch):
    """Dask's nannies set their pre-spawn environment in the process that starts them and
    leave it there (every process started after inherited it: Dask's MALLOC_TRIM_THRESHOLD_
    reached later clusters' workers); start_cluster gives it to the workers only."""
    import dask

    monkeypatch.delenv("IQLUT_SPAWN_PROBE", raising=False)
    before = dict(os.environ)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {"IQLUT_SPAWN_PROBE": "1"}}):
        lc = cluster.start_cluster("local:1", quiet=True)
    try:
        with distributed.Client(lc) as c:
            assert list(c.run(lambda: os.environ.get("IQLUT_SPAWN_PROBE")).values()) == ["1"]
    finally:
        lc.close()
    assert dict(os.environ) == before


def test_workers_with_dask_malloc_setting_get_one_warning_line(tmp_path, capsys):
    """A running cluster whose workers have Dask's MALLOC_TRIM_THRESHOLD_ (not ours: we
    leave it out) works, and says once, on one line, that it is slower for it."""
    import dask

    from iqlut_gpu.cli import main

    images = make_photos(tmp_path / "in", 2)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {
            "MALLOC_TRIM_THRESHOLD_": "65536"}}):
        lc = cluster.start_cluster("local:1", quiet=True)
    try:
        with distributed.Client(lc) as c, pytest.warns(cluster.SlowWorkerWarning):
            cluster.upscale_files([tmp_path / "in"], tmp_path / "api", 2, client=c,
                                  backend=BACKEND)
        capsys.readouterr()
        assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale",
                     "2", "--backend", BACKEND, "--cluster", lc.scheduler_address]) == 0
    finally:
        lc.close()
    err = capsys.readouterr().err
    assert err.count("MALLOC_TRIM_THRESHOLD_") == 1
    assert f"iqlut: warning: {cluster.MALLOC_NOTE}\n" in err
    assert_outputs(tmp_path / "api", expected(images))
    assert_outputs(tmp_path / "out", expected(images))


def test_files_are_grouped_into_tasks_for_balance():
    jobs = [(f"/nowhere/{i}.png", f"/out/{i}.png") for i in range(32)]
    assert [len(g) for g in cluster._group(jobs, 8, 2)] == [4] * 8  # 4 tasks per worker
    assert [len(g) for g in cluster._group(jobs, 8, 1)] == [8] * 4  # at most --batch
    assert [len(g) for g in cluster._group(jobs, 8, 16)] == [1] * 32
    assert [len(g) for g in cluster._group(jobs[:3], 8, 2)] == [1] * 3
    assert sum(cluster._group(jobs, 3, 2), []) == jobs  # in order, each once


def test_a_folder_task_runs_its_files_in_overlapping_batches(monkeypatch):
    """Inside a task the files go through the pipeline in a few batches (reading the next
    and writing the last while one is upscaled), never as one batch of all of them."""
    seen = []
    monkeypatch.setattr(cluster, "_plugin", lambda name: type("P", (), {"upscaler": lambda self: "up"})())
    monkeypatch.setattr(cluster, "process_files", lambda up, pairs, level, batch, then: seen.append(
        (len(pairs), batch)))
    for n in (1, 3, 8, 16, 40):
        cluster._files_task("job", [("a", "b")] * n, None, 8)
    assert seen == [(1, 1), (3, 1), (8, 2), (16, 4), (40, 8)]


def test_process_files_says_when_only_writing_is_left(tmp_path):
    """files.process_files calls on_upscaled once, after the upscaler's last image (a cluster
    task then lets its worker start the next task while it writes)."""
    from iqlut_gpu import files
    from iqlut_gpu.upscaler import Upscaler

    make_photos(tmp_path / "in", 5)
    (tmp_path / "out").mkdir()
    up, upscaled, calls = Upscaler(2, backend=BACKEND), [], []

    class Counting:
        def frames(self, images, **kw):
            for result in up.frames(images, **kw):
                upscaled.append(result)
                yield result

    pairs = [(p, tmp_path / "out" / p.name) for p in sorted((tmp_path / "in").iterdir())]
    results = list(files.process_files(Counting(), pairs, batch=2,
                                       on_upscaled=lambda: calls.append(len(upscaled))))
    assert calls == [5] and [r.error for r in results] == [None] * 5


def test_a_task_that_hands_over_lets_its_worker_start_the_next(client):
    """cluster._handing_over (distributed.secede): a one-thread worker runs the next task
    while the one that handed over is still finishing; at most one task of a worker is
    handed over at a time; outside a worker nothing happens."""
    with cluster._handing_over() as hand_over:
        hand_over()  # not on a worker: nothing happens
    worker = sorted(client.nthreads())[0]

    def task(seconds, flag=None):
        start = time.time()
        with cluster._handing_over() as hand_over:
            hand_over()
            if flag:
                distributed.Event(flag).set()
            time.sleep(seconds)
        return start, time.time()

    # a first (Dask need not start tasks in the order they were submitted), then b and c
    a = client.submit(task, 1.5, "a-handed-over", workers=[worker], pure=False)
    assert distributed.Event("a-handed-over", client=client).wait(timeout=120)
    b, c = (client.submit(task, 0.5, workers=[worker], pure=False) for _ in range(2))
    (_, a1), (b0, b1), (c0, c1) = a.result(), b.result(), c.result()
    assert b0 < a1 and c0 < a1  # each ran while a was handed over
    assert b1 <= c0 or c1 <= b0  # neither could hand over (a was): one waited for the other


def test_hand_over_uses_dask_public_api_and_degrades_to_nothing(monkeypatch):
    """cluster._handing_over needs only distributed.get_worker and distributed.secede: it
    secedes once, from the thread that entered it, one task per process at a time; where
    Dask fails (a version that moved what secede uses) the task keeps its thread, no error."""
    import threading

    seceded = []
    monkeypatch.setattr(distributed, "get_worker", lambda: object())
    monkeypatch.setattr(distributed, "secede", lambda: seceded.append(threading.current_thread()))
    with cluster._handing_over() as hand_over:
        other = threading.Thread(target=hand_over)
        other.start()
        other.join()
        assert seceded == []  # another thread than the task's: nothing
        hand_over()
        hand_over()
        assert seceded == [threading.current_thread()]  # once
        with cluster._handing_over() as second:
            second()  # another task of this process while one is handed over: nothing
        assert len(seceded) == 1
    with cluster._handing_over() as hand_over:  # the first one's slot is free again
        hand_over()
    assert len(seceded) == 2

    def moved():
        raise AttributeError("module 'distributed.threadpoolexecutor' has no attribute 'x'")

    monkeypatch.setattr(distributed, "secede", moved)
    with cluster._handing_over() as hand_over:
        hand_over()  # Dask fails: no hand-over, no error
    monkeypatch.setattr(distributed, "secede", lambda: seceded.append(1))
    with cluster._handing_over() as hand_over:  # and the slot was not kept
        hand_over()
    assert len(seceded) == 3

    def no_worker():
        raise ValueError("No worker found")

    monkeypatch.setattr(distributed, "get_worker", no_worker)
    with cluster._handing_over() as hand_over:
        hand_over()  # not in a worker's task: nothing
    assert len(seceded) == 3


def test_workers_keep_the_upscaler_between_jobs_of_one_model(client, tmp_path):
    """A job with the model and options of an earlier one finds its worker's upscaler (and
    its prepared tables) kept; another model gets its own, and a worker keeps at most
    KEEP_UPSCALERS."""
    make_photos(tmp_path / "in", 4)

    def kept():
        return sorted((k[0], str(k[1].ensemble), id(v[0])) for k, v in cluster._KEPT.items())

    def job(**kw):
        cluster.upscale_files([tmp_path / "in"], tmp_path / "out", 2, client=client,
                              backend=BACKEND, overwrite=True, **kw)
        return client.run(kept)

    from iqlut_gpu.model import default_model, default_model_path, load_model

    assert cluster.model_digest(load_model(default_model_path(2))) == cluster.model_digest(
        default_model(2)) != cluster.model_digest(default_model(2).with_ensemble(2))
    first = job()
    assert job() == first and all(len(v) <= cluster.KEEP_UPSCALERS for v in first.values())
    other = job(ensemble=2)
    for w, entries in other.items():
        assert len(entries) <= cluster.KEEP_UPSCALERS
        assert any(e[1] == "2" for e in entries) and set(first[w]) <= set(entries)


def test_skip_existing_resumes_and_existing_outputs_are_kept(client, tmp_path):
    images = make_photos(tmp_path / "in", 4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "01.png").write_bytes(b"left by an earlier run")
    report = cluster.upscale_files([tmp_path / "in"], out, 2, client=client, backend=BACKEND,
                                   skip_existing=True)
    assert (report.written, report.skipped, report.failed) == (3, 1, [])
    assert (out / "01.png").read_bytes() == b"left by an earlier run"
    want = expected(images)
    del want["01.png"]
    assert_outputs(out, want)
    again = cluster.upscale_files([tmp_path / "in"], out, 2, client=client, backend=BACKEND)
    assert again.written == 0 and len(again.failed) == 4
    assert all("exists (use --overwrite" in r.error for r in again.failed)


def test_skip_existing_in_process_too(tmp_path, capsys):
    from iqlut_gpu.cli import main

    images = make_photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "02.png").write_bytes(b"kept")
    args = ["upscale", str(tmp_path / "in"), "-o", str(out), "--scale", "2", "--backend",
            BACKEND]
    assert main([*args, "--skip-existing"]) == 0
    assert (out / "02.png").read_bytes() == b"kept"
    assert_outputs(out, {k: v for k, v in expected(images).items() if k != "02.png"})
    capsys.readouterr()
    assert main([*args, "--skip-existing"]) == 0
    assert "nothing to do: every output exists" in capsys.readouterr().err
    assert main([*args, "--skip-existing", "--overwrite"]) == 1
    assert "--overwrite and --skip-existing exclude each other" in capsys.readouterr().err


def test_skip_existing_is_one_rule_in_process_and_on_the_cluster(client, tmp_path, capsys):
    """An output that exists is skipped, but the input itself is no earlier run's output:
    both paths refuse it with the same line (files.skips beside files.target_error)."""
    from iqlut_gpu.cli import main

    make_photos(tmp_path / "in", 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "01.png").write_bytes(b"kept")
    seen = []
    for inputs, out in (([tmp_path / "in"], tmp_path / "in"),  # the output is the input
                        ([tmp_path / "in"], tmp_path / "out")):
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        rc = main(["upscale", *map(str, inputs), "-o", str(out), "--scale", "2", "--backend",
                   BACKEND, "--skip-existing", "--quiet"])
        in_process = (rc, sorted(line for line in capsys.readouterr().err.splitlines()))
        for p in out.iterdir():  # undo the in-process run's writes, then the cluster's turn
            if p.name not in before:
                p.unlink()
        report = cluster.upscale_files(inputs, out, 2, client=client, backend=BACKEND,
                                       skip_existing=True)
        on_cluster = (1 if report.failed else 0,
                      sorted(f"iqlut upscale: error: {r.error}" for r in report.failed))
        assert on_cluster == in_process
        seen.append(in_process)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in before} == before
    assert seen[0][0] == 1 and len(seen[0][1]) == 2
    assert all("output is the input file itself" in line for line in seen[0][1])
    assert seen[1] == (0, []) and report.skipped == 1 and report.written == 1


def test_cli_on_a_cluster_lists_the_inputs_once(client, tmp_path, monkeypatch, capsys):
    from iqlut_gpu import files
    from iqlut_gpu.cli import main

    images = make_photos(tmp_path / "in", 3)
    calls = []
    listing = files.image_jobs
    monkeypatch.setattr(files, "image_jobs", lambda *a: calls.append(a) or listing(*a))
    assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "2",
                 "--backend", BACKEND, "--cluster", client.scheduler.address]) == 0
    assert len(calls) == 1
    assert "3 of 3 images written" in capsys.readouterr().err
    assert_outputs(tmp_path / "out", expected(images))


def test_a_file_a_worker_cannot_see_fails_alone(tmp_path):
    """What a worker does with paths that are not on its filesystem (run here directly)."""
    from iqlut_gpu.upscaler import Upscaler

    images = make_photos(tmp_path / "in", 1)
    pairs = [(str(tmp_path / "elsewhere" / "a.png"), str(tmp_path / "out" / "a.png")),
             (str(tmp_path / "in" / "00.png"), str(tmp_path / "gone" / "00.png")),
             (str(tmp_path / "in" / "00.png"), str(tmp_path / "00.png"))]
    results = cluster.process_files(Upscaler(2, backend=BACKEND), pairs)  # on a worker
    host = socket.gethostname()
    assert f"input not found on worker {host}" in results[0].error
    assert f"output folder not found on worker {host}" in results[1].error
    assert "filesystem every worker sees" in results[0].error
    assert results[2].error is None
    assert np.array_equal(read_image(tmp_path / "00.png"), expected(images)["00.png"])


def test_a_worker_killed_mid_job_changes_nothing(own_client, tmp_path):
    client = own_client
    images = make_photos(tmp_path / "in", 16, sizes=((96, 128), (80, 120)))
    killed = []

    def on_file(result):
        if not killed:
            killed.append(kill_a_busy_worker(client))

    report = cluster.upscale_files([tmp_path / "in"], tmp_path / "out", 2, client=client,
                                   backend=BACKEND, batch=1, on_file=on_file)
    assert killed and killed[0] not in worker_pids(client).values()
    assert report.failed == [] and report.written == 16
    assert_outputs(tmp_path / "out", expected(images))
    assert hidden(tmp_path / "out") == []  # a temporary of the killed worker was removed


def test_scheduler_unreachable_is_one_line(run_cli, tmp_path):
    make_photos(tmp_path / "in", 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s")
    proc = run_cli("upscale", "in", "-o", "out", "--scale", "2", "--cluster",
                   f"tcp://127.0.0.1:{port}", env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"iqlut upscale: error: cannot reach the Dask scheduler at "
                               f"tcp://127.0.0.1:{port}"), lines[0]
    assert not (tmp_path / "out").exists()


def _start(cmd, cwd, env=None):
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.filterwarnings("ignore::iqlut_gpu.cluster.SlowWorkerWarning")  # `dask worker`'s
# own defaults: tested above
def test_scheduler_lost_mid_job_leaves_only_complete_files(tmp_path):
    images = make_photos(tmp_path / "in", 12, sizes=((96, 128),))
    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    scheduler = _start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                        "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                        str(sched_file)], tmp_path)
    worker = None
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.05)
        address = json.loads(sched_file.read_text())["address"]
        worker = _start([sys.executable, "-m", "distributed.cli.dask_worker", address,
                         "--nthreads", "1", "--nworkers", "1", "--no-dashboard"], tmp_path, env)
        done = []

        def on_file(result):
            done.append(result)
            if len(done) == 2:
                scheduler.kill()

        with cluster.connect(address, quiet=True) as c:
            c.wait_for_workers(1, timeout=60)
            with pytest.raises(cluster.ClusterError, match="lost the connection to the Dask "
                                                           "scheduler"):
                cluster.upscale_files([tmp_path / "in"], tmp_path / "out", 2, client=c,
                                      backend=BACKEND, batch=1, on_file=on_file)
        assert len(done) >= 2
    finally:
        for proc in (scheduler, worker):
            if proc is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    want = expected(images)
    written = [p for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")]
    assert 2 <= len(written) < 12
    assert_outputs(tmp_path / "out", {p.name: want[p.name] for p in written})


def test_sigkill_of_iqlut_leaves_no_partial_file_and_the_rerun_resumes(client, tmp_path,
                                                                      monkeypatch, capsys):
    images = make_photos(tmp_path / "in", 16, sizes=((96, 128),))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "iqlut_gpu", "upscale", "in", "-o", "out", "--scale", "2",
           "--backend", BACKEND, "--batch", "1", "--cluster", "local:2"]
    import psutil

    proc = subprocess.Popen([*cmd, "--quiet"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):
            if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
                break
            time.sleep(0.05)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait()
        psutil.wait_procs(children, timeout=30)  # the workers go with their parent
    finally:
        if proc.poll() is None:
            proc.kill()
    want = expected(images)
    visible = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert 1 <= len(visible) < 16
    assert_outputs(out, {p.name: want[p.name] for p in visible})  # every one complete
    stale = out / f".05.png.abc123.iqlut-{this_host()}-{dead_pid()}.part.png"
    stale.write_bytes(b"half")
    foreign = out / f".06.png.abc123.iqlut-otherhost-{os.getpid()}.part.png"
    foreign.write_bytes(b"another machine's")
    from iqlut_gpu.cli import main

    monkeypatch.chdir(tmp_path)  # the rerun: `iqlut upscale ... --skip-existing` on a cluster
    code = main([*cmd[3:-2], "--skip-existing", "--cluster", client.scheduler.address])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"{16 - len(visible)} of 16 images written to out, {len(visible)} skipped " \
        "(already there) (backend cpu, 2 workers)" in err
    assert "16/16" in err  # the progress bar counts the skipped files too
    assert_outputs(out, want)
    assert hidden(out) == [foreign.name]  # ours removed (the planted and any the kill left)


def test_stale_parts_are_recognised_by_host_and_pid(tmp_path):
    marker = part_marker()  # ".iqlut-HOST-PID"
    host = this_host()
    gone = dead_pid()
    names = {
        "dead_file": f".a.png.x1{'.iqlut-' + host + '-' + str(gone)}.part.png",
        "dead_dir": f".v.mp4.x2{'.iqlut-' + host + '-' + str(gone)}.part.d",
        "live": f".b.png.x3{marker}.part.png",
        "other_host": f".c.png.x4.iqlut-elsewhere-{gone}.part.png",
        "old_style": ".d.png.x5.part.png",
        "visible": "e.png",
    }
    for key, name in names.items():
        if key == "dead_dir":
            (tmp_path / name).mkdir()
            (tmp_path / name / "seg_000001.mp4").write_bytes(b"x")
        else:
            (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_parts(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["dead_file"], names["dead_dir"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in ("live", "other_host", "old_style", "visible"))
    # the first write of a process into a folder sweeps it too (the in-process commands)
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / names["dead_file"]).write_bytes(b"x")
    write_image(sub / "f.png", np.zeros((4, 4), np.uint8))
    assert sorted(p.name for p in sub.iterdir()) == ["f.png"]


def test_without_dask_the_cluster_switch_is_one_line(monkeypatch, tmp_path, capsys):
    from iqlut_gpu.cli import main

    make_photos(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "distributed", None)
    code = main(["upscale", str(tmp_path / "in" / "00.png"), "-o", str(tmp_path / "o.png"),
                 "--cluster", "local:2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "needs Dask's distributed scheduler: pip install 'iqlut-gpu[cluster]'" in err[0]


def test_the_in_process_path_never_imports_dask(monkeypatch, tmp_path):
    from iqlut_gpu.cli import main

    make_photos(tmp_path, 1)
    for name in ("dask", "distributed"):  # importing either now fails
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["upscale", str(tmp_path / "00.png"), "-o", str(tmp_path / "o.png"),
                 "--scale", "2", "--quiet"]) == 0
    assert (tmp_path / "o.png").exists()


# --------------------------------------------------------------------------- video

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
NTSC = "30000/1001"


def make_clip(path, n=30, size=(48, 32), fps=NTSC, gop=6):
    """An H.264 clip panning over the photo with a keyframe every ``gop`` frames, and an AAC
    tone; returns nothing (the tests compare outputs, not inputs)."""
    p = photo()
    w, h = size
    frames = [np.ascontiguousarray(p[40 + 3 * i:40 + 3 * i + h, 30 + 4 * i:30 + 4 * i + w])
              for i in range(n)]
    seconds = n / float(Fraction(fps))
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", fps, "-i", "pipe:0",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=22050:duration={seconds}",
           "-c:a", "aac", "-c:v", "libx264", "-crf", "4", "-g", str(gop),
           "-keyint_min", str(gop), "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), check=True)


def frame_hashes(path):
    """Every decoded frame of the first video stream: pts, duration and MD5 of its pixels."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(path),
                          "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "framemd5", "-"],
                         capture_output=True, text=True, check=True).stdout
    return [ln.split(",")[2:] for ln in out.splitlines() if not ln.startswith("#")]


def packets(path, stream):
    """(pts, duration, size, crc) of every packet of ``stream`` as stored."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(path),
                          "-map", stream, "-c", "copy", "-f", "framecrc", "-"],
                         capture_output=True, text=True, check=True).stdout
    return [ln.split(",")[2:] for ln in out.splitlines() if not ln.startswith("#")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 30-frame NTSC clip with audio and its single-process x2 upscale, losslessly (FFV1)."""
    from iqlut_gpu import video

    folder = tmp_path_factory.mktemp("clip")
    make_clip(folder / "in.mp4")
    stats = video.upscale_video(folder / "in.mp4", folder / "single.mkv", 2, backend=BACKEND,
                                codec="ffv1")
    assert stats.frames == 30
    return folder


def assert_same_video(a, b, frames=30):
    from iqlut_gpu.video import probe

    ia, ib = probe(a), probe(b)
    assert (ia.fps, ia.width, ia.height, ia.audio) == (ib.fps, ib.width, ib.height, ib.audio)
    ha, hb = frame_hashes(a), frame_hashes(b)
    assert len(ha) == len(hb) == frames
    assert ha == hb  # same pixels, timestamps and durations, frame for frame
    if ia.audio:
        assert packets(a, "0:a:0") == packets(b, "0:a:0")  # the audio, copied once


def test_segmented_video_equals_the_single_process_run(client, clip, tmp_path, monkeypatch):
    from iqlut_gpu import io
    from iqlut_gpu.video import probe

    stale = tmp_path / f".out.mkv.x.iqlut-{this_host()}-{dead_pid()}.part.d"
    stale.mkdir()  # the segments of a killed run: the driver removes them, once
    swept, sweep = [], io.remove_stale_parts
    monkeypatch.setattr(io, "remove_stale_parts", lambda f: swept.append(Path(f)) or sweep(f))
    done = []
    report = cluster.upscale_video(clip / "in.mp4", tmp_path / "out.mkv", 2, client=client,
                                   backend=BACKEND, codec="ffv1", segment_seconds=0.2,
                                   progress=done.append)
    assert report.frames == 30 and report.segments >= 4 and report.workers == 2
    assert done == sorted(done) and done[-1] == 30 and len(done) == report.segments
    assert probe(clip / "in.mp4").fps == Fraction(30000, 1001)
    assert_same_video(clip / "single.mkv", tmp_path / "out.mkv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mkv"]  # segments removed
    assert swept == [tmp_path]


def _spy_ffmpeg():
    """On a worker: record the command of every process started (subprocess.Popen)."""
    import subprocess

    import iqlut_gpu.cluster as c

    c._started = []
    real = subprocess.Popen

    class Spy(real):
        def __init__(self, args, *a, **kw):
            c._started.append([str(x) for x in args])
            super().__init__(args, *a, **kw)

    Spy.real = real
    subprocess.Popen = Spy


def _unspy_ffmpeg():
    import subprocess

    import iqlut_gpu.cluster as c

    subprocess.Popen = getattr(subprocess.Popen, "real", subprocess.Popen)
    return getattr(c, "_started", [])


def test_segments_start_only_their_decoder_and_encoder(client, clip, tmp_path):
    """The driver probes the source, picks the layout and makes the test encode once
    (video.Prechecked), and counts the packets once: a segment task starts ffmpeg only as
    its decoder and its encoder (no probe, no test encode, no packet count), and the
    frames still equal the single-process run's."""
    client.run(_spy_ffmpeg)
    try:
        report = cluster.upscale_video(clip / "in.mp4", tmp_path / "out.mkv", 2, client=client,
                                       backend=BACKEND, codec="ffv1", segment_seconds=0.2)
    finally:
        started = [cmd for cmds in client.run(_unspy_ffmpeg).values() for cmd in cmds
                   if cmd[1:] != ["-version"]]  # imageio-ffmpeg's, once in a process
    assert report.segments >= 4
    decoders = [c for c in started if c[-1] == "-" and "rawvideo" in c]
    encoders = [c for c in started if "pipe:0" in c and Path(c[-1]).name.startswith(".up_")]
    assert len(decoders) == len(encoders) == report.segments, started
    assert len(started) == 2 * report.segments, started
    assert_same_video(clip / "single.mkv", tmp_path / "out.mkv")


def test_lossy_segments_keep_the_timestamps(client, clip, tmp_path):
    """x264 in MP4, segment by segment: other pictures than one encode (a keyframe at each
    seam), the same frames at the same times, and the same audio."""
    from iqlut_gpu import video

    video.upscale_video(clip / "in.mp4", tmp_path / "single.mp4", 2, backend=BACKEND)
    cluster.upscale_video(clip / "in.mp4", tmp_path / "out.mp4", 2, client=client,
                          backend=BACKEND, segment_seconds=0.2)
    a, b = frame_hashes(tmp_path / "single.mp4"), frame_hashes(tmp_path / "out.mp4")
    assert len(a) == len(b) == 30
    assert [f[:2] for f in a] == [f[:2] for f in b]  # pts and duration of every frame
    assert packets(tmp_path / "single.mp4", "0:a:0") == packets(tmp_path / "out.mp4", "0:a:0")


def test_variable_rate_and_late_video_keep_every_frame_time(client, tmp_path):
    """A phone's clip (30, 15, then 30 fps; the video 0.2 s after the sound) in segments:
    every frame at its source time (within a millisecond), as the single-process run."""
    from test_video import assert_same_times, audio_md5, frame_times, make_vfr_clip

    make_vfr_clip(tmp_path / "in.mp4", n=30, gop=6)
    want = frame_times(tmp_path / "in.mp4")
    assert len(want) == 30 and abs(want[0] - 0.2) < 1e-3 and np.diff(want).max() > 1.9 * np.diff(want).min()
    report = cluster.upscale_video(tmp_path / "in.mp4", tmp_path / "out.mp4", 2, client=client,
                                   backend=BACKEND, segment_seconds=0.2)
    assert report.segments >= 2 and report.frames == 30
    assert_same_times(want, frame_times(tmp_path / "out.mp4"))
    assert audio_md5(tmp_path / "out.mp4") == audio_md5(tmp_path / "in.mp4")


def test_segmented_video_survives_a_killed_worker(own_client, clip, tmp_path):
    client = own_client
    killed = []

    def progress(n):
        if not killed:
            killed.append(kill_a_busy_worker(client))

    cluster.upscale_video(clip / "in.mp4", tmp_path / "out.mkv", 2, client=client,
                          backend=BACKEND, codec="ffv1", segment_seconds=0.2, progress=progress)
    assert killed
    assert_same_video(clip / "single.mkv", tmp_path / "out.mkv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mkv"]


def test_a_failed_segment_leaves_nothing(client, clip, tmp_path):
    from iqlut_gpu.video import VideoError

    def break_segment_3():
        import iqlut_gpu.video as video_mod

        real = video_mod.upscale_video

        def failing(src, dst, *a, **kw):
            if "seg_000003" in str(src):
                raise video_mod.VideoError(f"{src}: injected failure")
            return real(src, dst, *a, **kw)

        failing.real = real
        video_mod.upscale_video = failing

    def restore():
        import iqlut_gpu.video as video_mod

        video_mod.upscale_video = getattr(video_mod.upscale_video, "real",
                                          video_mod.upscale_video)

    client.run(break_segment_3)
    try:
        with pytest.raises(VideoError, match="injected failure"):
            cluster.upscale_video(clip / "in.mp4", tmp_path / "out.mkv", 2, client=client,
                                  backend=BACKEND, codec="ffv1", segment_seconds=0.2)
    finally:
        client.run(restore)
    assert list(tmp_path.iterdir()) == []  # no output, no segment folder


def test_an_open_gop_video_is_upscaled_whole(client, tmp_path):
    """Frames before an open GOP's keyframe refer to the GOP before: cut there they would be
    lost, so such a video goes to one worker in one segment, and says so."""
    from iqlut_gpu import video

    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi",
                    "-i", "testsrc=size=64x48:rate=25:duration=1.6", "-c:v", "libx264",
                    "-g", "8", "-bf", "3", "-x264-params", "open-gop=1:scenecut=0",
                    "-pix_fmt", "yuv420p", str(tmp_path / "open.mp4")], check=True)
    video.upscale_video(tmp_path / "open.mp4", tmp_path / "single.mkv", 2, backend=BACKEND,
                        codec="ffv1")
    report = cluster.upscale_video(tmp_path / "open.mp4", tmp_path / "out.mkv", 2,
                                   client=client, backend=BACKEND, codec="ffv1",
                                   segment_seconds=0.3)
    assert report.segments == 1 and "open GOP" in report.notes[0]
    assert_same_video(tmp_path / "single.mkv", tmp_path / "out.mkv", frames=40)


def test_cli_video_on_a_cluster(client, clip, tmp_path, capsys):
    from iqlut_gpu.cli import main

    code = main(["video", str(clip / "in.mp4"), "-o", str(tmp_path / "out.mkv"), "--scale", "2",
                 "--backend", BACKEND, "--codec", "ffv1", "--segment-seconds", "0.3",
                 "--cluster", client.scheduler.address])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "frame/s" in err and "30/30" in err  # the progress bar
    assert "out.mkv: 30 frames 48x32 -> 96x64 at 29.97 fps, audio copied (aac)" in err
    assert "segments on 2 workers" in err
    assert_same_video(clip / "single.mkv", tmp_path / "out.mkv")
