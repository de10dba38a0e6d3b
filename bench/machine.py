"""What machine a benchmark ran on, and its measured limits.

``describe()``: host, CPU model, cores, memory, GPU model (when a CUDA device is
usable), library versions, thread counts, and the load average at the start (the CPU
may be shared: every result records it).

``cpu_limits()``: per-core microbenchmarks, each single-threaded, best of a few runs:

- ``copy_gbs``: NumPy copy of a 256 MiB array (bytes read + bytes written per second);
- ``l1_table_add_gops``: the Numba kernels' inner operation on L1-resident data: for a
  stream of 8-bit codes, add the code's int32 window row (24 entries: k=3, 8 lanes) onto
  the accumulator at the code's column (``acc[j*8 + m] += tab[code, m]``), counted in int32
  lane adds per second;
- ``int32_add_gops``: a contiguous, vectorisable int32 ``a += b`` on L1-resident arrays
  (int32 adds per second): the ceiling if the kernels were perfectly vectorised.

``gpu_limits()``: device-to-device copy bandwidth (CUDA events), only with a GPU.
"""

from __future__ import annotations

import os
import platform
import socket
import time

import numpy as np


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_arch() -> str | None:
    """The CPU as LLVM names it (what Numba compiles the kernels for: ``znver3``,
    ``znver5``, ``skylake-avx512``...) and whether it has AVX-512: a shared VM's
    ``model name`` ("AMD EPYC") does not tell hosts apart, and results from two of them
    differed 2.5x (docs/cluster.md, runs L-N)."""
    try:
        import llvmlite.binding as llvm

        name = llvm.get_host_cpu_name()
        avx512 = "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")
        return f"{name}{' (AVX-512)' if avx512 else ''}"
    except Exception:  # noqa: BLE001 - optional detail
        return None


def _mem_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _version(mod: str) -> str | None:
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except Exception:
        return None


def gpu_reason() -> str | None:
    """None if the CUDA backend can run here, else why not (the backend's own probe)."""
    from iqlut_gpu import backends

    return backends.probe("cuda")


def describe() -> dict:
    import numba

    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_arch": cpu_arch(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "numba_threads": numba.get_num_threads(),
        "memory_gib": _mem_gib(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {m: _version(m) for m in
                     ("numpy", "numba", "llvmlite", "cv2", "torch", "cupy", "matplotlib", "iqlut_gpu")},
        "gpu": None,
    }
    reason = gpu_reason()
    if reason is None:
        import cupy

        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        info["gpu"] = {"name": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                       "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
                       "sm_count": props["multiProcessorCount"],
                       "compute_capability": f"{props['major']}.{props['minor']}",
                       "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                       "driver": cupy.cuda.runtime.driverGetVersion()}
    else:
        info["gpu_unavailable"] = reason
    return info


def machine_tag(info: dict) -> str:
    """A short file-name-safe label: CPU vendor/model words, core count, GPU name if any."""
    words = [w for w in info["cpu_model"].replace("(R)", "").replace("(TM)", "").split()
             if w.lower() not in ("processor", "cpu", "with", "radeon", "graphics")][:3]
    tag = "-".join(words + [f"{info['cpu_affinity'] or info['cpu_count']}c"])
    if info.get("gpu"):
        tag += "-" + info["gpu"]["name"].replace("NVIDIA", "").strip().split()[0]
    return "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in tag).lower()


# ----------------------------------------------------------------------------- CPU limits


def _best(fn, repeats=5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _table_add_kernel():
    from numba import njit

    @njit(cache=True, nogil=True)
    def table_add(codes, tab, acc, Cp, reps):
        KC = np.uint64(tab.shape[1])
        tabs = tab.reshape(-1)
        for _ in range(reps):
            for j in range(codes.shape[0]):
                t = np.uint64(codes[j]) * KC
                a = np.uint64(j) * np.uint64(Cp)
                for m in range(KC):
                    acc[a + m] += tabs[t + m]
        return acc[0]

    @njit(cache=True, nogil=True)
    def int32_add(a, b, reps):
        for _ in range(reps):
            for i in range(a.shape[0]):
                a[i] += b[i]
        return a[0]

    return table_add, int32_add


def cpu_limits(quick: bool = False) -> dict:
    n = (64 if quick else 256) * 2**20
    src = np.ones(n, np.uint8)
    dst = np.empty_like(src)
    t = _best(lambda: np.copyto(dst, src), 3 if quick else 5)
    copy_gbs = 2 * n / t / 1e9

    table_add, int32_add = _table_add_kernel()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, 512).astype(np.uint8)
    tab = rng.integers(-1000, 1000, (256, 24)).astype(np.int32)  # k=3 window rows, 8 int32 lanes
    acc = np.zeros((512 + 3) * 8, np.int32)
    reps = 1000 if quick else 5000
    t = _best(lambda: table_add(codes, tab, acc, 8, reps))
    l1_table = 512 * 24 * reps / t / 1e9
    a = np.zeros(2048, np.int32)
    b = np.ones(2048, np.int32)
    t = _best(lambda: int32_add(a, b, reps))
    i32 = 2048 * reps / t / 1e9
    return {"copy_gbs": round(copy_gbs, 2), "l1_table_add_gops": round(l1_table, 3),
            "int32_add_gops": round(i32, 2), "threads": 1,
            "note": "single-threaded, best of several runs; per core"}


def gpu_limits() -> dict | None:
    if gpu_reason() is not None:
        return None
    import cupy

    n = 512 * 2**20
    a = cupy.ones(n, cupy.uint8)
    b = cupy.empty_like(a)
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    b[...] = a
    best = float("inf")
    for _ in range(10):
        start.record()
        b[...] = a
        stop.record()
        stop.synchronize()
        best = min(best, cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return {"d2d_copy_gbs": round(2 * n / best / 1e9, 1), "note": "read + write bytes per second"}
