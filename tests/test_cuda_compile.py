"""The CUDA source compiles for sm_80 and sm_90 without a GPU: nvcc (with ptxas's register
and spill report) and NVRTC (the compiler CuPy uses at run time).

The committed report is bench/results/cuda_ptxas_report.txt
(``python kernels/cuda/compile_report.py`` regenerates it).
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor

import pytest

from iqlut_gpu.kernels import cuda_plan


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


def test_nvrtc_compiles_every_kernel_for_sm80_and_sm90(kernels):
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as e:
        pytest.skip(f"NVRTC not available through CuPy: {e}")
    for arch in cr.ARCHS:
        lowered = cr.compile_nvrtc(kernels, arch)
        assert set(lowered) == set(kernels)
        assert all(name.startswith("_Z") for name in lowered.values())


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
