"""Video in, video out: decoding, encoding and the overlapped upscaling pipeline.

Decoding and encoding run in ``ffmpeg`` processes from the imageio-ffmpeg package (the
``video`` extra), which talk to this process through raw RGB frames on pipes, as
imageio-ffmpeg's own ``read_frames``/``write_frames`` do. The module drives the binary
itself rather than through those two generators because it needs what they do not give:
the encoder's exit status and error text (a failed encode must not pass for a finished
one), ``-fps_mode passthrough`` (every decoded frame exactly once, so the frame count is
kept), the audio streams mapped as optional and a rate that keeps NTSC fractions.

Why imageio-ffmpeg and not imageio's PyAV plugin (``python -m bench.video_pipeline
--compare-io`` measures both): on this machine both decode 720p H.264 far faster than the
kernels can upscale it and encode the x2 result at about the same rate; the ffmpeg
processes keep codec work out of this process; the audio is copied in the same ffmpeg
call that encodes the video (``-c:a copy``), whereas the PyAV plugin writes no audio and
would need a second mux pass; and it is one small wheel with a static ffmpeg.

The pipeline (``upscale_video``): a decoder thread fills a bounded queue with frames, an
upscaler thread turns them into upscaled frames with ``Upscaler.frames`` (batches of
``batch`` frames per backend call) into a second bounded queue, and the
calling thread feeds the encoder. At most about ``4 * batch`` frames are in memory
whatever the length of the video. The output is written under a temporary name and
renamed at the end; on any error or interrupt both ffmpeg processes are killed and the
temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

DEFAULT_CRF = 18
# Encoders with a constant-quality setting and its largest value (lower is better): -crf,
# or -cq for NVIDIA's hardware encoders (a lent GPU: --codec h264_nvenc frees the CPU).
CRF_CODECS = {"libx264": 51, "libx264rgb": 51, "libx265": 51, "libvpx-vp9": 63,
              "libaom-av1": 63, "libsvtav1": 63, "h264_nvenc": 51, "hevc_nvenc": 51,
              "av1_nvenc": 63}
# Demuxers of still images: ffmpeg reads them as one-frame videos, `iqlut upscale` is for them.
_IMAGE_DEMUXERS = re.compile(r"(_pipe|^image2|^apng$|^webp$)")


class VideoError(ValueError):
    """A video cannot be read or written; the message is one line that says why."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped by imageio-ffmpeg (the ``video`` extra)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise VideoError("video needs imageio-ffmpeg: pip install 'iqlut-gpu[video]'") from None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as e:
        raise VideoError(f"no ffmpeg binary found ({e})") from None


def _popen(cmd, **kw) -> subprocess.Popen:
    # A new session: a Ctrl-C at the terminal reaches only Python, which then stops ffmpeg.
    return subprocess.Popen(cmd, start_new_session=True, **kw)


def _kill(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
    if proc is not None:
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)


class _StderrTail(threading.Thread):
    """Drains a process's stderr (so it never blocks) and keeps the last lines."""

    def __init__(self, stream, keep: int = 40):
        super().__init__(daemon=True)
        self.stream, self.lines = stream, deque(maxlen=keep)
        self.start()

    def run(self):
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", "replace").strip()
            if line:
                self.lines.append(line)
        self.stream.close()

    def reason(self) -> str:
        """The most telling line of ffmpeg's error output."""
        self.join(timeout=2)
        return _reason(list(self.lines))


def _reason(lines: list[str]) -> str:
    lines = [_clean(ln) for ln in lines if not ln.startswith(("frame=", "size=", "Press [q]"))]
    for ln in lines:  # the first error is the cause; later ones are consequences
        if re.search(r"error|invalid|not |unable|could not|cannot|unknown|no such", ln, re.I):
            return ln
    return lines[-1] if lines else "ffmpeg gave no reason"


def _clean(line: str) -> str:
    return re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", line).strip()


