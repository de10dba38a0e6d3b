"""Loads per LR pixel of each CUDA kernel, counted in its PTX (no GPU needed).

    python kernels/cuda/ptx_loads.py [--arch sm_90] [--out bench/results/cuda_ptx_loads.txt]
                                     [--source FILE --kernels NAME ...]

Method: the kernel source is compiled to PTX with nvcc after one rewrite: every ``for``
loop gets ``#pragma unroll`` (and ``#pragma unroll 1`` becomes ``#pragma unroll``). Loops
with a compile-time trip count (channels, window, taps, vector words) then unroll
completely, and the loops with run-time trip counts stay loops: the per-block
shared-memory fill and the grid-stride tile loop, whose body is one pixel's work. That
body is found in the PTX as the smallest loop (a backward branch to an earlier label)
that holds every ``st.global`` of the kernel; each load instruction in it runs once per
pixel (LR pixel: the last layer writes its R x R outputs from there). Loads are
reported by state space and width: ``global`` (``ld.global``, ``ld.global.nc``: the
read-only path that ``__ldg`` takes), ``shared``, other (param, local, generic), and
the bytes they move.

The unrolled build can only merge loads the rolled one repeats (it never adds any), so
for a kernel whose tap loops the compiler keeps rolled these counts are a lower bound of
what it executes; the counts of the tap-by-tap loops that loaded the same weights again
on each iteration say so beside them. The committed report is
``bench/results/cuda_ptx_loads.txt``; tests/test_cuda_compile.py checks the goals on it.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compile_report as cr  # noqa: E402

_LD = re.compile(r"^\s*(?:@!?%p\d+\s+)?ld\.([\w.]+)\s")
_LABEL = re.compile(r"^(\$L__\w+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$L__\w+);")
_ENTRY = re.compile(r"^\.(?:visible\s+)?\.entry\s+(\w+)\(")
_BITS = {"u8": 8, "s8": 8, "b8": 8, "u16": 16, "s16": 16, "b16": 16, "u32": 32, "s32": 32,
         "b32": 32, "f32": 32, "u64": 64, "s64": 64, "b64": 64, "f64": 64}


def unrolled_source(text: str) -> str:
    """The source with every loop marked for full unrolling (see the module doc)."""
    text = text.replace("#pragma unroll 1", "#pragma unroll")
    out = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if stripped.startswith("for (") and not (i and lines[i - 1].strip().startswith("#pragma")):
            out.append(line[: len(line) - len(stripped)] + "#pragma unroll")
        out.append(line)
    return "\n".join(out) + "\n"


def compile_ptx(kernels, arch: str, source: Path, nvcc: str | None = None) -> str:
    nvcc = nvcc or cr.find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set NVCC)")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "iqlut.cu").write_text(unrolled_source(Path(source).read_text()))
        src = Path(tmp) / "instances.cu"
        src.write_text(cr.instantiation_source(kernels))
        out = Path(tmp) / "k.ptx"
        cmd = [nvcc, "-ptx", f"-arch={arch}", "-std=c++17", f"-I{tmp}", str(src), "-o", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"nvcc failed: {' '.join(cmd)}\n{res.stderr[-4000:]}")
        return out.read_text()


def _entries(ptx: str):
    """{mangled name: [lines of the body]}."""
    entries, name, body, depth = {}, None, [], 0
    for line in ptx.splitlines():
        m = _ENTRY.match(line)
        if m:
            name, body, depth = m.group(1), [], 0
            continue
        if name is None:
            continue
        depth += line.count("{") - line.count("}")
        body.append(line)
        if depth == 0 and "}" in line:
            entries[name] = body
            name = None
    return entries


def _pixel_loop(body):
    """(start, end) line indices of the smallest loop holding every st.global."""
    labels = {}
    loops = []
    for i, line in enumerate(body):
        m = _LABEL.match(line.strip())
        if m:
            labels[m.group(1)] = i
        m = _BRANCH.search(line)
        if m and m.group(1) in labels:  # a backward branch closes a loop
            loops.append((labels[m.group(1)], i))
    stores = [i for i, line in enumerate(body) if "st.global" in line]
    if not stores:
        raise ValueError("no st.global in the kernel")
    inside = [(a, b) for a, b in loops if a <= min(stores) and max(stores) <= b]
    if not inside:
        raise ValueError("no loop holds the kernel's stores")
    return min(inside, key=lambda ab: ab[1] - ab[0])


def count_loads(lines) -> dict:
    counts = collections.Counter()
    for line in lines:
        m = _LD.match(line)
        if not m:
            continue
        parts = m.group(1).split(".")
        space = parts[0] if parts[0] in ("global", "shared", "param", "local", "const") else "generic"
        vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
        bits = next((_BITS[p] for p in parts if p in _BITS), 0)
        kind = "global" if space == "global" else ("shared" if space == "shared" else "other")
        counts[kind] += 1
        counts[f"{kind}_bytes"] += vec * bits // 8
        counts[f"{kind} {'v' + str(vec) + '.' if vec > 1 else ''}{bits}b"] += 1
    return counts


def loads_per_pixel(kernels, arch="sm_90", source=cr.SOURCE, nvcc=None) -> list[dict]:
    """One record per kernel: name, global, shared, other loads per LR pixel, bytes, widths."""
    ptx = compile_ptx(kernels, arch, source, nvcc)
    entries = _entries(ptx)
    names = list(entries)
    out = []
    for mangled, pretty in zip(names, cr.demangle(names)):
        body = entries[mangled]
        a, b = _pixel_loop(body)
        c = count_loads(body[a:b + 1])
        widths = {k: v for k, v in c.items() if " " in k}
        out.append({"name": pretty, "global": c["global"], "shared": c["shared"],
                    "other": c["other"], "global_bytes": c["global_bytes"],
                    "shared_bytes": c["shared_bytes"], "widths": widths})
    return sorted(out, key=lambda r: r["name"])


def table(records) -> list[str]:
    lines = [f"{'global':>6} {'bytes':>6} {'shared':>6} {'bytes':>6} {'other':>5}  kernel  [load widths]"]
    for r in records:
        w = ", ".join(f"{k} x{v}" for k, v in sorted(r["widths"].items()))
        lines.append(f"{r['global']:>6} {r['global_bytes']:>6} {r['shared']:>6} "
                     f"{r['shared_bytes']:>6} {r['other']:>5}  {r['name'].split('(')[0]}  [{w}]")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--source", type=Path, default=cr.SOURCE)
    ap.add_argument("--kernels", nargs="*", help="name expressions (default: the shipped "
                    "models' specialisations, as compile_report.py compiles them)")
    ap.add_argument("--out", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    kernels = args.kernels or cr.default_kernels()
    nvcc = cr.find_nvcc()
    ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip()
    records = loads_per_pixel(kernels, args.arch, args.source, nvcc)
    text = "\n".join([
        "IQ-LUT CUDA kernels: loads per LR pixel, counted in PTX",
        f"generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} by "
        f"kernels/cuda/ptx_loads.py --arch {args.arch} (no GPU needed; method in its doc)",
        f"nvcc: {ver.splitlines()[-1] if ver else nvcc}; source {args.source.name}", "",
        *table(records)]) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
