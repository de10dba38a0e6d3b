"""``iqlut eval --dataset``: data set layouts (iqlut_gpu.datasets), the tables against
hand-computed PSNR, the crop rule, gray and alpha images, several models side by side,
output files, and one-line errors. Every data set is a tiny folder made here."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from iqlut_gpu import evaluate as ev
from iqlut_gpu.cli import main
from iqlut_gpu.datasets import DatasetError, find_datasets, natural_key, unique_names
from iqlut_gpu.io import write_image
from iqlut_gpu.model import default_model_path

from cases import SESSION_SEED

VECTORS = Path(__file__).resolve().parent / "data" / "imresize_matlab_bicubic.npz"
Y_GAIN = 219 / 255  # BT.601: a change of d on R, G and B changes Y by d * 219/255


def png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, img)
    return path


def smooth(rng, h, w, c=3) -> np.ndarray:
    """A random but image-like picture (the shipped models see something natural)."""
    noise = rng.integers(0, 256, (h, w, c) if c else (h, w)).astype(np.float64)
    k = np.ones(5) / 5
    for axis in (0, 1):
        noise = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), axis, noise)
    return np.clip(noise * 1.6 - 80, 0, 255).astype(np.uint8)


def run_json(capsys, *argv) -> dict:
    assert main(["eval", "--backend", "cpu", "-q", "--json", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out)


def fails(capsys, *argv) -> str:
    """The command fails with exit 1 and one line on stderr; returns that line."""
    assert main(["eval", "--backend", "cpu", "-q", *map(str, argv)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("iqlut eval: error: "), err
    return err[0]


# ------------------------------------------------------------------------------ layouts


def test_layouts_are_recognised(tmp_path):
    img = np.full((24, 24, 3), 100, np.uint8)
    lr = np.full((12, 12, 3), 100, np.uint8)
    # EDSR/BasicSR benchmark pack: HR/ + LR_bicubic/X2/<stem>x2.png
    for name in ("baby", "bird"):
        png(tmp_path / "benchmark/Set5/HR" / f"{name}.png", img)
        png(tmp_path / "benchmark/Set5/LR_bicubic/X2" / f"{name}x2.png", lr)
    png(tmp_path / "benchmark/Set14/HR/zebra.png", img)  # HR alone
    (tmp_path / "benchmark/Set14/HR/readme.txt").write_text("not an image")
    png(tmp_path / "benchmark/Set14/HR/.hidden.png", img)
    # DIV2K: DIV2K_valid_HR/0801.png + DIV2K_valid_LR_bicubic/X2/0801x2.png
    png(tmp_path / "DIV2K/DIV2K_valid_HR/0801.png", img)
    png(tmp_path / "DIV2K/DIV2K_valid_LR_bicubic/X2/0801x2.png", lr)
    # BasicSR's datasets/Set5: GTmod12/ + LRbicx2/ with the same names
    png(tmp_path / "basicsr/Set5/GTmod12/baby.png", img)
    png(tmp_path / "basicsr/Set5/LRbicx2/baby.png", lr)
    # a folder of images
    png(tmp_path / "photos/b.png", img)
    png(tmp_path / "photos/a.jpg", img)

    sets, notes = find_datasets(tmp_path / "benchmark", 2)
    assert [d.name for d in sets] == ["Set5", "Set14"] and notes == []  # natural order
    s5, s14 = sets
    assert s5.layout == "benchmark" and s5.lr_dir == tmp_path / "benchmark/Set5/LR_bicubic/X2"
    assert [(p.name, p.lr.name) for p in s5.pairs] == [("baby.png", "babyx2.png"), ("bird.png", "birdx2.png")]
    assert s14.lr_dir is None and [p.name for p in s14.pairs] == ["zebra.png"]  # .txt, hidden: ignored
    assert "no LR_bicubic folder" in s14.lr_source
    # the pack has X2 only: at x3 the LR is made
    (s5_x3,) = find_datasets(tmp_path / "benchmark/Set5", 3)[0]
    assert s5_x3.lr_dir is None and "no LR_bicubic/X3" in s5_x3.lr_source
    # DIV2K: the *_HR folder itself, or the folder above it
    for where in ("DIV2K", "DIV2K/DIV2K_valid_HR"):
        (d,) = find_datasets(tmp_path / where, 2)[0]
        assert d.name == "DIV2K_valid" and d.layout == "div2k"
        assert [(p.name, p.lr.name) for p in d.pairs] == [("0801.png", "0801x2.png")]
    (b,) = find_datasets(tmp_path / "basicsr/Set5", 2)[0]
    assert b.layout == "basicsr" and b.pairs[0].lr == tmp_path / "basicsr/Set5/LRbicx2/baby.png"
    # the HR folder itself names its pack
    assert find_datasets(tmp_path / "benchmark/Set5/HR", 2)[0] == find_datasets(tmp_path / "benchmark/Set5", 2)[0]
    assert find_datasets(tmp_path / "basicsr/Set5/GTmod12", 2)[0] == [b]
    (ph,) = find_datasets(tmp_path / "photos", 4)[0]
    assert ph.layout == "hr-only" and [p.name for p in ph.pairs] == ["a.jpg", "b.png"]
    # --make-lr: the given LR files are not used
    assert all(p.lr is None for p in find_datasets(tmp_path / "benchmark/Set5", 2, make_lr=True)[0][0].pairs)
    # everything at once: a folder of data sets three levels deep
    names = [d.name for d in find_datasets(tmp_path, 2)[0]]
    assert names == ["Set5", "Set5", "Set14", "DIV2K_valid", "photos"]  # basicsr/, benchmark/, ...
    assert [d.name for d in unique_names(find_datasets(tmp_path, 2)[0])][:3] == [
        str(tmp_path / "basicsr/Set5"), str(tmp_path / "benchmark/Set5"), "Set14"]


def test_layout_errors(tmp_path):
    img = np.zeros((24, 24), np.uint8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty folder"):
        find_datasets(tmp_path / "empty", 2)
    with pytest.raises(DatasetError, match="no such folder"):
        find_datasets(tmp_path / "missing", 2)
    (tmp_path / "docs/notes").mkdir(parents=True)
    (tmp_path / "docs/notes/a.txt").write_text("x")
    with pytest.raises(DatasetError, match="matches no data set layout"):
        find_datasets(tmp_path / "docs", 2)
    (tmp_path / "nohr/HR").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        find_datasets(tmp_path / "nohr", 2)
    png(tmp_path / "pack/HR/baby.png", img)
    png(tmp_path / "pack/HR/bird.png", img)
    png(tmp_path / "pack/LR_bicubic/X2/babyx2.png", img[:12, :12])
    with pytest.raises(DatasetError, match=r"bird.png: no LR file for it in .*X2 \(looked for birdx2.png"):
        find_datasets(tmp_path / "pack", 2)
    with pytest.raises(DatasetError, match="an LR folder"):
        find_datasets(tmp_path / "pack/LR_bicubic/X2", 2)
    png(tmp_path / "pack/LR_bicubic/X2/birdx2.png", img[:12, :12])
    png(tmp_path / "pack/LR_bicubic/X2/birdx2.bmp", img[:12, :12])
    with pytest.raises(DatasetError, match="two LR files match it"):
        find_datasets(tmp_path / "pack", 2)
    # a folder of data sets passes over folders that match nothing, and says so
    png(tmp_path / "many/Set5/HR/a.png", img)
    (tmp_path / "many/bin").mkdir()
    sets, notes = find_datasets(tmp_path / "many", 2)
    assert [d.name for d in sets] == ["Set5"] and len(notes) == 1 and "many/bin: skipped" in notes[0]
    assert natural_key("img_2") < natural_key("img_10")


# ------------------------------------------------------------------ tables vs hand-computed


def test_table_against_hand_computed_psnr(tmp_path, capsys):
    """A pack whose LR files are flat (value v): MATLAB bicubic of a flat image is flat, so
    the bicubic row's SR is v everywhere, and an HR of v with +d on k pixels inside the
    shaved region has a Y error of d * 219/255 on those k pixels: PSNR in closed form."""
    scale, v, (h, w) = 2, 100, (30, 34)
    inner = (h - 2 * scale) * (w - 2 * scale)
    cases = {"a.png": (6, 40), "b.png": (12, 7), "c.png": (3, inner)}  # name: (d, k)
    want = {}
    rng = np.random.default_rng([SESSION_SEED, 11])
    for name, (d, k) in cases.items():
        hr = np.full((h, w, 3), v, np.uint8)
        ys, xs = np.divmod(rng.choice(inner, size=k, replace=False), w - 2 * scale)
        hr[ys + scale, xs + scale] += d
        png(tmp_path / "Tiny/HR" / name, hr)
        png(tmp_path / "Tiny/LR_bicubic/X2" / name.replace(".png", "x2.png"),
            np.full((h // scale, w // scale, 3), v, np.uint8))
        want[name] = 10 * math.log10(255 ** 2 / (k * (d * Y_GAIN) ** 2 / inner))
    out_json, out_csv = tmp_path / "res.json", tmp_path / "res.csv"
    argv = ["--dataset", tmp_path / "Tiny", "--scale", 2, "--no-ecnn", "--no-default",
            "-o", out_json, "-o", out_csv]
    res = run_json(capsys, *argv)
    (d,) = res["datasets"]
    assert d["name"] == "Tiny" and d["images"] == 3 and d["lr"] == "files"
    for name, p in want.items():
        assert d["per_image"][name]["bicubic"]["psnr"] == pytest.approx(p, abs=1e-4)
    mean = sum(want.values()) / len(want)  # the mean of per-image PSNRs, as the field averages
    assert d["mean"]["bicubic"]["psnr"] == pytest.approx(mean, abs=1e-4)
    assert d["lr_check"]["images"] == 3 and d["lr_check"]["equal"] == 0 and d["lr_check"]["max_abs_diff"] > 0
    # the files hold the same results; no temporary files are left beside them
    assert json.loads(out_json.read_text()) == res
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert {(r["image"], r["method"]) for r in rows} == {*((n, "bicubic") for n in want), ("(mean)", "bicubic")}
    for r in rows:
        assert float(r["psnr"]) == pytest.approx(want.get(r["image"], mean), abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Tiny", "res.csv", "res.json"]
    # the terminal table shows the mean, and a note says the LR files are not MATLAB's
    assert main(["eval", "-q", *map(str, argv[:-4]), "--per-image"]) == 0
    out, err = capsys.readouterr()
    assert f"{mean:.3f} / " in out and f"{want['a.png']:.3f} / " in out and "(mean)" in out
    assert "3 of 3 given LR image(s) differ from MATLAB bicubic" in err
    # --csv prints the same CSV
    assert main(["eval", "-q", "--csv", *map(str, argv[:-4])]) == 0
    assert capsys.readouterr().out == out_csv.read_text()


def test_crop_rule_is_bottom_right(tmp_path, capsys):
    """43x38 at x3 keeps rows 0..41 and columns 0..35. Only the cut rows/columns differ
    from a flat HR, so the bicubic row is exact (PSNR inf, SSIM 1) only if the crop is
    at the bottom and right, as MATLAB's modcrop does."""
    hr = np.full((43, 38, 3), 90, np.uint8)
    hr[42:, :] = 250
    hr[:, 36:] = 250
    png(tmp_path / "Crop/HR/x.png", hr)
    res = run_json(capsys, "--dataset", tmp_path / "Crop", "--scale", 3, "--no-ecnn", "--no-default")
    score = res["datasets"][0]["per_image"]["x.png"]["bicubic"]
    assert score["psnr"] == math.inf and score["ssim"] == pytest.approx(1.0)
    # with LR files: LR * 3 must be the cropped HR size (14x12 here)
    png(tmp_path / "Crop/LR_bicubic/X3/xx3.png", np.full((14, 12, 3), 90, np.uint8))
    res = run_json(capsys, "--dataset", tmp_path / "Crop", "--scale", 3, "--no-ecnn", "--no-default")
    assert res["datasets"][0]["per_image"]["x.png"]["bicubic"]["psnr"] == math.inf
    png(tmp_path / "Crop/LR_bicubic/X3/xx3.png", np.full((15, 13, 3), 90, np.uint8))
    line = fails(capsys, "--dataset", tmp_path / "Crop", "--scale", 3, "--no-ecnn", "--no-default")
    assert "LR/HR size mismatch" in line and "xx3.png is 13x15" in line and "x.png is 38x43" in line
    assert "36x42 cropped to a multiple of 3" in line


