"""Many workers and many machines: folders and videos spread over a Dask cluster.

``iqlut upscale ... --cluster SPEC`` and ``iqlut video ... --cluster SPEC`` run here, on
Dask's distributed scheduler (the ``cluster`` extra: ``pip install "iqlut-gpu[cluster]"``);
without ``--cluster`` nothing of this module runs and Dask is never imported. SPEC is

- ``local`` or ``local:N``: a ``distributed.LocalCluster`` of N worker processes (default
  one per core), one task at a time each, with ``NUMBA_NUM_THREADS`` = cores // N;
- ``cuda`` or ``cuda:N``: a ``dask_cuda.LocalCUDACluster``, one worker per visible GPU
  (or the first N), each seeing only its own device (``cluster-cuda12``/``-cuda13`` extras);
- a scheduler address (``tcp://host:8786``): a running cluster (``dask scheduler`` and
  ``dask worker`` on each machine, with iqlut-gpu installed in the workers' environment).

The Python API takes a ``distributed.Client``: ``upscale_files(inputs, out, scale,
client=...)`` and ``upscale_video(src, dst, scale, client=...)``; ``connect(spec)`` makes
one from a SPEC.

How work is spread (docs/cluster.md has the measurements):

- the model and the upscaler options travel once, as a worker plugin
  (``UpscalerPlugin``): every worker, also one that joins or is restarted later, gets it
  and builds its ``Upscaler`` at its first task, then keeps it for the whole job;
- folders: one task per file, or per small group of consecutive files when there are many
  per worker (``_group``); the worker reads, upscales and writes the files itself (reading
  the next file and writing the last result overlap the upscaling, as in-process). Paths
  are absolute and must name the same files on every worker: a shared filesystem. A file
  a worker cannot see fails alone with a one-line error naming the worker's host;
- videos: the source is cut at keyframes into segments by stream copy (ffmpeg's segment
  muxer), each segment is upscaled on a worker by ``iqlut_gpu.video.upscale_video`` into a
  container that keeps exact timestamps (MP4/QuickTime), the upscaled segments are joined by
  ffmpeg's concat demuxer (stream copy) and the source's audio is muxed once in that same
  step. The segments live in a hidden folder beside the output (so it must be shared too)
  that is removed at the end and after any failure;
- faults: every output is written under a hidden temporary name and renamed when complete
  (``iqlut_gpu.io.atomic_path``), so only complete files ever appear under OUT. A worker
  that dies has its tasks rerun elsewhere by Dask (a task is idempotent: it writes the same
  files again); a file that fails is reported on one line and the others go on; a lost
  scheduler ends the job with one line and what was written stays; stale temporaries of
  dead processes are removed (``iqlut_gpu.io.remove_stale_parts``) by the next write into
  the folder and at the end of each job on every worker.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from . import files
from .files import FileResult
from .frames import check_batch

try:  # the plugin class must exist at import time to be pickled by reference
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:  # the core install: nothing here runs without Dask
    _WorkerPlugin = object

INSTALL_HINT = "pip install 'iqlut-gpu[cluster]'"
CUDA_INSTALL_HINT = "pip install 'iqlut-gpu[cluster-cuda12]' (or cluster-cuda13)"
# Folders: files are grouped into tasks of at most `batch` files so that each worker still
# gets about TASKS_PER_WORKER tasks (load balance, and little work redone after a worker
# dies), and of at most TASK_BYTES of input.
PIPELINE_STEPS = 4  # batches per folder task (reading, upscaling and writing overlap)
TASKS_PER_WORKER = 4
TASK_BYTES = 64 << 20
WAIT_FOR_WORKERS = 60  # seconds a cluster without workers is given to get one
# Videos: segments of about duration / (SEGMENTS_PER_WORKER * workers), at least
# MIN_SEGMENT_SECONDS (the cut is at the first keyframe after each multiple).
SEGMENTS_PER_WORKER = 4
MIN_SEGMENT_SECONDS = 2.0
# Containers for upscaled segments, tried in order: both keep every frame's timestamp
# exactly (a 1/fps time base), which the join needs to give the single-process timestamps.
EXACT_CONTAINERS = (".mov", ".mp4")


class SlowWorkerWarning(UserWarning):
    """A worker runs with a setting that makes it slower than it needs to be."""


# Dask's default pre-spawn environment for workers; with it glibc maps every output image
# afresh (1.2-1.4x the time per photo; docs/cluster.md, "Using it", says how to avoid it).
MALLOC_NOTE = ("the workers run with MALLOC_TRIM_THRESHOLD_ set (Dask's default for "
               "workers), which made each photo 1.2-1.4x slower on the CPU; docs/cluster.md "
               "says how to start them without it")


class ClusterError(RuntimeError):
    """The cluster cannot be reached, was lost or cannot run the job; one line says why."""


def _require_distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError(f"--cluster needs Dask's distributed scheduler: {INSTALL_HINT}") from None
    return distributed


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------- SPEC


@dataclass(frozen=True)
class ClusterSpec:
    """What ``--cluster`` names: kind "local", "cuda" or "address"; ``workers`` for the first
    two (None: one per core / per visible GPU); ``address`` for a running scheduler."""

    kind: str
    workers: int | None = None
    address: str | None = None


_ADDRESS = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?[^\s:/]+:\d+$|^[a-z][a-z0-9+.-]*://\S+$", re.I)


def parse_spec(text: str) -> ClusterSpec:
    """``local``, ``local:N``, ``cuda``, ``cuda:N`` or a scheduler address
    (``tcp://host:8786``, ``host:8786``). Raises ValueError for anything else."""
    spec = str(text).strip()
    kind, _, count = spec.partition(":")
    if kind.lower() in ("local", "cuda"):
        if not _:
            return ClusterSpec(kind.lower())
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--cluster {spec}: the worker count after '{kind}:' must be a "
                             "positive integer")
        return ClusterSpec(kind.lower(), int(count))
    if _ADDRESS.match(spec):
        return ClusterSpec("address", address=spec)
    raise ValueError(f"--cluster {spec!r}: use local, local:N, cuda, cuda:N or a scheduler "
                     "address such as tcp://host:8786")


