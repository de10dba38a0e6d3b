"""Batches for the training step, on the device, from any patch source.

A source (``data.BankSource``: the installed photos' crop bank; ``folders.ImageSource``:
your images; ``folders.MixedSource``: both) has ``sample(rng, batch, patch) -> (lo, hi)``,
uint8 arrays ``[B, P, P]`` and ``[B, rP, rP]``. Batch ``i`` of a run is drawn with its
own generator, ``batch_rng(seed, i)``, so the batches are a function of the seed and the
iteration alone: the same with 0 or N loader processes, and a resumed run draws exactly
the batches an uninterrupted one would have (the checkpoint needs no loader state).

``Batches`` yields ``(x, y)``: x the LR codes ``[B, 1, P, P]`` (float32, 0..255), y the HR
``[B, 1, rP, rP]`` in 0..1, on the device. With ``workers`` = 0 the patches are cut in the
training process (on the CPU this costs under 1% of a step: ``loader_bench``); with N > 0
a ``torch.utils.data.DataLoader`` runs N processes, worker k making batches k, k + N, ...
(the loader hands them back in order), a few batches ahead, into pinned memory when the
device is CUDA, and the copies to the device are asynchronous (``non_blocking``); uint8
is copied (a quarter of float32's bytes) and converted on the device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

STREAM_TAG = 0xBA7C  # batch streams apart from the other streams of a seed
PREFETCH = 4  # batches each loader process makes ahead


def batch_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of batch ``index`` of a run seeded ``seed``."""
    return np.random.default_rng([seed, index, STREAM_TAG])


class BatchStream(IterableDataset):
    """The run's batches from ``start`` on, as uint8 tensors; in a loader process, only
    that process's share (every N-th, from its number on)."""

    def __init__(self, source, seed: int, batch: int, patch: int, start: int = 0):
        super().__init__()
        self.source, self.seed, self.batch, self.patch, self.start = source, seed, batch, patch, start

    def __iter__(self):
        info = get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        i = self.start + k
        while True:
            lo, hi = self.source.sample(batch_rng(self.seed, i), self.batch, self.patch)
            yield torch.from_numpy(lo), torch.from_numpy(hi)
            i += n


def to_device(lo: torch.Tensor, hi: torch.Tensor, device: torch.device):
    """uint8 patches -> (x codes [B, 1, P, P] float32, y [B, 1, rP, rP] in 0..1) on ``device``."""
    x = lo.to(device, non_blocking=True)[:, None].float()
    y = hi.to(device, non_blocking=True)[:, None].float().div_(255.0)
    return x, y


class Batches:
    """An endless iterator of ``(x, y)`` device batches (module docstring). ``close()``
    stops the loader processes (an unreferenced one stops them too)."""

    def __init__(self, source, seed: int, batch: int, patch: int, device, start: int = 0,
                 workers: int = 0, pin: bool | None = None):
        self.device = torch.device(device)
        self.workers = workers
        stream = BatchStream(source, seed, batch, patch, start)
        if workers > 0:
            pin = self.device.type == "cuda" if pin is None else pin
            self.loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin,
                                     prefetch_factor=PREFETCH)
            self._it = iter(self.loader)
        else:
            self.loader = None
            self._it = iter(stream)

    def __iter__(self):
        return self

    def __next__(self):
        lo, hi = next(self._it)
        return to_device(lo, hi, self.device)

    def close(self) -> None:
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._it = None


class FixedBatches:
    """One batch, again and again (already on the device): a step with no loading at all,
    the reference ``loader_bench`` compares the real loader with."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __iter__(self):
        return self

    def __next__(self):
        return self.x, self.y

    def close(self) -> None:
        pass


def default_workers(device: torch.device, cpus: int | None = None) -> int:
    """``--workers`` when not given: 0 on the CPU (the loader would take cores from the
    step, and costs under 1% of it there); with CUDA half the cores, at most 8 (one
    process cuts about 65 batches of 64 x4 patches of 48 px a second on the loaded 2-core
    test machine, docs/training.md; a GPU may take a few hundred)."""
    import os

    if device.type != "cuda":
        return 0
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return min(8, cpus // 2)