def test_bicubic_rows_are_matlabs_on_the_vectors(tmp_path, capsys):
    """The protocol reproduces the published bicubic figures if its LR and its bicubic row
    are MATLAB's imresize. Checked end to end on the MATLAB vectors: a pack whose LR files
    are MATLAB's downscales of ``gray`` (24x36, a multiple of 2, 3 and 4) is equal to the LR
    eval makes; a pack whose HR is MATLAB's upscale of ``rgb`` scores the bicubic row exact."""
    with np.load(VECTORS) as z:
        vec = {k: z[k] for k in z.files}
    for s in (2, 3, 4):
        png(tmp_path / "Down/HR/gray.png", vec["gray"])
        png(tmp_path / f"Down/LR_bicubic/X{s}/grayx{s}.png", vec[f"gray_down{s}"])
        png(tmp_path / "Up/HR/rgb.png", vec[f"rgb_up{s}"])
        png(tmp_path / f"Up/LR_bicubic/X{s}/rgbx{s}.png", vec["rgb"])
        res = run_json(capsys, "--dataset", tmp_path / "Down", tmp_path / "Up", "--scale", s,
                       "--no-ecnn", "--no-default")
        down, up = res["datasets"]
        assert down["lr_check"] == {"images": 1, "equal": 1, "max_abs_diff": 0}
        assert up["per_image"]["rgb.png"]["bicubic"]["psnr"] == math.inf