def _cores() -> int:
    try:
        from dask.system import CPU_COUNT  # honours the affinity mask and cgroup quotas

        return max(1, int(CPU_COUNT))
    except ImportError:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)


# Dask settings for the clusters started here (local, cuda): its background work (system
# and memory monitors, the event-loop tick, the task profiler sampling every 10 ms) took
# 11% of a core with two idle workers on the 2-core machine, 2% with these (docs/cluster.md).
LEAN_DASK_CONFIG = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.worker.profile.enabled": False,
    # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which also turns off
    # glibc's adaptive mmap threshold: every output image (megabytes) is then mapped and
    # unmapped again, page faults each time. Measured on the 2 cores, 32 photos x4 in one
    # process: 1.47-1.71 s, with that variable 1.72-2.24 s (docs/cluster.md). The rest of
    # Dask's default environment is kept.
    "distributed.nanny.pre-spawn-environ": {
        "OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1},
}


def local_cluster_kwargs(workers: int | None = None, quiet: bool = False) -> dict:
    """Keyword arguments of ``distributed.LocalCluster`` for ``local[:N]``: N worker processes
    (default one per core), one task at a time each (the kernels are parallel inside), and
    the cores shared out among them through ``NUMBA_NUM_THREADS``, set in each worker
    process before it imports Numba."""
    import logging

    cores = _cores()
    n = workers or cores
    return dict(n_workers=n, threads_per_worker=1, processes=True,
                env={"NUMBA_NUM_THREADS": str(max(1, cores // n))}, **_no_dashboard(),
                silence_logs=logging.CRITICAL if quiet else logging.WARN)


def _no_dashboard() -> dict:
    """No dashboard, and the scheduler's small HTTP server on a free port (by default it
    takes 8787 and warns on stderr when another cluster has it)."""
    return dict(dashboard_address=None, scheduler_kwargs={"dashboard_address": ":0"})


def cuda_cluster_kwargs(workers: int | None = None, quiet: bool = False) -> dict:
    """Keyword arguments of ``dask_cuda.LocalCUDACluster`` for ``cuda[:N]``: one worker per
    visible GPU (``CUDA_VISIBLE_DEVICES`` is honoured; ``n_workers`` only when N is given),
    each seeing only its own device as device 0 (dask-cuda's doing), one task at a time."""
    import logging

    kw = dict(threads_per_worker=1, **_no_dashboard(),
              silence_logs=logging.CRITICAL if quiet else logging.WARN)
    if workers:
        kw["n_workers"] = workers
    return kw


@contextlib.contextmanager
def environ_kept():
    """This process's environment as it was, after the block: Dask's nannies put their
    ``distributed.nanny.pre-spawn-environ`` into the environment of the process that starts
    them (``os.environ.update``, to pass it to the worker they spawn) and leave it there,
    so every process started after, a later cluster's workers and ffmpeg included, inherited
    it: after one cluster with Dask's defaults, ``MALLOC_TRIM_THRESHOLD_=65536`` reached the
    workers of the lean clusters too (bench.cluster's one worker took 1.4x as long per photo,
    docs/cluster.md). A nanny that restarts a killed worker later sets them again."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for k in set(os.environ) - set(saved):
            del os.environ[k]
        os.environ.update(saved)


def start_cluster(spec: ClusterSpec | str, quiet: bool = False):
    """The cluster object that ``local``/``cuda`` SPECs name, started (the caller closes it);
    this process's environment is left as it was (``environ_kept``)."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    with environ_kept():
        return _start_cluster(spec, quiet)


def _start_cluster(spec: ClusterSpec, quiet: bool):
    if spec.kind == "local":
        distributed = _require_distributed()
        return distributed.LocalCluster(**local_cluster_kwargs(spec.workers, quiet))
    if spec.kind == "cuda":
        _require_distributed()
        try:
            import dask_cuda
        except ImportError as e:
            raise ClusterError(f"--cluster cuda needs dask-cuda ({_first_line(e)}): "
                               f"{CUDA_INSTALL_HINT}") from None
        try:
            return dask_cuda.LocalCUDACluster(**cuda_cluster_kwargs(spec.workers, quiet))
        except Exception as e:  # no GPU, no driver, NVML missing
            raise ClusterError(f"--cluster cuda: cannot start one worker per GPU "
                               f"({_first_line(e)})") from None
    raise ValueError(f"{spec}: not a cluster to start here")


@contextlib.contextmanager
def connect(spec: ClusterSpec | str, *, quiet: bool = False, timeout=None):
    """A ``distributed.Client`` for SPEC, closed (with the cluster it started) on exit.

    A scheduler address is connected to within ``timeout`` seconds (default: Dask's
    ``distributed.comm.timeouts.connect``, 30 s; ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT``
    sets it); an unreachable one raises ClusterError. ``quiet`` silences Dask's logs (the
    CLI's one-line errors)."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    distributed = _require_distributed()
    if quiet:
        _quiet_dask_logs()
    if spec.kind == "address":
        import dask

        timeout = timeout or dask.config.get("distributed.comm.timeouts.connect")
        try:
            client = distributed.Client(spec.address, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {spec.address} "
                               f"({_first_line(e)})") from None
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.close(timeout=5)
        return
    import dask

    with dask.config.set(LEAN_DASK_CONFIG):
        cluster = start_cluster(spec, quiet)
        try:
            client = distributed.Client(cluster)
            try:
                yield client
            finally:
                with contextlib.suppress(Exception):
                    client.close(timeout=5)
        finally:
            with contextlib.suppress(Exception):
                cluster.close(timeout=10)


def _quiet_dask_logs() -> None:
    import logging

    for name in ("distributed", "dask_cuda", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# --------------------------------------------------------------------------- on workers


@dataclass(frozen=True)
class UpscalerOptions:
    """How each worker builds its ``Upscaler`` (the backend is resolved on the worker)."""

    backend: str = "auto"
    mode: str = "auto"
    ensemble: int | None = None
    color: str = "rgb"
    tile: int | None = None


# On a worker: the upscalers of the last KEEP_UPSCALERS models and options it ran, kept
# across jobs, so that a job that runs the model of the one before (the same bytes) finds its
# tables prepared, as the in-process command keeps its model between calls.
KEEP_UPSCALERS = 2
_KEPT: dict = {}  # (model digest, UpscalerOptions) -> (Upscaler, warnings building it raised)
_KEPT_LOCK = threading.Lock()


def model_digest(model) -> str:
    """A name of ``model``'s content (SHA-256 over its settings, layers and tables, the
    ensemble included): equal for equal models. (Not ``model_to_bytes``: safetensors
    writes its header's keys in no fixed order.)"""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(
        [model.scale, model.upsample, model.ensemble, model.trained, model.provenance,
         [layer.spec() for layer in model.layers]], sort_keys=True, default=str).encode())
    for layer in model.layers:
        for a in (layer.knots, layer.table, layer.bias):
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


class UpscalerPlugin(_WorkerPlugin):
    """A model and the upscaler options, sent once to every worker of the cluster (also to
    workers that join or restart later). The worker's ``Upscaler`` is built on first use in a
    task thread (Numba compilation off the worker's event loop), or taken from the ones the
    worker kept from earlier jobs with the same model and options (``_KEPT``)."""

    def __init__(self, name: str, model, options: UpscalerOptions, digest: str | None = None):
        self.name, self.model, self.options = name, model, options
        self.digest = digest or model_digest(model)
        self._upscaler = None
        self._lock = threading.Lock()
        self.warnings: list = []  # (category, message) raised building the upscaler

    def __getstate__(self):
        return {"name": self.name, "model": self.model, "options": self.options,
                "digest": self.digest}

    def __setstate__(self, state):
        self.__init__(state["name"], state["model"], state["options"], state["digest"])

    def setup(self, worker=None):  # nothing heavy on the event loop
        pass

    def upscaler(self):
        with self._lock:
            if self._upscaler is None:
                key = (self.digest, self.options)
                with _KEPT_LOCK:
                    kept = _KEPT.pop(key, None)
                if kept is None:
                    kept = self._build()
                with _KEPT_LOCK:
                    _KEPT[key] = kept  # the most recent last
                    while len(_KEPT) > KEEP_UPSCALERS:
                        _KEPT.pop(next(iter(_KEPT)))
                self._upscaler, self.warnings = kept
            return self._upscaler

    def _build(self):
        import warnings

        from .upscaler import Upscaler

        o = self.options
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            up = Upscaler(model=self.model, backend=o.backend, mode=o.mode,
                          ensemble=o.ensemble, color=o.color, tile=o.tile)
        return up, [(w.category, str(w.message)) for w in caught]


def _plugin(name: str) -> UpscalerPlugin:
    from distributed import get_worker

    plugin = get_worker().plugins.get(name)
    if plugin is None:
        raise ClusterError(f"worker {socket.gethostname()} has no model {name!r} (was the "
                           "job's plugin unregistered?)")
    return plugin


def _warm(name: str) -> tuple[str, str | None, list | str]:
    """Build this worker's upscaler now (model tables, Numba compilation): (host, backend,
    the warnings that building it raised, for the driver to pass on), or (host, None, why
    it cannot be built)."""
    try:
        plugin = _plugin(name)
        backend = plugin.upscaler().backend
        notes = list(plugin.warnings)
        if os.environ.get("MALLOC_TRIM_THRESHOLD_"):
            notes.append((SlowWorkerWarning, MALLOC_NOTE))
        return socket.gethostname(), backend, notes
    except Exception as e:  # noqa: BLE001 - reported by the driver, on one line
        return socket.gethostname(), None, _first_line(e)


def _not_shared(path, what: str) -> str:
    return (f"{path}: {what} not found on worker {socket.gethostname()} (the inputs and the "
            "output must be on a filesystem every worker sees under the same path)")


def process_files(upscaler, pairs: list[tuple[str, str]], png_level: int | None = None,
                  batch: int = 8, on_upscaled=None) -> list[FileResult]:
    """``[(src, dst)]`` through ``iqlut_gpu.files.process_files`` on this worker; every file
    gets a ``FileResult``, in the order of ``pairs``. A path this worker cannot see fails
    alone, saying so; if the upscaler itself fails (backend, memory), the files not done
    fail with its reason. ``on_upscaled``: as for ``files.process_files``."""
    where = {Path(d): k for k, (_, d) in enumerate(pairs)}
    results: list[FileResult | None] = [None] * len(pairs)

    def visible(src, dst):
        if not src.exists():
            return _not_shared(src, "input")
        if not dst.parent.is_dir():
            return _not_shared(dst.parent, "output folder")
        return None

    try:
        for r in files.process_files(upscaler, pairs, batch=batch, png_level=png_level,
                                     check=visible, on_upscaled=on_upscaled):
            results[where[r.dst]] = r
    except Exception as e:  # noqa: BLE001 - the rest fail with the reason
        reason = _first_line(e)
        for k, r in enumerate(results):
            if r is None:
                results[k] = FileResult(Path(pairs[k][0]), Path(pairs[k][1]),
                                        f"{pairs[k][0]}: {reason}")
    return results


def _files_task(name: str, pairs: list[tuple[str, str]], png_level, batch: int):
    """A folder task on a worker: its files through the worker's kept upscaler, in batches
    of at most a quarter of the task, so that reading the next batch and writing the last
    overlap the upscaling of this one inside the task (a task of 8 photos as one batch of
    8 read, upscaled and wrote them in turn: one worker took 1.2x the in-process time).
    Once its last file is upscaled the task leaves the worker's thread (``_handing_over``), so
    that the next task's reading and upscaling overlap this one's last writes, as in one
    in-process pipeline; it still reports done only once its files are renamed into place."""
    inner = max(1, min(batch, math.ceil(len(pairs) / PIPELINE_STEPS)))
    with _handing_over() as hand_over:
        return process_files(_plugin(name).upscaler(), pairs, png_level, inner, hand_over)


# At most one task per worker process waits outside its thread (``_handing_over``), so that a
# slow disk cannot pile up handed-over tasks and their results in memory.
_HANDED = threading.BoundedSemaphore(1)


@contextlib.contextmanager
def _handing_over():
    """Yields ``hand_over()``: called when only waiting is left (an output being written, an
    encoder finishing), it leaves this worker's task thread (``distributed.secede``) so that
    the worker starts its next task in another thread, while this one still returns when
    its work is done. Only Dask's public API: a task thread is the thread that entered this
    context where ``distributed.get_worker()`` finds a worker; nothing happens in any other
    thread, outside a worker, while another task of this worker process is handed over, or
    if Dask refuses (a version whose ``secede`` fails here degrades to no hand-over)."""
    handed = []
    try:
        from distributed import get_worker, secede

        get_worker()  # ValueError outside a worker's task
        owner = threading.current_thread()
    except Exception:  # noqa: BLE001 - not on a worker (or no Dask): nothing to hand over
        owner = secede = None

    def hand_over() -> None:
        if (handed or owner is not threading.current_thread()
                or not _HANDED.acquire(blocking=False)):
            return
        try:
            secede()
        except Exception:  # noqa: BLE001 - Dask would not: the task keeps its thread
            _HANDED.release()
            return
        handed.append(True)

    try:
        yield hand_over
    finally:
        if handed:
            _HANDED.release()


def _sweep_task(folders: list[str]) -> int:
    """On a worker: remove the stale temporaries that dead processes of its host left."""
    from .io import remove_stale_parts

    return sum(len(remove_stale_parts(f)) for f in folders)


# --------------------------------------------------------------------------- the driver


def _resolve_model(model, scale):
    from .upscaler import resolve_model

    return resolve_model(model, scale)


def _check_options(options: UpscalerOptions) -> None:
    """The choices ``Upscaler`` checks, checked here without resolving the backend (the
    workers resolve theirs)."""
    from .upscaler import check_choices

    check_choices(backend=options.backend, mode=options.mode, color=options.color,
                  tile=options.tile)


def _plugin_name() -> str:
    return f"iqlut-{uuid.uuid4().hex[:16]}"


class _Job:
    """One job's plugin on the cluster: registered, warmed on every worker, removed at
    the end (so a long-lived cluster does not keep the model). Entering registers it and
    sends each worker its warm-up task; ``ready()`` waits for them. A caller may submit its
    tasks in between: they queue behind the warm-up on each worker, so the workers do not
    sit idle for the round trip of the warm-up's result (docs/cluster.md, run P)."""

    def __init__(self, client, model, options: UpscalerOptions):
        self.client = client
        self.name = _plugin_name()
        self.plugin = UpscalerPlugin(self.name, model, options)
        self.workers = 0
        self.backend = options.backend
        self._warm = []

    def __enter__(self):
        client = self.client
        with _lost(client):
            workers = list(client.nthreads())
            if not workers:
                try:
                    client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
                except TimeoutError:
                    raise ClusterError(f"no Dask worker joined the scheduler within "
                                       f"{WAIT_FOR_WORKERS} s") from None
                workers = list(client.nthreads())
        with _lost(client):
            client.register_plugin(self.plugin, name=self.name)
        try:
            # each worker builds its upscaler (in parallel) first, so that a worker that
            # cannot (no GPU for --backend cuda, say) ends the job on one line (``ready``)
            self._warm = [client.submit(_warm, self.name, key=f"{self.name}-warm-{k}",
                                        workers=[w], allow_other_workers=True, pure=False)
                          for k, w in enumerate(workers)]
        except BaseException:
            self._unregister()
            raise
        self.workers = len(workers)
        return self

    def ready(self) -> None:
        """Wait for every worker's warm-up: ClusterError if one cannot run the upscaler;
        the warnings building it raised are passed on (once each); ``backend`` names what
        the workers resolved."""
        outcome = []
        for future in _completed(self.client, self._warm):
            try:
                outcome.append(future.result())
            except Exception:  # noqa: BLE001 - a worker that died meanwhile: Dask's
                continue
        for host, backend, why in outcome:
            if backend is None:
                raise ClusterError(f"worker {host} cannot run the upscaler: {why}")
        self.backend = ", ".join(sorted({b for _, b, _ in outcome}))
        import warnings

        for category, message in dict.fromkeys(w for _, _, ws in outcome for w in ws):
            warnings.warn(message, category, stacklevel=3)

    def _unregister(self):
        with contextlib.suppress(Exception):
            if self.client.status == "running":
                self.client.unregister_worker_plugin(self.name)

    def __exit__(self, *exc):
        self._unregister()


@contextlib.contextmanager
def _lost(client):
    """Dask's errors from a scheduler that went away, as one ClusterError line."""
    try:
        yield
    except ClusterError:
        raise
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"lost the connection to the Dask scheduler ({_first_line(e)})") from None


