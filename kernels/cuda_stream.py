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

Host memory: each slot keeps one pinned buffer per direction and one device input buffer,
grown by doubling when a batch needs more and reused (as views) for every smaller batch, so
a stream whose frame size changes does not pin one more buffer per shape (CuPy's pinned
pool keeps every freed block for a later allocation of the same size). Where pinned
memory cannot be had (``cudaErrorMemoryAllocation``, a ``CUDARuntimeError``, not a
``MemoryError``), the slot uses pageable memory: the copies then complete before they
return, slower but correct.
"""

from __future__ import annotations

import numpy as np

# the stages it times, by the names of iqlut_gpu.frames.STAGES (a test checks they agree)
STAGES = ("upload", "kernels", "download")
from iqlut_gpu.planes import from_planes, to_planes

MIN_CAPACITY = 1 << 16  # bytes: the smallest buffer a slot allocates
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


class CudaStreamer:
    """``depth`` slots, each a CUDA stream with host buffers for the frames in and out and a
    device input buffer. Written against
    ``iqlut_gpu.kernels.cuda_backend.run_planes(prepared, device_planes, mode, stream)``,
    which queues the model's kernels on ``stream`` without waiting.

    ``submit(frames)``: uint8 ``[N, H, W, C]`` (host); ``collect(token)``: uint8
    ``[N, H*r, W*r, C]``, a view of the slot's output buffer, valid until the slot's next
    ``submit``."""

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
                try:
                    buf = self._cpx.empty_pinned((size,), np.uint8)
                except MemoryError:
                    slot.pinned = False
                except self._cp.cuda.runtime.CUDARuntimeError as e:
                    if getattr(e, "status", None) != CUDA_ERROR_MEMORY_ALLOCATION:
                        raise
                    slot.pinned = False
            if buf is None:
                buf = np.empty(size, np.uint8)  # pageable: synchronous copies
            slot.buffers[name] = buf
        return buf[:n].reshape(shape)

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
            slot.busy = slot.events = slot.out_dev = None
        N, H, W, C = frames.shape
        host_in = self._host(slot, "host_in", frames.shape)
        host_out = self._host(slot, "host_out", (N, H * r, W * r, C))
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
        return slot.host_out