# ------------------------------------------------------------------ images of every kind


def test_gray_and_alpha_images(tmp_path, capsys):
    rng = np.random.default_rng([SESSION_SEED, 12])
    rgb = smooth(rng, 30, 26)
    gray = smooth(rng, 28, 31, c=0)
    png(tmp_path / "Mix/rgb.png", rgb)
    png(tmp_path / "Mix/rgba.png", np.dstack([rgb, rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)]))
    png(tmp_path / "Mix/gray.png", gray)
    assert main(["eval", "--backend", "cpu", "-q", "--json", "--dataset", str(tmp_path / "Mix"),
                 "--scale", "2", "--no-ecnn", "--ensemble", "1"]) == 0
    out, err = capsys.readouterr()
    per = json.loads(out)["datasets"][0]["per_image"]
    assert per["rgba.png"] == per["rgb.png"]  # alpha dropped: scored as the colour image
    assert "dropped the alpha channel of 1 image(s) (rgba.png)" in err
    assert "1 gray image(s) scored on their gray values as luma (gray.png)" in err
    hr, lr = ev.degrade(gray, 2)  # a gray image is its own luma
    want = ev.psnr(ev.shave(ev.bicubic_upscale(lr, 2).astype(float), 2), ev.shave(hr.astype(float), 2))
    assert per["gray.png"]["bicubic"]["psnr"] == pytest.approx(want, abs=1e-4)
    # a gray LR file beside an HR saved as RGB with equal channels is the same gray image
    png(tmp_path / "G/HR/g.png", np.dstack([hr] * 3))
    png(tmp_path / "G/LR_bicubic/X2/gx2.png", lr)
    res = run_json(capsys, "--dataset", tmp_path / "G", "--scale", 2, "--no-ecnn", "--no-default")
    assert res["datasets"][0]["lr_check"]["equal"] == 1
    png(tmp_path / "G/HR/g.png", np.dstack([hr, hr, 255 - hr]))
    assert "is a gray image but its HR" in fails(capsys, "--dataset", tmp_path / "G", "--scale", 2,
                                                 "--no-ecnn", "--no-default")


