"""The CUDA source compiles for sm_80 and sm_90 without a GPU: nvcc (with ptxas's register
and spill report) and NVRTC (the compiler CuPy uses at run time) through CuPy's own
compile path with the options it adds, with the NVRTC of each CUDA extra (12.x, 13.x); the
cuda13 extra brings an NVRTC where CuPy finds it; the PTX load counts meet the goals.

The committed report is bench/results/cuda_ptxas_report.txt
(``python kernels/cuda/compile_report.py`` regenerates it).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from iqlut_gpu.kernels import cuda_backend, cuda_plan


def _load_compile_report():
    path = cuda_plan.SOURCE_DIR / "compile_report.py"
    spec = importlib.util.spec_from_file_location("iqlut_compile_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cr = _load_compile_report()

pytestmark = pytest.mark.slow

# odd shapes beside the default models': 1x1 windows, 2 knots, nearest (T=1) and
# bilinear (T=2) bases (denominators 1, 2r), one output channel, padded rows (CP > C_OUT),
# global-memory tables
ODD_KERNELS = ["iqlut::hidden_interp<3,1,1,1,2,true>", "iqlut::hidden_interp<4,4,4,5,9,false>",
               "iqlut::hidden_interp<2,3,4,3,5,true>", "iqlut::hidden_expanded<4,4,4,5>",
               "iqlut::last_interp<1,1,3,3,16,1,1,false>", "iqlut::last_expanded<2,3,2,4,2,4>",
               "iqlut::last_expanded<2,3,3,16,2,6>", "iqlut::last_interp<16,5,33,4,16,2,8,false>"]


@pytest.fixture(scope="module")
def kernels():
    return cr.default_kernels() + ODD_KERNELS


@pytest.mark.skipif(cr.find_nvcc() is None, reason="nvcc not found (set NVCC)")
def test_nvcc_compiles_every_kernel_for_sm80_and_sm90(kernels):
    with ThreadPoolExecutor(len(cr.ARCHS)) as pool:
        results = dict(zip(cr.ARCHS, pool.map(lambda a: cr.compile_nvcc(kernels, a), cr.ARCHS)))
    for arch, (rc, log, cmd) in results.items():
        assert rc == 0, f"nvcc {arch} failed: {' '.join(cmd)}\n{log[-4000:]}"
        records = cr.parse_ptxas(log)
        assert len(records) == len(kernels), f"{arch}: ptxas reported {len(records)} kernels"
        assert {r["arch"] for r in records} == {arch}
        for r in records:
            print(f"{arch} {r['registers']:>4} regs {r['spill_stores']}/{r['spill_loads']} spill "
                  f"{r['smem']:>6} smem  {r['name'][:80]}")
            assert r["registers"] is not None and r["registers"] <= 255
            # no spills and no stack frame for the shipped models' specialisations
            if any(r["name"].startswith(f"void {k.replace(',', ', ')}(") for k in cr.default_kernels()):
                assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
            assert r["smem"] <= 48 * 1024


def _nvrtc_or_skip():
    try:
        from cupy.cuda import nvrtc

        return nvrtc.getVersion()
    except Exception as e:
        pytest.skip(f"NVRTC not available through CuPy: {e}")


# the options CuPy 14's RawModule path adds to ours (cupy/_core: assemble_cupy_compiler_options
# (-I...), cupy/cuda/compiler.py: -ftz=true, the arch, --device-as-default-execution-space)
CUPY_ADDS = ("-ftz=true", "--device-as-default-execution-space")


@pytest.mark.parametrize("arch", cr.ARCHS)
def test_nvrtc_compiles_every_kernel_with_cupys_own_options(kernels, arch):
    """Through CuPy's own compile path (what RawModule runs), with the NVRTC of the
    cuda12 extra; only the two device queries on that path are answered by the test."""
    _nvrtc_or_skip()
    res = cr.compile_cupy(kernels, arch)
    opts = res["options"]
    for opt in (*cuda_backend.COMPILE_OPTIONS, *CUPY_ADDS, f"-arch={arch}"):
        assert opt in opts, (opt, opts)
    assert set(res["lowered"]) == set(kernels)
    assert all(name.startswith("_Z") for name in res["lowered"].values())


def test_nvrtc_direct_compile_matches_the_cupy_path(kernels):
    _nvrtc_or_skip()
    opts = [o for o in cr.compile_cupy(kernels[:2], "sm_90")["options"] if o != "-arch=sm_90"]
    assert cr.compile_nvrtc(kernels[:2], "sm_90", opts) == cr.compile_cupy(kernels[:2], "sm_90")["lowered"]


# ----------------------------------------------------------------------------- the cuda13 extra

NVRTC13 = Path(sys.prefix) / "nvrtc13"  # the Makefile installs the cuda13 extra's NVRTC here


def _requirements(extra):
    from packaging.requirements import Requirement

    reqs = [Requirement(r) for r in importlib.metadata.requires("iqlut-gpu") or []]
    return {r.name: r for r in reqs if r.marker and r.marker.evaluate({"extra": extra})}


def test_each_cuda_extra_brings_cupy_and_an_nvrtc_of_its_cuda():
    cuda12, cuda13 = _requirements("cuda12"), _requirements("cuda13")
    assert "cupy-cuda12x" in cuda12 and "nvidia-cuda-nvrtc-cu12" in cuda12
    assert "cupy-cuda13x" in cuda13 and "nvidia-cuda-nvrtc" in cuda13
    spec = cuda13["nvidia-cuda-nvrtc"].specifier
    assert spec.contains("13.5.37") and spec.contains("13.0.88")
    assert not spec.contains("12.9.86") and not spec.contains("14.0.0")


def _run_with_nvrtc13(code):
    """Run ``code`` in a Python whose first site-packages folder holds the cuda13 extra's
    NVRTC wheel, as in an environment with that extra installed (cuda-pathfinder, CuPy's
    loader, searches the site-packages folders, not sys.path)."""
    if not (NVRTC13 / "nvidia" / "cu13" / "lib" / "libnvrtc.so.13").exists():
        pytest.skip(f"the cuda13 extra's NVRTC is not installed at {NVRTC13} (make test does)")
    prelude = ("import site\n_sp = site.getsitepackages\n"
               f"site.getsitepackages = lambda prefixes=None: [{str(NVRTC13)!r}] + _sp(prefixes)\n")
    env = dict(os.environ, PYTHONPATH=str(cr.HERE))
    res = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                         env=env, cwd=cr.HERE.parent.parent)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_the_cuda13_nvrtc_wheel_is_where_cupys_loader_finds_it():
    """cupy-cuda13x loads NVRTC through cuda-pathfinder (without the wheel, a clean venv
    with cupy-cuda13x 14.2.0 raised DynamicLibNotFoundError for libnvrtc.so.13; with
    nvidia-cuda-nvrtc 13.5.37, nvrtc.getVersion() gave (13, 5)). Here: pathfinder finds
    the wheel's libnvrtc.so.13 where pip installs it, and it loads."""
    got = _run_with_nvrtc13(
        "import ctypes, json\n"
        "from cuda.pathfinder import load_nvidia_dynamic_lib\n"
        "lib = load_nvidia_dynamic_lib('nvrtc')\n"
        "major, minor = ctypes.c_int(), ctypes.c_int()\n"
        "ctypes.CDLL(lib.abs_path).nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))\n"
        "print(json.dumps([lib.abs_path, lib.found_via, major.value, minor.value]))")
    path, found_via, major, minor = got
    assert Path(path).name == "libnvrtc.so.13" and str(NVRTC13) in path, got
    assert found_via == "site-packages" and major == 13, got