def _cancel(client, futures) -> None:
    """Cancel what is left of a job (not when the scheduler is gone: that would wait)."""
    if client.status == "running":
        with contextlib.suppress(Exception):
            client.cancel(list(futures))


def _completed(client, futures):
    """Each future of ``client`` as it finishes; a future cancelled because the client lost
    the scheduler ends the job with ClusterError (Dask cancels every pending future then).
    The futures are watched on ``client``'s own event loop: ``as_completed`` without ``loop``
    takes the process's default client's, and where that is another client (a second
    cluster or connection in the same process), that loop saw the futures finish only when
    one of its own timers woke it: up to Dask's tick interval late (250 ms a wait in the
    median with ``LEAN_DASK_CONFIG``'s 500 ms tick, docs/cluster.md)."""
    from distributed import as_completed

    for future in as_completed(futures, loop=client.loop):
        if future.status == "cancelled":
            raise ClusterError("lost the connection to the Dask scheduler; what was written "
                               "is complete (rerun with --skip-existing to go on)")
        yield future


def _group(jobs: list, batch: int, workers: int) -> list[list]:
    """Consecutive jobs in tasks: at most ``batch`` files and TASK_BYTES of input per task,
    and few enough per task that each worker gets about TASKS_PER_WORKER tasks."""
    per_task = max(1, min(batch, math.ceil(len(jobs) / (max(1, workers) * TASKS_PER_WORKER))))
    groups, current, size = [], [], 0
    for job in jobs:
        try:
            nbytes = os.path.getsize(job[0])
        except OSError:
            nbytes = 0
        if current and (len(current) >= per_task or size + nbytes > TASK_BYTES):
            groups.append(current)
            current, size = [], 0
        current.append(job)
        size += nbytes
    if current:
        groups.append(current)
    return groups


