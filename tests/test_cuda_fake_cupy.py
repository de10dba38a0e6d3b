"""The CUDA backend's CuPy glue, end to end, with CuPy replaced by tests/cuda_emu/fake_cupy.py
(host memory + the kernel emulation, asynchronous like CUDA): probe and selection, one
NVRTC module per model and mode, memoisation, numpy in/out, device arrays in/out, streams,
DLPack without a copy, the api hook, out-of-memory translation, the grid from the
occupancy query. The arithmetic is checked against the reference. Races and waits:
tests/test_cuda_async.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from cuda_emu import harness
from cuda_emu.cuda_cases import CudaBuffer, group
from iqlut_gpu import backends, reference, upscale
from iqlut_gpu.backends import Prepared
from iqlut_gpu.kernels import cuda_backend

pytestmark = harness.pytest_marks()



def test_probe_and_selection_with_a_device(cupy):
    assert cuda_backend.probe() is None
    assert backends.resolve("auto") == "cuda"
    assert backends.resolve("cuda") == "cuda"


def test_numpy_in_numpy_out_one_module_per_model_and_mode(cupy):
    (_, seed, model, planes, label), *_ = group("default-arch")
    expected = reference.upscale_planes(model, planes)
    for mode in ("interp", "expanded"):
        got = backends.run_planes("cuda", model, planes, mode)
        assert type(got) is np.ndarray
        assert np.array_equal(got, expected), f"seed {seed} {label} {mode}"
        got = backends.run_planes("cuda", model, planes, mode)  # memoised: no new module
        assert np.array_equal(got, expected)
    assert len(cupy.RawModule.built) == 2  # one NVRTC run per (model, mode)
    for module in cupy.RawModule.built:
        assert module.options == cuda_backend.COMPILE_OPTIONS
    assert len(cupy.launched()) == 4 * len(model.layers)


def test_self_ensembles_match_the_reference_on_host_and_device_arrays(cupy):
    for _, seed, model, planes, label in group("ensemble"):
        expected = reference.upscale_planes(model, planes)
        for mode in ("interp", "expanded"):
            got = backends.run_planes("cuda", model, planes, mode)
            assert np.array_equal(got, expected), f"seed {seed} {label} {mode}"
        cupy.launched().clear()
        out = cuda_backend.run_planes(Prepared(model), cupy.asarray(planes), "interp")
        assert isinstance(out, cupy.ndarray) and np.array_equal(cupy.asnumpy(out), expected)
        # n passes: one launch per layer per pass
        assert len(cupy.launched()) == model.ensemble * len(model.layers)


def test_device_arrays_stay_on_device_and_use_the_stream(cupy):
    (_, seed, model, planes, label), *_ = group("x3-bicubic")
    expected = reference.upscale_planes(model, planes)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        dev = cupy.asarray(planes)
    out = cuda_backend.run_planes(Prepared(model), dev, "interp", stream=stream)
    assert isinstance(out, cupy.ndarray)
    assert np.array_equal(cupy.asnumpy(out, stream=stream), expected), f"seed {seed} {label}"
    launched = cupy.launched()
    assert launched and all(s is stream for _, s in launched)


def test_upscale_device_layouts_and_dlpack_without_copy(cupy):
    model = group("shipped")[0][2]
    r = model.scale
    rng = np.random.default_rng()

    for shape in [(6, 5), (6, 5, 1), (6, 5, 3), (6, 5, 4), (2, 6, 5, 3)]:
        host = rng.integers(0, 256, shape, dtype=np.uint8)
        dev = cupy.asarray(host)
        got = upscale(dev, r, model=model, backend="auto")
        assert isinstance(got, cupy.ndarray)
        want = upscale(host, r, model=model, backend="reference")
        assert got.shape == want.shape and np.array_equal(cupy.asnumpy(got), want), shape
        wrapped = CudaBuffer(dev)
        view, on_device = cuda_backend.as_device_planes(wrapped)
        assert on_device and view.data.ptr == dev.data.ptr  # no copy
        got = upscale(wrapped, r, model=model, backend="cuda")
        assert isinstance(got, cupy.ndarray) and np.array_equal(cupy.asnumpy(got), want)


def test_device_arrays_with_a_cpu_backend_are_refused(cupy):
    with pytest.raises(backends.BackendUnavailable, match="CUDA device"):
        upscale(cupy.asarray(np.zeros((4, 4), np.uint8)), 2, backend="cpu")


def test_device_upscale_rejects_bad_images(cupy):
    prepared = Prepared(group("shipped")[0][2])
    with pytest.raises(TypeError):
        cuda_backend.upscale_device(cupy.asarray(np.zeros((4, 4), np.int16)), prepared)
    with pytest.raises(ValueError):
        cuda_backend.upscale_device(cupy.asarray(np.zeros((4, 4, 2), np.uint8)), prepared)
    with pytest.raises(ValueError):
        cuda_backend.upscale_device(cupy.asarray(np.zeros((0, 4), np.uint8)), prepared)


def test_launchers_take_device_arrays_only(cupy):
    model = group("shipped")[0][2]
    prepared = Prepared(model)
    tables = cuda_backend.device_tables(prepared, "interp")
    layer = model.layers[0]
    x = cupy.asarray(np.zeros((1, 1, 4, 4), np.uint8))
    out = cupy.empty((1, layer.c_out, 4, 4), np.uint8)
    cuda_backend.launch_hidden(x, tables(0), tables.bias(0), layer.shift, layer.residual, out)
    expected = reference.hidden_layer(layer, np.zeros((1, 4, 4), np.uint8))
    assert np.array_equal(cupy.asnumpy(out)[0], expected)
    with pytest.raises(TypeError, match="cupy array"):
        cuda_backend.launch_hidden(np.zeros((1, 1, 4, 4), np.uint8), tables(0), tables.bias(0),
                                   layer.shift, layer.residual, out)


def test_out_of_memory_becomes_device_out_of_memory(cupy, monkeypatch):
    def oom(*a, **k):
        raise cupy.OutOfMemoryError("out of memory allocating 1 bytes")

    monkeypatch.setattr(cupy, "empty", oom)
    expected = getattr(backends, "DeviceOutOfMemory", MemoryError)
    with pytest.raises(expected):
        cuda_backend.run_planes(Prepared(group("shipped")[0][2]), np.zeros((1, 4, 4), np.uint8))


def test_grid_is_one_wave_from_the_occupancy_query(cupy):
    model = group("shipped")[0][2]
    cupy.Device.occupancy = 3
    backends.run_planes("cuda", model, np.zeros((4, 64, 64), np.uint8), "interp")
    ex = cuda_backend._current_executor()
    sms = cupy.Device().attributes["MultiProcessorCount"]
    assert ex._blocks and all(n == 3 * sms for n in ex._blocks.values())
    ex.max_blocks = 5  # an explicit grid overrides it
    assert ex.max_blocks_for(next(iter(ex._blocks))) == 5
