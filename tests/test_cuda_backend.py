"""The CUDA backend's Python side, on any machine: selection, probes, launcher contract.

Kernel results are checked in test_cuda_emulated.py (CPU) and test_cuda_gpu.py (device).
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings

import numpy as np
import pytest

import cases
from iqlut_gpu import BackendUnavailable, backends, upscale
from iqlut_gpu.backends import Prepared
from iqlut_gpu.kernels import cuda_backend, cuda_plan, numba_cpu

HAS_DEVICE = cuda_backend.probe() is None


def test_importing_the_package_and_backend_does_not_import_cupy():
    code = ("import sys, iqlut_gpu; from iqlut_gpu.kernels import cuda_backend; "
            "from iqlut_gpu import backends; backends.probe('cpu'); "
            "assert 'cupy' not in sys.modules, 'cupy imported'; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


@pytest.mark.parametrize("name", ["launch_hidden", "launch_last"])
def test_numba_and_cuda_launchers_take_the_same_arguments(name):
    cpu = inspect.signature(getattr(numba_cpu, name))
    gpu = inspect.signature(getattr(cuda_backend, name))
    as_list = lambda sig: [(p.name, p.kind, p.default) for p in sig.parameters.values()]  # noqa: E731
    assert as_list(cpu) == as_list(gpu)
    assert list(gpu.parameters)[-1] == "stream"


def test_run_planes_signatures_match_the_backend_hook():
    # backends.run_planes calls cuda_backend.run_planes(prepared, planes, mode)
    params = list(inspect.signature(cuda_backend.run_planes).parameters)
    assert params[:3] == ["prepared", "planes", "mode"]


def test_probe_gives_a_reason_or_none():
    reason = cuda_backend.probe()
    assert reason is None or (isinstance(reason, str) and reason)
    assert backends.probe("cuda") == reason


@pytest.mark.skipif(HAS_DEVICE, reason="a CUDA device is present: no fallback to test")
def test_auto_falls_back_to_cpu_with_one_warning(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setattr(backends, "_warned_fallback", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert backends.resolve("auto") == "cpu"
        assert backends.resolve("auto") == "cpu"
    fallback = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(fallback) == 1
    assert cuda_backend.probe() in str(fallback[0].message)


@pytest.mark.skipif(HAS_DEVICE, reason="a CUDA device is present")
def test_explicit_cuda_raises_with_the_reason(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    reason = cuda_backend.probe()
    with pytest.raises(BackendUnavailable) as err:
        backends.resolve("cuda")
    assert reason in str(err.value)
    with pytest.raises(BackendUnavailable):
        upscale(np.zeros((4, 4), np.uint8), 2, backend="cuda")


@pytest.mark.skipif(HAS_DEVICE, reason="a CUDA device is present")
def test_env_override_to_cuda_raises_too(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    with pytest.raises(BackendUnavailable):
        backends.resolve("auto")


def test_probe_names_the_missing_cupy(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cupy(name, *args, **kw):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_cupy)
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(cuda_backend, "driver_reason", lambda: None)  # as if a GPU were here
    reason = cuda_backend.probe()
    assert "CuPy" in reason and "cuda12" in reason


def test_without_a_driver_the_probe_does_not_import_cupy(monkeypatch):
    import builtins
    import ctypes

    real_import, real_cdll = builtins.__import__, ctypes.CDLL
    imported = []

    def watch(name, *args, **kw):
        if name == "cupy" or name.startswith("cupy."):
            imported.append(name)
        return real_import(name, *args, **kw)

    def no_driver(name, *args, **kw):
        if "cuda" in str(name):
            raise OSError(f"{name}: cannot open shared object file")
        return real_cdll(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", watch)
    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    reason = cuda_backend.probe()
    assert reason is not None and ("driver" in reason or "macOS" in reason)
    assert imported == []
    assert backends.resolve("cpu") == "cpu"


class _FakeDriver:
    """libcuda's two entry points the probe calls, answering as told."""

    def __init__(self, init_rc=0, count=1):
        self.init_rc, self.count = init_rc, count

    def cuInit(self, flags):
        return self.init_rc

    def cuDeviceGetCount(self, ref):
        ref._obj.value = self.count
        return 0


