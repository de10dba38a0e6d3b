"""How far each Numba kernel is from the core's floor, in cycles per 8-lane table-row read.

``python -m bench.kernel_floor [--scale 2 4] [--mode expanded interp] [--size WxH]
[--repeats 15] [--against REV] [--json]``

A *row read* is one 8-lane step of the kernels' inner loop: 8 int16 table values
sign-extended to int32 and added to 8 accumulator lanes (in interp mode a step reads two
such rows, base and difference, and multiplies one by the weight). The kernels do
``accounting.row_reads`` of them per LR pixel per layer (``taps * Cp / 8`` with the
output channels padded to ``Cp`` lanes, fewer where the kernel packs narrow outputs);
``useful`` counts only the real channels (``taps * c_out / 8``).

Measured here, one thread, process CPU time, on the shipped model of each scale run as one
pass (``ensemble=1``) on the goal frame (1280x720 output: 320x180 input at x4, 640x360 at
x2, 426x240 at x3), RGB (three planes):

- each layer's launcher alone, on that layer's real input, in interleaved rounds (every
  layer once per round, the median over rounds): ns per LR pixel and per row read; with
  ``--against REV`` the kernels of git revision REV too (``bench.kernel_ab``'s loader), in
  the same rounds, so that before and after are measured under the same load;
- the core clock: a chain of dependent 64-bit adds (one per cycle on every x86-64 core
  since the P6), best of many short runs interleaved with the rounds (``perf`` has no
  cycle counter in a KVM guest without a virtual PMU, as here);
- the floor: the same step written in assembly on L1-resident data, its issue rate
  alone, in two forms: ``reg`` (the accumulator stays in a register: one load with sign
  extension and one vector add per row) and ``mem`` (the accumulator is in memory: load,
  add, store per row, as a scatter kernel does). cycles = ns * clock.

Times are the median over rounds; ``(best)`` is cycles per read from the fastest round,
the least disturbed on a shared machine. The ratio column is measured (median) cycles
per row read over the ``reg`` floor (what the core can
issue for one row read and accumulate); the layer's epilogue (requantisation, stores, the
fused upsample of the last layer) is inside the measured time, so a layer whose epilogue
is heavy sits further from the floor.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np

from .model_ab import parse_size
from .registry import layer_inputs

GOAL_OUT = (1280, 720)


# ----------------------------------------------------------------------------- asm loops


def _has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


def _asm_loop(body: str):
    """A jitted ``f(n, buf)`` running ``body`` (AT&T syntax; ``%rsi`` points into ``buf``)
    ``n`` times in a counted loop."""
    import llvmlite.binding as llb
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    llb.initialize_native_asmparser()  # numba does not set up LLVM's inline-asm parser

    @intrinsic
    def run(typingctx, n, buf):
        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            arr = context.make_array(sig.args[1])(context, builder, args[1])
            fnty = ir.FunctionType(i64, [i64, i64])
            clobbers = ",".join(f"~{{xmm{i}}}" for i in range(16))
            return builder.asm(fnty, "xor %eax, %eax\n1:\n" + body + "\ndec %rcx\njnz 1b\n",
                               "={rax},{rcx},{rsi}," + clobbers + ",~{memory},~{flags}",
                               [args[0], builder.ptrtoint(arr.data, i64)], side_effect=True)

        return types.int64(n, buf), codegen

    @njit(nogil=True)
    def loop(n, buf):
        return run(n, buf)

    return loop


_ADDS = 64
_ROWS = 16


def _bodies() -> dict:
    """name -> (assembly of one iteration, units per iteration)."""
    clock = "\n".join(["add $1, %rax"] * _ADDS)  # dependent: one per cycle
    # reg: 16 rows, 4 accumulators (so the adds' latency is hidden), table rows 16 B apart
    reg = "\n".join(f"vpmovsxwd {16 * i}(%rsi), %ymm{4 + i % 4}\n"
                    f"vpaddd %ymm{4 + i % 4}, %ymm{i % 4}, %ymm{i % 4}" for i in range(_ROWS))
    # mem: 16 rows onto 16 distinct accumulator slots (no store feeds the next load)
    mem = "\n".join(f"vpmovsxwd {16 * i}(%rsi), %ymm{i % 4}\n"
                    f"vpaddd {1024 + 32 * i}(%rsi), %ymm{i % 4}, %ymm{i % 4}\n"
                    f"vmovdqu %ymm{i % 4}, {1024 + 32 * i}(%rsi)" for i in range(_ROWS))
    return {"clock": (clock, _ADDS), "reg": (reg, _ROWS), "mem": (mem, _ROWS)}


class Floor:
    """The asm loops, compiled once; ``sample(name)`` is one short timed run (ns per unit)."""

    def __init__(self, n: int = 50_000):
        self.n = n
        raw = np.zeros(4096 + 64, np.uint8)
        start = -raw.ctypes.data % 64  # 64-byte aligned: no read or write splits a line
        self.buf = raw[start:start + 4096]
        self.loops = {name: (_asm_loop(body), per) for name, (body, per) in _bodies().items()}
        for f, _ in self.loops.values():
            f(10, self.buf)
        self.best = {name: float("inf") for name in self.loops}

    def sample(self, name: str, runs: int = 20) -> float:
        f, per = self.loops[name]
        for _ in range(runs):
            t = time.perf_counter()
            f(self.n, self.buf)
            self.best[name] = min(self.best[name], (time.perf_counter() - t) / (self.n * per) * 1e9)
        return self.best[name]

    def summary(self) -> dict:
        ghz = 1.0 / self.best["clock"]
        return {"clock_ghz": round(ghz, 3),
                "reg_ns": round(self.best["reg"], 4), "reg_cycles": round(self.best["reg"] * ghz, 3),
                "mem_ns": round(self.best["mem"], 4), "mem_cycles": round(self.best["mem"] * ghz, 3)}


# ----------------------------------------------------------------------------- layers


def layer_calls(prepared, planes: np.ndarray, mode: str, kernels=None, xs=None) -> list:
    """One zero-argument call per layer, each its launcher (of the module ``kernels``, the
    working tree's by default) on its real input."""
    if kernels is None:
        from iqlut_gpu.kernels import numba_cpu as kernels

    P, H, W = planes.shape
    r = prepared.scale
    xs = layer_inputs(prepared, planes, mode) if xs is None else xs
    calls = []
    n_last = len(prepared.layers) - 1
    for n, layer in enumerate(prepared.layers):
        lut = prepared.lut(n, mode)
        if n < n_last:
            out = np.empty((P, layer.c_out, H, W), np.uint8)
            calls.append(lambda x=xs[n], lut=lut, layer=layer, out=out: kernels.launch_hidden(
                x, lut, layer.bias, layer.shift, layer.residual, out, mode))
        else:
            out = np.empty((P, H * r, W * r), np.uint8)
            calls.append(lambda x=xs[n], lut=lut, layer=layer, out=out: kernels.launch_last(
                x, lut, layer.bias, layer.shift, planes, prepared.up_off, prepared.up_w,
                prepared.up_den, out, mode))
    return calls


def _row_reads(kernels, layer) -> float:
    """The row reads ``kernels`` does per pixel (revisions before ``row_reads`` existed
    padded every column to 8 lanes)."""
    if hasattr(kernels, "row_reads"):
        return kernels.row_reads(layer.c_in, layer.k, layer.c_out)
    return layer.c_in * layer.k * layer.k * (-(-layer.c_out // 8) * 8) / 8


def measure(scale: int, mode: str, size: tuple, repeats: int, floor: Floor,
            kernels: dict | None = None) -> dict:
    """Per layer of the shipped model of ``scale`` (one pass) on the goal frame: time,
    row reads, cycles. ``kernels``: name -> kernels module, all timed in the same
    interleaved rounds (default: the working tree's)."""
    from iqlut_gpu import default_model
    from iqlut_gpu.backends import prepare
    from iqlut_gpu.kernels import numba_cpu

    from .kernel_ab import photo_planes

    kernels = kernels or {"working tree": numba_cpu}
    model = default_model(scale).with_ensemble(1)
    prepared = prepare(model)
    planes = photo_planes(*size)
    P, H, W = planes.shape
    xs = layer_inputs(prepared, planes, mode)
    calls = {name: layer_calls(prepared, planes, mode, mod, xs) for name, mod in kernels.items()}
    for cs in calls.values():  # compile and warm
        for c in cs:
            c()
    times = {name: [[] for _ in cs] for name, cs in calls.items()}
    for _ in range(repeats):
        floor.sample("clock", 4)
        for i in range(len(model.layers)):
            for name, cs in calls.items():
                t = time.process_time()
                cs[i]()
                times[name][i].append(time.process_time() - t)
    for name in ("clock", "reg", "mem"):
        floor.sample(name)
    out = {"scale": scale, "mode": mode, "size": list(size), "planes": P, "kernels": {}}
    for name, mod in kernels.items():
        out["kernels"][name] = {"layers": [
            {"layer": n, "shape": f"{layer.c_in}->{layer.c_out} k{layer.k}",
             "row_reads_per_px": _row_reads(mod, layer),
             "useful_per_px": layer.c_in * layer.k * layer.k * layer.c_out / 8,
             "seconds": times[name][n]} for n, layer in enumerate(model.layers)]}
    return derive(out, floor.summary())


def derive(res: dict, fl: dict) -> dict:
    """Fill in the figures of ``measure``'s result from its times and the floor ``fl``
    (re-derived once at the end with the best clock and floor seen in the whole run)."""
    ghz = fl["clock_ghz"]
    pixels = res["planes"] * res["size"][0] * res["size"][1]
    res["floor"] = fl
    for kres in res["kernels"].values():
        tot_s = tot_best = tot_reads = tot_useful = 0.0
        for row in kres["layers"]:
            s, best = statistics.median(row["seconds"]), min(row["seconds"])
            reads, useful = row["row_reads_per_px"], row["useful_per_px"]
            ns_px = s / pixels * 1e9
            cyc = ns_px / reads * ghz
            row.update({"ms": round(s * 1e3, 3), "ns_per_px": round(ns_px, 2),
                        "ns_per_read": round(ns_px / reads, 3), "cycles_per_read": round(cyc, 2),
                        "cycles_per_read_best": round(best / pixels * 1e9 / reads * ghz, 2),
                        "cycles_per_useful": round(ns_px / useful * ghz, 2),
                        "vs_floor": round(cyc / fl["reg_cycles"], 2)})
            tot_s += s
            tot_best += best
            tot_reads += reads
            tot_useful += useful
        ns_px = tot_s / pixels * 1e9
        kres["total"] = {"ms": round(tot_s * 1e3, 3), "row_reads_per_px": tot_reads,
                         "useful_per_px": tot_useful, "ns_per_px": round(ns_px, 2),
                         "ns_per_read": round(ns_px / tot_reads, 3),
                         "cycles_per_read": round(ns_px / tot_reads * ghz, 2),
                         "cycles_per_read_best": round(tot_best / pixels * 1e9 / tot_reads * ghz, 2),
                         "cycles_per_useful": round(ns_px / tot_useful * ghz, 2),
                         "vs_floor": round(ns_px / tot_reads * ghz / fl["reg_cycles"], 2)}
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernel_floor",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, nargs="*", default=[4, 2], choices=(2, 3, 4))
    p.add_argument("--mode", nargs="*", default=["expanded", "interp"],
                   choices=("expanded", "interp"))
    p.add_argument("--size", type=parse_size, default=None, metavar="WxH",
                   help="input frame size (default: the goal frame, 1280x720 output)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--against", metavar="REV",
                   help="also time the kernels of git revision REV, in the same rounds")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not _has_avx2():
        print("kernel_floor: needs an x86-64 CPU with AVX2 (the floor loops are x86 assembly)",
              file=sys.stderr)
        return 2

    import os

    import numba

    from iqlut_gpu.kernels import numba_cpu

    numba.set_num_threads(1)
    floor = Floor()
    kernels = {"working tree": numba_cpu}
    if args.against:
        from .kernel_ab import load_revision

        kernels = {args.against: load_revision(args.against), **kernels}
    results = []
    for scale in args.scale:
        size = args.size or (GOAL_OUT[0] // scale, GOAL_OUT[1] // scale)
        for mode in args.mode:
            results.append(measure(scale, mode, size, args.repeats, floor, kernels))
    fl = floor.summary()
    results = [derive(res, fl) for res in results]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    from .machine import cpu_arch

    arch = cpu_arch()
    if args.json:
        print(json.dumps({"floor": fl, "loadavg": load, "cpu_arch": arch, "results": results},
                         indent=1))
        return 0
    print(f"CPU {arch}; core clock {fl['clock_ghz']:.2f} GHz (dependent-add chain, best of many runs); "
          f"floor per 8-lane row read+accumulate, L1-resident asm: "
          f"reg {fl['reg_cycles']:.2f} cycles ({fl['reg_ns']:.3f} ns), "
          f"mem {fl['mem_cycles']:.2f} cycles ({fl['mem_ns']:.3f} ns); "
          f"1 thread, process CPU time, load average {load[0] if load else float('nan'):.2f}")
    for res in results:
        W, H = res["size"]
        for name, kres in res["kernels"].items():
            print(f"\nx{res['scale']} {res['mode']}, {W}x{H} x{res['planes']} planes, one pass, "
                  f"kernels of the {name if name == 'working tree' else 'revision ' + name}; "
                  f"median of {args.repeats} interleaved rounds")
            _print_rows(kres)
    return 0


def _print_rows(kres: dict) -> None:
    print("layer shape       reads/px useful/px      ms   ns/px  ns/read cyc/read  (best) "
          "cyc/useful vs floor")
    for row in kres["layers"] + [dict(kres["total"], layer="all", shape="")]:
        print(f"{row['layer']!s:>5} {row['shape']:10s} {row['row_reads_per_px']:9g} "
              f"{row['useful_per_px']:9g} {row['ms']:7.2f} {row['ns_per_px']:7.1f} "
              f"{row['ns_per_read']:8.3f} {row['cycles_per_read']:8.2f} "
              f"{row['cycles_per_read_best']:7.2f} {row['cycles_per_useful']:10.2f} "
              f"{row['vs_floor']:7.2f}x")


if __name__ == "__main__":
    sys.exit(main())