# --------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` learns from ffmpeg's description of a file."""

    path: Path
    container: str
    codec: str
    width: int
    height: int
    fps: Fraction
    duration: float | None          # seconds, None if unknown
    audio: tuple[str, ...] = field(default=())  # codecs of the audio streams
    stream: int = 0                 # which video stream (ffmpeg's 0:v:N) holds the frames

    @property
    def frames_estimate(self) -> int | None:
        """duration * fps, rounded; the real count is known only after decoding."""
        if not self.duration:
            return None
        return max(1, round(self.duration * self.fps))


def exact_rate(fps: float) -> Fraction:
    """The rational frame rate behind ffmpeg's rounded print of it.

    ffmpeg prints rates with 4 significant digits (29.97, 23.98, 59.94); NTSC rates
    are n*1000/1001, so a printed rate within rounding of one is taken to be it.
    """
    if fps <= 0:
        raise VideoError(f"invalid frame rate {fps}")
    if abs(fps - round(fps)) < 1e-6:
        return Fraction(round(fps))
    ntsc = round(fps * 1.001)
    if ntsc > 0 and abs(Fraction(ntsc * 1000, 1001) - Fraction(fps)) <= Fraction(6, 1000):
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def _parse_rate(value: str, suffix: str) -> float:
    return float(value) * (1000 if suffix == "k" else 1)


def parse_header(text: str, path: Path) -> VideoInfo:
    """A VideoInfo from the ``Input #0`` part of ffmpeg's log (first video stream)."""
    m = re.search(r"Input #0, ([^,]+(?:,[^ ,]+)*), from", text)
    container = m.group(1) if m else "?"
    streams = list(re.finditer(r"Stream #0:\d+.*?: Video: (.*)", text))
    # cover art of audio files is a one-picture "video" stream: not what a user means
    moving = [k for k, v in enumerate(streams) if "(attached pic)" not in v.group(1)]
    if not moving:
        raise VideoError(f"{path}: no video stream in this file"
                         + (" (only cover art)" if streams else ""))
    stream = moving[0]
    video = streams[stream]
    line = video.group(1)
    codec = line.split()[0].rstrip(",")
    size = re.search(r"[ ,](\d{1,6})x(\d{1,6})[ ,\[]", line + " ")
    if not size:
        raise VideoError(f"{path}: cannot read the frame size of its video stream")
    width, height = int(size.group(1)), int(size.group(2))
    # ffmpeg turns frames upright when a display matrix says so: the decoded size swaps
    block = text[video.end():]
    nxt = re.search(r"Stream #0:\d+", block)
    block = block[:nxt.start()] if nxt else block
    rot = re.search(r"rotation of (-?[\d.]+) degrees", block)
    if rot and round(float(rot.group(1))) % 180 == 90:
        width, height = height, width
    rate = re.search(r"([\d.]+)(k?) fps", line) or re.search(r"([\d.]+)(k?) tbr", line)
    if not rate:
        raise VideoError(f"{path}: its video stream has no known frame rate")
    dur = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", text)
    duration = None
    if dur:
        duration = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3))
    audio = tuple(a.split()[0].rstrip(",")
                  for a in re.findall(r"Stream #0:\d+.*?: Audio: (.*)", text))
    return VideoInfo(path, container, codec, width, height,
                     exact_rate(_parse_rate(rate.group(1), rate.group(2))), duration, audio, stream)