# ------------------------------------------------------------------------------ models


def test_models_side_by_side(tmp_path, capsys):
    """The shipped default, the ECNN baseline and model files, one row each, named by file
    name, all at the same --ensemble; a copy of the shipped model scores as it does."""
    from iqlut_gpu import upscale

    rng = np.random.default_rng([SESSION_SEED, 13])
    hr = smooth(rng, 34, 30)
    png(tmp_path / "Set/HR/a.png", hr)
    shutil.copy(default_model_path(2), tmp_path / "mine.safetensors")
    (tmp_path / "other").mkdir()
    shutil.copy(default_model_path(2), tmp_path / "other/mine.safetensors")
    res = run_json(capsys, "--dataset", tmp_path / "Set", "--ensemble", 2,
                   "--model", tmp_path / "mine.safetensors", "--models", tmp_path / "other/mine.safetensors",
                   default_model_path(2))  # scale from the models; the shipped file is the iqlut row
    assert res["scale"] == 2
    assert list(res["methods"]) == ["bicubic", "ecnn", "iqlut", "mine", "other/mine"]
    assert {m["passes"] for n, m in res["methods"].items() if n != "bicubic"} == {2}
    assert res["methods"]["ecnn"]["storage_bytes"] > 5 * res["methods"]["iqlut"]["storage_bytes"]
    row = res["datasets"][0]["per_image"]["a.png"]
    assert row["mine"] == row["iqlut"] == row["other/mine"]
    hr_c, lr = ev.degrade(hr, 2)
    want = ev.y_metrics(upscale(lr, 2, backend="cpu", ensemble=2), hr_c, 2)[0]
    assert row["iqlut"]["psnr"] == pytest.approx(want, abs=1e-4)
    # leave out the shipped rows
    res = run_json(capsys, "--dataset", tmp_path / "Set", "--no-default", "--no-ecnn", "--ensemble", 1,
                   "--model", tmp_path / "mine.safetensors")
    assert list(res["methods"]) == ["bicubic", "mine"] and res["methods"]["mine"]["passes"] == 1


