"""Does loading cost training steps? Steps/s with the real loader against one fixed batch.

``python -m iqlut_gpu.train.loader_bench [--data DIR...] --scale N [train options] [--rounds R] [--steps S] [--json]``

Sets up a training run exactly as ``iqlut train`` with the same options would (its data,
net, teacher, optimisers, device, ``--workers``), then times real training steps (the
``Trainer.step`` of a run) in alternating blocks of ``--steps`` steps: one block drawing
batches from the real loader (``loader.Batches``: patches cut from the cached images or
the crop bank, to the device), the next from ``loader.FixedBatches`` (one batch already
on the device, handed out again and again: a step with no loading at all), the order
swapped every round. The figure is the median over rounds of each round's ratio (real /
fixed steps per second, measured seconds apart on this shared machine), and the loading
cost is ``1 - ratio``: the share of a step's time the loader adds. On a shared, noisy
machine that ratio scatters by more than the loader costs, so it also reports the time
the real blocks spent waiting for a batch (inside ``next``: cutting patches with 0
workers, taking a finished batch off the queue with N), as a share of those blocks' time,
and times the loader alone (batches per second, no training), which says how many steps
per second it could feed on a faster device.

Nothing is written but the run's temporary files (a temporary folder); the time budget
is set out of reach so the schedule stays at its start for every block.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from .config import Config, add_arguments
from .loader import FixedBatches
from .trainer import Trainer


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timed:
    """``batches`` with the seconds spent waiting in ``next`` added up."""

    def __init__(self, batches):
        self.batches, self.seconds = batches, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.seconds += time.perf_counter() - t0


def _block(trainer: Trainer, batches, steps: int) -> tuple[float, float]:
    """(steps per second, seconds spent getting batches) of ``steps`` training steps on
    ``batches``."""
    timed = _Timed(batches)
    trainer.batches = timed
    _sync(trainer.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    _sync(trainer.device)
    return steps / (time.perf_counter() - t0), timed.seconds


def measure(trainer: Trainer, rounds: int = 5, steps: int = 20, warmup: int = 3) -> dict:
    """The comparison (module docstring) on a set-up ``Trainer``."""
    real = trainer.batches  # the run's loader, from its start
    for _ in range(warmup):
        trainer.step()
    x, y = next(real)
    fixed = FixedBatches(x, y)
    rows, waited, block_s = [], 0.0, 0.0
    for r in range(rounds):
        order = (("real", real), ("fixed", fixed)) if r % 2 == 0 else (("fixed", fixed), ("real", real))
        rates = {}
        for name, it in order:
            rate, seconds = _block(trainer, it, steps)
            rates[name] = rate
            if name == "real":
                waited += seconds
                block_s += steps / rate
        rows.append(rates)
    trainer.batches = real
    n = max(steps * 2, 20)
    _sync(trainer.device)
    t0 = time.perf_counter()
    for _ in range(n):
        next(real)
    _sync(trainer.device)
    alone = n / (time.perf_counter() - t0)
    trainer.close_batches()
    ratios = [row["real"] / row["fixed"] for row in rows]
    ratio = statistics.median(ratios)
    return {"rounds": rows, "ratios": [round(v, 4) for v in ratios],
            "real_steps_per_s": round(statistics.median(row["real"] for row in rows), 3),
            "fixed_steps_per_s": round(statistics.median(row["fixed"] for row in rows), 3),
            "ratio": round(ratio, 4), "loading_share": round(1.0 - ratio, 4),
            "waiting_share": round(waited / block_s, 5),
            "loader_alone_batches_per_s": round(alone, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m iqlut_gpu.train.loader_bench",
                                description="Training steps/s with the real loader against "
                                "one fixed batch, interleaved in one run.")
    add_arguments(p)
    b = p.add_argument_group("benchmark")
    b.add_argument("--rounds", type=int, default=5, help="real/fixed block pairs (default 5)")
    b.add_argument("--steps", type=int, default=20, help="training steps per block (default 20)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    try:
        cfg = Config.from_args(args)
    except ValueError as e:
        p.error(str(e))
    with tempfile.TemporaryDirectory(prefix="iqlut_loader_bench_") as tmp:
        cfg.out = os.path.join(tmp, "bench.safetensors")
        cfg.time_budget = 1e12
        cfg.max_iters = 0
        quiet = args.json
        trainer = Trainer(cfg, log=(lambda m: None) if quiet else print, progress=not quiet)
        res = measure(trainer, args.rounds, args.steps)
    from .trainer import machine

    res.update({"machine": machine(trainer.device), "load_average": os.getloadavg(),
                "scale": cfg.scale, "batch": cfg.batch, "patch": cfg.patch,
                "workers": trainer.workers, "data": list(cfg.data) or "installed",
                "with_installed": cfg.with_installed})
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{'round':>5} {'real steps/s':>13} {'fixed steps/s':>14} {'ratio':>7}")
    for i, row in enumerate(res["rounds"]):
        print(f"{i:>5} {row['real']:>13.3f} {row['fixed']:>14.3f} {row['real'] / row['fixed']:>7.3f}")
    print(f"median: real {res['real_steps_per_s']} steps/s, fixed batch {res['fixed_steps_per_s']} "
          f"steps/s; ratio {res['ratio']}: loading costs {res['loading_share']:.1%} of a step "
          f"(workers {res['workers']}; batch {cfg.batch} of {cfg.patch} px at x{cfg.scale})")
    print(f"time in the loader during the real blocks: {res['waiting_share']:.2%} of the steps' time")
    print(f"loader alone: {res['loader_alone_batches_per_s']} batches/s; {res['machine']}; "
          f"load average {', '.join(f'{v:.1f}' for v in res['load_average'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
