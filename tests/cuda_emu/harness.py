"""Run the kernels of ``kernels/cuda/iqlut.cu`` on the CPU, through ``cuda_emu.h``.

``build(kernels)`` compiles the .cu file as C++17 together with ``cuda_emu.h`` and one
exported entry point per kernel specialisation (``emu_k<i>``: grid, block and
cuLaunchKernel-style argument pointers), loads it with ctypes and caches the shared
library in the temp dir under the hash of everything that went into it.

``EmuExecutor`` executes ``cuda_plan.Launch`` plans with that library: the same plans,
built by the same launcher code, that ``cuda_backend.CupyExecutor`` sends to a GPU. It
checks every argument against the kernel's C parameter types (pointer element type or
``int``), as a real launch would need them.

``RecordingExecutor`` only records which specialisations a run needs, so a test session
can compile all of them in one compiler run.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from iqlut_gpu.kernels import cuda_plan

EMU_DIR = Path(__file__).resolve().parent
HEADER = EMU_DIR / "cuda_emu.h"
CXX_FLAGS = ("-std=c++17", "-O1", "-fno-strict-aliasing", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
             "-Wno-unused-parameter", "-Wno-unknown-pragmas")
CACHE_DIR = Path(tempfile.gettempdir()) / "iqlut_cuda_emu"

# numpy dtype char of each C type the kernels take a pointer to
_PTR_CODES = {"B": np.uint8, "b": np.int8, "h": np.int16, "i": np.int32}


def find_compiler() -> str | None:
    """A C++ compiler: $CXX, else g++, c++ or clang++ on PATH; None if there is none."""
    for cand in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


_SIG_HELPERS = r"""
#include <string>
namespace emu_sig {
template <class T> struct code;  // '*' const pointer (read), '&' pointer written; then the
                                  // numpy dtype char; 'i' alone = a C int by value
template <> struct code<const unsigned char*> { static const char* s() { return "*B"; } };
template <> struct code<unsigned char*> { static const char* s() { return "&B"; } };
template <> struct code<const signed char*> { static const char* s() { return "*b"; } };
template <> struct code<const short*> { static const char* s() { return "*h"; } };
template <> struct code<const int*> { static const char* s() { return "*i"; } };
template <> struct code<int*> { static const char* s() { return "&i"; } };
template <> struct code<int> { static const char* s() { return "i"; } };
template <class... A> std::string of(void (*)(A...)) {
    std::string s;
    ((s += code<A>::s(), s += ","), ...);
    return s;
}
}  // namespace emu_sig
"""


def _source(kernels: list[str], source: Path) -> str:
    lines = ['#include "cuda_emu.h"', f'#include "{source.name}"', _SIG_HELPERS]
    for i, name in enumerate(kernels):
        lines.append(
            f'extern "C" int emu_k{i}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
            f'unsigned by, unsigned bz, void** args) {{ return emu::launch(&{name}, '
            f'dim3(gx, gy, gz), dim3(bx, by, bz), args); }}\n'
            f'extern "C" const char* emu_sig{i}() {{ static const std::string s = '
            f'emu_sig::of(&{name}); return s.c_str(); }}')
    return "\n".join(lines) + "\n"


class EmuLibrary:
    """A compiled emulation library with the given kernel specialisations."""

    def __init__(self, path: Path, kernels: list[str]):
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        self.entry, self.signature = {}, {}  # signature: codes as in _SIG_HELPERS
        for i, name in enumerate(kernels):
            fn = getattr(self.lib, f"emu_k{i}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.POINTER(ctypes.c_void_p)]
            sig = getattr(self.lib, f"emu_sig{i}")
            sig.restype = ctypes.c_char_p
            self.entry[name] = fn
            self.signature[name] = sig().decode().rstrip(",").split(",")


def build(kernels, compiler: str | None = None, source: Path = cuda_plan.SOURCE_FILE) -> EmuLibrary:
    """Compile (or fetch from the cache) a library holding ``kernels`` (name expressions)
    of the CUDA file ``source`` (default: the backend's iqlut.cu)."""
    compiler = compiler or find_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    kernels = sorted(set(kernels))
    source = Path(source).resolve()
    src = _source(kernels, source)
    h = hashlib.sha256()
    for part in (src, HEADER.read_text(), source.read_text(), compiler, " ".join(CXX_FLAGS)):
        h.update(part.encode())
        h.update(b"\0")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    lib_path = CACHE_DIR / f"iqlut_emu_{h.hexdigest()[:24]}.so"
    if not lib_path.exists():
        with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
            cpp = Path(tmp) / "emu.cpp"
            cpp.write_text(src)
            tmp_lib = Path(tmp) / "emu.so"
            cmd = [compiler, *CXX_FLAGS, f"-I{EMU_DIR}", f"-I{source.parent}",
                   str(cpp), "-o", str(tmp_lib)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"emulation build failed ({' '.join(cmd)}):\n{res.stderr[-6000:]}")
            os.replace(tmp_lib, lib_path)  # atomic: concurrent sessions never see half a file
    return EmuLibrary(lib_path, kernels)


class RecordingExecutor(cuda_plan.RecordingExecutor):
    """``cuda_plan.RecordingExecutor`` with the emulation's small default geometry."""

    def __init__(self, block=(5, 3), max_blocks=3, shared_limit=cuda_plan.SHARED_LIMIT):
        super().__init__(block=block, max_blocks=max_blocks, shared_limit=shared_limit)


class EmuExecutor(RecordingExecutor):
    """Executes ``Launch`` plans on the CPU with an ``EmuLibrary``."""

    def __init__(self, library: EmuLibrary, **kw):
        super().__init__(**kw)
        self.library = library
        self.launches: list = []

    def launch(self, plan, stream=None):
        if plan.kernel not in self.library.entry:
            raise KeyError(f"{plan.kernel} is not in the emulation library (record it first)")
        sig = self.library.signature[plan.kernel]
        if len(sig) != len(plan.args):
            raise TypeError(f"{plan.kernel} takes {len(sig)} arguments, the plan has {len(plan.args)}")
        holders = []
        for i, (code, arg) in enumerate(zip(sig, plan.args)):
            if code[0] in "*&":
                want = np.dtype(_PTR_CODES[code[1]])
                if not isinstance(arg, np.ndarray) or arg.dtype != want:
                    raise TypeError(f"{plan.kernel} argument {i}: needs a {want} array, got "
                                    f"{getattr(arg, 'dtype', type(arg).__name__)}")
                if not arg.flags.c_contiguous:
                    raise ValueError(f"{plan.kernel} argument {i}: not C-contiguous")
                holders.append(ctypes.c_void_p(arg.ctypes.data))
            else:  # a C int by value: only numpy.int32 is the exact C type
                if type(arg) is not np.int32:
                    raise TypeError(f"{plan.kernel} argument {i}: needs numpy.int32, got "
                                    f"{type(arg).__name__}")
                holders.append(ctypes.c_int32(int(arg)))
        ptrs = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        rc = self.library.entry[plan.kernel](*plan.grid, *plan.block, ptrs)
        if rc == 1:
            raise RuntimeError(f"{plan.kernel}: threads of a block diverged at __syncthreads")
        if rc != 0:
            raise RuntimeError(f"{plan.kernel}: bad launch configuration {plan.grid} {plan.block}")
        self.launches.append(plan)


class GuardedAlloc:
    """numpy allocations with sentinel bytes on both sides, to catch out-of-bounds writes."""

    GUARD = 64
    SENTINEL = 0xA5

    def __init__(self):
        self.buffers = []

    def __call__(self, shape, dtype):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = np.full(n + 2 * self.GUARD, self.SENTINEL, np.uint8)
        self.buffers.append(buf)
        return buf[self.GUARD:self.GUARD + n].view(dtype).reshape(shape)

    def intact(self) -> bool:
        g = self.GUARD
        return all(bool(np.all(b[:g] == self.SENTINEL) and np.all(b[-g:] == self.SENTINEL))
                   for b in self.buffers)


def run_planes(executor, prepared, planes, mode, alloc=None):
    """``cuda_plan.run_model`` (the CUDA backend's whole-model path) on host arrays through
    ``executor``."""
    tables = cuda_plan.DeviceTables(prepared, mode, np)
    planes = np.ascontiguousarray(planes, dtype=np.uint8)
    alloc = alloc or (lambda shape, dtype: np.empty(shape, dtype))
    return cuda_plan.run_model(executor, prepared, planes, mode, tables, alloc)


def pytest_marks():
    """The marks of a module of emulated CUDA tests: ``cuda_emulated``, skipped (with the
    reason) where there is no C++ compiler to build the emulation."""
    import pytest

    return [pytest.mark.cuda_emulated,
            pytest.mark.skipif(find_compiler() is None,
                               reason="no C++ compiler (g++/c++/clang++ or $CXX) to build the emulation")]
