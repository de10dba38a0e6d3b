"""Video in, video out: decoding, encoding and the overlapped upscaling pipeline.

Decoding and encoding run in ``ffmpeg`` processes from the imageio-ffmpeg package (the
``video`` extra), which talk to this process through pipes. The module drives the binary
itself rather than through imageio-ffmpeg's ``read_frames``/``write_frames`` because it
needs what they do not give: the encoder's exit status and error text (a failed encode
must not pass for a finished one), every decoded frame exactly once with its timestamp,
the audio streams mapped as optional, and raw frames in other layouts than RGB.

Why imageio-ffmpeg and not imageio's PyAV plugin (``python -m bench.video_pipeline
--compare-io`` measures both): on this machine both decode 720p H.264 far faster than the
kernels can upscale it and encode the x2 result at about the same rate; the ffmpeg
processes keep codec work out of this process; the audio is copied in the same ffmpeg
call that encodes the video (``-c:a copy``), whereas the PyAV plugin writes no audio and
would need a second mux pass; and it is one small wheel with a static ffmpeg.

Planes (``iqlut_gpu.yuv``). 8-bit YUV video (4:2:0, 4:2:2, 4:4:4) and gray video are
decoded as their own planes (``-pix_fmt`` the source's own, so ffmpeg converts nothing),
each plane is upscaled at its own size (a 4:2:0 frame is 1.5 planes of work, RGB is 3),
and the encoder gets the same layout back, tagged with the source's colour range, matrix,
primaries and transfer (``setparams``: labels, no arithmetic) and sample aspect ratio.
Other sources (more than 8 bits, RGB, alpha, rare chroma layouts) take the RGB path:
ffmpeg converts to rgb24 on the way in and from RGB on the way out, as before planes
existed; ``planes="rgb"`` (``--planes rgb``) asks for it on any source. Where the encoder
cannot take the layout or the range (an odd output size libx264 cannot subsample; ffv1
has no full range), ffmpeg converts at the encoder and the summary says so where it can
know (``VideoStats.notes``).

Frame times. Raw frames on a pipe carry no timestamps, and an encoder fed raw frames at
a fixed ``-r`` spaces them evenly, so a variable-frame-rate source (phones) drifts from
its sound. So both ends carry them:

- the decoder writes each frame's timestamp, in the stream's own time base
  (``-enc_time_base demux``), to a small text file as it hands the frame over
  (``-stats_enc_pre`` with ``{tb} {pts}``, flushed per frame, so the line of frame n is
  there when frame n has been read from the pipe);
- the encoder reads the upscaled frames as an IVF stream on its stdin: a 32-byte header
  (raw-video fourcc, size, time base) and a 12-byte header per frame (size, pts); ffmpeg's
  IVF demuxer takes the raw-video fourccs of the AVI table (I420, Y42B, I444, Y800), so
  no container has to be written beyond those two structs. ``-fps_mode passthrough``
  and ``-enc_time_base`` = the source's time base keep every timestamp as it is, and
  ``-itsoffset`` = the first frame's time keeps a video that starts after its audio
  where it was (ffmpeg would otherwise move each input's start to zero). The RGB path
  sends its R, G, B planes as an I444 frame that ``mergeplanes`` relabels as planar RGB
  and ``format=rgb24`` packs, so its encoder converts from the same rgb24 frames as
  before (no rgb24 fourcc exists in that table).

Both ends see times relative to the source file's start, the same reference in which
ffmpeg copies the audio, so picture and sound stay together (``copyts``: both ends keep
the file's own times instead, for segments of a longer video). This needs ffmpeg 6.1 or
newer (``-stats_enc_pre``; imageio-ffmpeg 0.8 ships 9.0). Constant-rate sources keep
their exact rate (NTSC fractions) this way too, since their timestamps are kept. IVF has
no frame rate field; the encoder's ffmpeg estimates it from the first frames (its
``-probesize`` covers 24 frames, or 3 to 24 within 256 MB for large ones), which is what
x264's level and Matroska's default duration use. Ways not taken: a fixed-rate pipe
(y4m, ``-r``) loses the times; a ``setpts`` expression or a second remux pass with a
timestamps list is unwieldy for thousands of frames; NUT or Matroska written by hand
would carry them too but need far more code than IVF's two structs; mkvmerge's timecode
files need a tool ffmpeg lacks; showinfo on the decoder's log would work but mixes the
times into the text that error messages are read from.

The pipeline (``upscale_video``): a decoder thread fills a bounded queue with frames, an
upscaler thread turns them into upscaled frames (``yuv.upscale_plane_stream``: ``batch``
frames per backend call, one call per plane shape) into a second bounded queue, and the
calling thread feeds the encoder. At most about ``4 * batch`` frames are in memory
whatever the length of the video. The output is written under a temporary name and
renamed at the end; on any error or interrupt both ffmpeg processes are killed and the
temporary file is removed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import re
import struct
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
# or -cq for NVIDIA's hardware encoders (--codec h264_nvenc frees the CPU on GPUs that have
# NVENC; the H100 and H200 have none).
CRF_CODECS = {"libx264": 51, "libx264rgb": 51, "libx265": 51, "libvpx-vp9": 63,
              "libaom-av1": 63, "libsvtav1": 63, "h264_nvenc": 51, "hevc_nvenc": 51,
              "av1_nvenc": 63}
# Demuxers of still images: ffmpeg reads them as one-frame videos, `iqlut upscale` is for them.
_IMAGE_DEMUXERS = re.compile(r"(_pipe|^image2|^apng$|^webp$)")


class VideoError(ValueError):
    """A video cannot be read or written; the message is one line that says why."""


MIN_FFMPEG = (6, 1)  # -stats_enc_pre (frame times from the decoder), -enc_time_base demux


@functools.lru_cache(maxsize=None)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped by imageio-ffmpeg (the ``video`` extra), or the one
    IMAGEIO_FFMPEG_EXE names; VideoError if there is none or it is older than 6.1."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise VideoError("video needs imageio-ffmpeg: pip install 'iqlut-gpu[video]'") from None
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
        version = imageio_ffmpeg.get_ffmpeg_version()
    except RuntimeError as e:
        raise VideoError(f"no ffmpeg binary found ({e})") from None
    m = re.match(r"n?(\d+)\.(\d+)", version or "")  # git builds ("N-11...") pass
    if m and (int(m.group(1)), int(m.group(2))) < MIN_FFMPEG:
        raise VideoError(f"video needs ffmpeg 6.1 or newer, {exe} is {version} "
                         "(pip install -U imageio-ffmpeg)")
    return exe


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
    pix_fmt: str | None = None      # ffmpeg's pixel format of the decoded frames
    color: tuple[tuple[str, str], ...] = field(default=())  # setparams options: range, ...
    sar: Fraction | None = None     # sample (pixel) aspect ratio, if the file says

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
    pix_fmt, color = _parse_pixels(line)
    sar = re.search(r"SAR (\d+):(\d+)", line)
    sar = Fraction(int(sar.group(1)), int(sar.group(2))) if sar and int(sar.group(2)) else None
    return VideoInfo(path, container, codec, width, height,
                     exact_rate(_parse_rate(rate.group(1), rate.group(2))), duration, audio, stream,
                     pix_fmt, color, sar or None)


# Colour names that ffmpeg prints in a stream's description and setparams takes.
_SPACES = {"gbr", "bt709", "fcc", "bt470bg", "smpte170m", "smpte240m", "ycgco", "ycgco-re",
           "ycgco-ro", "bt2020nc", "bt2020c", "smpte2085", "chroma-derived-nc",
           "chroma-derived-c", "ictcp", "ipt-c2"}
_PRIMARIES = {"bt709", "bt470m", "bt470bg", "smpte170m", "smpte240m", "film", "bt2020",
              "smpte428", "smpte431", "smpte432", "jedec-p22", "ebu3213"}
_TRANSFERS = {"bt709", "bt470m", "bt470bg", "smpte170m", "smpte240m", "linear", "log100",
              "log316", "iec61966-2-4", "bt1361e", "iec61966-2-1", "bt2020-10", "bt2020-12",
              "smpte2084", "smpte428", "arib-std-b67"}


def _parse_pixels(line: str):
    """The pixel format and the colour properties of a stream description such as
    ``h264 (High), yuv420p(tv, bt709, progressive), 1280x720 [SAR 1:1 DAR 16:9], ...``:
    ('yuv420p', (('range', 'tv'), ('colorspace', 'bt709'), ...)), as setparams options."""
    m = re.search(r", ([a-z][a-z0-9_]*)(?:\(([^)]*)\))?, \d{1,6}x\d{1,6}", line)
    if not m:
        return None, ()
    color = []
    for token in (m.group(2) or "").split(","):
        token = token.strip()
        if token in ("tv", "pc"):
            color.append(("range", token))
        elif token in _SPACES | _PRIMARIES | _TRANSFERS or token.count("/") == 2:
            space, prim, trc = token.split("/") if "/" in token else (token,) * 3
            for key, value, known in (("colorspace", space, _SPACES),
                                      ("color_primaries", prim, _PRIMARIES),
                                      ("color_trc", trc, _TRANSFERS)):
                if value in known:
                    color.append((key, value))
    return m.group(1), tuple(color)


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


@dataclass
class DecodedFrame:
    """One decoded frame: its raw bytes as ``data`` (uint8, 1-D), its ``planes`` (views of
    ``data`` in the layout asked for) and its time ``pts`` * ``time_base`` (seconds from
    the source file's start)."""

    data: np.ndarray
    planes: tuple[np.ndarray, ...]
    pts: int
    time_base: Fraction

    @property
    def time(self) -> Fraction:
        return self.pts * self.time_base


_NOPTS = -(2 ** 63)


class _Stamps:
    """Reads the decoder's timestamp file (``-stats_enc_pre``, one ``{tb} {pts}`` line per
    frame, flushed before the frame reaches the pipe) line by line as frames arrive.

    Timestamps are kept as they are, except that a missing one, or one not after the
    previous frame's, is set one frame interval (or one tick) after it: the encoder needs
    increasing times and every frame is kept."""

    def __init__(self, path: Path, proc: subprocess.Popen, name):
        self.path, self.proc, self.name = path, proc, name
        self.file = None
        self.partial = b""
        self.last = None
        self.step = 1
        self.repaired = 0

    def _line(self) -> bytes:
        deadline = None
        while True:
            if self.file is None and self.path.exists():
                self.file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
            if self.file is not None:
                self.partial += self.file.readline()
                if self.partial.endswith(b"\n"):
                    line, self.partial = self.partial, b""
                    return line
            # ffmpeg flushes the line before the frame goes out, so this is a short wait
            now = time.monotonic()
            deadline = deadline or now + (5.0 if self.proc.poll() is None else 0.5)
            if now > deadline:
                return b""
            time.sleep(0.001)

    def next(self, n: int) -> tuple[int, Fraction]:
        line = self._line().split()
        if len(line) != 2 or "/" not in line[0].decode():
            raise VideoError(f"{self.name}: ffmpeg gave no timestamp for frame {n + 1}")
        num, den = line[0].decode().split("/")
        tb = Fraction(int(num), int(den))
        try:
            pts = int(line[1])
        except ValueError:
            pts = _NOPTS
        if self.last is not None and (pts == _NOPTS or pts <= self.last):
            pts = self.last + (self.step if pts == _NOPTS else 1)
            self.repaired += 1
        elif pts == _NOPTS:
            pts = 0
        if self.last is not None:
            self.step = max(1, pts - self.last)
        self.last = pts
        return pts, tb

    def close(self):
        if self.file is not None:
            self.file.close()


def read_video(path, info: VideoInfo | None = None, source=None,
               stop: threading.Event | None = None, copyts: bool = False
               ) -> Iterator[DecodedFrame]:
    """Every frame of the video stream, in order, with its timestamp (``DecodedFrame``).

    ``source``: a ``yuv.SourceFormat`` (how to decode: ``yuv.source_format``); None reads
    RGB (rgb24 frames, planes R, G, B). Times count from the file's start, or with
    ``copyts`` are the file's own (ffmpeg's -copyts). Raises VideoError if ffmpeg fails,
    including at the end of the stream (corrupt data that stops the decoder). Closing the
    generator early kills the decoder.
    """
    import tempfile

    from .yuv import RGB24, SourceFormat

    info = info or probe(path)
    source = source or SourceFormat(RGB24, "rgb24")
    layout = source.layout
    w, h = info.width, info.height
    size = layout.frame_bytes(w, h)
    with tempfile.TemporaryDirectory(prefix="iqlut-pts-") as tmp:
        stamps_path = Path(tmp) / "pts.txt"
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
               *(["-copyts"] if copyts else []), "-i", str(path), "-map", f"0:v:{info.stream}",
               "-fps_mode", "passthrough", "-enc_time_base", "demux", "-an", "-sn", "-dn",
               "-f", "rawvideo", "-pix_fmt", source.decode_as, "-stats_enc_pre",
               f"file:{stamps_path}", "-stats_enc_pre_fmt", "{tb} {pts}", "-"]
        proc = _popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
        tail = _StderrTail(proc.stderr)
        stamps = _Stamps(stamps_path, proc, path)
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
                pts, tb = stamps.next(n)
                n += 1
                data = np.frombuffer(buf, np.uint8)
                yield DecodedFrame(data, layout.split(buf, w, h), pts, tb)
                if stop is not None and stop.is_set():
                    return
            if proc.wait() != 0:
                raise VideoError(f"{path}: decoding failed after {n} frames ({tail.reason()})")
            if n == 0:
                raise VideoError(f"{path}: no frames could be decoded ({tail.reason()})")
        finally:
            _kill(proc)
            stamps.close()
            with contextlib.suppress(Exception):
                proc.stdout.close()