def test_model_and_scale_errors(tmp_path, capsys):
    png(tmp_path / "Set/HR/a.png", np.zeros((24, 24, 3), np.uint8))
    x3 = default_model_path(3)
    assert f"{x3} is an x3 model, not x2" in fails(capsys, "--dataset", tmp_path / "Set", "--scale", 2,
                                                    "--model", x3)
    assert "different scales" in fails(capsys, "--dataset", tmp_path / "Set", "--models",
                                       default_model_path(2), x3)
    assert "--scale N is required" in fails(capsys, "--dataset", tmp_path / "Set")
    assert "an image, not a model file" in fails(capsys, "--models", x3, tmp_path / "Set/HR/a.png")


# ------------------------------------------------------------------------------ errors


def test_one_line_errors(tmp_path, capsys):
    img = np.random.default_rng([SESSION_SEED, 14]).integers(0, 256, (24, 24, 3)).astype(np.uint8)
    base = ["--scale", 2, "--no-ecnn", "--no-default"]
    (tmp_path / "empty").mkdir()
    assert "empty folder" in fails(capsys, "--dataset", tmp_path / "empty", *base)
    (tmp_path / "odd/x").mkdir(parents=True)
    (tmp_path / "odd/x/notes.txt").write_text("x")
    assert "matches no data set layout" in fails(capsys, "--dataset", tmp_path / "odd", *base)
    png(tmp_path / "Small/HR/s.png", np.zeros((12, 40, 3), np.uint8))
    assert "s.png: too small for the protocol at x2 (40x12" in fails(capsys, "--dataset", tmp_path / "Small", *base)
    # an unreadable image stops the run and names the file (a part-mean is no benchmark figure)
    png(tmp_path / "Bad/HR/a.png", img)
    (tmp_path / "Bad/HR/b.png").write_bytes(b"not a png")
    line = fails(capsys, "--dataset", tmp_path / "Bad", *base)
    assert "b.png: not an image" in line
    good = (tmp_path / "Bad/HR/a.png").read_bytes()
    (tmp_path / "Bad/HR/b.png").write_bytes(good[: len(good) // 2])  # truncated: found before any work
    assert "b.png: cannot read image (image file is truncated" in fails(capsys, "--dataset", tmp_path / "Bad", *base)
    (tmp_path / "Bad/HR/b.png").unlink()
    png(tmp_path / "Bad/HR/c.jpg", img)  # a JPEG's header reads; its data fails when it is decoded
    good = (tmp_path / "Bad/HR/c.jpg").read_bytes()
    (tmp_path / "Bad/HR/c.jpg").write_bytes(good[: len(good) * 2 // 3])
    assert "c.jpg: cannot decode image" in fails(capsys, "--dataset", tmp_path / "Bad", *base)
    # output and argument errors come before any work
    assert "-o writes .json or .csv" in fails(capsys, "--dataset", tmp_path / "Bad", *base, "-o", tmp_path / "r.txt")
    assert "no folder" in fails(capsys, "--dataset", tmp_path / "Bad", *base, "-o", tmp_path / "no/r.json")
    assert "not both" in fails(capsys, tmp_path / "Bad/HR/a.png", "--dataset", tmp_path / "Bad", *base)
    assert "nothing to evaluate" in fails(capsys, *base)
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(".*"))
