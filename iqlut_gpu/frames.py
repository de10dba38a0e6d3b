"""``upscale_frames``: upscale a stream of frames, several frames per backend call.

A batch of N frames with C channels is N*C planes, the backends' unit of work
(docs/design.md, "Planes and codes"). Frames are gathered lazily from any iterable: at most
``batch`` frames are read ahead of the frame being yielded (two batches where the backend
overlaps one batch's transfers with the previous batch's kernels), so memory stays
bounded for endless streams.

Runners (one per backend call shape):

- ``_SyncRunner``: every backend; one call per batch (``run_planes_bounded`` when the API
  has it: large frames in tiles, device out-of-memory retried with smaller tiles).
- ``_StreamRunner`` over ``_CudaStreamer`` (the cuda backend): two batches in flight, each
  on its own CUDA stream with its own pinned host buffers. ``submit`` copies the planes
  into a pinned buffer and queues upload, kernels (``cuda_backend.run_planes`` on that
  stream) and download, then returns at once; ``collect`` waits for that stream only. So
  batch k+1's upload overlaps batch k's kernels and download, and the host meanwhile
  prepares and hands out frames. CUDA events time each stage.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from . import backends
from .api import MODES, _as_model, from_planes, to_planes

DEFAULT_BATCH = 4
STAGES = ("upload", "kernels", "download")


def _check_frame(frame, index: int) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame {index} must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise TypeError(f"frame {index} must be uint8, got {frame.dtype}")
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
        raise ValueError(f"frame {index} must be (H,W) or (H,W,C) with C in 1, 3, 4, "
                         f"got shape {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame {index} must not be empty, got shape {frame.shape}")
    return frame


class _SyncRunner:
    """One blocking backend call per batch. On the CPU, "upload" and "download" are the
    layout changes (frames -> contiguous planes -> frames) around the kernels."""

    depth = 1
    reuses_buffers = False

    def __init__(self, name: str, model, mode: str):
        from . import api

        self.name, self.model, self.mode = name, model, mode
        self._run = getattr(api, "run_planes_bounded", None)
        self.timings = dict.fromkeys(STAGES, 0.0)

    def submit(self, planes: np.ndarray):
        t0 = time.perf_counter()
        if self._run is not None:
            out = self._run(self.name, self.model, planes, self.mode)
        else:
            out = np.asarray(backends.run_planes(self.name, self.model, planes, self.mode))
        self.timings["kernels"] += time.perf_counter() - t0
        return out

    def collect(self, token) -> np.ndarray:
        return token


class _StreamRunner:
    """A streamer with ``depth`` batches in flight (see module doc). Its output buffers
    are reused, so results are copied out before the next submit. A batch the device has
    no memory for goes through ``fallback`` (a ``_SyncRunner``: tiles, smaller on OOM)."""

    reuses_buffers = True

    def __init__(self, streamer, fallback=None):
        self._s, self._fallback = streamer, fallback
        self.depth = streamer.depth

    @property
    def timings(self):
        t = dict(self._s.timings)
        if self._fallback is not None:
            for k, v in self._fallback.timings.items():
                t[k] = t.get(k, 0.0) + v
        return t

    def submit(self, planes):
        try:
            return True, self._s.submit(planes)
        except MemoryError:  # backends.DeviceOutOfMemory, or CuPy's for the batch buffers
            if self._fallback is None:
                raise
            return False, self._fallback.submit(planes)

    def collect(self, token):
        streamed, value = token
        return np.asarray(self._s.collect(value)) if streamed else value


class _CudaStreamer:
    """``depth`` slots, each a CUDA stream with pinned host buffers for the planes in and
    out, device buffers reused while the batch shape stays the same. Written against
    ``iqlut_gpu.kernels.cuda_backend.run_planes(prepared, device_planes, mode, stream)``,
    which queues the model's kernels on ``stream`` without waiting."""

    depth = 2

    def __init__(self, prepared, mode: str, modules=None):
        if modules is None:  # (tests pass stand-ins for cupy, cupyx and the backend)
            import cupy
            import cupyx

            from .kernels import cuda_backend

            modules = (cupy, cupyx, cuda_backend)
        self._cp, self._cpx, self._cuda = modules
        self.prepared, self.mode = prepared, mode
        self.timings = dict.fromkeys(STAGES, 0.0)
        self._slots = [dict(stream=self._cp.cuda.Stream(non_blocking=True), shape=None)
                       for _ in range(self.depth)]
        self._turn = 0

    def _buffers(self, slot, shape):
        if slot["shape"] != shape:
            cp, cpx, r = self._cp, self._cpx, self.prepared.scale
            P, H, W = shape
            slot.update(shape=shape, host_in=cpx.empty_pinned(shape, np.uint8),
                        dev_in=cp.empty(shape, np.uint8),
                        host_out=cpx.empty_pinned((P, H * r, W * r), np.uint8))
        return slot

    def submit(self, planes: np.ndarray):
        cp = self._cp
        slot = self._buffers(self._slots[self._turn % self.depth], planes.shape)
        self._turn += 1
        stream = slot["stream"]
        stream.synchronize()  # its previous batch was collected; make sure the copy is done
        np.copyto(slot["host_in"], planes)
        events = [cp.cuda.Event() for _ in range(4)]
        with stream:
            events[0].record(stream)
            slot["dev_in"].set(slot["host_in"], stream=stream)  # async: the source is pinned
            events[1].record(stream)
            out = self._cuda.run_planes(self.prepared, slot["dev_in"], self.mode, stream=stream)
            events[2].record(stream)
            out.get(stream=stream, out=slot["host_out"], blocking=False)
            events[3].record(stream)
        slot["events"], slot["out_dev"] = events, out
        return slot

    def collect(self, slot) -> np.ndarray:
        cp = self._cp
        ev = slot["events"]
        ev[3].synchronize()
        for name, a, b in zip(STAGES, ev[:3], ev[1:]):
            self.timings[name] += cp.cuda.get_elapsed_time(a, b) / 1000.0
        slot["out_dev"] = None
        return slot["host_out"]