def probe(path) -> VideoInfo:
    """Describe a video file; raise VideoError if it is missing, not a video or unreadable."""
    path = Path(path)
    if path.is_dir():
        raise VideoError(f"{path}: is a directory")
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise VideoError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")
    try:
        proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                              capture_output=True, start_new_session=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise VideoError(f"{path}: ffmpeg took over a minute to open it") from None
    text = proc.stderr.decode("utf-8", "replace")
    if "Input #0" not in text:
        lines = [_clean(ln) for ln in text.splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Invalid data" in ln or "moov atom" in ln), None)
        why = why or (lines[0] if lines else "unrecognised data")
        raise VideoError(f"{path}: not a video, or corrupt ({why})")
    info = parse_header(text, path)
    if _IMAGE_DEMUXERS.search(info.container):
        raise VideoError(f"{path}: a still image ({info.codec}), not a video; use `iqlut upscale`")
    return info


# --------------------------------------------------------------------------- decoding


def read_frames(path, info: VideoInfo | None = None, stop: threading.Event | None = None
                ) -> Iterator[np.ndarray]:
    """Every frame of the first video stream as uint8 (H, W, 3) RGB, in order.

    Raises VideoError if ffmpeg fails, including at the end of the stream (corrupt data
    that stops the decoder). Closing the generator early kills the decoder.
    """
    info = info or probe(path)
    w, h = info.width, info.height
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path),
           "-map", f"0:v:{info.stream}", "-fps_mode", "passthrough", "-an", "-sn", "-dn",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = _popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tail = _StderrTail(proc.stderr)
    size = w * h * 3
    n = 0
    try:
        while True:
            buf = bytearray(size)
            view, got = memoryview(buf), 0
            while got < size:
                k = proc.stdout.readinto(view[got:])
                if not k:
                    break
                got += k
            if got == 0:
                break
            if got < size:
                raise VideoError(f"{path}: frame {n + 1} is incomplete ({tail.reason()})")
            n += 1
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
            if stop is not None and stop.is_set():
                return
        if proc.wait() != 0:
            raise VideoError(f"{path}: decoding failed after {n} frames ({tail.reason()})")
        if n == 0:
            raise VideoError(f"{path}: no frames could be decoded ({tail.reason()})")
    finally:
        _kill(proc)
        with contextlib.suppress(Exception):
            proc.stdout.close()


# --------------------------------------------------------------------------- encoding


def _encode_args(size, fps, codec: str, crf: int | None, audio_from, pix_fmt: str | None) -> list:
    """ffmpeg arguments after the raw-video input: audio input and mapping, video codec."""
    w, h = size
    if crf is not None and codec not in CRF_CODECS:
        raise VideoError(f"--crf is not supported for codec {codec!r} "
                         f"(it is for {', '.join(sorted(CRF_CODECS))})")
    if crf is not None and not 0 <= crf <= CRF_CODECS[codec]:
        raise VideoError(f"crf must be 0..{CRF_CODECS[codec]} for {codec}, got {crf}")
    if pix_fmt is None:  # 4:2:0 plays everywhere but needs even sizes
        pix_fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
    if codec == "ffv1" or codec.endswith("rgb"):
        pix_fmt = "rgb24" if codec.endswith("rgb") else "yuv444p"
    args = []
    if audio_from is not None:
        args += ["-i", str(audio_from), "-map", "0:v:0", "-map", "1:a?", "-c:a", "copy"]
    else:
        args += ["-map", "0:v:0"]
    args += ["-c:v", codec, "-pix_fmt", pix_fmt]
    if crf is not None:
        args += ["-cq" if codec.endswith("_nvenc") else "-crf", str(crf)]
        if codec == "libvpx-vp9":
            args += ["-b:v", "0"]  # constant quality mode
    return args


def check_encoder(dst, size, fps, *, codec: str = "libx264", crf: int | None = None,
                  audio_from=None, pix_fmt: str | None = None) -> None:
    """Encode two frames the way ``VideoWriter`` will into a scratch file of ``dst``'s kind.

    Catches an unknown container suffix, an unknown encoder, an encoder the container
    cannot hold and audio that cannot be copied into it, before any real work is done.
    """
    import tempfile

    dst = Path(dst)
    w, h = size
    args = _encode_args(size, fps, codec, crf, audio_from, pix_fmt)
    with tempfile.TemporaryDirectory(prefix="iqlut-check-") as tmp:
        scratch = Path(tmp) / ("check" + dst.suffix)
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-f", "lavfi", "-i", f"color=c=gray:s={w}x{h}:r={fps}", *args,
               "-frames:v", "2", "-t", f"{2 / float(fps):.6f}", str(scratch)]
        proc = subprocess.run(cmd, capture_output=True, start_new_session=True, timeout=120)
    if proc.returncode != 0:
        text = proc.stderr.decode("utf-8", "replace")
        lines = [_clean(ln) for ln in text.splitlines() if ln.strip()]
        why = _reason(lines).replace(str(scratch), str(dst))
        what = f"{codec} video" + (f" with {audio_from}'s audio copied" if audio_from else "")
        raise VideoError(f"{dst}: cannot write {what} into a {dst.suffix or 'suffix-less'} file "
                         f"({why})")


