"""Frame batches through the CUDA backend with two batches in flight (``CudaStreamer``).

Used by ``iqlut_gpu.frames.StreamRunner`` for the cuda backend. Each of ``depth`` slots is
a CUDA stream with its own pinned host buffers: ``submit`` copies the planes into the
slot's pinned input buffer and queues upload, the model's kernels
(``cuda_backend.run_planes`` on that stream) and download, then returns at once;
``collect`` waits for that stream only. So batch k+1's upload overlaps batch k's kernels
and download while the host prepares and hands out frames. CUDA events time each stage
("upload", "kernels", "download", as ``iqlut_gpu.frames.STAGES``).
"""

from __future__ import annotations

import numpy as np

from iqlut_gpu.frames import STAGES


class CudaStreamer:
    """``depth`` slots, each a CUDA stream with pinned host buffers for the planes in and
    out, device buffers reused while the batch shape stays the same. Written against
    ``iqlut_gpu.kernels.cuda_backend.run_planes(prepared, device_planes, mode, stream)``,
    which queues the model's kernels on ``stream`` without waiting."""

    depth = 2

    def __init__(self, prepared, mode: str, modules=None):
        if modules is None:  # (tests pass stand-ins for cupy, cupyx and the backend)
            import cupy
            import cupyx

            from . import cuda_backend

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