def read_frames(path, info: VideoInfo | None = None, stop: threading.Event | None = None
                ) -> Iterator[np.ndarray]:
    """Every frame of the video stream as uint8 (H, W, 3) RGB, in order (``read_video``
    without the timestamps)."""
    info = info or probe(path)
    for frame in read_video(path, info, None, stop):
        yield frame.data.reshape(info.height, info.width, 3)


# --------------------------------------------------------------------------- encoding


@functools.lru_cache(maxsize=None)
def _encoder_help(codec: str) -> str:
    try:
        return subprocess.run([ffmpeg_exe(), "-hide_banner", "-h", f"encoder={codec}"],
                              capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def encoder_pix_fmts(codec: str) -> tuple[str, ...] | None:
    """The pixel formats ffmpeg's encoder ``codec`` takes, or None if it does not say
    (or is unknown: the encoder check then says so)."""
    m = re.search(r"Supported pixel formats:\s*(.*)", _encoder_help(codec))
    return tuple(m.group(1).split()) if m else None


def takes_yuv(codec: str) -> bool:
    """Whether the encoder takes some YUV or gray layout (libx264rgb, png: no)."""
    fmts = encoder_pix_fmts(codec)
    return fmts is None or any(f.startswith(("yuv", "gray", "nv")) for f in fmts)


def output_pix_fmt(layout, size, codec: str) -> str | None:
    """The pixel format the encoder is asked for.

    RGB path (as before planes existed): rgb24 for RGB encoders, yuv444p for ffv1, else
    yuv420p, or yuv444p where the size is odd (4:2:0 needs even sizes). Planes: the
    layout itself where the encoder takes it, else the nearest layout it takes (more
    chroma first), else None (ffmpeg picks)."""
    w, h = size
    if layout.rgb:
        if codec.endswith("rgb"):
            return "rgb24"
        if codec == "ffv1":
            return "yuv444p"
        return "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
    order = {"gray": ("gray", "yuv420p", "yuv444p"),
             "yuv420p": ("yuv420p", "yuv444p", "yuv422p"),
             "yuv422p": ("yuv422p", "yuv444p", "yuv420p"),
             "yuv444p": ("yuv444p", "yuv422p", "yuv420p")}[layout.name]
    fmts = encoder_pix_fmts(codec)
    if fmts is None:
        return order[0]
    return next((f for f in order if f in fmts), None)


def _encode_args(codec: str, crf: int | None, audio_from, pix_fmt: str | None,
                 preset: str | None = None) -> list:
    """ffmpeg arguments after the video input: audio input and mapping, video codec."""
    if preset is not None and not re.search(r"^\s*-preset\b", _encoder_help(codec), re.M):
        raise VideoError(f"--preset is not an option of the {codec} encoder")
    if crf is not None and codec not in CRF_CODECS:
        raise VideoError(f"--crf is not supported for codec {codec!r} "
                         f"(it is for {', '.join(sorted(CRF_CODECS))})")
    if crf is not None and not 0 <= crf <= CRF_CODECS[codec]:
        raise VideoError(f"crf must be 0..{CRF_CODECS[codec]} for {codec}, got {crf}")
    args = []
    if audio_from is not None:
        args += ["-i", str(audio_from), "-map", "0:v:0", "-map", "1:a?", "-c:a", "copy"]
    else:
        args += ["-map", "0:v:0"]
    args += ["-c:v", codec] + (["-pix_fmt", pix_fmt] if pix_fmt else [])
    if crf is not None:
        args += ["-cq" if codec.endswith("_nvenc") else "-crf", str(crf)]
        if codec == "libvpx-vp9":
            args += ["-b:v", "0"]  # constant quality mode
    if preset is not None:
        args += ["-preset", preset]
    return args


def check_encoder(dst, size, fps, *, codec: str = "libx264", crf: int | None = None,
                  audio_from=None, pix_fmt: str | None = None, layout=None, color=(),
                  sar: Fraction | None = None, preset: str | None = None) -> None:
    """Encode two frames the way ``VideoWriter`` will (same input, filters and options)
    into a scratch file of ``dst``'s kind.

    Catches an unknown container suffix, an unknown encoder, an encoder the container
    cannot hold, a layout or size the encoder refuses and audio that cannot be copied
    into the container, before anything is written (``upscale_video`` runs it while its
    first frames are decoded and upscaled).
    """
    import tempfile

    from .yuv import RGB24

    dst = Path(dst)
    layout = layout or RGB24
    w, h = size
    with tempfile.TemporaryDirectory(prefix="iqlut-check-") as tmp:
        scratch = Path(tmp) / ("check" + dst.suffix)
        writer = VideoWriter(scratch, size, fps, codec=codec, crf=crf, audio_from=audio_from,
                             pix_fmt=pix_fmt, layout=layout, color=color, sar=sar, name=dst,
                             preset=preset)
        try:
            blank = tuple(np.full(s, 128, np.uint8) for s in layout.shapes(w, h))
            for _ in range(2):
                writer.write(blank)
            writer.close()
        except VideoError as e:
            writer.abort()
            why = (writer.failure or str(e)).replace(str(scratch), str(dst))
            what = f"{codec} video" + (f" with {audio_from}'s audio copied" if audio_from else "")
            raise VideoError(f"{dst}: cannot encode {what} for a "
                             f"{dst.suffix or 'suffix-less'} file ({why})") from None


IVF_MAX_SIDE = 65535


class VideoWriter:
    """Encode frames to ``path`` with ffmpeg, each at its own time; optionally copy audio.

    ``layout``: a ``yuv.PlaneFormat`` (default RGB: (H, W, 3) uint8 frames, or their R, G,
    B planes); frames are given to ``write`` as a tuple of planes in that layout (for RGB
    also as one (H, W, 3) array). ``time_base``: the unit of ``write``'s ``pts`` (default
    1/fps, and pts counting frames). ``pix_fmt``: what the encoder is asked for
    (``output_pix_fmt``, the default). ``color``: (setparams option, value) pairs to tag
    the frames with (the source's range, matrix, primaries, transfer); ``sar``: the
    sample aspect ratio. ``audio_from``: a file whose audio streams are copied unchanged
    (``-c:a copy``). ffmpeg starts with the first frame (the first time is an input
    offset; with ``copyts`` the times are written as they are, as ffmpeg's -copyts, and the
    audio keeps the file's own times too). ``close()`` waits for ffmpeg and raises
    VideoError if it failed; ``abort()``
    kills it. ``name``: how messages call the file (the final name when ``path`` is
    temporary).
    """

    def __init__(self, path, size: tuple[int, int], fps: Fraction, *, codec: str = "libx264",
                 crf: int | None = None, audio_from=None, pix_fmt: str | None = None,
                 name=None, layout=None, time_base: Fraction | None = None, color=(),
                 sar: Fraction | None = None, copyts: bool = False, preset: str | None = None):
        from .yuv import RGB24

        self.path, self.size = Path(path), tuple(size)
        self.name = name or self.path
        self.layout = layout or RGB24
        w, h = size
        if max(w, h) > IVF_MAX_SIDE:
            raise VideoError(f"{self.name}: frames of {w}x{h} are too large to encode "
                             f"(at most {IVF_MAX_SIDE} pixels a side)")
        self.time_base = Fraction(time_base) if time_base is not None else 1 / Fraction(fps)
        self.shapes = self.layout.shapes(w, h)
        self.frame_bytes = self.layout.frame_bytes(w, h)
        if pix_fmt is None:
            pix_fmt = output_pix_fmt(self.layout, size, codec)
        filters = []
        if self.layout.rgb:  # planes R, G, B -> gbrp (G, B, R) -> rgb24, the old input
            filters += ["mergeplanes=format=gbrp:map0p=1:map1p=2:map2p=0", "format=rgb24"]
        else:
            if color:
                filters.append("setparams=" + ":".join(f"{k}={v}" for k, v in color))
        if sar:
            filters.append(f"setsar={sar.numerator}/{sar.denominator}")
        # the encoder's ffmpeg estimates a frame rate from the first frames: let it see a
        # few (IVF has no rate field), with bounded memory
        probe_frames = min(24, max(3, (256 << 20) // max(1, self.frame_bytes)))
        self._input = ["-probesize", str(probe_frames * (self.frame_bytes + 12) + 32),
                       "-f", "ivf", "-i", "pipe:0"]
        tb = self.time_base
        self._output = (_encode_args(codec, crf, audio_from, pix_fmt, preset)
                        + (["-vf", ",".join(filters)] if filters else [])
                        + ["-fps_mode", "passthrough",
                           "-enc_time_base", f"{tb.numerator}:{tb.denominator}", str(self.path)])
        self.copyts = copyts
        self.frames = 0
        self._last_pts = None
        self._proc = None
        self._tail = None
        self.failure = None

    def _start(self, first_pts: int) -> None:
        offset = first_pts * self.time_base
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
        if self.copyts:  # every input's times as they are
            cmd += ["-copyts"]
        elif offset:  # ffmpeg moves an input's start to 0: put the video back where it was
            cmd += ["-itsoffset", f"{float(offset):.6f}"]
        cmd += self._input + self._output
        self._proc = _popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
        self._tail = _StderrTail(self._proc.stderr)
        w, h = self.size
        tb = self.time_base
        self._send(b"DKIF" + struct.pack("<HH4sHHIIII", 0, 32, self.layout.fourcc, w, h,
                                         tb.denominator, tb.numerator, 0, 0))

    def _send(self, data) -> None:
        try:
            self._proc.stdin.write(data)
        except (BrokenPipeError, ValueError, OSError):
            self._proc.wait()
            self._fail()

    def _fail(self):
        self.failure = self._tail.reason()
        raise VideoError(f"{self.name}: encoding failed ({self.failure})") from None

    def write(self, frame, pts: int | None = None) -> None:
        """Encode ``frame`` (a tuple of planes in the writer's layout, or for RGB an
        (H, W, 3) array) at time ``pts`` * ``time_base`` (default: the next frame slot)."""
        w, h = self.size
        if isinstance(frame, np.ndarray) and self.layout.rgb:
            if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
                raise ValueError(f"frame must be uint8 {(h, w, 3)}, got {frame.dtype} "
                                 f"{frame.shape}")
            frame = tuple(frame[:, :, k] for k in range(3))
        planes = tuple(frame)
        if len(planes) != len(self.shapes) or any(
                p.shape != s or p.dtype != np.uint8 for p, s in zip(planes, self.shapes)):
            got = [(str(p.dtype), p.shape) for p in planes]
            raise ValueError(f"frame must be uint8 planes {list(self.shapes)}, got {got}")
        pts = self.frames if pts is None else int(pts)
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"frame times must increase: {pts} after {self._last_pts}")
        if self._proc is None:
            self._start(pts)
        self._send(struct.pack("<Iq", self.frame_bytes, pts))
        for p in planes:
            self._send(memoryview(np.ascontiguousarray(p)).cast("B"))
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        if self._proc is None:
            raise VideoError(f"{self.name}: no frames to encode")
        with contextlib.suppress(BrokenPipeError, OSError):
            self._proc.stdin.close()
        if self._proc.wait() != 0:
            self._fail()

    def abort(self) -> None:
        if self._proc is None:
            return
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
    """What one ``upscale_video`` call did and how long each stage was busy (seconds).

    ``planes``: the layout the frames went through ("yuv420p", "yuv422p", "yuv444p",
    "gray" or "rgb24"); ``planes_reason``: why a source went through RGB (None if it went
    as its planes); ``notes``: conversions ffmpeg made that the user should know of;
    ``time_base``: the unit of the source's timestamps, which the output keeps;
    ``variable_rate``: whether the frame intervals varied by more than a tick;
    ``encode_tail``: seconds from the last frame handed to the encoder to the finished
    file (the encoder's look-ahead frames, coded only then)."""

    frames: int = 0
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)  # decode, upload, kernels, download, encode
    info: VideoInfo | None = None
    output_size: tuple[int, int] | None = None
    backend: str = ""
    planes: str = ""
    planes_reason: str | None = None
    output_pix_fmt: str | None = None
    notes: list = field(default_factory=list)
    time_base: Fraction | None = None
    variable_rate: bool = False
    encode_tail: float = 0.0  # from the last frame handed over to the finished file

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


def plan_layout(info: VideoInfo, planes: str, codec: str):
    """The ``yuv.SourceFormat`` for ``info``'s video under ``planes`` ("auto", "yuv" or
    "rgb"), given the encoder ``codec``: auto takes 8-bit YUV and gray as planes unless
    the encoder takes RGB only. Raises VideoError for "yuv" on a source that cannot."""
    from .yuv import RGB24, SourceFormat, source_format

    try:
        source = source_format(info.pix_fmt, planes)
    except ValueError as e:
        raise VideoError(f"{info.path}: {e}") from None
    if planes == "auto" and not source.layout.rgb and not takes_yuv(codec):
        source = SourceFormat(RGB24, "rgb24", None, f"the {codec} encoder takes RGB only")
    return source


def _encoder_options(info: VideoInfo, source, codec: str, crf, preset, audio_from) -> dict:
    """``VideoWriter``'s options for the upscaled frames of ``info``'s video decoded as
    ``source`` (a ``yuv.SourceFormat``): YUV planes keep the source's range and colour tags."""
    layout = source.layout
    color = ()
    if not layout.rgb:
        color = info.color
        if source.range and "range" not in dict(color):
            color = (("range", source.range),) + color
    return dict(codec=codec, crf=crf, audio_from=audio_from, layout=layout, color=color,
                sar=info.sar, preset=preset)


def check_output(dst, info: VideoInfo, source, out_size, *, codec: str, crf=None,
                 preset: str | None = None, audio_from=None) -> tuple[str | None, list[str]]:
    """The pixel format the encoder gets for ``info``'s video decoded as ``source`` and
    upscaled to ``out_size``, tried first by a two-frame encode into a file of ``dst``'s
    kind (``check_encoder``: 0.1-0.3 s); and what ffmpeg will convert, as notes. Raises
    VideoError if the encoder or the container cannot."""
    layout = source.layout
    enc = _encoder_options(info, source, codec, crf, preset, audio_from)
    pix_fmt, notes = output_pix_fmt(layout, out_size, codec), []
    try:
        check_encoder(dst, out_size, info.fps, pix_fmt=pix_fmt, **enc)
    except VideoError:
        # an odd output size (x3 of an odd-sized 4:2:0 source) that the encoder cannot
        # code subsampled: give it 4:4:4, as the RGB path does for odd sizes
        if layout.rgb or layout.fits(*out_size) or pix_fmt == "yuv444p":
            raise
        pix_fmt = "yuv444p"
        check_encoder(dst, out_size, info.fps, pix_fmt=pix_fmt, **enc)
        notes.append(f"{out_size[0]}x{out_size[1]} cannot be coded {layout.chroma} "
                     f"by {codec}")
    if not layout.rgb and pix_fmt != layout.name:
        notes.append(f"the encoder gets {pix_fmt or 'its own format'} (ffmpeg converts)")
    return pix_fmt, notes


@dataclass(frozen=True)
class Prechecked:
    """What ``upscale_video`` finds out before its work, found out once by a caller that
    runs it on parts of one video (the cluster's segments, cut by stream copy) and passed
    on (``upscale_video(..., prechecked=)``), so that each part skips the probe, the
    layout choice and the test encode: ``info``, the source's ``VideoInfo`` for this part
    (its path, stream 0, no audio); ``source``, ``plan_layout``'s ``yuv.SourceFormat``;
    ``pix_fmt`` and ``notes``, what ``check_output`` gave for the part's container."""

    info: VideoInfo
    source: object
    pix_fmt: str | None
    notes: tuple[str, ...] = ()


def upscale_video(src, dst, scale: int = 4, *, model=None, backend: str = "auto",
                  mode: str = "auto", ensemble: int | None = None, upscaler=None,
                  batch: int = 4, codec: str | None = None, crf: int | None = None,
                  overwrite: bool = False, progress=None, queue_batches: int = 2,
                  planes: str = "auto", copyts: bool = False,
                  preset: str | None = None, prechecked: Prechecked | None = None,
                  flushing=None) -> VideoStats:
    """Upscale the video ``src`` into ``dst``: every frame at its own time, audio copied.

    The output has the source's frame count and frame times (so its rate, NTSC fractions
    and variable rates included), relative to the source file's start as ffmpeg counts
    them; with ``copyts``, the file's own times, unshifted (ffmpeg's -copyts: for segments
    cut from a longer video, to be joined by their times). ``planes``: "auto" (8-bit YUV
    and gray video as their own planes, the rest as
    RGB), "yuv" (planes, or VideoError for a source that is not 8-bit YUV/gray) or "rgb"
    (convert to RGB and back, as before planes existed). ``codec``, ``crf``, ``preset``:
    the encoder (default libx264), its constant quality (default 18 where it has one) and
    its speed preset (default: the encoder's own). What runs is ``upscaler`` (an
    ``iqlut_gpu.Upscaler``), or one built from ``scale``, ``model``, ``backend``, ``mode``
    and ``ensemble`` (as for ``iqlut_gpu.upscale``). ``progress``: None, or a callable
    ``progress(n_frames_done)`` called from the calling thread after each encoded frame.
    ``batch`` frames go to the backend in one call per plane shape; ``queue_batches``
    batches may wait between stages. ``prechecked``: a ``Prechecked`` for ``src`` (with
    ``codec``, ``crf``, ``planes`` and ``dst``'s kind as given here): no probe, no test
    encode. ``flushing``: None, or a callable called once from the calling thread when the
    last frame has gone to the encoder, before waiting for the encoder to finish.
    Raises VideoError (a ValueError) for unreadable input
    or a failed encode; on any exception (KeyboardInterrupt included) ``dst`` is left
    untouched and no temporary file remains.
    """
    from .frames import check_batch
    from .io import atomic_path
    from .upscaler import Upscaler
    from .yuv import crop_planes, upscale_plane_stream

    src, dst = Path(src), Path(dst)
    batch = check_batch(batch)
    if upscaler is None:
        upscaler = Upscaler(scale, model=model, backend=backend, mode=mode, ensemble=ensemble)
    elif model is not None or backend != "auto" or mode != "auto" or ensemble is not None:
        raise TypeError("give model, backend, mode and ensemble to the Upscaler, not here")
    info = prechecked.info if prechecked else probe(src)
    check_output_path(src, dst, overwrite)
    codec = codec or "libx264"
    if crf is None and codec in CRF_CODECS:
        crf = DEFAULT_CRF
    source = prechecked.source if prechecked else plan_layout(info, planes, codec)
    layout = source.layout
    r = upscaler.scale
    out_size = (info.width * r, info.height * r)
    audio_from = src if info.audio else None
    enc = _encoder_options(info, source, codec, crf, preset, audio_from)
    stats = VideoStats(info=info, output_size=out_size, backend=upscaler.backend,
                       planes=layout.name, planes_reason=source.reason,
                       stages={"decode": 0.0, "upload": 0.0, "kernels": 0.0, "download": 0.0,
                               "encode": 0.0})

    def checked_pix_fmt() -> str | None:
        """The format the encoder gets (``check_output``'s test encode runs while the first
        frames are decoded and upscaled); what ffmpeg will convert goes into
        ``stats.notes``."""
        if prechecked:
            pix_fmt, notes = prechecked.pix_fmt, prechecked.notes
        else:
            pix_fmt, notes = check_output(dst, info, source, out_size, codec=codec, crf=crf,
                                          preset=preset, audio_from=audio_from)
        stats.notes.extend(notes)
        return pix_fmt

    shapes = layout.shapes(*out_size)  # the output frame's own planes (yuv.crop_planes)
    depth = max(1, queue_batches) * batch
    decoded: queue.Queue = queue.Queue(maxsize=depth)
    upscaled: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    t_start = time.perf_counter()

    def decode():
        frames = read_video(src, info, source, stop, copyts)
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
        times = deque()  # (pts, time base) of the frames read ahead, in order

        def planes_in():
            for frame in _drain(decoded, stop):
                times.append((frame.pts, frame.time_base))
                yield frame.planes

        for out in upscale_plane_stream(upscaler, planes_in(), batch, stats.stages, layout.rgb):
            yield out, *times.popleft()

    threads = []
    writer = None
    try:
        with atomic_path(dst) as tmp:
            try:  # ffmpeg must be dead before atomic_path removes the temporary file
                threads.append(_stage(decode, decoded, stop, "iqlut-decode"))
                threads.append(_stage(upscale, upscaled, stop, "iqlut-upscale"))
                pix_fmt = stats.output_pix_fmt = checked_pix_fmt()  # nothing written before
                step = last = None
                for out, pts, tb in _drain(upscaled, stop):
                    t0 = time.perf_counter()
                    if writer is None:
                        writer = VideoWriter(tmp, out_size, info.fps, pix_fmt=pix_fmt,
                                             time_base=tb, name=dst, copyts=copyts, **enc)
                        stats.time_base = tb
                    elif step is None:
                        step = pts - last
                    elif abs(pts - last - step) > 1:
                        stats.variable_rate = True
                    last = pts
                    writer.write(crop_planes(out, shapes), pts)
                    stats.stages["encode"] += time.perf_counter() - t0
                    stats.frames += 1
                    if progress is not None:
                        progress(stats.frames)
                t0 = time.perf_counter()
                if writer is None:
                    raise VideoError(f"{src}: no frames could be decoded")
                if flushing is not None:
                    flushing()
                writer.close()
                stats.encode_tail = time.perf_counter() - t0
                stats.stages["encode"] += stats.encode_tail
            except BaseException:
                stop.set()
                if writer is not None:
                    writer.abort()
                raise
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=0.5)
    stats.seconds = time.perf_counter() - t_start
    return stats