class VideoWriter:
    """Encode uint8 (H, W, 3) RGB frames to ``path`` with ffmpeg; optionally copy audio.

    ``audio_from``: a file whose audio streams are copied unchanged (``-c:a copy``).
    ``close()`` waits for ffmpeg and raises VideoError if it failed; ``abort()`` kills it.
    ``name``: how messages call the file (the final name when ``path`` is temporary).
    """

    def __init__(self, path, size: tuple[int, int], fps: Fraction, *, codec: str = "libx264",
                 crf: int | None = None, audio_from=None, pix_fmt: str | None = None,
                 name=None):
        self.path, self.size = Path(path), size
        self.name = name or self.path
        w, h = size
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps),
               "-i", "pipe:0"]
        cmd += _encode_args(size, fps, codec, crf, audio_from, pix_fmt)
        cmd += [str(self.path)]
        self.frames = 0
        self._proc = _popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
        self._tail = _StderrTail(self._proc.stderr)

    def write(self, frame: np.ndarray) -> None:
        w, h = self.size
        if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 {(h, w, 3)}, got {frame.dtype} {frame.shape}")
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except (BrokenPipeError, ValueError, OSError):
            self._proc.wait()
            raise VideoError(f"{self.name}: encoding failed ({self._tail.reason()})") from None
        self.frames += 1

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._proc.stdin.close()
        if self._proc.wait() != 0:
            raise VideoError(f"{self.name}: encoding failed ({self._tail.reason()})")

    def abort(self) -> None:
        _kill(self._proc)
        with contextlib.suppress(Exception):
            self._proc.stdin.close()


# --------------------------------------------------------------------------- pipeline


_END = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put unless stopped (so a stopped consumer never leaves a producer blocked)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _drain(q: queue.Queue, stop: threading.Event):
    """Items of ``q`` until _END; a _Failed item re-raises its exception here.

    Runs in the main thread, where Ctrl-C lands: it polls without blocking and sleeps in
    between, because a KeyboardInterrupt raised inside ``q.get(timeout=...)`` (in the
    condition variable's wait, as it re-takes its lock) can leave the queue's lock released
    twice, and the ``RuntimeError: release unlocked lock`` then replaces the interrupt (seen
    on CI: a traceback and exit 1 instead of the clean exit 130)."""
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            if stop.is_set():
                return
            time.sleep(0.005)
            continue
        if item is _END:
            return
        if isinstance(item, _Failed):
            raise item.exc
        yield item


def _stage(target, out_q: queue.Queue, stop: threading.Event, name: str) -> threading.Thread:
    """Run ``target()`` (an iterator) in a thread, forwarding its items to ``out_q``."""
    def body():
        try:
            for item in target():
                if not _put(out_q, item, stop):
                    return
            _put(out_q, _END, stop)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
            _put(out_q, _Failed(e), stop)

    t = threading.Thread(target=body, name=name, daemon=True)
    t.start()
    return t


@dataclass
class VideoStats:
    """What one ``upscale_video`` call did and how long each stage was busy (seconds)."""

    frames: int = 0
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)  # decode, upload, kernels, download, encode
    info: VideoInfo | None = None
    output_size: tuple[int, int] | None = None
    backend: str = ""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def check_output_path(src: Path, dst: Path, overwrite: bool) -> None:
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise VideoError(f"{dst}: output is the input file itself; choose another output")
    if dst.is_dir():
        raise VideoError(f"{dst}: is a directory; give an output file name")
    if dst.exists() and not overwrite:
        raise VideoError(f"{dst}: exists (use --overwrite to replace it)")
    if not dst.parent.is_dir():
        raise VideoError(f"{dst.parent}: output folder does not exist")
    if not os.access(dst.parent, os.W_OK):
        raise VideoError(f"{dst.parent}: output folder is not writable")


