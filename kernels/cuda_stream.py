"""Frame batches through the CUDA backend with two batches in flight (``CudaStreamer``).

Used by ``iqlut_gpu.frames.StreamRunner`` for the cuda backend. Each of ``depth`` slots is
a CUDA stream with its own host buffers (pinned) and device input buffer. ``submit``
copies a batch of frames ``[N, H, W, C]`` into the slot's pinned input buffer and queues,
on the slot's stream: the upload, the split into planes (on the device), the model's
kernels (``cuda_backend.run_planes``), the join back into frames (on the device) and the
download into the pinned output buffer; then it returns at once. ``collect`` waits for
that batch only. So batch k+1's upload overlaps batch k's kernels and download while the
host prepares and hands out frames, and the host does no layout work. CUDA events time
each stage ("upload", "kernels" (split, model, join), "download", as
``iqlut_gpu.frames.STAGES``).

Synchronisation (each one is needed; tests/test_cuda_async.py removes each in turn and
shows a test fail):

- ``collect`` waits for the batch's last event before the host reads its output buffer;
- ``submit`` on a slot whose batch was never collected (a failure after its upload, say)
  first waits for that batch: its upload may still be reading the pinned input buffer;
- the model's tables are complete before any stream reads them
  (``cuda_backend.device_tables``).

Host memory: each slot keeps one pinned input buffer and one device input buffer, grown
by doubling when a batch needs more and reused (as views) for every smaller batch, so a
stream whose frame size changes does not pin one more buffer per shape (CuPy's pinned
pool keeps every freed block for a later allocation of the same size). A batch's output
is downloaded into a pinned block of its own (a power of two in size) that is *lent* to
the caller: ``collect`` returns it and the streamer never writes it again, so the frames
need no copy out of a reused buffer (on an H200 that copy, 100 MB a batch of 4K frames,
took most of the streamed path's time). When the caller drops the frames the block goes
back to CuPy's pinned pool and the next batch of that size gets it again (after blocks of
another size went back, the next lending releases the pool's free blocks, so that a folder
of photos of many sizes does not leave pinned blocks of each size behind). At most
``LEND_MAX`` blocks and ``LEND_BYTES`` of them are out at once (pinned memory is locked
out of the machine's paging); past that (a caller that keeps every frame) a batch
goes through the slot's own reused output buffer, which ``reused`` reports, and the
caller copies it (``iqlut_gpu.frames``). Where pinned memory cannot be had
(``cudaErrorMemoryAllocation``, a ``CUDARuntimeError``, not a ``MemoryError``), nothing
is lent and the slot uses pageable memory: the copies then complete before they return,
slower but correct.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

# the stages it times, by the names of iqlut_gpu.frames.STAGES (a test checks they agree)
STAGES = ("upload", "kernels", "download")
from iqlut_gpu.planes import from_planes, to_planes

MIN_CAPACITY = 1 << 16  # bytes: the smallest buffer a slot allocates
LEND_MAX = 8  # output blocks lent to the caller at once (see the module doc): two
# batches in flight and two held, of two plane groups each (a YUV frame's Y and its U, V)
LEND_BYTES = 1 << 30  # and at most this much pinned memory in them
CUDA_ERROR_MEMORY_ALLOCATION = 2


def _capacity(nbytes: int) -> int:
    """The next power of two >= nbytes (at least MIN_CAPACITY)."""
    return max(MIN_CAPACITY, 1 << max(0, int(nbytes) - 1).bit_length())


class _Slot:
    def __init__(self, stream):
        self.stream = stream
        self.buffers = {}  # name -> flat uint8 buffer
        self.pinned = True
        self.busy = None  # event after which this slot's copies no longer touch its buffers
        self.events = None
        self.out_dev = None
        self.host_out = None  # the batch's output buffer, until collect hands it out


class CudaStreamer:
    """``depth`` slots, each a CUDA stream with host buffers for the frames in and out and a
    device input buffer. Written against
    ``iqlut_gpu.kernels.cuda_backend.run_planes(prepared, device_planes, mode, stream)``,
    which queues the model's kernels on ``stream`` without waiting.

    ``submit(frames)``: uint8 ``[N, H, W, C]`` (host); ``collect(token)``: uint8
    ``[N, H*r, W*r, C]``, a lent block the caller keeps, or (``reused(out)``) a view of
    the slot's output buffer, valid until the slot's next ``submit``."""

    depth = 2
    takes_frames = True

    def __init__(self, prepared, mode: str, modules=None):
        if modules is None:  # (tests may pass stand-ins for cupy, cupyx and the backend)
            import cupy
            import cupyx

            from . import cuda_backend

            modules = (cupy, cupyx, cuda_backend)
        self._cp, self._cpx, self._cuda = modules
        self.prepared, self.mode = prepared, mode
        self.timings = dict.fromkeys(STAGES, 0.0)
        self._slots = [_Slot(self._cp.cuda.Stream(non_blocking=True)) for _ in range(self.depth)]
        self._turn = 0
        self._lent = 0  # output blocks the caller holds (or a slot until its collect)
        self._lent_bytes = 0
        self._lend_size = None  # the size of the blocks lent last
        self._stale = False  # a block of another size went back to the pool since
        self._lock = threading.RLock()  # a block can be freed on any thread, even in here

    # ------------------------------------------------------------------ buffers

    def _host(self, slot, name, shape):
        """A host buffer view of ``shape`` (uint8), pinned while pinned memory lasts."""
        n = int(np.prod(shape))
        buf = slot.buffers.get(name)
        if buf is None or buf.size < n:
            slot.buffers[name] = None  # let the old one go first
            size = _capacity(n)
            buf = None
            if slot.pinned:
                buf = self._pinned_or_none(size)
                slot.pinned = buf is not None
            if buf is None:
                buf = np.empty(size, np.uint8)  # pageable: synchronous copies
            slot.buffers[name] = buf
        return buf[:n].reshape(shape)

    def _pinned_or_none(self, nbytes: int):
        """A pinned uint8 block of ``nbytes``, or None where pinned memory cannot be had."""
        try:
            return self._cpx.empty_pinned((nbytes,), np.uint8)
        except MemoryError:
            return None
        except self._cp.cuda.runtime.CUDARuntimeError as e:
            if getattr(e, "status", None) != CUDA_ERROR_MEMORY_ALLOCATION:
                raise
            return None

    def _lend(self, shape):
        """A pinned output buffer of ``shape`` (uint8) of its own, for the caller to keep,
        or None when ``LEND_MAX`` blocks or ``LEND_BYTES`` are out or pinned memory cannot
        be had."""
        n = int(np.prod(shape))
        size = _capacity(n)
        with self._lock:
            if self._lent >= LEND_MAX or self._lent_bytes + size > LEND_BYTES:
                return None
            self._lent += 1
            self._lent_bytes += size
            stale = self._stale or self._lend_size not in (None, size)
            self._stale, self._lend_size = False, size
        if stale:  # the pool's free blocks of other sizes would only be kept, locked
            self._cp.get_default_pinned_memory_pool().free_all_blocks()
        block = self._pinned_or_none(size)
        if block is None:
            self._returned(size)
            return None
        weakref.finalize(block, self._returned, size)  # when the last frame of it is dropped
        return block[:n].reshape(shape)

    def _returned(self, size: int):
        with self._lock:  # (a finalizer: only bookkeeping here, the pool is freed by _lend)
            self._lent -= 1
            self._lent_bytes -= size
            self._stale = self._stale or size != self._lend_size

    def reused(self, out) -> bool:
        """Whether ``out`` (from ``collect``) is a slot's own output buffer, which a later
        ``submit`` overwrites (rather than a lent block)."""
        start = out.ctypes.data  # addresses only: no access to memory a copy may be writing
        return any(b is not None and b.ctypes.data <= start < b.ctypes.data + b.nbytes
                   for b in (s.buffers.get("host_out") for s in self._slots))

    def _device(self, slot, name, shape):
        n = int(np.prod(shape))
        buf = slot.buffers.get(name)
        if buf is None or buf.size < n:
            slot.buffers[name] = None
            buf = slot.buffers[name] = self._cp.empty((_capacity(n),), np.uint8)
        return buf[:n].reshape(shape)

    # ------------------------------------------------------------------ batches

    def submit(self, frames: np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"frames must be [N, H, W, C], got shape {frames.shape}")
        cp, r = self._cp, self.prepared.scale
        slot = self._slots[self._turn % self.depth]
        self._turn += 1
        if slot.busy is not None:  # its last batch was never collected: its copies may run
            slot.busy.synchronize()
            slot.busy = slot.events = slot.out_dev = slot.host_out = None
        N, H, W, C = frames.shape
        host_in = self._host(slot, "host_in", frames.shape)
        out_shape = (N, H * r, W * r, C)
        host_out = self._lend(out_shape) if slot.pinned else None
        if host_out is None:
            host_out = self._host(slot, "host_out", out_shape)
        dev_in = self._device(slot, "dev_in", frames.shape)
        np.copyto(host_in, frames)
        stream = slot.stream
        events = [cp.cuda.Event() for _ in range(4)]
        with stream:
            events[0].record(stream)
            dev_in.set(host_in, stream=stream)  # async where host_in is pinned
            events[1].record(stream)
            slot.busy = events[1]
            planes, layout = to_planes(dev_in, xp=cp)
            out = self._cuda.run_planes(self.prepared, planes, self.mode, stream=stream)
            out = from_planes(out, layout, xp=cp)
            events[2].record(stream)
            out.get(stream=stream, out=host_out, blocking=False)
            events[3].record(stream)
        slot.busy, slot.events, slot.out_dev = events[3], events, out
        slot.host_out = host_out
        return slot

    def collect(self, slot) -> np.ndarray:
        cp = self._cp
        ev = slot.events
        ev[3].synchronize()
        for name, a, b in zip(STAGES, ev[:3], ev[1:]):
            self.timings[name] += cp.cuda.get_elapsed_time(a, b) / 1000.0
        slot.busy = slot.events = slot.out_dev = None
        out, slot.host_out = slot.host_out, None  # a lent block is the caller's alone now
        return out
