"""The real CUDA kernels on a device against the NumPy reference, bit for bit, on the same
cases as the emulated tests (tests/cuda_emu/cuda_cases.py). Skipped, with the probe's
reason, where CuPy or a device is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

from cuda_emu.cuda_cases import GROUPS, CudaBuffer, group
from iqlut_gpu import backends, reference, upscale
from iqlut_gpu.backends import Prepared
from iqlut_gpu.kernels import cuda_backend, cuda_plan

REASON = cuda_backend.probe()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(REASON is not None, reason=f"no usable CUDA device: {REASON}")]

MODES = ("interp", "expanded")


def _fail(got, expected, where):
    got = np.asarray(got)
    if not np.array_equal(got, expected):
        bad = np.argwhere(got != expected)[:5].tolist()
        pytest.fail(f"CUDA differs from the reference ({where}; first mismatches at {bad}); "
                    "rerun with IQLUT_TEST_SEED to reproduce")


@pytest.mark.parametrize("name", GROUPS)
def test_gpu_matches_reference(name):
    for _, seed, model, planes, label in group(name):
        expected = reference.upscale_planes(model, planes)
        for mode in MODES:
            got = backends.run_planes("cuda", model, planes, mode)
            assert isinstance(got, np.ndarray)
            _fail(got, expected, f"seed {seed}, {name} {label}, {mode}")


@pytest.mark.parametrize("block,max_blocks,limit", [((5, 3), 3, cuda_plan.SHARED_LIMIT),
                                                    ((7, 1), 2, 0), ((1, 1), 1, 0)])
def test_gpu_small_blocks_and_grids(block, max_blocks, limit):
    import cupy

    ex = cuda_backend.CupyExecutor(cupy.cuda.Device().id, block=block, shared_limit=limit)
    ex.max_blocks = max_blocks
    for name in ("x4-bicubic", "x3-bilinear", "default-arch"):
        for _, seed, model, planes, label in group(name):
            prepared = Prepared(model)
            expected = reference.upscale_planes(model, planes)
            for mode in MODES:
                tables = cuda_plan.DeviceTables(prepared, mode, cupy)
                out = cuda_plan.run_model(ex, prepared, cupy.asarray(planes), mode, tables,
                                                    lambda s, d: cupy.empty(s, d))
                _fail(cupy.asnumpy(out), expected, f"seed {seed}, {name} {label}, {mode}, {block}")


def test_gpu_device_arrays_stay_on_device_and_streams_work():
    import cupy

    (_, seed, model, planes, label), *_ = group("default-arch")
    expected = reference.upscale_planes(model, planes)
    stream = cupy.cuda.Stream(non_blocking=True)
    dev = cupy.asarray(planes)
    for mode in MODES:
        out = cuda_backend.run_planes(Prepared(model), dev, mode, stream=stream)
        assert isinstance(out, cupy.ndarray)
        stream.synchronize()
        _fail(cupy.asnumpy(out), expected, f"seed {seed}, stream, {mode}")


def test_gpu_dlpack_input_is_taken_without_a_copy():
    import cupy

    arr = cupy.asarray(np.random.default_rng().integers(0, 256, (7, 9, 3), dtype=np.uint8))
    wrapped = CudaBuffer(arr)
    assert cuda_backend.is_device_array(wrapped)
    view, on_device = cuda_backend.as_device_planes(wrapped)
    assert on_device and view.data.ptr == arr.data.ptr
    model = group("shipped")[0][2]
    got = upscale(wrapped, model.scale, model=model, backend="cuda")
    assert isinstance(got, cupy.ndarray) and got.shape == (7 * model.scale, 9 * model.scale, 3)
    expected = upscale(cupy.asnumpy(arr), model.scale, model=model, backend="reference")
    _fail(cupy.asnumpy(got), expected, "dlpack RGB image through upscale")


def test_gpu_upscale_cupy_in_cupy_out_every_layout():
    import cupy

    rng = np.random.default_rng()
    model = group("shipped")[1][2]
    r = model.scale
    for shape in [(6, 5), (6, 5, 1), (6, 5, 3), (6, 5, 4), (2, 6, 5, 3)]:
        host = rng.integers(0, 256, shape, dtype=np.uint8)
        got = upscale(cupy.asarray(host), r, model=model, backend="cuda")
        assert isinstance(got, cupy.ndarray)
        _fail(cupy.asnumpy(got), upscale(host, r, model=model, backend="cpu"), f"layout {shape}")


def test_gpu_launchers_reject_host_arrays_and_compile_once():
    import cupy

    model = group("shipped")[0][2]
    planes = np.zeros((1, 4, 4), np.uint8)
    backends.run_planes("cuda", model, planes, "interp")
    before = dict(cuda_backend._FUNCTIONS)
    backends.run_planes("cuda", model, planes, "interp")
    assert cuda_backend._FUNCTIONS == before  # memoised per device and specialisation
    prepared = Prepared(model)
    tables = cuda_backend.device_tables(prepared, "interp")
    layer = model.layers[0]
    x = np.zeros((1, 1, 4, 4), np.uint8)
    out = cupy.empty((1, layer.c_out, 4, 4), np.uint8)
    with pytest.raises(TypeError, match="cupy array"):
        cuda_backend.launch_hidden(x, tables(0), tables.bias(0), layer.shift, layer.residual, out)
