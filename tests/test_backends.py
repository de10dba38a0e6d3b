"""Every backend against the NumPy reference, bit for bit, on the shared random cases."""

import numpy as np
import pytest

import cases
from iqlut_gpu import backends, reference
from iqlut_gpu.model import UPSAMPLES

MODES = ("interp", "expanded")


def _check(backend, model, planes, seed, what=""):
    expected = reference.upscale_planes(model, planes)
    for mode in MODES:
        got = backends.run_planes(backend, model, planes, mode)
        if not np.array_equal(np.asarray(got), expected):
            bad = np.argwhere(np.asarray(got) != expected)[:5].tolist()
            pytest.fail(f"{backend}/{mode} differs from the reference (seed {seed}, {what}, "
                        f"first mismatches at {bad}); rerun with this seed to reproduce")


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("upsample", UPSAMPLES)
def test_cpu_matches_reference_random_models(scale, upsample):
    for seed, rng in cases.case_rngs(4, salt=scale * 10 + UPSAMPLES.index(upsample)):
        model = cases.random_model(rng, scale=scale, upsample=upsample)
        for h, w in cases.SIZES:
            planes = cases.random_planes(rng, 3, h, w)
            _check("cpu", model, planes, seed, f"x{scale} {upsample} {h}x{w}")


def test_cpu_matches_reference_default_architecture_random_tables():
    for seed, rng in cases.case_rngs(2, salt=99):
        model = cases.default_arch_model(rng, int(rng.choice([2, 3, 4])))
        planes = cases.random_planes(rng, 2, 11, 14)
        _check("cpu", model, planes, seed, "default architecture")


def test_cpu_extreme_codes_everywhere():
    for seed, rng in cases.case_rngs(3, salt=7):
        model = cases.random_model(rng)
        _check("cpu", model, cases.extreme_planes(), seed, "codes 0/255")


def test_shipped_default_models_run_on_cpu_like_reference():
    from iqlut_gpu import default_model

    rng = np.random.default_rng()
    planes = rng.integers(0, 256, size=(2, 9, 8)).astype(np.uint8)
    for scale in (2, 3, 4):
        _check("cpu", default_model(scale), planes, "n/a", f"default x{scale}")


def test_the_cli_process_loads_numba_without_scipy_blas(tmp_path):
    # The CLI hides SciPy's BLAS while Numba loads its NumPy support (0.34 s of start-up);
    # the result is unchanged, SciPy stays importable, a library process is untouched.
    import subprocess
    import sys

    from iqlut_gpu import upscale
    from iqlut_gpu.io import read_image, write_image

    seed, rng = next(cases.case_rngs(1, salt=91))
    image = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    write_image(tmp_path / "in.png", image)
    script = (
        "import sys\n"
        "from iqlut_gpu.cli import main\n"
        "code = main(['upscale', 'in.png', '-o', 'out.png', '--scale', '2', '--backend', 'cpu', '--quiet'])\n"
        "import numba.np.arraymath as am\n"
        "hidden = 'scipy.linalg' not in sys.modules\n"
        "import scipy.linalg\n"
        "print(code, hidden, am._HAVE_BLAS)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "True", "False"], (seed, done.stdout)
    assert np.array_equal(read_image(tmp_path / "out.png"),
                          upscale(image, 2, backend="reference")), f"seed {seed}"
    library = subprocess.run(
        [sys.executable, "-c", "import sys; from iqlut_gpu import backends; "
         "assert backends.probe('cpu') is None; import numba.np.arraymath as am; "
         "print(am._HAVE_BLAS == ('scipy.linalg' in sys.modules))"],
        capture_output=True, text=True, timeout=300)
    assert library.stdout.strip() == "True", library.stderr