def upscale_video(src, dst, scale: int = 4, *, model=None, backend: str = "auto",
                  mode: str = "auto", ensemble: int | None = None, upscaler=None,
                  batch: int = 4, codec: str | None = None, crf: int | None = None,
                  overwrite: bool = False, progress=None, queue_batches: int = 2) -> VideoStats:
    """Upscale the video ``src`` into ``dst``: same frame rate, same frame count, audio copied.

    What runs is ``upscaler`` (an ``iqlut_gpu.Upscaler``), or one built from ``scale``,
    ``model``, ``backend``, ``mode`` and ``ensemble`` (as for ``iqlut_gpu.upscale``).
    ``progress``: None, or a callable ``progress(n_frames_done)`` called from the calling
    thread after each encoded frame. ``batch`` frames go to the backend in one call;
    ``queue_batches`` batches may wait between stages. Raises VideoError (a ValueError)
    for unreadable input or a failed encode; on any exception (KeyboardInterrupt
    included) ``dst`` is left untouched and no temporary file remains.
    """
    from .io import atomic_path
    from .upscaler import Upscaler

    src, dst = Path(src), Path(dst)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if upscaler is None:
        upscaler = Upscaler(scale, model=model, backend=backend, mode=mode, ensemble=ensemble)
    elif model is not None or backend != "auto" or mode != "auto" or ensemble is not None:
        raise TypeError("give model, backend, mode and ensemble to the Upscaler, not here")
    info = probe(src)
    check_output_path(src, dst, overwrite)
    codec = codec or "libx264"
    if crf is None and codec in CRF_CODECS:
        crf = DEFAULT_CRF
    r = upscaler.scale
    out_size = (info.width * r, info.height * r)
    check_encoder(dst, out_size, info.fps, codec=codec, crf=crf,
                  audio_from=src if info.audio else None)
    stats = VideoStats(info=info, output_size=out_size, backend=upscaler.backend,
                       stages={"decode": 0.0, "upload": 0.0, "kernels": 0.0, "download": 0.0,
                               "encode": 0.0})
    depth = max(1, queue_batches) * batch
    decoded: queue.Queue = queue.Queue(maxsize=depth)
    upscaled: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    t_start = time.perf_counter()

    def decode():
        frames = read_frames(src, info, stop)
        try:
            while True:
                t0 = time.perf_counter()
                frame = next(frames, None)
                stats.stages["decode"] += time.perf_counter() - t0
                if frame is None:
                    return
                yield frame
        finally:
            frames.close()

    def upscale():
        return upscaler.frames(_drain(decoded, stop), batch, stats.stages)

    threads = []
    try:
        with atomic_path(dst) as tmp:
            writer = VideoWriter(tmp, out_size, info.fps, codec=codec, crf=crf,
                                 audio_from=src if info.audio else None, name=dst)
            try:  # ffmpeg must be dead before atomic_path removes the temporary file
                threads.append(_stage(decode, decoded, stop, "iqlut-decode"))
                threads.append(_stage(upscale, upscaled, stop, "iqlut-upscale"))
                for frame in _drain(upscaled, stop):
                    t0 = time.perf_counter()
                    writer.write(frame)
                    stats.stages["encode"] += time.perf_counter() - t0
                    stats.frames += 1
                    if progress is not None:
                        progress(stats.frames)
                t0 = time.perf_counter()
                writer.close()
                stats.stages["encode"] += time.perf_counter() - t0
            except BaseException:
                stop.set()
                writer.abort()
                raise
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=0.5)
    stats.seconds = time.perf_counter() - t_start
    return stats
