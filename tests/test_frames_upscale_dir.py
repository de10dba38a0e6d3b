"""`iqlut upscale` on folders: batches, names kept, bad files reported, the rest written."""

from pathlib import Path

import numpy as np
from PIL import Image

from iqlut_gpu import upscale

PHOTO = Path(__file__).parent.parent / "iqlut_gpu" / "data" / "astronaut_256.png"


def crop(box, mode="RGB"):
    return Image.open(PHOTO).convert(mode).crop(box)


def test_folder_in_batches_with_unreadable_files(run_cli, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    # three of one size (one backend call per batch), others of other sizes and modes
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        crop((10 * i, 20, 10 * i + 24, 40)).save(src / name)
    crop((50, 50, 81, 67), "L").save(src / "d_gray.png")
    crop((0, 0, 24, 20), "RGBA").save(src / "e_alpha.png")
    crop((90, 90, 114, 110)).save(src / "f.jpg", quality=95)
    (src / "g_broken.png").write_text("not an image\n")
    good = (src / "a.png").read_bytes()
    (src / "h_cut.png").write_bytes(good[: len(good) // 2])
    (out).mkdir()
    (out / "c.png").write_bytes(b"precious")  # exists: refused without --overwrite

    proc = run_cli("upscale", src, "-o", out, "--scale", "2", "--backend", "cpu", "--batch", "3")
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "iqlut upscale: error:" in ln]
    assert len(errors) == 3, proc.stderr
    for name in ("g_broken.png", "h_cut.png", "c.png"):
        assert sum(name in e for e in errors) == 1, (name, errors)
    assert "5 of 8 images written" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "c.png").read_bytes() == b"precious"
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a.png", "b.png", "c.png", "d_gray.png", "e_alpha.png", "f.jpg"]
    for name in ("a.png", "b.png", "d_gray.png", "e_alpha.png"):
        img = np.asarray(Image.open(src / name))
        got = np.asarray(Image.open(out / name))
        assert np.array_equal(got, upscale(img, 2, backend="reference")), name
    assert Image.open(out / "f.jpg").size == (48, 40)


def test_folder_all_good_exit_zero(run_cli, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        crop((5 * i, 0, 5 * i + 16, 12)).save(src / f"{i}.png")
    proc = run_cli("upscale", src, "-o", tmp_path / "out", "--scale", "3", "--backend", "cpu",
                   "--batch", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}.png" for i in range(5)]
    assert all(Image.open(p).size == (48, 36) for p in (tmp_path / "out").iterdir())


def test_bad_batch_value(run_cli, tmp_path):
    crop((0, 0, 8, 8)).save(tmp_path / "a.png")
    proc = run_cli("upscale", "a.png", "-o", "out", "--batch", "0")
    assert proc.returncode == 1 and "--batch" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_batches_follow_count_and_pixel_budget(tmp_path, monkeypatch, capsys):
    """Same-size files go to the backend together; the pixel budget caps both the
    read-ahead and the frames per backend call."""
    from iqlut_gpu import Upscaler
    from iqlut_gpu import files
    from iqlut_gpu.cli import main

    src = tmp_path / "in"
    src.mkdir()
    for i in range(7):
        crop((4 * i, 0, 4 * i + 10, 10)).save(src / f"{i}.png")  # 100 pixels each
    calls, reads = [], []
    real_run, real_read = Upscaler.run_planes, files.read_batch
    monkeypatch.setattr(Upscaler, "run_planes", lambda self, planes: calls.append(len(planes) // 3)
                        or real_run(self, planes))
    monkeypatch.setattr(files, "read_batch", lambda *a: reads.append(real_read(*a)) or reads[-1])
    assert main(["upscale", str(src), "-o", str(tmp_path / "a"), "--scale", "2", "--backend",
                 "reference", "--batch", "3", "--quiet"]) == 0
    assert calls == [3, 3, 1] and [len(r) for r in reads] == [3, 3, 1, 0]
    calls.clear(), reads.clear()
    monkeypatch.setattr(files, "BATCH_PIXELS", 250)
    assert main(["upscale", str(src), "-o", str(tmp_path / "b"), "--scale", "2", "--backend",
                 "reference", "--batch", "5", "--quiet"]) == 0
    assert calls == [2, 2, 2, 1] and [len(r) for r in reads] == [3, 3, 1, 0]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [f"{i}.png" for i in range(7)]