@pytest.mark.skipif(sys.platform == "darwin", reason="no CUDA driver on macOS")
@pytest.mark.parametrize("driver, expected", [(_FakeDriver(init_rc=100), "cuInit returned error 100"),
                                              (_FakeDriver(count=0), "sees no device"),
                                              (_FakeDriver(count=2), None)])
def test_driver_reason_reads_the_driver(monkeypatch, driver, expected):
    import ctypes

    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **kw: driver)
    reason = cuda_backend.driver_reason()
    assert reason == expected or (expected and expected in reason)


# ----------------------------------------------------------------------------- launcher contract


def _model_and_tables(mode, seed_salt=3):
    seed, rng = next(cases.case_rngs(1, salt=2000 + seed_salt))
    model = cases.random_model(rng, scale=2)
    prepared = Prepared(model)
    return model, prepared, cuda_plan.DeviceTables(prepared, mode, np)


def _hidden_args(mode):
    from iqlut_gpu.model import Model

    seed, rng = next(cases.case_rngs(1, salt=2100))
    hidden = cases.random_layer(rng, 2, 2, 3, 5, residual=True)
    last = cases.random_layer(rng, 2, 4, 1, 3, residual=False)
    first = cases.random_layer(rng, 1, 2, 3, 4, residual=False)
    prepared = Prepared(Model(scale=2, upsample="bilinear", layers=(first, hidden, last)))
    tables = cuda_plan.DeviceTables(prepared, mode, np)
    x = np.zeros((3, 2, 5, 6), np.uint8)
    out = np.empty((3, 2, 5, 6), np.uint8)
    return [x, tables(1), tables.bias(1), hidden.shift, True, out, mode]


@pytest.mark.parametrize("mode", ["interp", "expanded"])
def test_plans_cast_scalars_to_c_int(mode):
    rec = cuda_plan.RecordingExecutor(block=(5, 3), max_blocks=4)
    plan = cuda_plan.plan_hidden(rec, *_hidden_args(mode))
    scalars = [a for a in plan.args if not isinstance(a, np.ndarray)]
    assert scalars and all(type(a) is np.int32 for a in scalars)
    assert plan.block == (5, 3, 1)
    assert plan.grid == (min(4, 3 * 2 * 2), 1, 1)  # 3 planes x ceil(5/3) x ceil(6/5) tiles


@pytest.mark.parametrize("mode", ["interp", "expanded"])
def test_launcher_rejects_bad_arrays(mode):
    rec = cuda_plan.RecordingExecutor()
    good = _hidden_args(mode)

    def bad(i, value, exc):
        args = list(good)
        args[i] = value
        with pytest.raises(exc):
            cuda_plan.plan_hidden(rec, *args)

    bad(0, good[0].astype(np.int16), TypeError)                 # x dtype
    bad(0, np.zeros((3, 2, 5, 12), np.uint8)[..., ::2], ValueError)  # not C-contiguous
    bad(0, np.zeros((3, 1, 5, 6), np.uint8), ValueError)        # c_in mismatch with the lut
    bad(2, np.zeros(3, np.int32), ValueError)                   # bias length
    bad(5, np.empty((3, 2, 5, 7), np.uint8), ValueError)        # out shape
    bad(3, 25, ValueError)                                      # shift out of range
    bad(3, 2.5, ValueError)                                     # shift not an integer
    bad(6, "lookup", ValueError)                                # mode
    bad(0, list(good[0]), TypeError)                            # not a numpy array here


