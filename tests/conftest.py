import subprocess
import sys

import pytest

import cases


@pytest.fixture(autouse=True)
def fresh_backend_probes():
    """Backend probes are cached per process; tests change what they would find (fake CuPy,
    IQLUT_BACKEND, missing modules), so each test starts and ends with fresh ones."""
    from iqlut_gpu import backends

    backends.reset()
    yield
    backends.reset()


@pytest.fixture
def cupy(monkeypatch):
    """The CuPy stand-in (tests/cuda_emu/fake_cupy.py) as ``import cupy``, with fresh state;
    IQLUT_BACKEND unset."""
    from cuda_emu import fake_cupy
    from iqlut_gpu import backends

    fake_cupy.install(monkeypatch)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    return fake_cupy


def pytest_report_header(config):
    return f"iqlut random cases: IQLUT_TEST_SEED={cases.SESSION_SEED} (set it to reproduce)"


@pytest.fixture
def run_cli(tmp_path):
    """Run the `iqlut` CLI in a subprocess (as a user would); returns CompletedProcess."""

    def run(*args, env=None, cwd=None, timeout=300):
        return subprocess.run([sys.executable, "-m", "iqlut_gpu", *map(str, args)],
                              capture_output=True, text=True, env=env, cwd=cwd or tmp_path,
                              timeout=timeout)

    return run
