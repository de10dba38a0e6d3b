"""`iqlut video` and iqlut_gpu.video: planes, frame times, count and audio kept; nothing
half-written.

The clips are made here with the ffmpeg binary of imageio-ffmpeg, from the bundled photo
panned across small frames, with a generated sine tone as audio. The pipeline does not
depend on the backend, so the NumPy reference backend runs it, one pass (``--ensemble
1``) or a small random model where only bit-identity matters; the planes' batching is
checked on every backend. Frame times are read back with ffmpeg's showinfo filter,
independently of the decoder's own timestamp route.
"""

import os
import re
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

import cases  # noqa: E402
from iqlut_gpu import Upscaler, upscale  # noqa: E402
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


def frame_times(path, copyts=False):
    """Each decoded frame's time in seconds, as ffmpeg's showinfo filter reports it
    (from the file's start, or with ``copyts`` as the file has it)."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", *(["-copyts"] if copyts else []),
                          "-i", str(path), "-map", "0:v:0", "-vf", "showinfo", "-f", "null", "-"],
                         capture_output=True, text=True, check=True).stderr
    pattern = r"\bn:\s*\d+\s+pts:\s*-?\d+\s+pts_time:(-?[\d.e+-]+)"
    return [float(t) for t in re.findall(pattern, out)]


def assert_same_times(want, got, tol=1e-3):
    assert len(want) == len(got), (len(want), len(got))
    worst = max(abs(a - b) for a, b in zip(want, got))
    assert worst <= tol, (worst, want, got)


def planes_of(path, pix_fmt):
    """Every frame of ``path`` as ffmpeg decodes it to ``pix_fmt``, split into its planes
    here (chroma of 4:2:x: ceil(W/2) wide, ceil(H/2) high for 4:2:0)."""
    info = probe(path)
    w, h = info.width, info.height
    cw, ch = {"yuv420p": (-(-w // 2), -(-h // 2)), "yuvj420p": (-(-w // 2), -(-h // 2)),
              "yuv422p": (-(-w // 2), h), "yuv444p": (w, h), "gray": (0, 0)}[pix_fmt]
    raw = subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path),
                          "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "rawvideo",
                          "-pix_fmt", pix_fmt, "-"], capture_output=True, check=True).stdout
    size = w * h + 2 * cw * ch
    assert len(raw) % size == 0
    frames = []
    for k in range(len(raw) // size):
        data = np.frombuffer(raw, np.uint8, size, k * size)
        planes = [data[:w * h].reshape(h, w)]
        if cw:
            planes += [data[w * h:w * h + cw * ch].reshape(ch, cw),
                       data[w * h + cw * ch:].reshape(ch, cw)]
        frames.append(planes)
    return frames


def make_planar_clip(path, pix_fmt, size, n=5, codec="ffv1", extra=()):
    """A panned view over the photo, converted by ffmpeg to ``pix_fmt`` and coded by
    ``codec`` (ffv1: lossless)."""
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    w, h = size
    frames = [photo[20 + 4 * i:20 + 4 * i + h, 10 + 3 * i:10 + 3 * i + w] for i in range(n)]
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", "25",
                    "-i", "pipe:0", *extra, "-c:v", codec, "-pix_fmt", pix_fmt, str(path)],
                   input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames), check=True)


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
                   "--ensemble", "1", "--batch", "3", "--crf", "8")
    assert proc.returncode == 0, proc.stderr
    assert "frame/s" in proc.stderr and "16/16" in proc.stderr  # the progress bar
    assert "out.mp4: 16 frames 64x48 -> 128x96 at 25 fps, audio copied (aac)" in proc.stderr
    assert "planes yuv444p" in proc.stderr  # the clip is 4:4:4: its own planes, said so

    src, out = probe(tmp_path / "in.mp4"), probe(tmp_path / "out.mp4")
    assert (out.width, out.height) == (128, 96)
    assert out.fps == src.fps == 25
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "out.mp4"))[0] == 16
    assert out.audio == ("aac",)
    assert audio_md5(tmp_path / "out.mp4") == audio_md5(tmp_path / "in.mp4")

    decoded_in, decoded_out = decode_all(tmp_path / "in.mp4"), decode_all(tmp_path / "out.mp4")
    assert len(decoded_in) == len(decoded_out) == 16
    assert psnr(decoded_in[0], frames[0]) > 35  # the clip really holds the photo
    want = list(upscale(np.stack(decoded_in), 2, backend="reference", ensemble=1))
    for i in range(16):  # frame i is upscaled frame i: in order, none dropped or repeated
        near = psnr(decoded_out[i], want[i])
        assert near > 33, (i, near)
        for j in (i - 1, i + 1):
            if 0 <= j < 16:
                assert near > psnr(decoded_out[i], want[j]) + 3, (i, j)
    assert leftovers(tmp_path, {"in.mp4", "out.mp4"}) == []


def test_x3_ntsc_rate_without_audio_through_the_api(tmp_path):
    make_clip(tmp_path / "in.mkv", n=10, fps="30000/1001", audio=False)
    stats = upscale_video(tmp_path / "in.mkv", tmp_path / "out.mkv", 3, backend="reference",
                          batch=4, ensemble=1)
    out = probe(tmp_path / "out.mkv")
    assert stats.frames == 10 and (out.width, out.height) == (192, 144)
    assert out.fps == Fraction(30000, 1001) and out.audio == ()
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "out.mkv"))[0] == 10
    assert set(stats.stages) == {"decode", "upload", "kernels", "download", "encode"}
    assert not stats.variable_rate
    # Matroska keeps milliseconds: each frame at its source time, within half of one
    assert_same_times(frame_times(tmp_path / "in.mkv"), frame_times(tmp_path / "out.mkv"))


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
                      ensemble=1, overwrite=True)
    assert (tmp_path / "out.mp4").read_bytes() == b"precious"
    assert leftovers(tmp_path, {"in.mp4", "out.mp4"}) == []
    deadline = time.time() + 5
    while ffmpeg_children() and time.time() < deadline:
        time.sleep(0.05)
    assert ffmpeg_children() == []


def test_sigint_to_the_cli_leaves_no_output(tmp_path):
    make_clip(tmp_path / "in.mp4", n=60, audio=True)
    # a suite started in the background (`cmd &` in a script) runs with SIGINT ignored, which
    # children inherit and Python then leaves alone: give the CLI the default disposition
    proc = subprocess.Popen([sys.executable, "-m", "iqlut_gpu", "video", "in.mp4", "-o", "out.mp4",
                             "--scale", "4", "--backend", "reference", "--batch", "1"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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
    args = ("--scale", "2", "--backend", "reference", "--ensemble", "1", "--quiet")
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
    assert_one_line_failure(run_cli("video", "in.mp4", "-o", "x.mp4", "--preset", "nope", *args),
                            "x.mp4", "preset")
    assert_one_line_failure(run_cli("video", "in.mp4", "-o", "x.mkv", "--codec", "ffv1",
                                    "--preset", "fast", *args), "--preset", "ffv1")
    # a hardware encoder that cannot run here (no NVIDIA GPU, or one without NVENC such as
    # the H100/H200, or an ffmpeg built without it): one line with ffmpeg's reason
    proc = run_cli("video", "in.mp4", "-o", "nv.mp4", "--codec", "h264_nvenc", *args)
    if proc.returncode != 0:
        assert_one_line_failure(proc, "nv.mp4", "h264_nvenc")
        assert not (tmp_path / "nv.mp4").exists()
    assert leftovers(tmp_path, {"in.mp4", "out.mp4"}) == []
    proc = run_cli("video", "in.mp4", "-o", "out.mp4", "--overwrite", "--preset", "veryfast", *args)
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
                          batch=6, crf=8, ensemble=1)
    out = decode_all(tmp_path / "out.mp4")
    assert stats.frames == 6 and len(out) == 6 and out[0].shape == (128, 96, 3)
    upright = np.rot90(frames[0], k=1)  # "rotation of 90 degrees": counter-clockwise
    ok = psnr(out[0], upscale(np.ascontiguousarray(upright), 2, backend="reference", ensemble=1))
    wrong = psnr(out[0], upscale(np.ascontiguousarray(np.rot90(frames[0], k=-1)), 2,
                                 backend="reference", ensemble=1))
    assert ok > 30 and ok > wrong + 3, (ok, wrong)


def test_exact_rate():
    assert exact_rate(25.0) == 25
    assert exact_rate(29.97) == Fraction(30000, 1001)
    assert exact_rate(23.98) == Fraction(24000, 1001)
    assert exact_rate(59.94) == Fraction(60000, 1001)
    assert exact_rate(12.5) == Fraction(25, 2)
    with pytest.raises(VideoError):
        exact_rate(0)


# --------------------------------------------------------------------------- planes


@pytest.mark.parametrize("pix_fmt, size, scale, codec, suffix", [
    ("yuv420p", (45, 31), 2, "ffv1", ".mkv"),    # odd: chroma 23x16 -> 46x32, cut to 45x31
    ("yuv420p", (45, 31), 3, "ffv1", ".mkv"),    # odd output 135x93: chroma 69x48 -> 68x47
    ("yuv420p", (48, 32), 2, "libx264", ".mp4"),  # lossless H.264 (crf 0) in yuv420p
    ("yuv422p", (45, 31), 2, "ffv1", ".mkv"),
    ("yuv444p", (40, 30), 2, "ffv1", ".mkv"),
    ("gray", (40, 30), 3, "ffv1", ".mkv"),
])
def test_planes_round_trip_equal_upscale_of_each_plane(tmp_path, pix_fmt, size, scale, codec,
                                                       suffix):
    """A source's own planes go through the model at their own sizes and come back in the
    same layout: with a lossless codec, each decoded output plane equals ``upscale`` of
    the decoded source plane (chroma cut to the output's own chroma size)."""
    (seed, rng), = cases.case_rngs(1, salt=hash((pix_fmt, size, scale)) % 1000)
    model = cases.random_model(rng, scale)
    # the source is always FFV1 in Matroska: ffmpeg before 8 cannot put FFV1 in MP4
    src, dst = tmp_path / "in.mkv", tmp_path / ("out" + suffix)
    make_planar_clip(src, pix_fmt, size)
    up = Upscaler(model=model, backend="reference")
    stats = upscale_video(src, dst, upscaler=up, batch=2, codec=codec,
                          crf=0 if codec == "libx264" else None)
    assert stats.planes == pix_fmt and stats.planes_reason is None and stats.notes == []
    out = probe(dst)
    w, h = size
    assert (out.width, out.height, out.pix_fmt) == (w * scale, h * scale, pix_fmt)
    got, source = planes_of(dst, pix_fmt), planes_of(src, pix_fmt)
    assert len(got) == len(source) == stats.frames == 5
    for i, (planes_in, planes_out) in enumerate(zip(source, got)):
        for k, (p, q) in enumerate(zip(planes_in, planes_out)):
            full = upscale(p, scale, model=model, backend="reference")
            # the output's own plane: cut from the upscaled one, never padded
            assert full.shape[0] - scale < q.shape[0] <= full.shape[0], (full.shape, q.shape)
            assert full.shape[1] - scale < q.shape[1] <= full.shape[1], (full.shape, q.shape)
            assert np.array_equal(q, full[:q.shape[0], :q.shape[1]]), \
                f"seed {seed}: frame {i} plane {k}"


def test_odd_output_size_that_the_encoder_cannot_subsample_gets_444(tmp_path):
    """x3 of an odd-sized 4:2:0 source is odd-sized; libx264 cannot code that as 4:2:0,
    so the encoder gets 4:4:4 (as the RGB path does for odd sizes) and the notes say so."""
    make_planar_clip(tmp_path / "in.mkv", "yuv420p", (21, 15), n=2)
    (_, rng), = cases.case_rngs(1, salt=31)
    stats = upscale_video(tmp_path / "in.mkv", tmp_path / "out.mp4", 3, codec="libx264",
                          upscaler=None, model=cases.random_model(rng, 3), backend="reference")
    assert stats.planes == "yuv420p" and stats.output_pix_fmt == "yuv444p"
    assert any("63x45 cannot be coded 4:2:0" in n for n in stats.notes), stats.notes
    assert probe(tmp_path / "out.mp4").pix_fmt == "yuv444p"


def test_full_range_and_colour_tags_are_kept(tmp_path):
    """A full-range BT.709 source with a 4:3 pixel aspect: its samples pass untouched, so
    the output must say the same range, matrix and aspect (or players would show other
    colours, or a squashed picture). Lossless H.264 (crf 0), which can say full range."""
    make_planar_clip(tmp_path / "in.mp4", "yuv420p", (32, 24), n=2, codec="libx264",
                     extra=["-vf", "format=yuv420p,setparams=range=pc:colorspace=bt709:"
                            "color_primaries=bt709:color_trc=bt709,setsar=4/3", "-crf", "0"])
    src = probe(tmp_path / "in.mp4")
    assert dict(src.color).get("range") == "pc" and src.sar == Fraction(4, 3), src
    (seed, rng), = cases.case_rngs(1, salt=32)
    model = cases.random_model(rng, 2)
    stats = upscale_video(tmp_path / "in.mp4", tmp_path / "out.mp4", 2, model=model,
                          backend="reference", crf=0)
    assert stats.planes == "yuv420p"
    out = probe(tmp_path / "out.mp4")
    assert dict(out.color) == dict(src.color) and out.sar == src.sar, (src, out)
    source = planes_of(tmp_path / "in.mp4", "yuvj420p")
    got = planes_of(tmp_path / "out.mp4", "yuvj420p")
    for k in range(3):  # no range conversion on either side: the model's output, unchanged
        want = upscale(source[1][k], 2, model=model, backend="reference")
        assert np.array_equal(got[1][k], want), f"seed {seed} plane {k}"


def test_rgb_path_hands_the_encoder_the_upscaled_rgb_frames(tmp_path):
    """--planes rgb (the path from before planes): decoded to RGB, three full planes, and
    the encoder gets exactly the upscaled RGB frames (lossless libx264rgb shows it)."""
    make_planar_clip(tmp_path / "in.mkv", "yuv420p", (30, 22), n=3)
    (seed, rng), = cases.case_rngs(1, salt=33)
    model = cases.random_model(rng, 2)
    stats = upscale_video(tmp_path / "in.mkv", tmp_path / "out.mkv", model=model, scale=2,
                          backend="reference", planes="rgb", codec="libx264rgb", crf=0)
    assert stats.planes == "rgb24" and stats.planes_reason is None
    src, out = decode_all(tmp_path / "in.mkv"), decode_all(tmp_path / "out.mkv")
    assert len(src) == len(out) == 3
    for i, (a, b) in enumerate(zip(src, out)):
        want = upscale(a, 2, model=model, backend="reference")
        assert np.array_equal(b, want), f"seed {seed} frame {i}"


def plane_frames(rng, model):
    """A 4:2:0 stream with odd sizes, a size change and a gray frame, and each frame's
    planes upscaled one by one by the reference."""
    from iqlut_gpu.yuv import YUV420

    def frame(w, h, gray=False):
        shapes = [(h, w)] if gray else YUV420.shapes(w, h)
        return tuple(rng.integers(0, 256, s, dtype=np.int64).astype(np.uint8) for s in shapes)

    frames = ([frame(13, 9) for _ in range(5)] + [frame(13, 9, gray=True)]
              + [frame(8, 6) for _ in range(3)] + [frame(13, 9)])
    want = [tuple(upscale(p, model.scale, model=model, backend="reference") for p in f)
            for f in frames]
    return frames, want


def assert_same_planes(want, got, what):
    assert len(got) == len(want), what
    for i, (w, g) in enumerate(zip(want, got)):
        assert len(w) == len(g) and all(np.array_equal(a, b) for a, b in zip(w, g)), \
            f"{what}: frame {i}"


def test_plane_batches_are_bit_identical_on_the_cpu_backends():
    """upscale_plane_stream batches a 4:2:0 stream per plane shape (one call for the luma
    planes, one for the chroma planes of a batch): on reference and cpu every plane equals
    the reference ``upscale`` of that plane."""
    from iqlut_gpu.yuv import upscale_plane_stream

    for seed, rng in cases.case_rngs(2, salt=34):
        model = cases.random_model(rng)
        frames, want = plane_frames(rng, model)
        for b in ("reference", "cpu"):
            stats = {}
            got = list(upscale_plane_stream(Upscaler(model=model, backend=b), frames, 3, stats))
            assert_same_planes(want, got, f"seed {seed} {b}")
            assert stats["kernels"] > 0


def test_luma_mode_puts_only_y_through_the_model_and_chroma_through_bicubic():
    """--color luma on a YUV stream: the first plane of each frame through the model, U and
    V through the bicubic base (a gray frame's one plane is its luma)."""
    from iqlut_gpu.color import bicubic_model
    from iqlut_gpu.yuv import upscale_plane_stream

    for seed, rng in cases.case_rngs(1, salt=35):
        model = cases.random_model(rng)
        frames, _ = plane_frames(rng, model)
        base = bicubic_model(model.scale)
        want = [tuple(upscale(p, model.scale, model=model if k == 0 else base, backend="reference")
                      for k, p in enumerate(f)) for f in frames]
        for b in ("reference", "cpu"):
            up = Upscaler(model=model, backend=b, color="luma")
            assert_same_planes(want, list(upscale_plane_stream(up, frames, 3)), f"seed {seed} {b}")


@pytest.mark.cuda_emulated
def test_plane_batches_on_the_cuda_streamer_through_the_stand_in(monkeypatch):
    """The same on the cuda backend's two-stream runner (kernels/cuda_stream.CudaStreamer,
    which takes the planes as one-channel frames), with CuPy replaced by the asynchronous
    stand-in of tests/cuda_emu (its race detector checks every wait)."""
    from cuda_emu import fake_cupy, harness

    from iqlut_gpu.yuv import upscale_plane_stream

    if harness.find_compiler() is None:
        pytest.skip("no C++ compiler (g++/c++/clang++ or $CXX) to build the emulation")
    fake_cupy.install(monkeypatch)
    (seed, rng), = cases.case_rngs(1, salt=38)
    model = cases.random_model(rng)
    frames, want = plane_frames(rng, model)
    up = Upscaler(model=model, backend="cuda")
    from iqlut_gpu.frames import StreamRunner, make_runner

    assert isinstance(make_runner(up), StreamRunner)  # the streamed runner, not the sync one
    stats = {}
    got = list(upscale_plane_stream(up, frames, 3, stats))
    assert_same_planes(want, got, f"seed {seed} cuda (stand-in)")
    assert stats["kernels"] > 0


@pytest.mark.gpu
def test_yuv_video_on_the_gpu_equals_the_cpu(tmp_path):
    """On a CUDA device: the same 4:2:0 video through cuda and cpu, lossless: same planes."""
    from iqlut_gpu.backends import probe as backend_probe

    reason = backend_probe("cuda")
    if reason:
        pytest.skip(reason)
    make_planar_clip(tmp_path / "in.mkv", "yuv420p", (45, 31), n=6)
    (_, rng), = cases.case_rngs(1, salt=35)
    model = cases.random_model(rng, 2)
    for b in ("cuda", "cpu"):
        upscale_video(tmp_path / "in.mkv", tmp_path / f"{b}.mkv", model=model, scale=2,
                      backend=b, codec="ffv1", batch=4)
    a, b = planes_of(tmp_path / "cuda.mkv", "yuv420p"), planes_of(tmp_path / "cpu.mkv", "yuv420p")
    assert len(a) == len(b) == 6
    assert all(np.array_equal(p, q) for fa, fb in zip(a, b) for p, q in zip(fa, fb))


def test_planes_choice_in_the_cli(run_cli, tmp_path):
    """auto takes 8-bit YUV as planes and says so; a 10-bit source goes through RGB with
    the reason; --planes yuv refuses it in one line, before any work."""
    make_planar_clip(tmp_path / "ten.mp4", "yuv420p10le", (32, 24), n=3, codec="libx264")
    args = ("--scale", "2", "--backend", "reference", "--ensemble", "1")
    proc = run_cli("video", "ten.mp4", "-o", "out.mp4", *args)
    assert proc.returncode == 0, proc.stderr
    assert "planes rgb: yuv420p10le has more than 8 bits per sample" in proc.stderr
    assert probe(tmp_path / "out.mp4").pix_fmt == "yuv420p"
    assert_one_line_failure(run_cli("video", "ten.mp4", "-o", "x.mp4", "--planes", "yuv", *args),
                            "--planes yuv needs 8-bit YUV or gray", "yuv420p10le")
    assert leftovers(tmp_path, {"ten.mp4", "out.mp4"}) == []


# --------------------------------------------------------------------------- frame times


def make_vfr_clip(path, n=14, gop=None):
    """A clip as phones record: 30 fps, then 15 fps, then 30 fps again, with a few ticks of
    jitter, and the video starting 0.2 s after its sound (an AAC tone from 0). ``gop``: a
    keyframe every that many frames (default: x264's)."""
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    frames = [photo[30 + 3 * i:30 + 3 * i + 48, 20 + 5 * i:20 + 5 * i + 64] for i in range(n)]
    # in 1/90000 s: 3000 ticks apart (30 fps), 6000 from frame 5 to 10 (15 fps), then 3000
    pts = "18000+N*3000+3000*clip(N-5,0,5)+7*mod(N,3)"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x48", "-r", "30",
                    "-i", "pipe:0",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=22050:duration=1",
                    "-vf", f"settb=1/90000,setpts='{pts}'", "-fps_mode", "passthrough",
                    "-enc_time_base", "1:90000", "-c:v", "libx264", "-crf", "8",
                    *(["-g", str(gop)] if gop else []),
                    "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
                   input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames), check=True)
    return frames