@dataclass
class FilesReport:
    """What ``upscale_files`` did: every file's ``FileResult`` in input order."""

    results: list[FileResult] = field(default_factory=list)
    workers: int = 0
    backend: str = ""
    seconds: float = 0.0

    @property
    def written(self) -> int:
        return sum(r.error is None and not r.skipped for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.skipped for r in self.results)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.error is not None]


def upscale_files(inputs, out, scale: int | None = None, *, client, model=None,
                  backend: str = "auto", mode: str = "auto", ensemble: int | None = None,
                  color: str = "rgb", tile: int | None = None, batch: int = 8,
                  png_level: int | None = None, overwrite: bool = False,
                  skip_existing: bool = False, on_file=None, jobs=None) -> FilesReport:
    """Upscale image files and folders on the workers of ``client`` (a ``distributed.Client``).

    ``inputs`` and ``out`` as for ``iqlut upscale``: files or folders in, one output file
    or a folder out (created if needed), names kept. The paths must be visible to every
    worker under the same name (a shared filesystem); they are made absolute here. A file
    that exists is an error unless ``overwrite`` (replace it) or ``skip_existing`` (leave
    it; a rerun after a crash goes on where it stopped). ``on_file(FileResult)`` is called
    in this thread as each file is done; ``jobs``: the pairs ``files.image_jobs(inputs, out)``
    gives, if the caller has them (the folders are then not listed again). Files that fail
    are in the report, never raised; ClusterError if the scheduler is lost or no worker can
    run the upscaler, ValueError for bad inputs or options.
    """
    from .io import remove_stale_parts

    batch = check_batch(batch)
    if overwrite and skip_existing:
        raise ValueError("overwrite and skip_existing exclude each other")
    options = UpscalerOptions(backend, mode, ensemble, color, tile)
    _check_options(options)
    model = _resolve_model(model, scale)
    model.with_ensemble(ensemble)  # checks the ensemble choice here, once
    jobs = files.image_jobs(inputs, out) if jobs is None else list(jobs)
    if not jobs:
        raise ValueError("no image files found in the inputs")
    single = len(jobs) == 1 and jobs[0][1] == Path(out)
    if not single:
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{out}: cannot create output folder ({e.strerror or e})") from None
    t0 = time.perf_counter()
    report = FilesReport(results=[None] * len(jobs))
    todo = []
    for k, (src, dst) in enumerate(jobs):
        src, dst = src.absolute(), dst.absolute()
        if skip_existing and files.skips(src, dst):
            report.results[k] = FileResult(src, dst, skipped=True)
        elif why := files.target_error(src, dst, overwrite):
            report.results[k] = FileResult(src, dst, why)
        if report.results[k] is None:
            todo.append((k, str(src), str(dst)))
        elif on_file is not None:
            on_file(report.results[k])
    folders = sorted({os.path.dirname(d) for _, _, d in todo})
    for folder in folders:
        remove_stale_parts(folder)
    if todo:
        with _Job(client, model, options) as job:
            groups = _group(todo, batch, job.workers)
            futures = dict(zip(client.map(
                _files_task, [job.name] * len(groups), [[(s, d) for _, s, d in g] for g in groups],
                png_level=png_level, batch=batch,
                key=[f"{job.name}-files-{k:06d}" for k in range(len(groups))]), groups))
            try:
                job.ready()
                report.workers, report.backend = job.workers, job.backend
                for future in _completed(client, list(futures)):
                    group = futures[future]
                    try:
                        results = future.result()
                    except ClusterError:
                        raise
                    except Exception as e:  # noqa: BLE001 - e.g. KilledWorker: the group fails
                        reason = _first_line(e)
                        results = [FileResult(Path(s), Path(d), f"{s}: {reason}")
                                   for _, s, d in group]
                    for (k, _, _), r in zip(group, results):
                        report.results[k] = r
                        if on_file is not None:
                            on_file(r)
                    future.release()
            except BaseException:
                _cancel(client, futures)
                raise
            with contextlib.suppress(Exception):  # what dead workers left, on every host;
                # not waited for (a round trip less per job): this host's is swept below,
                # and every worker process sweeps a folder before its first write there
                client.run(_sweep_task, folders, wait=False)
    for folder in folders:
        remove_stale_parts(folder)
    report.seconds = time.perf_counter() - t0
    return report


