"""Compile the CUDA kernels without a GPU and report registers, spills and shared memory.

    python kernels/cuda/compile_report.py [--out bench/results/cuda_ptxas_report.txt]

Compiles every kernel specialisation the shipped default models need (x2, x3, x4; interp
with the tables in shared memory and in global memory; expanded) with nvcc for sm_80
(A100) and sm_90 (H100), keeps ptxas's ``-v`` report, and also compiles the same
specialisations with NVRTC (the compiler CuPy uses at run time) when CuPy is installed.
The test suite (tests/test_cuda_compile.py) uses the functions here.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "iqlut.cu"
ARCHS = ("sm_80", "sm_90")
NVCC_CANDIDATES = (os.environ.get("NVCC"), "/usr/local/bin/nvcc", "/usr/local/cuda/bin/nvcc", "nvcc")


def find_nvcc() -> str | None:
    for cand in NVCC_CANDIDATES:
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def instantiation_source(kernels) -> str:
    """A .cu file that instantiates each kernel specialisation (name expressions)."""
    refs = ",\n    ".join(f"(const void*)&{k}" for k in kernels)
    return f'#include "iqlut.cu"\n\nconst void* iqlut_instances[] = {{\n    {refs}\n}};\n'


def compile_nvcc(kernels, arch: str, nvcc: str | None = None) -> tuple[int, str, list[str]]:
    """nvcc -cubin for ``arch`` with ptxas -v. Returns (returncode, log, command)."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "instances.cu"
        src.write_text(instantiation_source(kernels))
        cmd = [nvcc, "-cubin", f"-arch={arch}", "-std=c++17", "-Xptxas", "-v",
               "-Xptxas", "-warn-spills", f"-I{HERE}", str(src), "-o", str(Path(tmp) / "k.cubin")]
        res = subprocess.run(cmd, capture_output=True, text=True)
    shown = [Path(c).name if c.endswith(("instances.cu", "k.cubin")) else c for c in cmd]
    shown = ["-Ikernels/cuda" if c == f"-I{HERE}" else c for c in shown]
    return res.returncode, res.stdout + res.stderr, shown


def compile_nvrtc(kernels, arch: str, options=None) -> dict[str, str]:
    """Compile with NVRTC exactly as ``cupy.RawModule`` does (name expressions). Needs the
    NVRTC library (CuPy's bindings), no GPU. Returns {name expression: lowered name};
    raises RuntimeError with the compiler log on failure."""
    from cupy.cuda import nvrtc

    from iqlut_gpu.kernels import cuda_backend, cuda_plan

    opts = list(options if options is not None else cuda_backend.COMPILE_OPTIONS)
    prog = nvrtc.createProgram(cuda_plan.source(), "iqlut.cu", [], [])
    try:
        for k in kernels:
            nvrtc.addNameExpression(prog, k)
        try:
            nvrtc.compileProgram(prog, opts + [f"-arch={arch}"])
        except Exception as e:
            raise RuntimeError(f"NVRTC failed for {arch}: {e}\n{nvrtc.getProgramLog(prog)}") from e
        if not nvrtc.getCUBIN(prog):
            raise RuntimeError(f"NVRTC produced no cubin for {arch}")
        return {k: nvrtc.getLoweredName(prog, k) for k in kernels}
    finally:
        nvrtc.destroyProgram(prog)


def compile_cupy(kernels, arch: str) -> dict:
    """Compile ``kernels`` through CuPy's own ``RawModule`` path (``compile_with_cache``
    with ``prepend_cupy_headers=False``, as RawModule calls it; NVRTC), without a GPU: the
    two device queries on that path (the architecture, the module load) are answered
    here; everything else, the options CuPy adds included, is CuPy's. Returns
    {"options": the NVRTC options CuPy passed, "nvrtc": version, "lowered": {name:
    lowered name}}. Raises RuntimeError with NVRTC's log on failure."""
    from unittest import mock

    import cupy
    from cupy._core import core
    from cupy.cuda import compiler

    from iqlut_gpu.kernels import cuda_backend, cuda_plan

    arch_num = arch.removeprefix("sm_")
    if int(arch_num) > int(compiler._get_max_compute_capability()):
        raise RuntimeError(f"NVRTC {compiler._get_nvrtc_version()} cannot target {arch}")
    seen = []
    real_compile = compiler._NVRTCProgram.compile

    def recording_compile(self, options=(), log_stream=None):
        seen.append(tuple(options))
        return real_compile(self, options, log_stream)

    class Module(cupy.cuda.function.Module):  # the load onto a device, which is not here
        def load(self, cubin):
            self.cubin = cubin

        def _set_mapping(self, mapping):
            self.names = mapping

    with mock.patch.object(compiler, "_get_arch_for_options_for_nvrtc",
                           lambda arch=None: (f"-arch=sm_{arch}", "cubin")), \
            mock.patch.object(compiler._NVRTCProgram, "compile", recording_compile), \
            mock.patch.object(compiler, "function", mock.Mock(Module=Module)), \
            mock.patch.dict(os.environ, {"CUPY_CACHE_IN_MEMORY": "1"}):
        try:
            mod = core.compile_with_cache(cuda_plan.source(), cuda_backend.COMPILE_OPTIONS,
                                          arch=arch_num, prepend_cupy_headers=False,
                                          name_expressions=tuple(kernels))
        except cupy.cuda.compiler.CompileException as e:
            raise RuntimeError(f"NVRTC failed for {arch}: {e}") from e
    if not mod.cubin:
        raise RuntimeError(f"NVRTC produced no cubin for {arch}")
    return {"options": list(seen[-1]), "nvrtc": list(compiler._get_nvrtc_version()),
            "lowered": {k: mod.names[k] for k in kernels}}