def _runner(name: str, model, mode: str):
    if name == "cuda":
        from .kernels import cuda_backend

        if hasattr(cuda_backend, "run_planes"):
            return _StreamRunner(_CudaStreamer(backends.prepare(model),
                                               backends.concrete_mode(name, mode)),
                                 fallback=_SyncRunner(name, model, mode))
    return _SyncRunner(name, model, mode)


def upscale_frames(frames: Iterable[np.ndarray], scale: int = 4, *, model=None,
                   backend: str = "auto", batch: int = DEFAULT_BATCH, mode: str = "auto",
                   stats: dict | None = None) -> Iterator[np.ndarray]:
    """Yield each frame of ``frames`` upscaled by ``scale``, in order.

    frames: any iterable of uint8 ``(H,W)`` or ``(H,W,C)`` arrays (C in 1, 3, 4); it is
    read lazily. Consecutive frames of the same shape are batched, up to ``batch`` per
    backend call; a change of shape starts a new batch. ``model``, ``backend`` and ``mode``
    are as for ``iqlut_gpu.upscale``, and each output equals ``upscale(frame, ...)`` bit for
    bit. ``stats``: an optional dict into which the seconds spent in "upload" (frames to
    planes, and to the device on a GPU), "kernels" and "download" are added.

    Raises TypeError/ValueError for a frame of the wrong type or shape (when it is reached).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    model = _as_model(model, scale)
    name = backends.resolve(backend)
    return _generate(iter(frames), model, name, batch, mode, stats)


def _generate(frames, model, name, batch, mode, stats) -> Iterator[np.ndarray]:
    runner = _runner(name, model, mode)
    before = dict(runner.timings)
    inflight: deque = deque()  # (token, layout, count)
    pending: list[np.ndarray] = []
    index = 0

    def submit():
        t0 = time.perf_counter()
        stack = np.stack(pending) if len(pending) > 1 else pending[0][None]
        if stack.ndim == 3:
            stack = stack[..., None]
        planes, layout = to_planes(stack)
        packed = time.perf_counter() - t0
        if stats is not None:
            stats["upload"] = stats.get("upload", 0.0) + packed
        inflight.append((runner.submit(planes), layout, pending[0].ndim))
        pending.clear()

    def finish():
        token, layout, ndim = inflight.popleft()
        out = runner.collect(token)
        t0 = time.perf_counter()
        result = from_planes(out, layout)
        if runner.reuses_buffers and np.may_share_memory(result, out):
            result = result.copy()  # the runner will overwrite ``out`` (one-channel frames)
        if ndim == 2:
            result = result[..., 0]
        unpacked = time.perf_counter() - t0
        if stats is not None:
            stats["download"] = stats.get("download", 0.0) + unpacked
            for k in STAGES:
                stats[k] = stats.get(k, 0.0) + runner.timings.get(k, 0.0) - before.get(k, 0.0)
                before[k] = runner.timings.get(k, 0.0)
        return list(result)

    for frame in frames:
        frame = _check_frame(frame, index)
        index += 1
        if pending and frame.shape != pending[0].shape:
            while len(inflight) >= runner.depth:  # a runner holds at most `depth` batches
                yield from finish()
            submit()
        pending.append(frame)
        if len(pending) == batch:
            while len(inflight) >= runner.depth:
                yield from finish()
            submit()
        while len(inflight) >= runner.depth:  # hand out what is done; keep depth-1 running
            yield from finish()
    if pending:
        while len(inflight) >= runner.depth:
            yield from finish()
        submit()
    while inflight:
        yield from finish()
