"""The CUDA kernels (kernels/cuda/iqlut.cu), run on the CPU through the host emulation
(tests/cuda_emu), against the NumPy reference, bit for bit, on the shared random cases.

The launch plans come from the CUDA backend's own launcher code (validation, scalar
casts, specialisation, geometry); only the executor differs from a GPU run. Small odd
block shapes and small grids make tiles, tails and the grid-stride loop matter. All
specialisations the session needs are compiled in one g++ run (cached per source hash).
"""

from __future__ import annotations

import numpy as np
import pytest

from cuda_emu import harness
from cuda_emu.cuda_cases import all_cases, group
from iqlut_gpu import reference
from iqlut_gpu.backends import Prepared
from iqlut_gpu.kernels import cuda_plan
from iqlut_gpu.model import UPSAMPLES

pytestmark = harness.pytest_marks()

MODES = ("interp", "expanded")
# (block, max_blocks, shared_limit): odd tiles with a grid-stride loop, a single thread,
# one row of threads, a big block with one tile per block; tables in shared memory or not
GEOMETRIES = [((5, 3), 3, cuda_plan.SHARED_LIMIT),
              ((7, 1), 2, 0),
              ((1, 1), 1, cuda_plan.SHARED_LIMIT),
              ((3, 4), 1000, 0),
              ((16, 8), 2, cuda_plan.SHARED_LIMIT)]


@pytest.fixture(scope="module")
def library():
    """One emulation library with every specialisation the cases need."""
    kernels = set()
    for _, _, model, planes, _ in all_cases():
        prepared = Prepared(model)
        for block, max_blocks, limit in GEOMETRIES:
            rec = harness.RecordingExecutor(block=block, max_blocks=max_blocks, shared_limit=limit)
            for mode in MODES:
                harness.run_planes(rec, prepared, planes[:1, :1, :1], mode)
            kernels |= rec.kernels
    return harness.build(kernels)


def _check_group(library, name, geometries=GEOMETRIES):
    for _, seed, model, planes, label in group(name):
        expected = reference.upscale_planes(model, planes)
        prepared = Prepared(model)
        for block, max_blocks, limit in geometries:
            ex = harness.EmuExecutor(library, block=block, max_blocks=max_blocks, shared_limit=limit)
            for mode in MODES:
                alloc = harness.GuardedAlloc()
                got = harness.run_planes(ex, prepared, planes, mode, alloc)
                where = (f"seed {seed}, {name} {label}, mode {mode}, block {block}, "
                         f"max_blocks {max_blocks}, shared_limit {limit}")
                assert alloc.intact(), f"out-of-bounds write ({where})"
                if not np.array_equal(got, expected):
                    bad = np.argwhere(got != expected)[:5].tolist()
                    pytest.fail(f"emulated CUDA differs from the reference ({where}; first "
                                f"mismatches at {bad}); rerun with IQLUT_TEST_SEED to reproduce")
            assert len(ex.launches) == 2 * len(model.layers)  # one launch per layer per mode


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("upsample", UPSAMPLES)
def test_emulated_matches_reference_random_models(library, scale, upsample):
    _check_group(library, f"x{scale}-{upsample}")


def test_emulated_default_architecture_random_tables(library):
    _check_group(library, "default-arch")


def test_emulated_extreme_codes(library):
    _check_group(library, "extreme")


def test_emulated_shipped_default_models(library):
    _check_group(library, "shipped")


def test_both_table_placements_are_exercised(library):
    names = set(library.entry)
    assert any(n.startswith("iqlut::hidden_interp<") and n.endswith(",true>") for n in names)
    assert any(n.startswith("iqlut::hidden_interp<") and n.endswith(",false>") for n in names)
    assert any(n.startswith("iqlut::last_interp<") and n.endswith(",true>") for n in names)
    assert any(n.startswith("iqlut::last_interp<") and n.endswith(",false>") for n in names)


def test_emulation_checks_argument_types(library):
    model = all_cases()[0][2]
    planes = np.zeros((1, 3, 4), np.uint8)
    ex = harness.EmuExecutor(library, block=(5, 3), max_blocks=3)
    rec = harness.RecordingExecutor(block=(5, 3), max_blocks=3)
    harness.run_planes(rec, Prepared(model), planes, "interp")
    plan = rec.plans[-1]
    assert all(type(a) is np.int32 for a in plan.args if not isinstance(a, np.ndarray))
    # a long long where the kernel takes an int is exactly CuPy's Python-int pitfall
    i = next(n for n, a in enumerate(plan.args) if type(a) is np.int32)
    bad = plan.args[:i] + (np.int64(plan.args[i]),) + plan.args[i + 1:]
    with pytest.raises(TypeError, match="numpy.int32"):
        ex.launch(cuda_plan.Launch(plan.kernel, plan.grid, plan.block, bad, 0))
    j = next(n for n, a in enumerate(plan.args) if isinstance(a, np.ndarray) and a.dtype == np.int32)
    bad = plan.args[:j] + (plan.args[j].astype(np.int64),) + plan.args[j + 1:]
    with pytest.raises(TypeError):
        ex.launch(cuda_plan.Launch(plan.kernel, plan.grid, plan.block, bad, 0))


# ----------------------------------------------------------------------------- the emulator


@pytest.fixture(scope="module")
def selftest():
    names = ["selftest::reverse_blocks<true>", "selftest::reverse_blocks<false>",
             "selftest::divergent_barrier", "selftest::coordinates"]
    return harness.build(names, source=harness.EMU_DIR / "selftest.cu")


def _run(lib, name, grid, block, *args):
    ex = harness.EmuExecutor(lib, block=block[:2], max_blocks=grid[0])
    ex.launch(cuda_plan.Launch(name, grid, block, args, 0))


def test_emulator_barrier_semantics(selftest):
    n, blocks = 37, 4
    data = np.arange(n * blocks, dtype=np.int32)
    _run(selftest, "selftest::reverse_blocks<true>", (blocks, 1, 1), (n, 1, 1), data)
    assert np.array_equal(data, np.arange(n * blocks, dtype=np.int32).reshape(blocks, n)[:, ::-1].ravel())


def test_emulator_exposes_a_missing_barrier(selftest):
    # without __syncthreads the high threads (resumed first) read shared entries that the
    # low threads have not written yet: the emulation must not hide that race
    n = 37
    data = np.arange(1000, 1000 + n, dtype=np.int32)
    _run(selftest, "selftest::reverse_blocks<false>", (1, 1, 1), (n, 1, 1), data)
    assert not np.array_equal(data, np.arange(1000, 1000 + n, dtype=np.int32)[::-1])


def test_emulator_reports_divergent_barrier(selftest):
    data = np.zeros(8, np.int32)
    with pytest.raises(RuntimeError, match="diverged"):
        _run(selftest, "selftest::divergent_barrier", (1, 1, 1), (8, 1, 1), data)


def test_emulator_builtin_variables(selftest):
    grid, block = (3, 2, 2), (4, 3, 2)
    nthreads = int(np.prod(grid) * np.prod(block))
    out = np.full(6 * nthreads, -1, np.int32)
    _run(selftest, "selftest::coordinates", grid, block, out)
    got = {tuple(r) for r in out.reshape(-1, 6)}
    want = {(bx, by, bz, tx, ty, tz) for bx in range(3) for by in range(2) for bz in range(2)
            for tx in range(4) for ty in range(3) for tz in range(2)}
    assert got == want
