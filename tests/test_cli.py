"""The `iqlut` command line: happy paths and one-line errors with no output left behind."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from iqlut_gpu import default_model, reference

PHOTO = os.path.join(os.path.dirname(__file__), "..", "iqlut_gpu", "data", "astronaut_256.png")


def small_photo(path, size=(24, 20), mode="RGB"):
    Image.open(PHOTO).convert(mode).crop((100, 60, 100 + size[0], 60 + size[1])).save(path)
    return path


def assert_clean_failure(proc, *fragments):
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def no_output_files(folder, keep):
    left = sorted(p.name for p in folder.iterdir() if p.name not in keep)
    assert left == [], left


def test_upscale_one_file(run_cli, tmp_path):
    src = small_photo(tmp_path / "in.png")
    proc = run_cli("upscale", src, "-o", tmp_path / "out.png", "--scale", "2", "--backend", "cpu")
    assert proc.returncode == 0, proc.stderr
    out = np.asarray(Image.open(tmp_path / "out.png"))
    img = np.asarray(Image.open(src))
    assert out.shape == (40, 48, 3)
    # the shipped x2 runs as its file says (one pass)
    assert np.array_equal(out[:, :, 1], reference.upscale_planes(default_model(2), img[None, :, :, 1])[0])
    assert "24x20 -> 48x40" in proc.stdout and "backend cpu" in proc.stdout


def test_upscale_folder_keeps_names(run_cli, tmp_path):
    (tmp_path / "in").mkdir()
    small_photo(tmp_path / "in" / "a.png")
    small_photo(tmp_path / "in" / "b.png", mode="L")
    proc = run_cli("upscale", tmp_path / "in", "-o", tmp_path / "out", "--scale", "3")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    assert Image.open(tmp_path / "out" / "b.png").size == (72, 60)


def test_missing_input(run_cli, tmp_path):
    proc = run_cli("upscale", tmp_path / "nope.png", "-o", tmp_path / "out.png")
    assert_clean_failure(proc, "nope.png")
    no_output_files(tmp_path, keep=set())


def test_non_image_input(run_cli, tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n")
    proc = run_cli("upscale", tmp_path / "notes.png", "-o", tmp_path / "out.png")
    assert_clean_failure(proc, "notes.png", "not an image")
    no_output_files(tmp_path, keep={"notes.png"})


def test_unwritable_output(run_cli, tmp_path):
    src = small_photo(tmp_path / "in.png")
    proc = run_cli("upscale", src, "-o", tmp_path / "no_such_dir" / "out.png", "--scale", "2")
    assert_clean_failure(proc, "does not exist")
    if os.geteuid() != 0:  # root can write anywhere; the read-only case needs a normal user
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        proc = run_cli("upscale", src, "-o", ro / "out.png", "--scale", "2")
        assert_clean_failure(proc, "out.png")
    no_output_files(tmp_path, keep={"in.png", "ro"})


def test_existing_output_needs_overwrite(run_cli, tmp_path):
    src = small_photo(tmp_path / "in.png")
    dst = tmp_path / "out.png"
    dst.write_bytes(b"precious")
    proc = run_cli("upscale", src, "-o", dst, "--scale", "2")
    assert_clean_failure(proc, "exists", "--overwrite")
    assert dst.read_bytes() == b"precious"
    proc = run_cli("upscale", src, "-o", dst, "--scale", "2", "--overwrite")
    assert proc.returncode == 0 and Image.open(dst).size == (48, 40)


def test_output_equal_to_input_is_refused(run_cli, tmp_path):
    src = small_photo(tmp_path / "in.png")
    before = src.read_bytes()
    proc = run_cli("upscale", src, "-o", src, "--overwrite")
    assert_clean_failure(proc, "input")
    assert src.read_bytes() == before


def test_bad_model_file(run_cli, tmp_path):
    src = small_photo(tmp_path / "in.png")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{}")
    proc = run_cli("upscale", src, "-o", tmp_path / "out.png", "--model", tmp_path / "bad.safetensors")
    assert_clean_failure(proc, "bad.safetensors")
    assert not (tmp_path / "out.png").exists()


def test_unavailable_backend_is_one_line(run_cli, tmp_path):
    src = small_photo(tmp_path / "in.png")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = run_cli("upscale", src, "-o", tmp_path / "out.png", "--backend", "cuda", env=env)
    from iqlut_gpu.backends import probe

    if probe("cuda") is None:
        pytest.skip("a CUDA device is present")
    assert_clean_failure(proc, "cuda")
    assert not (tmp_path / "out.png").exists()


def test_info_json_and_text(run_cli):
    proc = run_cli("info", "--scale", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    model = default_model(4)
    assert d["scale"] == 4 and d["storage_bytes"] == model.storage_bytes()
    assert d["ecnn_storage_bytes"] == model.ecnn_storage_bytes()
    assert d["trained"] == model.trained
    assert [spec["L"] for spec in d["layers"]] == [layer.L for layer in model.layers]
    text = run_cli("info", "--scale", "2")
    assert text.returncode == 0 and "storage:" in text.stdout and "ECNN:" in text.stdout
    assert f"trained: {str(default_model(2).trained).lower()}" in text.stdout


def test_info_bad_model(run_cli, tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"junk")
    assert_clean_failure(run_cli("info", tmp_path / "m.safetensors"), "m.safetensors")


def test_closed_pipe_is_not_reported_as_an_error(tmp_path):
    import subprocess
    import sys

    for reader in ("head -1", "head -c 0"):
        proc = subprocess.run(f"{sys.executable} -m iqlut_gpu info --scale 4 --json | {reader}",
                              shell=True, capture_output=True, text=True, cwd=tmp_path)
        assert "rror" not in proc.stderr and "Exception" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,fragment", [(["--time-budget", "0"], "--time-budget must be positive"),
                                           (["--hidden", "-1"], "--hidden must be between 0 and 16"),
                                           (["--init", "no-such-model.safetensors"], "cannot read model"),
                                           (["--kind", "ecnn", "--init", "m0.safetensors"],
                                            "--init starts an IQ-LUT student"),
                                           (["--hidden", "4", "--last-k", "1", "--init", "SHIPPED_X2"],
                                            "cannot start a layer"),
                                           (["--hidden-k", "3,x"], "--hidden-k takes odd windows"),
                                           (["--hidden-k", "3,2"], "each 1, 3 or 5"),
                                           (["--hidden", "2", "--hidden-k", "3"], "disagree"),
                                           (["--hidden-k", "1,3,3,3", "--init", "SHIPPED_X2"],
                                            "cannot start a layer"),
                                           (["--width", "0"], "--width must be between 1 and 32"),
                                           (["--int8-only"], "--int8-only fine-tunes a trained model"),
                                           (["--width", "6", "--hidden", "4",
                                             "--init", "SHIPPED_X2"], "cannot start a layer")])
def test_train_rejects_bad_options_in_one_line(run_cli, tmp_path, args, fragment):
    pytest.importorskip("torch")
    out = tmp_path / "m.safetensors"
    if "SHIPPED_X2" in args:  # a model whose last layer has k = 3
        from iqlut_gpu.model import default_model_path

        args = [str(default_model_path(2)) if a == "SHIPPED_X2" else a for a in args]
    proc = run_cli("train", "--scale", "2", "--out", out, *args)
    assert_clean_failure(proc, fragment)
    no_output_files(tmp_path, keep=())


def test_a_lock_error_raised_by_ctrl_c_is_reported_as_the_interrupt(monkeypatch, capsys):
    """Ctrl-C inside a condition variable's wait can surface as ``RuntimeError: release
    unlocked lock``; raised while the interrupt is handled, it is the interrupt (exit 130,
    one line), while any other RuntimeError is not swallowed."""
    from iqlut_gpu import cli
    from iqlut_gpu.cli import info_cmd

    def lock_error(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("release unlocked lock")

    monkeypatch.setattr(info_cmd, "run", lock_error)
    assert cli.main(["info", "--scale", "2"]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "iqlut: interrupted\n"

    def plain_error(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(info_cmd, "run", plain_error)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["info", "--scale", "2"])


def test_upscale_waits_for_the_reader_by_polling():
    import threading
    from concurrent.futures import Future

    from iqlut_gpu.files import wait as _result

    f = Future()
    threading.Timer(0.05, f.set_result, ("batch",)).start()
    assert _result(f, poll=0.001) == "batch"
    g = Future()
    g.set_exception(OSError("disk"))
    with pytest.raises(OSError, match="disk"):
        _result(g)
