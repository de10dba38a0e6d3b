"""The wheel that ``pip install .`` builds holds the whole package.

An editable install (what ``make`` uses) reads the source tree, so a subpackage missing
from setup.cfg's ``packages`` goes unnoticed there and only breaks a regular install
(the ``iqlut`` command then fails to import ``iqlut_gpu.cli``). Build the wheel and
compare it with the tree.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _package_dirs() -> dict[str, Path]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    mapped = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, _, where = (part.strip() for part in line.partition("="))
        mapped[name] = ROOT / where
    return {"iqlut_gpu": ROOT / "iqlut_gpu", **mapped}


def _expected_files() -> set[str]:
    """Every module of the package tree (as the wheel names it), and the data it ships."""
    want = set()
    for name, where in _package_dirs().items():  # the mapped folders sit beside iqlut_gpu/
        for py in where.rglob("*.py"):
            # a module only in a package folder (kernels/cuda/ holds sources and a script)
            if (py.parent / "__init__.py").exists():
                want.add("/".join((*name.split("."), *py.relative_to(where).parts)))
    for pattern in ("models/*.safetensors", "data/*.png"):
        want.update(f"iqlut_gpu/{p.relative_to(ROOT / 'iqlut_gpu').as_posix()}"
                    for p in (ROOT / "iqlut_gpu").glob(pattern))
    want.update(f"iqlut_gpu/kernels/{p.relative_to(ROOT / 'kernels').as_posix()}"
                for p in (ROOT / "kernels").glob("cuda/*.cu"))
    return want


def test_wheel_holds_every_module_and_the_shipped_data(tmp_path):
    # build from a copy: setuptools keeps a build/ folder, whose stale files would hide a gap
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "out", ".pytest_cache"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--quiet", "-w", str(tmp_path), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheels = list(tmp_path.glob("iqlut_gpu-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as whl:
        have = set(whl.namelist())
    want = _expected_files()
    assert "iqlut_gpu/cli/__init__.py" in want and "iqlut_gpu/models/iqlut_x4.safetensors" in want
    missing = sorted(want - have)
    assert not missing, f"the wheel lacks {missing} (setup.cfg packages / package_data)"
    entry = next(n for n in have if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheels[0]) as whl:
        assert "iqlut = iqlut_gpu.cli:main" in whl.read(entry).decode()
