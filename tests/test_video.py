"""`iqlut video` and iqlut_gpu.video: rate, count and audio kept; nothing half-written.

The clips are made here with the ffmpeg binary of imageio-ffmpeg, from the bundled photo
panned across 64x48 frames, with a generated sine tone as audio. The video pipeline does
not depend on the backend, so the fast NumPy reference backend is used.
"""

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

from iqlut_gpu import upscale  # noqa: E402
from iqlut_gpu.video import VideoError, exact_rate, probe, upscale_video  # noqa: E402

PHOTO = Path(__file__).parent.parent / "iqlut_gpu" / "data" / "astronaut_256.png"
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def make_clip(path, n=16, size=(64, 48), fps="25", audio=True, crf=4):
    """A panned view over the photo as an H.264 clip (+ an AAC sine tone); returns the frames."""
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    w, h = size
    frames = [np.ascontiguousarray(photo[40 + 3 * i:40 + 3 * i + h, 30 + 5 * i:30 + 5 * i + w])
              for i in range(n)]
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", fps, "-i", "pipe:0"]
    if audio:
        seconds = n / float(Fraction(fps))
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=22050:duration={seconds}",
                "-c:a", "aac"]
    cmd += ["-c:v", "libx264", "-crf", str(crf), "-pix_fmt", "yuv444p", str(path)]
    subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), check=True)
    return frames


def decode_all(path):
    """All frames, decoded by imageio-ffmpeg's own reader (independent of iqlut's)."""
    gen = imageio_ffmpeg.read_frames(str(path), output_params=["-fps_mode", "passthrough"])
    meta = next(gen)
    w, h = meta["size"]
    return [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]