@pytest.mark.parametrize("arch", cr.ARCHS)
def test_nvrtc13_compiles_every_kernel_with_cupys_own_options(kernels, arch):
    """CuPy's compile path with the cuda13 extra's NVRTC loaded the way cupy-cuda13x loads
    it (cuda-pathfinder prefers libnvrtc.so.13)."""
    res = _run_with_nvrtc13(
        "import json, compile_report as cr\n"
        f"print(json.dumps(cr.compile_cupy({kernels!r}, {arch!r})))")
    assert res["nvrtc"][0] == 13
    for opt in (*cuda_backend.COMPILE_OPTIONS, *CUPY_ADDS, f"-arch={arch}"):
        assert opt in res["options"]
    assert set(res["lowered"]) == set(kernels)


def test_nvrtc_reports_a_broken_kernel():
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as e:
        pytest.skip(f"NVRTC not available through CuPy: {e}")
    with pytest.raises(RuntimeError, match="NVRTC failed"):
        cr.compile_nvrtc(["iqlut::no_such_kernel<1>"], "sm_90")


def test_ptxas_parser_reads_a_report():
    log = ("ptxas info    : Compiling entry function '_Z3fooPi' for 'sm_90'\n"
           "ptxas info    : Function properties for _Z3fooPi\n"
           "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 40 registers, used 1 barriers, 4424 bytes smem, 400 bytes cmem[0]\n")
    (rec,) = cr.parse_ptxas(log)
    assert (rec["registers"], rec["smem"], rec["stack"], rec["spill_stores"], rec["spill_loads"],
            rec["arch"]) == (40, 4424, 8, 4, 4, "sm_90")


@pytest.mark.skipif(cr.find_nvcc() is None, reason="nvcc not found (set NVCC)")
def test_ptx_load_counts_meet_the_goals():
    """kernels/cuda/ptx_loads.py on the shipped x3 and x4 last layers (tables in shared
    memory): x3 reads its padded rows with 16-byte vector loads, never byte by byte, and
    the fused upsample at x4 takes at most 100 global loads per LR pixel."""
    import re

    sys.path.insert(0, str(cr.HERE))
    import ptx_loads

    last = [k for k in cr.default_kernels() if k.startswith("iqlut::last_interp<") and
            k.endswith(",true>") and k.split(",")[3] in ("3", "4")]
    assert len(last) == 2
    records = ptx_loads.loads_per_pixel(last, "sm_90")
    for k, rec in zip(sorted(last), records):
        c_in, kk, _, r = (int(v) for v in re.match(r".*<(.*)>", k).group(1).split(",")[:4])
        taps = c_in * kk * kk
        widths = rec["widths"]
        assert widths.get("shared v4.32b") == 2 * taps, (k, widths)  # two rows per tap
        assert "shared 8b" not in widths, (k, widths)
        if r == 4:  # global: the tap codes, the bias, then the upsample
            upsample = rec["global"] - taps - r * r
            assert upsample <= 100, (k, rec)