# --------------------------------------------------------------------------- video


@dataclass
class VideoReport:
    """What the cluster's ``upscale_video`` did."""

    frames: int = 0
    seconds: float = 0.0
    segments: int = 0
    workers: int = 0
    backend: str = ""
    info: object = None               # iqlut_gpu.video.VideoInfo of the source
    output_size: tuple[int, int] | None = None
    stages: dict = field(default_factory=dict)  # split, upscale, join (seconds)
    notes: list = field(default_factory=list)   # what the user should know, one line each

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def _ffmpeg(args: list, what: str, *, capture_stdout: bool = False) -> subprocess.CompletedProcess:
    """Run ffmpeg; a failure raises VideoError with ffmpeg's last words."""
    from .video import VideoError, ffmpeg_exe

    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *map(str, args)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, start_new_session=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines()
                 if ln.strip()]
        raise VideoError(f"{what} ({lines[-1] if lines else f'ffmpeg exit {proc.returncode}'})")
    return proc


def count_frames(path, stream: int = 0, decode: bool = True) -> int:
    """Frames of video stream ``stream`` of ``path``: decoded as the video pipeline decodes
    them (every frame once), or its packets (``decode=False``: stream copy, fast)."""
    args = ["-i", path, "-map", f"0:v:{stream}"]
    args += ["-fps_mode", "passthrough"] if decode else ["-c", "copy"]
    proc = _ffmpeg([*args, "-f", "null", "-progress", "pipe:1", "-nostats", "-"],
                   f"{path}: cannot count its frames", capture_stdout=True)
    counts = re.findall(rb"^frame=\s*(\d+)", proc.stdout, re.M)
    return int(counts[-1]) if counts else 0