def audio_md5(path):
    """MD5 of the first audio stream's packets, as stored (a copy keeps it)."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:a:0",
                          "-c", "copy", "-f", "md5", "-"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def leftovers(folder, keep):
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in keep)


def ffmpeg_children():
    """ffmpeg processes whose parent is this test process."""
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == os.getpid() and "ffmpeg" in comm:
                kids.append(int(d.name))
    return kids


def assert_one_line_failure(proc, *fragments):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if "frame/s" not in ln]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("iqlut video: error: "), lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]


def test_x2_keeps_rate_count_audio_and_content(run_cli, tmp_path):
    frames = make_clip(tmp_path / "in.mp4", n=16, fps="25")
    proc = run_cli("video", "in.mp4", "-o", "out.mp4", "--scale", "2", "--backend", "reference",
                   "--batch", "3", "--crf", "8")
    assert proc.returncode == 0, proc.stderr
    assert "frame/s" in proc.stderr and "16/16" in proc.stderr  # the progress bar
    assert "out.mp4: 16 frames 64x48 -> 128x96 at 25 fps, audio copied (aac)" in proc.stderr

    src, out = probe(tmp_path / "in.mp4"), probe(tmp_path / "out.mp4")
    assert (out.width, out.height) == (128, 96)
    assert out.fps == src.fps == 25
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "out.mp4"))[0] == 16
    assert out.audio == ("aac",)
    assert audio_md5(tmp_path / "out.mp4") == audio_md5(tmp_path / "in.mp4")

    decoded_in, decoded_out = decode_all(tmp_path / "in.mp4"), decode_all(tmp_path / "out.mp4")
    assert len(decoded_in) == len(decoded_out) == 16
    assert psnr(decoded_in[0], frames[0]) > 35  # the clip really holds the photo
    want = list(upscale(np.stack(decoded_in), 2, backend="reference"))
    for i in range(16):  # frame i is upscaled frame i: in order, none dropped or repeated
        near = psnr(decoded_out[i], want[i])
        assert near > 33, (i, near)
        for j in (i - 1, i + 1):
            if 0 <= j < 16:
                assert near > psnr(decoded_out[i], want[j]) + 3, (i, j)
    assert leftovers(tmp_path, {"in.mp4", "out.mp4"}) == []


def test_x3_ntsc_rate_without_audio_through_the_api(tmp_path):
    make_clip(tmp_path / "in.mkv", n=10, fps="30000/1001", audio=False)
    stats = upscale_video(tmp_path / "in.mkv", tmp_path / "out.mkv", 3, backend="reference", batch=4)
    out = probe(tmp_path / "out.mkv")
    assert stats.frames == 10 and (out.width, out.height) == (192, 144)
    assert out.fps == Fraction(30000, 1001) and out.audio == ()
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "out.mkv"))[0] == 10
    assert set(stats.stages) == {"decode", "upload", "kernels", "download", "encode"}


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupt_or_failure_leaves_no_output(tmp_path, monkeypatch, exc):
    """An exception in the middle of the pipeline (Ctrl-C or a failure): the error comes
    out, the existing output is untouched, no temporary file and no ffmpeg remain."""
    from iqlut_gpu import frames

    make_clip(tmp_path / "in.mp4", n=12)
    (tmp_path / "out.mp4").write_bytes(b"precious")
    calls = []
    real = frames.SyncRunner.submit

    def flaky(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise exc("injected")
        return real(self, *args)

    monkeypatch.setattr(frames.SyncRunner, "submit", flaky)
    with pytest.raises(exc):
        upscale_video(tmp_path / "in.mp4", tmp_path / "out.mp4", 2, backend="reference", batch=2,
                      overwrite=True)
    assert (tmp_path / "out.mp4").read_bytes() == b"precious"
    assert leftovers(tmp_path, {"in.mp4", "out.mp4"}) == []
    deadline = time.time() + 5
    while ffmpeg_children() and time.time() < deadline:
        time.sleep(0.05)
    assert ffmpeg_children() == []


def test_sigint_to_the_cli_leaves_no_output(tmp_path):
    make_clip(tmp_path / "in.mp4", n=60, audio=True)
    proc = subprocess.Popen([sys.executable, "-m", "iqlut_gpu", "video", "in.mp4", "-o", "out.mp4",
                             "--scale", "4", "--backend", "reference", "--batch", "1"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(p.name.startswith(".out.mp4.") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # the pipeline is running now: the encoder has the temporary file open
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert leftovers(tmp_path, {"in.mp4"}) == []


def test_bad_inputs_are_one_line_errors(run_cli, tmp_path):
    make_clip(tmp_path / "good.mp4", n=8)
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.mp4").write_text("not a video at all\n")
    (tmp_path / "empty.mkv").write_bytes(b"")
    Image.open(PHOTO).save(tmp_path / "photo.png")
    keep = {"good.mp4", "cut.mp4", "text.mp4", "empty.mkv", "photo.png"}
    cases = [("cut.mp4", "cut.mp4"), ("text.mp4", "not a video"), ("empty.mkv", "empty"),
             ("photo.png", "still image"), ("missing.mp4", "no such file"), (".", "directory")]
    for name, fragment in cases:
        proc = run_cli("video", name, "-o", "out.mp4", "--scale", "2", "--backend", "reference")
        assert_one_line_failure(proc, fragment)
    assert leftovers(tmp_path, keep) == []


def test_output_rules(run_cli, tmp_path):
    make_clip(tmp_path / "in.mp4", n=6)
    (tmp_path / "out.mp4").write_bytes(b"precious")
    args = ("--scale", "2", "--backend", "reference", "--quiet")
    assert_one_line_failure(run_cli("video", "in.mp4", "-o", "out.mp4", *args), "exists", "--overwrite")
    assert (tmp_path / "out.mp4").read_bytes() == b"precious"
    assert_one_line_failure(run_cli("video", "in.mp4", "-o", "in.mp4", "--overwrite", *args), "input")
    assert_one_line_failure(run_cli("video", "in.mp4", "-o", "no/out.mp4", *args), "does not exist")
    assert_one_line_failure(run_cli("video", "in.mp4", "-o", "x.mp4", "--codec", "nope", *args), "nope")
    assert_one_line_failure(run_cli("video", "in.mp4", "-o", "x.xyz", *args), "x.xyz")
    # AAC audio cannot be copied into WebM: said before any frame is upscaled
    assert_one_line_failure(run_cli("video", "in.mp4", "-o", "x.webm", "--codec", "libvpx-vp9", *args),
                            "x.webm", "audio")
    assert_one_line_failure(run_cli("video", "in.mp4", "-o", "x.mp4", "--codec", "mpeg4", "--crf", "5",
                                    *args), "crf")
    assert leftovers(tmp_path, {"in.mp4", "out.mp4"}) == []
    proc = run_cli("video", "in.mp4", "-o", "out.mp4", "--overwrite", *args)
    assert proc.returncode == 0, proc.stderr
    assert probe(tmp_path / "out.mp4").width == 128


def test_rotated_phone_video_comes_out_upright(tmp_path):
    """A display matrix (phones) makes ffmpeg decode frames turned upright: sizes swap."""
    frames = make_clip(tmp_path / "flat.mp4", n=6)
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-display_rotation", "90", "-i", str(tmp_path / "flat.mp4"), "-c", "copy",
                    str(tmp_path / "rot.mp4")], check=True)
    assert (probe(tmp_path / "rot.mp4").width, probe(tmp_path / "rot.mp4").height) == (48, 64)
    stats = upscale_video(tmp_path / "rot.mp4", tmp_path / "out.mp4", 2, backend="reference",
                          batch=6, crf=8)
    out = decode_all(tmp_path / "out.mp4")
    assert stats.frames == 6 and len(out) == 6 and out[0].shape == (128, 96, 3)
    upright = np.rot90(frames[0], k=1)  # "rotation of 90 degrees": counter-clockwise
    ok = psnr(out[0], upscale(np.ascontiguousarray(upright), 2, backend="reference"))
    wrong = psnr(out[0], upscale(np.ascontiguousarray(np.rot90(frames[0], k=-1)), 2, backend="reference"))
    assert ok > 30 and ok > wrong + 3, (ok, wrong)


def test_exact_rate():
    assert exact_rate(25.0) == 25
    assert exact_rate(29.97) == Fraction(30000, 1001)
    assert exact_rate(23.98) == Fraction(24000, 1001)
    assert exact_rate(59.94) == Fraction(60000, 1001)
    assert exact_rate(12.5) == Fraction(25, 2)
    with pytest.raises(VideoError):
        exact_rate(0)
