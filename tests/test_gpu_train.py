"""bench/gpu_train.py: the training photos packed into parts that fit the device tool,
installed part by part on the device, and checked before training (no GPU needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import gpu_train  # noqa: E402

from cases import SESSION_SEED  # noqa: E402


def fake_sources(root: Path, sizes: dict) -> dict:
    """Wallpapers and bundled photos as files under ``root`` (the paths a machine reads)."""
    import numpy as np

    rng = np.random.default_rng(SESSION_SEED)
    out = {}
    for name, size in sizes.items():
        kind, stem = name.split("/")
        path = root / "usr" / "share" / kind / f"{stem}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        out[name] = str(path)
    return out


@pytest.fixture
def machines(tmp_path, monkeypatch):
    """'here' with the photos, 'there' without the wallpapers; manifest() lists what the
    machine in use has, as iqlut_gpu.train.data.sources() would there."""
    sizes = {f"mate/m{i}": 3000 + 500 * i for i in range(5)}
    sizes |= {f"plasma/p{i}": 9000 - 700 * i for i in range(6)}
    sizes |= {"skimage/astronaut": 1200, "sklearn/china": 800}
    here, there = tmp_path / "here", tmp_path / "there"
    src = fake_sources(here, sizes)
    monkeypatch.setattr(gpu_train, "DATA", tmp_path / "repo" / ".gpudata")
    state = {"root": here}

    def on_device(path) -> Path:  # where install --root puts a file packed from ``path``
        return there / str(path).lstrip("/")

    def manifest():
        entries = []
        for name, path in src.items():
            p = Path(path) if state["root"] == here else on_device(path)
            if p.exists():
                entries.append({"name": name, "path": str(p), "bytes": p.stat().st_size,
                                "sha256": gpu_train.sha256(str(p))})
        return entries

    monkeypatch.setattr(gpu_train, "manifest", manifest)
    bundled = {n: p for n, p in src.items() if n.split("/")[0] in ("skimage", "sklearn")}
    for n, p in bundled.items():  # the device's own packages bring these
        q = on_device(p)
        q.parent.mkdir(parents=True, exist_ok=True)
        q.write_bytes(Path(p).read_bytes())
    return state, on_device, there, src


def test_pack_install_and_check(machines, capsys):
    state, on_device, there, src = machines
    assert gpu_train.main(["pack", "--part-bytes", "35000"]) == 0
    parts = sorted(p.name for p in gpu_train.DATA.iterdir())
    assert parts == ["part1", "part2"]  # 63,500 bytes of wallpapers in parts of <= 35,000
    packed = {}
    for part in parts:
        files = [f for f in (gpu_train.DATA / part).rglob("*.jpg")]
        assert sum(f.stat().st_size for f in files) <= 35000
        for f in files:
            packed[f.relative_to(gpu_train.DATA / part).as_posix()] = f.read_bytes()
    wallpapers = {n: p for n, p in src.items() if n.split("/")[0] in ("mate", "plasma")}
    assert sorted(packed) == sorted(p.lstrip("/") for p in wallpapers.values())  # each once
    assert all(packed[p.lstrip("/")] == Path(p).read_bytes() for p in wallpapers.values())

    # on the device: the first call carries part1 only
    state["root"] = there
    part2 = gpu_train.DATA / "part2"
    part2.rename(part2.with_name("away"))
    assert gpu_train.main(["install", "--root", str(there)]) == 0
    capsys.readouterr()
    assert gpu_train.main(["install", "--complete", "--root", str(there)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wallpapers missing" in err[0] and "went cold" in err[0]
    # the second call carries part2 (part1 is gone from the tree, its files stay)
    (gpu_train.DATA / "part1").rename(gpu_train.DATA / "gone")
    part2.with_name("away").rename(part2)
    assert gpu_train.main(["install", "--complete", "--root", str(there)]) == 0
    out = capsys.readouterr().out
    assert "all 11 wallpapers in place" in out
    for p in wallpapers.values():
        assert on_device(p).read_bytes() == Path(p).read_bytes()


def test_a_changed_wallpaper_is_an_error_and_other_bundled_photos_a_note(machines, capsys):
    state, on_device, there, src = machines
    assert gpu_train.main(["pack", "--part-bytes", "70000"]) == 0
    assert [p.name for p in gpu_train.DATA.iterdir()] == ["part1"]
    state["root"] = there
    on_device(src["skimage/astronaut"]).write_bytes(b"other")
    assert gpu_train.main(["install", "--complete", "--root", str(there)]) == 0
    assert "skimage/astronaut" in capsys.readouterr().out  # reported, the run goes on
    victim = on_device(src["plasma/p3"])
    (gpu_train.DATA / "part1" / src["plasma/p3"].lstrip("/")).write_bytes(b"truncated")
    assert gpu_train.main(["install", "--complete", "--root", str(there)]) == 1
    assert victim.read_bytes() == b"truncated"
    assert "1 different: plasma/p3" in capsys.readouterr().err


def test_nothing_carried_and_no_wallpapers_are_one_line(machines, monkeypatch, capsys):
    assert gpu_train.main(["install"]) == 1
    assert "nothing under" in capsys.readouterr().err
    monkeypatch.setattr(gpu_train, "manifest", lambda: [])
    assert gpu_train.main(["pack"]) == 1
    assert "get_data.sh" in capsys.readouterr().err