def split_segments(src, folder: Path, seconds: float, stream: int = 0) -> list[Path]:
    """Cut the video stream of ``src`` at keyframes into segments of about ``seconds``
    (stream copy; the cut is at the first keyframe at or after each multiple; timestamps
    restart at zero in each). The segments keep the source's container where ffmpeg can
    write it, else Matroska. Returns them in order."""
    suffixes = [Path(src).suffix.lower()] if Path(src).suffix else []
    last = None
    for suffix in [*suffixes, ".mkv"]:
        for old in folder.glob("seg_*"):
            old.unlink()
        try:
            _ffmpeg(["-i", src, "-map", f"0:v:{stream}", "-c", "copy", "-an", "-sn", "-dn",
                     "-f", "segment", "-segment_time", f"{seconds:.6f}",
                     "-reset_timestamps", "1", folder / f"seg_%06d{suffix}"],
                    f"{src}: cannot cut it into segments")
        except Exception as e:  # noqa: BLE001 - the next container, then the last error
            last = e
            continue
        found = sorted(folder.glob(f"seg_*{suffix}"))
        if found:
            return found
    raise last


def packet_times(path, stream: int = 0) -> list[Fraction]:
    """The presentation time (seconds, in the demuxer's reference) of every packet of video
    stream ``stream``, in file (decoding) order: a stream copy, nothing decoded."""
    proc = _ffmpeg(["-i", path, "-map", f"0:v:{stream}", "-c", "copy", "-f", "framecrc", "-"],
                   f"{path}: cannot list its packets", capture_stdout=True)
    tb, times = Fraction(1), []
    for line in proc.stdout.decode("ascii", "replace").splitlines():
        if line.startswith("#tb"):
            tb = Fraction(line.split(":", 1)[1].strip())
        elif line and not line.startswith("#"):
            times.append(int(line.split(",")[2]) * tb)
    return times


def segment_starts(times: list[Fraction], packets: list[int]) -> list[Fraction] | None:
    """Where each segment's first frame is in the source: the earliest presentation time
    among its packets (``times``: the source's packets in file order, ``packets``: how many
    of them each segment took, in order; a segment starts with a keyframe and, cut from a
    closed-GOP stream, shows no frame before it). None if the counts do not add up."""
    if sum(packets) != len(times) or not all(packets):
        return None
    starts, at = [], 0
    for n in packets:
        starts.append(min(times[at:at + n]))
        at += n
    return starts


