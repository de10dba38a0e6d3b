"""Timing that survives a shared machine: medians of synchronised calls, and interleaved
rounds whose ratios are taken within a round (``runner``'s goal ratios, ``peers``,
``model_ab``)."""

from __future__ import annotations

import statistics
import time


def median_time(run, n: int, clock=None) -> float:
    """Median seconds of ``n`` calls of ``run`` (a ``registry.Run``), each synchronised;
    ``clock``: ``time.perf_counter`` unless given (``time.process_time`` for one thread)."""
    clock = clock or time.perf_counter
    ts = []
    for _ in range(n):
        t0 = clock()
        run.run()
        run.sync()
        ts.append(clock() - t0)
    return statistics.median(ts)


def interleaved_rounds(runs: dict, rounds: int, calls: dict | None = None, clock=None) -> list:
    """Each ``registry.Run`` of ``runs`` once (warm-up), then ``rounds`` rounds in which every
    one runs after the other, in an order rotated from round to round; in each round a run
    is timed as the median of ``calls[name]`` calls (default 1; more for a call of about a
    millisecond, where one timing is mostly noise). Returns one {name: seconds} per round,
    so ratios can be taken within a round, where the machine's load hits both sides alike."""
    calls = calls or {}
    for r in runs.values():
        r.run()
        r.sync()
    keys = list(runs)
    per_round = []
    for i in range(rounds):
        order = keys[i % len(keys):] + keys[:i % len(keys)]
        per_round.append({k: median_time(runs[k], calls.get(k, 1), clock) for k in order})
    return per_round


def write_json(res, path) -> None:
    """Write a bench module's results to ``path`` as JSON (atomically)."""
    import json

    from iqlut_gpu.io import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(res, indent=1) + "\n").encode())


def emit(res, path=None) -> None:
    """Print a bench module's results as JSON, and write them to ``path`` if given."""
    import json

    print(json.dumps(res, indent=1))
    if path:
        write_json(res, path)
