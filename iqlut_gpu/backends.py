"""Backend selection: ``"auto" | "cpu" | "cuda" | "reference"``.

``IQLUT_BACKEND`` overrides ``"auto"``. Probes return ``None`` when a backend can run, or
the reason it cannot; each runs once per process (``reset`` forgets them, for tests).
``"auto"`` prefers CUDA and falls back to the CPU with one warning; an explicit backend
that cannot run raises ``BackendUnavailable`` with the reason.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import warnings

import numpy as np

from . import reference
from .errors import BackendFallbackWarning, BackendUnavailable, DeviceOutOfMemory  # noqa: F401
from .memo import IdentityMemo
from .model import Model

BACKENDS = ("auto", "cpu", "cuda", "reference")
ENV_VAR = "IQLUT_BACKEND"


class Prepared:
    """Per-model data every backend needs, derived once from the model file's arrays.

    ``lut(n, "interp")`` is ``(idx, wt, table)`` of layer ``n``; ``lut(n, "expanded")`` is
    the int16 expanded table. The fixed upsample is ``up_off, up_w, up_den``; ``ensemble``
    the number of passes. It holds the model's layers, not the model (``prepare``'s memo
    keeps it only while the model lives).
    """

    def __init__(self, model: Model):
        self.scale = model.scale
        self.layers = model.layers
        self.ensemble = model.ensemble
        self.up_off, self.up_w, self.up_den = reference.upsample_filter(model.scale, model.upsample)
        self._luts: dict = {}

    def lut(self, n: int, mode: str):
        key = (n, mode)
        if key not in self._luts:
            layer = self.layers[n]
            if mode == "interp":
                idx, wt = reference.interp_lut(layer.knots)
                self._luts[key] = (idx, wt, np.ascontiguousarray(layer.table))
            elif mode == "expanded":
                self._luts[key] = np.ascontiguousarray(reference.expand_layer(layer))
            else:
                raise ValueError(f"mode must be 'interp' or 'expanded', got {mode!r}")
        return self._luts[key]


_PREPARED = IdentityMemo()


def prepare(model: Model) -> Prepared:
    """Memoised per model object (models are immutable) while it lives."""
    return _PREPARED.get(model, lambda: Prepared(model))


# ----------------------------------------------------------------------------- probes


def _probe_reference() -> str | None:
    return None


# Set by the CLI, a process that runs nothing but iqlut's kernels: see ``_import_numba``.
LEAN_NUMBA = False


def _probe_cpu() -> str | None:
    try:
        _import_numba()
    except Exception as e:  # ImportError, or numba refusing this numpy
        return f"Numba is not usable: {e}"
    return None


def _import_numba() -> None:
    """Import Numba; with ``LEAN_NUMBA``, also its NumPy support with SciPy's BLAS hidden.

    Numba's first compile or cache load imports ``numba.np.arraymath``, which imports
    ``scipy.linalg`` (0.34 s of every ``iqlut`` command on the 2-core CPU) only to learn
    whether ``np.dot`` in jitted code may call BLAS. iqlut's kernels call no BLAS, so the
    CLI hides it for that one import (numba then takes its own loop for those dot
    products, in this process only); SciPy stays importable afterwards. A process that
    has imported ``scipy.linalg`` already pays nothing and is left as it is.
    """
    importlib.import_module("numba")
    if not LEAN_NUMBA or "scipy.linalg" in sys.modules or "numba.np.arraymath" in sys.modules:
        return
    blas = "scipy.linalg.cython_blas"
    sys.modules[blas] = None  # `import` of it raises ImportError, parents not imported
    try:
        importlib.import_module("numba.np.arraymath")
    finally:
        if sys.modules.get(blas, 0) is None:
            del sys.modules[blas]


def _probe_cuda() -> str | None:
    try:
        mod = importlib.import_module("iqlut_gpu.kernels.cuda_backend")
    except ImportError as e:
        return f"the CUDA backend is not available: {e}"
    return mod.probe()


PROBES = {"reference": _probe_reference, "cpu": _probe_cpu, "cuda": _probe_cuda}


def probe(name: str) -> str | None:
    """None if backend ``name`` can run here, else the reason it cannot (probed once)."""
    if name not in PROBES:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return _probe_once(name)


@functools.lru_cache(maxsize=None)
def _probe_once(name: str) -> str | None:
    return PROBES[name]()


def host_interleave():
    """The parallel planes -> frames kernel for ``planes.from_planes`` where Numba runs
    (``kernels.numba_color.interleave``), else None (NumPy's copy)."""
    if probe("cpu") is None:
        from .kernels import numba_color

        return numba_color.interleave
    return None


_warned_fallback = False


def reset() -> None:
    """Forget the probes' answers and the fallback warning (tests that change what is
    importable, or a process whose devices changed)."""
    global _warned_fallback
    _probe_once.cache_clear()
    _warned_fallback = False


def check_backend(backend: str) -> None:
    """ValueError unless ``backend`` is one of BACKENDS (nothing probed)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve(backend: str = "auto") -> str:
    """The concrete backend to use for ``backend`` (honours IQLUT_BACKEND for "auto")."""
    global _warned_fallback
    check_backend(backend)
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"{ENV_VAR}={env!r} is not one of {BACKENDS}")
            backend = env
    if backend != "auto":
        reason = probe(backend)
        if reason:
            raise BackendUnavailable(f"backend {backend!r} cannot run: {reason}")
        return backend
    reason = probe("cuda")
    if reason is None:
        return "cuda"
    if not _warned_fallback:
        warnings.warn(f"iqlut: using the CPU backend ({reason})", BackendFallbackWarning, stacklevel=3)
        _warned_fallback = True
    cpu_reason = probe("cpu")
    return "cpu" if cpu_reason is None else "reference"


MODES = ("auto", "interp", "expanded")


def check_mode(mode: str) -> None:
    """ValueError unless ``mode`` is one of MODES."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def concrete_mode(name: str, mode: str) -> str:
    """The table mode for ``mode`` on backend ``name``: "auto" picks the measured winner,
    the expanded tables on both backends. Both modes give bit-identical results.

    On the CPU the expanded tables are faster (one read per source pixel; the bench's
    model group measures both, bench/README.md). On the GPU they were expected to lose to
    the interpolating tables, which fit in shared memory (the point of IQ-LUT), but the
    first GPU check (H200, bench/results/nvidia-h200.json) measured expanded 2.2x faster
    at x2 1920x1080 and 1.9x at x4 960x540: a layer's expanded table (int16, 0.1-0.3 MB;
    1.0-1.6 MB a model) is served from L1 and L2, and each output needs one read instead
    of two plus the arithmetic.
    """
    check_mode(mode)
    if mode == "auto":
        return "expanded"
    return mode


def run_planes(name: str, model: Model, planes, mode: str = "auto"):
    """Run ``model`` on uint8 [P, H, W] planes with the concrete backend ``name``."""
    mode = concrete_mode(name, mode)
    prepared = prepare(model)
    if name == "reference":
        return reference.upscale_planes(model, np.asarray(planes))
    if name == "cpu":
        from .kernels import numba_cpu

        return numba_cpu.run_planes(prepared, planes, mode)
    if name == "cuda":
        from .kernels import cuda_backend

        return cuda_backend.run_planes(prepared, planes, mode)
    raise ValueError(f"unknown backend {name!r}")