def concat_list(outs: list[Path], starts: list[Fraction] | None) -> str:
    """The concat demuxer's script joining the upscaled segments ``outs``: each file and, for
    all but the last, its duration in the source (the next segment's start minus its own),
    so that each segment begins exactly where its frames were, even where a segment's last
    frame lasts longer than its encoder guesses (a variable rate: a 15 fps stretch at a
    seam of a 30 fps clip). Without ``starts`` the files' own durations are used."""
    lines = []
    for k, out in enumerate(outs):
        lines.append(f"file '{out.name}'")
        if starts is not None and k + 1 < len(outs):
            lines.append(f"duration {float(starts[k + 1] - starts[k]):.6f}")
    return "\n".join(lines) + "\n"


def _stands_alone(segment: Path) -> bool:
    """Whether a segment decodes to as many frames as it holds packets (it does not when
    frames before its first keyframe refer to the segment before: an open GOP)."""
    return count_frames(segment) == count_frames(segment, decode=False)


def _segment_plan(src: Path, dst: Path, info, source, out_size, codec, crf, preset):
    """The driver's checks for the output and the upscaled segments, made once: (the
    segments' suffix, the pixel format the encoder gets, notes). The segments take the
    output's container if it is MP4/QuickTime (exact timestamps; one test encode, with the
    source's audio, checks both), else MP4/QuickTime where they hold ``codec``, else the
    output's own (a test encode for the output, one for the segments' container)."""
    from .video import VideoError, check_output

    def check(path, audio_from=None):
        return check_output(path, info, source, out_size, codec=codec, crf=crf, preset=preset,
                            audio_from=audio_from)

    audio_from = src if info.audio else None
    if dst.suffix.lower() in EXACT_CONTAINERS + (".m4v",):
        return (dst.suffix, *check(dst, audio_from))
    checked = check(dst, audio_from)
    for suffix in EXACT_CONTAINERS:
        try:
            return (suffix, *check(dst.with_suffix(suffix)))
        except VideoError:
            continue
    return (dst.suffix, *checked)


def _segment_task(name: str, src: str, dst: str, batch: int, codec: str, crf,
                  extra: dict, prechecked) -> tuple:
    """On a worker: upscale one segment file into ``dst`` (``extra``: more keyword arguments
    of ``video.upscale_video``, e.g. planes, preset; ``prechecked``: the driver's probe,
    layout and encoder check, ``video.Prechecked`` without the path, so that the segment
    runs no ffmpeg but its decoder and its encoder); (frames decoded and upscaled, seconds,
    backend). Once its last frame has gone to the encoder the task leaves the worker's thread
    (``_handing_over``): the next segment is decoded and upscaled while this one's encoder
    finishes (x264 encodes most of a short segment at its end); it still reports done only
    once ``dst`` is complete."""
    import dataclasses

    from . import video

    if not os.path.exists(src):
        raise video.VideoError(_not_shared(src, "segment"))
    up = _plugin(name).upscaler()
    prechecked = dataclasses.replace(
        prechecked, info=dataclasses.replace(prechecked.info, path=Path(src)))
    with _handing_over() as hand_over:
        stats = video.upscale_video(src, dst, upscaler=up, batch=batch, codec=codec, crf=crf,
                                    overwrite=True, prechecked=prechecked, flushing=hand_over,
                                    **extra)
    return stats.frames, stats.seconds, up.backend


def _segments_folder(dst: Path) -> Path:
    from .io import part_marker

    return Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=f"{part_marker()}.part.d",
                                 dir=dst.parent))


def _remove_folder(folder: Path) -> None:
    for _ in range(5):  # a cancelled task may still be finishing a file in it
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.2)


def _first_frame_time(src: Path, info) -> float:
    """Seconds from the file's start to the first decoded frame of ``src``'s video stream
    (as ``iqlut_gpu.video`` times frames: decoding one frame)."""
    from .video import read_video

    frames = read_video(src, info)
    try:
        return float(next(frames).time)
    finally:
        frames.close()