@pytest.mark.parametrize("planes", ["yuv", "rgb"])
def test_variable_frame_rate_keeps_every_frame_time(tmp_path, planes):
    """Each output frame is shown at its source frame's time (within a millisecond), on
    both paths, including the 0.2 s start after the sound; the sound is copied as is."""
    make_vfr_clip(tmp_path / "in.mp4")
    want = frame_times(tmp_path / "in.mp4")
    assert len(want) == 14 and abs(want[0] - 0.2) < 1e-3  # the clip is what it should be
    gaps = np.diff(want)
    assert gaps.max() > 1.9 * gaps.min()                     # and its rate does vary
    (_, rng), = cases.case_rngs(1, salt=36)
    stats = upscale_video(tmp_path / "in.mp4", tmp_path / "out.mp4", 2, planes=planes,
                          model=cases.random_model(rng, 2), backend="reference", batch=3)
    assert stats.variable_rate and stats.time_base == Fraction(1, 90000)
    assert_same_times(want, frame_times(tmp_path / "out.mp4"))
    assert audio_md5(tmp_path / "out.mp4") == audio_md5(tmp_path / "in.mp4")
    decoded_in, decoded_out = decode_all(tmp_path / "in.mp4"), decode_all(tmp_path / "out.mp4")
    assert len(decoded_in) == len(decoded_out) == 14


def test_copyts_keeps_a_segments_own_times(tmp_path):
    """A segment cut from a longer video starts at its own time (here 5 s); with copyts
    the output keeps the file's times as they are, so segments can be joined by them."""
    make_vfr_clip(tmp_path / "whole.mp4", n=8)
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-i", str(tmp_path / "whole.mp4"), "-c", "copy", "-output_ts_offset", "5",
                    str(tmp_path / "seg.mkv")], check=True)
    want = frame_times(tmp_path / "seg.mkv", copyts=True)
    assert len(want) == 8 and 5.1 < want[0] < 5.3, want
    (_, rng), = cases.case_rngs(1, salt=37)
    upscale_video(tmp_path / "seg.mkv", tmp_path / "out.mkv", 2, copyts=True,
                  model=cases.random_model(rng, 2), backend="reference", batch=4)
    assert_same_times(want, frame_times(tmp_path / "out.mkv", copyts=True))