def test_launcher_rejects_residual_shape_mismatch():
    rec = cuda_plan.RecordingExecutor()
    seed, rng = next(cases.case_rngs(1, salt=2200))
    layer = cases.random_layer(rng, 2, 3, 3, 4, residual=False)
    from iqlut_gpu.reference import interp_lut

    idx, wt = interp_lut(layer.knots)
    x = np.zeros((1, 2, 4, 4), np.uint8)
    out = np.empty((1, 3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="residual"):
        cuda_plan.plan_hidden(rec, x, (idx, wt, layer.table), layer.bias, 0, True, out)


def test_last_launcher_checks_scale_and_upsample():
    rec = cuda_plan.RecordingExecutor()
    model, prepared, tables = _model_and_tables("interp")
    n = len(model.layers) - 1
    P, H, W = 2, 3, 4
    c_in = model.layers[n].c_in
    x = np.zeros((P, c_in, H, W), np.uint8)
    plane = np.zeros((P, H, W), np.uint8)
    out = np.empty((P, 2 * H, 2 * W), np.uint8)
    up_off, up_w = tables.up
    args = [x, tables(n), tables.bias(n), 3, plane, up_off, up_w, prepared.up_den, out]
    plan = cuda_plan.plan_last(rec, *args)
    assert plan.kernel.startswith("iqlut::last_interp<")
    wrong = list(args)
    wrong[8] = np.empty((P, 3 * H, 3 * W), np.uint8)
    with pytest.raises(ValueError):
        cuda_plan.plan_last(rec, *wrong)
    wrong = list(args)
    wrong[7] = 0
    with pytest.raises(ValueError):
        cuda_plan.plan_last(rec, *wrong)
    wrong = list(args)
    wrong[4] = np.zeros((P, H + 1, W), np.uint8)
    with pytest.raises(ValueError):
        cuda_plan.plan_last(rec, *wrong)


def test_shared_memory_choice_follows_the_limit():
    from iqlut_gpu import default_model

    prepared = Prepared(default_model(4))
    shared = cuda_plan.kernels_for(prepared, modes=("interp",))
    assert all(k.endswith(",true>") for k in shared)  # the interp tables fit on chip
    rec = cuda_plan.RecordingExecutor()
    cuda_plan.run_model(rec, prepared, np.zeros((1, 2, 2), np.uint8), "interp",
                                  cuda_plan.DeviceTables(prepared, "interp", np),
                                  lambda s, d: np.empty(s, d))
    assert all(p.shared_bytes <= cuda_plan.SHARED_LIMIT for p in rec.plans)
    assert max(p.shared_bytes for p in rec.plans) > 16 * 1024
    glob = cuda_plan.kernels_for(prepared, modes=("interp",), shared_limit=0)
    assert all(k.endswith(",false>") for k in glob)


def test_one_launch_per_layer_covers_all_planes():
    model, prepared, tables = _model_and_tables("expanded", seed_salt=5)
    rec = cuda_plan.RecordingExecutor(block=(4, 4), max_blocks=10**6)
    planes = np.zeros((7, 9, 10), np.uint8)
    cuda_plan.run_model(rec, prepared, planes, "expanded", tables,
                                  lambda s, d: np.empty(s, d))
    assert len(rec.plans) == len(model.layers)
    for plan in rec.plans:
        assert plan.grid[0] == 7 * 3 * 3  # all planes' tiles in one grid
        assert np.int32(7) in [a for a in plan.args if type(a) is np.int32]


def test_tables_must_be_16_byte_aligned_and_device_tables_are():
    rec = cuda_plan.RecordingExecutor()
    args = _hidden_args("expanded")
    etab = args[1]
    assert etab.ctypes.data % 16 == 0
    for _ in range(3):
        idx_wt_table = cuda_plan.DeviceTables(Prepared(cases.random_model(np.random.default_rng())),
                                                 "interp", np)(0)
        assert idx_wt_table[2].ctypes.data % 16 == 0
    buf = np.zeros(etab.nbytes + 32, np.uint8)
    start = (-buf.ctypes.data % 16) + 2  # 2 bytes past an aligned address
    shifted = buf[start:start + etab.nbytes].view(np.int16).reshape(etab.shape)
    shifted[...] = etab
    args[1] = shifted
    with pytest.raises(ValueError, match="aligned"):
        cuda_plan.plan_hidden(rec, *args)
    realigned = cuda_plan._aligned(np, shifted)
    assert realigned.ctypes.data % 16 == 0 and np.array_equal(realigned, etab)


def test_table_traffic_counts_reads_per_pixel():
    from iqlut_gpu import default_model

    prepared = Prepared(default_model(2))
    interp = cuda_plan.table_traffic(prepared, "interp")
    expanded = cuda_plan.table_traffic(prepared, "expanded")
    # layer 0: 1 channel, 5x5 window, 8 outputs
    assert interp[0] == {"taps": 25, "entries": 2 * 25 * 8, "bytes": 2 * 25 * 8}
    assert expanded[0] == {"taps": 25, "entries": 25 * 8, "bytes": 2 * 25 * 8}
    assert interp[-1]["entries"] == 2 * 8 * 9 * 4
    with pytest.raises(ValueError):
        cuda_plan.table_traffic(prepared, "lookup")