def upscale_video(src, dst, scale: int | None = None, *, client, model=None,
                  backend: str = "auto", mode: str = "auto", ensemble: int | None = None,
                  batch: int = 4, codec: str | None = None, crf: int | None = None,
                  overwrite: bool = False, segment_seconds: float | None = None,
                  progress=None, color: str = "rgb", planes: str | None = None,
                  preset: str | None = None, info=None) -> VideoReport:
    """Upscale the video ``src`` into ``dst`` on the workers of ``client``: segments cut at
    keyframes, upscaled on the workers, joined by stream copy, the source's audio muxed once.

    The result has the single-process run's frame count, frame rate, frame order and
    timestamps; with a lossless ``codec`` (ffv1, libx264rgb -crf 0, ...) its frames are the
    single-process run's, bit for bit; with a lossy one each segment is encoded on its own
    (a keyframe at each seam). ``segment_seconds``: the cut interval (default: about four
    segments per worker, at least MIN_SEGMENT_SECONDS). ``progress(frames_done)`` is called
    in this thread as segments finish. ``color``, ``planes``, ``preset``: as for
    ``iqlut_gpu.video.upscale_video`` (``planes``/``preset`` are passed on when given);
    ``info``: ``video.probe(src)`` if the caller has it. ``dst`` and the hidden segment
    folder beside it must be on a filesystem the workers share. Raises VideoError (a
    ValueError) for a bad input or output, ClusterError for a lost cluster; on any failure
    ``dst`` is untouched and the segments are removed.
    """
    import dataclasses

    from .io import atomic_path, sweep_once
    from .video import (CRF_CODECS, DEFAULT_CRF, Prechecked, VideoError, check_output_path,
                        plan_layout, probe)

    batch = check_batch(batch)
    if segment_seconds is not None and not segment_seconds > 0:
        raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
    options = UpscalerOptions(backend, mode, ensemble, color)
    _check_options(options)
    model = _resolve_model(model, scale)
    model.with_ensemble(ensemble)
    extra = {k: v for k, v in (("planes", planes), ("preset", preset)) if v is not None}
    src, dst = Path(src).absolute(), Path(dst).absolute()
    info = info or probe(src)
    check_output_path(src, dst, overwrite)
    codec = codec or "libx264"
    if crf is None and codec in CRF_CODECS:
        crf = DEFAULT_CRF
    r = model.scale
    out_size = (info.width * r, info.height * r)
    source = plan_layout(info, planes or "auto", codec)
    seg_suffix, pix_fmt, notes = _segment_plan(src, dst, info, source, out_size, codec, crf,
                                               preset)
    # each segment is described as the source is (a stream copy of its video: the same
    # size, rate, pixel format, colour and aspect tags), as the single-process run sees it
    prechecked = Prechecked(dataclasses.replace(info, stream=0, audio=(), duration=None),
                            source, pix_fmt, tuple(notes))
    sweep_once(dst.parent)  # before the segments go there; atomic_path(dst) then does not
    report = VideoReport(info=info, output_size=out_size, notes=list(notes))
    t_start = time.perf_counter()
    work = _segments_folder(dst)
    try:
        with _Job(client, model, options) as job:
            job.ready()
            report.workers, report.backend = job.workers, job.backend
            seconds = segment_seconds or max(
                MIN_SEGMENT_SECONDS,
                (info.duration or 0) / (SEGMENTS_PER_WORKER * max(1, job.workers)))
            t0 = time.perf_counter()
            segments = split_segments(src, work, seconds, info.stream)
            if len(segments) > 1 and not _stands_alone(segments[1]):
                # open GOP: the frames before a keyframe refer to the segment before it
                segments = split_segments(src, work, 1e9, info.stream)
                report.notes.append("its frames refer across keyframes (open GOP): "
                                    "upscaled as one segment on one worker")
            report.stages["split"] = time.perf_counter() - t0
            report.segments = len(segments)
            t0 = time.perf_counter()
            outs = [work / f"up_{k:06d}{seg_suffix}" for k in range(len(segments))]
            futures = {client.submit(_segment_task, job.name, str(s), str(o), batch, codec, crf,
                                     extra, prechecked, key=f"{job.name}-segment-{k:06d}"): k
                       for k, (s, o) in enumerate(zip(segments, outs))}
            frames = [0] * len(segments)
            try:
                for future in _completed(client, list(futures)):
                    k = futures[future]
                    try:
                        frames[k] = future.result()[0]
                    except (ClusterError, VideoError):
                        raise
                    except Exception as e:  # noqa: BLE001 - KilledWorker and the like
                        raise VideoError(f"{src}: segment {k + 1} of {len(segments)} failed "
                                         f"({_first_line(e)})") from None
                    future.release()
                    report.frames = sum(frames)
                    if progress is not None:
                        progress(report.frames)
            except BaseException:
                _cancel(client, futures)
                raise
            report.stages["upscale"] = time.perf_counter() - t0
        t0 = time.perf_counter()

        # A segment decodes to at most as many frames as it holds packets (fewer where frames
        # refer to the segment before it), so the segments' frames adding up to the source's
        # packets means that every segment gave all of its own, and the packets' times say
        # where each segment starts.
        times = packet_times(src, info.stream)
        if report.frames != len(times):
            whole = count_frames(src, info.stream)  # what the single-process run decodes
            if whole != report.frames:
                raise VideoError(f"{src}: cut at its keyframes it gives {report.frames} "
                                 f"frames, not its {whole} (frames that need the previous "
                                 "segment: an open-GOP source?); upscale it without --cluster")
        # The segments start at 0 (cut with reset timestamps) and the concat demuxer puts
        # each after the ones before it, for the duration it had in the source; the joined
        # video then starts where the source's first frame is (0.2 s after the sound in a
        # phone's clip), as the single-process run keeps it, so picture and sound stay
        # together.
        offset = _first_frame_time(src, info)
        starts = segment_starts(times, frames) if len(outs) > 1 else None
        (work / "concat.txt").write_text(concat_list(outs, starts))
        args = ["-y", *(["-itsoffset", f"{offset:.6f}"] if offset else []),
                "-f", "concat", "-safe", "0", "-i", work / "concat.txt"]
        if info.audio:
            args += ["-i", src, "-map", "0:v:0", "-map", "1:a?"]
        else:
            args += ["-map", "0:v:0"]
        with atomic_path(dst) as tmp:
            _ffmpeg([*args, "-c", "copy", tmp], f"{dst}: cannot join the upscaled segments")
            joined = count_frames(tmp, 0, decode=False)
            if joined != report.frames:
                raise VideoError(f"{dst}: the joined video has {joined} frames, not "
                                 f"{report.frames}")
        report.stages["join"] = time.perf_counter() - t0
    finally:
        _remove_folder(work)
    report.seconds = time.perf_counter() - t_start
    return report