_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(\w+)'")
_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def demangle(names):
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if not tool or not names:
        return list(names)
    res = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    out = res.stdout.splitlines()
    return out if res.returncode == 0 and len(out) == len(names) else list(names)


def parse_ptxas(log: str) -> list[dict]:
    """One record per kernel: name (mangled), arch, registers, smem, stack, spill stores/loads."""
    records, cur = [], None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = {"mangled": m.group(1), "arch": m.group(2), "registers": None, "smem": 0,
                   "stack": None, "spill_stores": None, "spill_loads": None}
            records.append(cur)
            continue
        if cur is None:
            continue
        m = _SPILL.search(line)
        if m and cur["stack"] is None:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
        m = _USED.search(line)
        if m:
            cur["registers"] = int(m.group(1))
            cur["smem"] = int(m.group(3) or 0)
    for rec, name in zip(records, demangle([r["mangled"] for r in records])):
        rec["name"] = name
    return records


def default_kernels() -> list[str]:
    """Specialisations of the shipped default models, both modes, shared and global tables."""
    from iqlut_gpu.backends import Prepared
    from iqlut_gpu.kernels import cuda_plan
    from iqlut_gpu.model import SCALES, default_model

    names = set()
    for scale in SCALES:
        prepared = Prepared(default_model(scale))
        names.update(cuda_plan.kernels_for(prepared))
        names.update(cuda_plan.kernels_for(prepared, modes=("interp",), shared_limit=0))
    return sorted(names)


def report(nvcc: str | None = None) -> tuple[str, bool]:
    """The text report and whether every compilation succeeded."""
    nvcc = nvcc or find_nvcc()
    kernels = default_kernels()
    lines = ["IQ-LUT CUDA kernels: ptxas register / spill / shared-memory report",
             f"generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} by "
             "kernels/cuda/compile_report.py (no GPU needed)",
             "specialisations: those of the default models x2/x3/x4 (layers 1->8 k5, 8->8 k3 "
             "residual x2, 8->r^2 k3, L=17, bicubic base), interp (shared and global tables) "
             "and expanded", ""]
    ok = True
    if nvcc is None:
        lines.append("nvcc: not found (set NVCC)")
        ok = False
    else:
        ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        lines.append("nvcc: " + (ver.strip().splitlines()[-1] if ver.strip() else nvcc))
        for arch in ARCHS:
            rc, log, cmd = compile_nvcc(kernels, arch, nvcc)
            lines += ["", f"== {arch}: {' '.join(cmd)} -> exit {rc}"]
            if rc != 0:
                ok = False
                lines.append(log[-4000:])
                continue
            lines.append(f"{'registers':>9} {'spill st/ld':>11} {'stack':>5} {'smem':>6}  kernel")
            for r in sorted(parse_ptxas(log), key=lambda r: r["name"]):
                lines.append(f"{r['registers']:>9} {r['spill_stores']:>5}/{r['spill_loads']:<5} "
                             f"{r['stack']:>5} {r['smem']:>6}  {r['name']}")
    try:
        from cupy.cuda import nvrtc

        ver = ".".join(map(str, nvrtc.getVersion()))
        for arch in ARCHS:
            try:
                res = compile_cupy(kernels, arch)
                opts = [o for o in res["options"] if not o.startswith("-I")]
                lines.append(f"NVRTC {ver} through CuPy's RawModule path ({arch}; options "
                             f"besides -I: {' '.join(opts)}): all {len(kernels)} "
                             "specialisations compile")
            except RuntimeError as e:
                ok = False
                lines.append(f"NVRTC {ver} ({arch}): FAILED\n{e}")
    except Exception as e:  # no CuPy / NVRTC here
        lines.append(f"NVRTC: not checked ({type(e).__name__}: {e})")
    return "\n".join(lines) + "\n", ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = HERE.parent.parent
    ap.add_argument("--out", type=Path, default=root / "bench" / "results" / "cuda_ptxas_report.txt")
    args = ap.parse_args(argv)
    text, ok = report()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)
    print(text, end="")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
