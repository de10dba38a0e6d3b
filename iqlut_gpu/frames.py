"""Streams of frames: several frames per backend call, lazily, with bounded memory.

``upscale_stream(upscaler, frames, batch)`` (what ``Upscaler.frames`` and
``iqlut_gpu.upscale_frames`` run) gathers consecutive frames of the same shape into
batches of up to ``batch`` frames. A batch of N frames with C channels is N*C planes, the
backends' unit of work (docs/design.md, "Planes and codes"). Frames are read lazily from
any iterable: at most ``batch`` frames are read ahead of the frame being yielded (two
batches where the backend overlaps one batch's transfers with the previous batch's
kernels), so memory stays bounded for endless streams.

Runners (``make_runner``):

- ``SyncRunner``: every backend; one blocking ``Upscaler.run_layout`` per batch (large
  frames in tiles, device out-of-memory retried with smaller tiles; luma mode).
- ``StreamRunner`` over a streamer with ``depth`` batches in flight: on the cuda backend,
  ``kernels/cuda_stream.CudaStreamer`` (two CUDA streams with pinned host buffers; batch
  k+1's upload overlaps batch k's kernels and download; frames are split into planes and
  joined back on the device, so the runner takes whole frames: ``takes_frames``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from . import backends
from .planes import from_planes, to_planes

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


class SyncRunner:
    """One blocking ``upscaler.run_planes`` per batch. On the CPU, "upload" and "download"
    are the layout changes (frames -> contiguous planes -> frames) around the kernels."""

    depth = 1

    def __init__(self, upscaler):
        self.upscaler = upscaler
        self.timings = dict.fromkeys(STAGES, 0.0)

    def submit(self, planes: np.ndarray, layout):
        t0 = time.perf_counter()
        out = self.upscaler.run_layout(planes, layout)
        self.timings["kernels"] += time.perf_counter() - t0
        return out

    def collect(self, token) -> np.ndarray:
        return token

    def reused(self, out) -> bool:
        """Whether a later submit overwrites ``out`` (never: every result is new memory)."""
        return False


class StreamRunner:
    """A streamer with ``depth`` batches in flight (see the module doc). An output that is
    one of the streamer's reused buffers (``reused``: past ``cuda_stream.LEND_MAX``
    batches held by the caller) is copied out before the next submit; a lent block is
    not. A batch the device has no memory for goes through ``fallback`` (a
    ``SyncRunner``: tiles, smaller on OOM). It takes and gives whole frames ``[N, H, W,
    C]`` (the streamer splits them into planes and joins them back on the device)."""

    takes_frames = True

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

    def submit(self, frames, layout=None):  # ``layout``: None, as generate() passes frames
        try:
            return True, self._s.submit(frames)
        except MemoryError:  # backends.DeviceOutOfMemory, or CuPy's for the batch buffers
            if self._fallback is None:
                raise
            planes, layout = to_planes(frames)
            return False, (self._fallback.submit(planes, layout), layout)

    def collect(self, token):
        streamed, value = token
        if streamed:
            return np.asarray(self._s.collect(value))
        out, layout = value
        return from_planes(self._fallback.collect(out), layout)

    def reused(self, out) -> bool:
        return self._s.reused(out)


def make_runner(upscaler):
    """The runner for ``upscaler``'s backend: streamed on CUDA (RGB mode), synchronous
    elsewhere."""
    if upscaler.backend == "cuda" and upscaler.color == "rgb":
        from .kernels.cuda_stream import CudaStreamer

        return StreamRunner(CudaStreamer(backends.prepare(upscaler.model), upscaler.mode),
                            fallback=SyncRunner(upscaler))
    return SyncRunner(upscaler)


def check_batch(batch: int | None) -> int:
    """``batch`` frames per backend call (None: DEFAULT_BATCH), or ValueError."""
    batch = DEFAULT_BATCH if batch is None else batch
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    return batch


def add_stage_times(stats: dict, runner, before: dict) -> None:
    """Add to ``stats`` the seconds the runner's stages (STAGES) took since ``before`` (its
    ``timings`` when last added), and move ``before`` on."""
    for k in STAGES:
        stats[k] = stats.get(k, 0.0) + runner.timings.get(k, 0.0) - before.get(k, 0.0)
        before[k] = runner.timings.get(k, 0.0)


def upscale_stream(upscaler, frames: Iterable[np.ndarray], batch: int | None = None,
                   stats: dict | None = None, max_pixels: int | None = None
                   ) -> Iterator[np.ndarray]:
    """Yield each frame of ``frames`` upscaled by ``upscaler`` (an ``Upscaler``), in order.

    frames: any iterable of uint8 ``(H,W)`` or ``(H,W,C)`` arrays (C in 1, 3, 4); it is
    read lazily. Consecutive frames of the same shape are batched, up to ``batch`` (default
    4) per backend call and, past the first frame, up to ``max_pixels`` input pixels
    (height * width per frame; None: no limit); a change of shape starts a new batch.
    Each output equals
    ``upscaler(frame)`` bit for bit. ``stats``: an optional dict into which the seconds
    spent in "upload" (frames to planes, and to the device on a GPU), "kernels" and
    "download" are added.

    Raises TypeError/ValueError for a frame of the wrong type or shape (when it is reached).
    """
    batch = check_batch(batch)
    return generate(lambda: make_runner(upscaler), iter(frames), batch, stats, max_pixels)


def generate(new_runner, frames, batch, stats, max_pixels=None) -> Iterator[np.ndarray]:
    """The batching loop of ``upscale_stream`` over the runner ``new_runner()`` (made when
    the first frame is asked for)."""
    runner = new_runner()
    interleave = backends.host_interleave()
    before = dict(runner.timings)
    inflight: deque = deque()  # (token, layout, count)
    pending: list[np.ndarray] = []
    index = 0

    def submit():
        t0 = time.perf_counter()
        stack = np.stack(pending) if len(pending) > 1 else pending[0][None]
        if stack.ndim == 3:
            stack = stack[..., None]
        if getattr(runner, "takes_frames", False):  # it splits and joins on its device
            planes, layout = stack, None
        else:
            planes, layout = to_planes(stack)
        packed = time.perf_counter() - t0
        if stats is not None:
            stats["upload"] = stats.get("upload", 0.0) + packed
        inflight.append((runner.submit(planes, layout), layout, pending[0].ndim))
        pending.clear()

    def finish():
        token, layout, ndim = inflight.popleft()
        out = runner.collect(token)
        t0 = time.perf_counter()
        result = out if layout is None else from_planes(out, layout, interleave=interleave)
        if runner.reused(out) and np.may_share_memory(result, out):
            result = result.copy()  # the runner will overwrite ``out``
        if ndim == 2:
            result = result[..., 0]
        unpacked = time.perf_counter() - t0
        if stats is not None:
            stats["download"] = stats.get("download", 0.0) + unpacked
            add_stage_times(stats, runner, before)
        return list(result)

    for frame in frames:
        frame = _check_frame(frame, index)
        index += 1
        if pending and (frame.shape != pending[0].shape or (
                max_pixels is not None and (len(pending) + 1) * frame.shape[0] * frame.shape[1]
                > max_pixels)):
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
