"""Video frames in their own planes: pixel formats, plane shapes, chroma crop, batching.

A video frame is a few 8-bit planes (docs/design.md, "Planes and codes"): a 4:2:0 frame
is a luma plane Y (H, W) and two chroma planes U, V (ceil(H/2), ceil(W/2)). Each plane
goes through the model at its own size, so a 4:2:0 frame costs 1.5 planes of work where
its RGB conversion costs 3, and no colour conversion happens on the way in or out.

``PlaneFormat`` describes the raw layout that the video pipes carry (``iqlut_gpu.video``);
``source_format`` decides, from a source's ffmpeg pixel format, whether it can be taken
as planes and how (the decision table is ``SOURCES``, its reasons are shown to users);
``upscale_plane_stream`` runs a stream of frames given as tuples of planes through an
``Upscaler``: the planes of several frames are stacked per plane shape, so a batch of N
4:2:0 frames is two backend calls (N luma planes, 2N chroma planes) whatever N is.

Chroma of odd-sized frames. ffmpeg's chroma planes are ceil(W / 2**sx) x ceil(H / 2**sy)
(``sx``, ``sy``: log2 of the subsampling; 1, 1 for 4:2:0). Upscaled by r, a chroma plane
is r*ceil(W/2) wide, which is the right grid for the r*W wide luma (chroma sample k still
covers luma columns 2k, 2k+1 of the output) but can be wider than the ceil(r*W/2) samples
the output frame holds: W = 65, r = 3 gives 99 upscaled chroma columns for 98 needed.
The extra samples lie wholly outside the picture (they come from the half-covered last
source column), so they are cropped at the right and bottom (``crop_planes``); nothing
is resampled. With r = 2 or 4, or even sizes, nothing is cropped at all.

Chroma siting: the model treats every plane as pixels with centres at (k + 1/2); chroma
sited between luma samples (JPEG, MPEG-1; vertically in MPEG-2/H.264 4:2:0) keeps its
place exactly, while chroma co-sited with the left luma column (H.264/HEVC's default
horizontally) ends up (r-1)/(2r) source pixels (1/4 px at x2, 3/8 at x4) to the left of
where a resampler that honours the siting would put it. That is below what the eye sees
in chroma and is the price of not resampling.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .frames import add_stage_times, check_batch, make_runner
from .planes import Layout


@dataclass(frozen=True)
class PlaneFormat:
    """A raw frame layout on the video pipes: ``planes`` planes of 8-bit samples.

    ``name``: the ffmpeg pixel format of the layout. ``sx``, ``sy``: log2 of the chroma
    subsampling (0, 0 for 4:4:4 and RGB). ``fourcc``: the raw-video tag the encoder's
    input container (IVF) names the layout with. ``rgb``: the planes are R, G, B, taken
    from packed rgb24 frames (the RGB path), not Y, U, V.
    """

    name: str
    planes: int
    sx: int = 0
    sy: int = 0
    fourcc: bytes = b""
    rgb: bool = False

    def shapes(self, width: int, height: int) -> tuple[tuple[int, int], ...]:
        """(rows, columns) of each plane of a ``width`` x ``height`` frame."""
        luma = (height, width)
        if self.planes == 1 or self.rgb or (self.sx, self.sy) == (0, 0):
            return (luma,) * self.planes
        chroma = (-(-height >> self.sy), -(-width >> self.sx))
        return (luma, chroma, chroma)

    def frame_bytes(self, width: int, height: int) -> int:
        return sum(h * w for h, w in self.shapes(width, height))

    def fits(self, width: int, height: int) -> bool:
        """Whether the frame size is a multiple of the chroma subsampling (what most
        encoders need: libx264 cannot code a 4:2:0 frame of odd width or height)."""
        return width % (1 << self.sx) == 0 and height % (1 << self.sy) == 0

    def split(self, buf, width: int, height: int) -> tuple[np.ndarray, ...]:
        """The planes of one raw frame in ``buf`` (bytes-like), as views (no copy)."""
        data = np.frombuffer(buf, np.uint8)
        if self.rgb:  # packed rgb24 as the decoder writes it: R, G, B are strided views
            frame = data.reshape(height, width, 3)
            return tuple(frame[:, :, k] for k in range(3))
        out, at = [], 0
        for h, w in self.shapes(width, height):
            out.append(data[at:at + h * w].reshape(h, w))
            at += h * w
        return tuple(out)

    @property
    def chroma(self) -> str:
        """'4:2:0', '4:2:2', '4:4:4' or 'gray', for messages."""
        if self.planes == 1:
            return "gray"
        return {(1, 1): "4:2:0", (1, 0): "4:2:2", (0, 0): "4:4:4"}.get((self.sx, self.sy), "?")


YUV420 = PlaneFormat("yuv420p", 3, 1, 1, b"I420")
YUV422 = PlaneFormat("yuv422p", 3, 1, 0, b"Y42B")
YUV444 = PlaneFormat("yuv444p", 3, 0, 0, b"I444")
GRAY = PlaneFormat("gray", 1, 0, 0, b"Y800")
# The RGB path: packed rgb24 from the decoder; to the encoder as three planes in an I444
# frame that ffmpeg's mergeplanes filter relabels as planar RGB (a copy, no arithmetic).
RGB24 = PlaneFormat("rgb24", 3, 0, 0, b"I444", rgb=True)

# Source pixel formats taken as planes: source -> (layout, range the name implies).
# The yuvj names are the full-range variants (same bytes; MJPEG, some phones); the
# semi-planar and packed ones are decoded to their planar layout, a lossless reordering.
SOURCES = {
    "yuv420p": (YUV420, None), "yuvj420p": (YUV420, "pc"), "nv12": (YUV420, None),
    "nv21": (YUV420, None),
    "yuv422p": (YUV422, None), "yuvj422p": (YUV422, "pc"), "nv16": (YUV422, None),
    "yuyv422": (YUV422, None), "uyvy422": (YUV422, None), "yvyu422": (YUV422, None),
    "yuv444p": (YUV444, None), "yuvj444p": (YUV444, "pc"), "nv24": (YUV444, None),
    "nv42": (YUV444, None),
    "gray": (GRAY, None),
}
PLANES_CHOICES = ("auto", "yuv", "rgb")
# Decoded in their own name (no conversion at all); the others as the planar layout.
_NATIVE = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "gray"}


@dataclass(frozen=True)
class SourceFormat:
    """How a source is read: ``layout`` on the pipes, ``decode_as`` the pixel format asked
    of the decoder, ``range`` 'pc'/'tv'/None implied by the format's name, ``reason`` why
    "auto" did not take a source as planes (None when it did, or RGB was asked for)."""

    layout: PlaneFormat
    decode_as: str
    range: str | None = None
    reason: str | None = None


def why_not_planes(pix_fmt: str | None) -> str | None:
    """None if ``pix_fmt`` is an 8-bit YUV or gray layout taken as planes; else a short
    reason (shown to users) why it goes through RGB."""
    if pix_fmt in SOURCES:
        return None
    if not pix_fmt or pix_fmt == "none":
        return "its pixel format is unknown"
    if re.match(r"(rgb|bgr|gbr|argb|abgr|rgba|bgra|0rgb|0bgr|pal8|x2rgb|x2bgr)", pix_fmt):
        return f"{pix_fmt} is RGB"
    if pix_fmt.startswith(("yuva", "ya")):
        return f"{pix_fmt} has an alpha plane (dropped either way)"
    if re.search(r"p0\d\d|\d+(le|be)$|^(v210|v410|y210|y212|xv3\d)", pix_fmt):
        return f"{pix_fmt} has more than 8 bits per sample (the models are 8-bit)"
    if pix_fmt.startswith(("yuv411", "yuvj411", "yuv410", "yuv440", "yuvj440", "uyyvyy411")):
        return f"{pix_fmt} is a chroma layout the encoders rarely take"
    return f"{pix_fmt} is not an 8-bit YUV layout"


def source_format(pix_fmt: str | None, planes: str = "auto") -> SourceFormat:
    """How to read a source of ffmpeg pixel format ``pix_fmt`` with ``--planes planes``.

    "auto": as its planes if it is 8-bit YUV (4:2:0, 4:2:2, 4:4:4) or gray, else as RGB
    (``reason`` says why); "yuv": as its planes, or ValueError with the reason; "rgb":
    as RGB (the decoder converts to rgb24, as before planes existed).
    """
    if planes not in PLANES_CHOICES:
        raise ValueError(f"planes must be one of {PLANES_CHOICES}, got {planes!r}")
    reason = why_not_planes(pix_fmt)
    if planes == "rgb":
        return SourceFormat(RGB24, "rgb24")
    if reason is not None:
        if planes == "yuv":
            raise ValueError(f"--planes yuv needs 8-bit YUV or gray video, and {reason}; "
                             "use --planes rgb (or auto)")
        return SourceFormat(RGB24, "rgb24", None, reason)
    layout, rng = SOURCES[pix_fmt]
    return SourceFormat(layout, pix_fmt if pix_fmt in _NATIVE else layout.name, rng)


def crop_planes(planes, shapes) -> tuple[np.ndarray, ...]:
    """Each plane cut to its shape in ``shapes`` at the right and bottom (views): the
    output frame's own planes, ``layout.shapes`` of the r times larger frame (chroma
    ceil(r*W / 2**sx), not r * ceil(W / 2**sx); see the module doc)."""
    out = []
    for p, (h, w) in zip(planes, shapes):
        if p.shape[0] < h or p.shape[1] < w:
            raise ValueError(f"plane {p.shape} is smaller than the output's {(h, w)}")
        out.append(p[:h, :w])
    return tuple(out)


# --------------------------------------------------------------------------- batching


def _check_planes(item, index: int) -> tuple[np.ndarray, ...]:
    if isinstance(item, np.ndarray):
        item = (item,)
    planes = tuple(item)
    if not planes:
        raise ValueError(f"frame {index} has no planes")
    for p in planes:
        if not isinstance(p, np.ndarray) or p.dtype != np.uint8 or p.ndim != 2 or 0 in p.shape:
            what = f"{p.dtype} {p.shape}" if isinstance(p, np.ndarray) else type(p).__name__
            raise ValueError(f"frame {index}: planes must be non-empty uint8 (H, W) arrays, "
                             f"got {what}")
    return planes


def upscale_plane_stream(upscaler, frames: Iterable, batch: int | None = None,
                         stats: dict | None = None, rgb: bool = False
                         ) -> Iterator[tuple[np.ndarray, ...]]:
    """Each frame of ``frames`` (tuples of uint8 (H, W) planes, any shapes) upscaled by
    ``upscaler`` (an ``Upscaler``), in order, as a tuple of planes r times larger.

    Consecutive frames with the same plane shapes are batched, up to ``batch`` frames
    (default 4); in a batch, all planes of one shape go to the backend in one call (the
    luma planes together, the chroma planes together). Each output plane equals
    ``upscaler(plane)`` bit for bit. ``rgb``: the planes are each frame's R, G, B, so an
    Upscaler in luma mode converts them (``Upscaler.run_layout``); otherwise (Y, U, V or
    gray) every plane goes through the model as it is, except that in luma mode the
    chroma planes (all but the first) get the bicubic base (``Upscaler.bicubic``), as
    ``iqlut_gpu.color`` does for converted RGB. Lazy, with at most one batch read
    ahead (two on a runner that keeps batches in flight, ``iqlut_gpu.frames``). ``stats``:
    seconds spent in "upload" (stacking planes, and host to device on a GPU), "kernels"
    and "download" are added to it. Output planes may be views into a batch's result.
    """
    batch = check_batch(batch)
    chroma = upscaler.bicubic if upscaler.bicubic is not None and not rgb else None
    return generate_planes(lambda: make_runner(upscaler), iter(frames), batch, stats, rgb,
                           chroma)


def generate_planes(new_runner, frames, batch: int, stats=None, rgb: bool = False,
                    chroma=None):
    """The batching loop of ``upscale_plane_stream`` over the runner ``new_runner()``
    (``iqlut_gpu.frames.SyncRunner`` or ``StreamRunner``), made when the first frame is
    asked for. A runner that ``takes_frames`` (the CUDA streamer splits and joins frames
    on its device) gets a group's planes as one-channel frames [P, H, W, 1]. ``chroma``:
    None, or an Upscaler that runs the planes after the first of each frame (synchronously:
    the bicubic base is a small part of the work)."""
    runner = new_runner()
    takes_frames = getattr(runner, "takes_frames", False)
    before = dict(runner.timings)
    # submitted: (batch id, group, token) in order; batches: id -> [frames, groups, results],
    # a group being (plane shape, [(frame, plane index), ...]): one backend call
    submitted: deque = deque()
    batches: dict = {}
    pending: list = []
    next_id = 0

    def add(key, seconds):
        if stats is not None:
            stats[key] = stats.get(key, 0.0) + seconds

    def collect_one():
        bid, g, token = submitted.popleft()
        out = runner.collect(token)
        t0 = time.perf_counter()
        if takes_frames:
            out = out[..., 0]
        if runner.reused(out):
            out = np.array(out)  # the runner overwrites its buffer on a later submit
        batches[bid][2][g] = out
        add("download", time.perf_counter() - t0)
        if stats is not None:
            add_stage_times(stats, runner, before)

    def ready(bid):
        return all(r is not None for r in batches[bid][2])

    def emit(bid):
        count, groups, results = batches.pop(bid)
        per_frame = sum(len(idx) for _, idx in groups) // count
        outs = [[None] * per_frame for _ in range(count)]
        for (_, idx), res in zip(groups, results):
            for j, (f, k) in enumerate(idx):
                outs[f][k] = res[j]
        return [tuple(o) for o in outs]

    def submit():
        nonlocal next_id
        bid, next_id = next_id, next_id + 1
        shapes = [p.shape for p in pending[0]]
        groups: dict = {}
        for k, s in enumerate(shapes):  # one call per shape (and, with chroma, per kind)
            groups.setdefault((s, chroma is not None and k > 0), []).append(k)
        order = []
        for key, ks in groups.items():
            order.append((key, [(f, k) for f in range(len(pending)) for k in ks]))
        batches[bid] = [len(pending), order, [None] * len(order)]
        for g, ((_, is_chroma), idx) in enumerate(order):
            t0 = time.perf_counter()
            stack = np.stack([pending[f][k] for f, k in idx])
            add("upload", time.perf_counter() - t0)
            if is_chroma:
                t0 = time.perf_counter()
                batches[bid][2][g] = chroma.run_planes(stack)
                add("kernels", time.perf_counter() - t0)
                continue
            while len(submitted) >= runner.depth:  # a runner holds at most `depth` calls
                collect_one()
            if takes_frames:
                token = runner.submit(stack[..., None])
            else:  # RGB frames as frames of 3 channels (luma mode), the rest plane by plane
                n = len(pending)
                layout = Layout(4, n, 3) if rgb else Layout(4, len(idx), 1)
                token = runner.submit(stack, layout)
            submitted.append((bid, g, token))
        pending.clear()

    def drain(keep_running: bool):
        """Collect until at most depth-1 calls run (or none), handing out whole batches."""
        limit = runner.depth - 1 if keep_running else 0
        while len(submitted) > limit:
            collect_one()
        out = []
        while batches and ready(min(batches)):
            out.extend(emit(min(batches)))
        return out

    index = 0
    for item in frames:
        planes = _check_planes(item, index)
        index += 1
        if pending and [p.shape for p in planes] != [p.shape for p in pending[0]]:
            submit()
        pending.append(planes)
        if len(pending) == batch:
            submit()
        yield from drain(keep_running=True)
    if pending:
        submit()
    yield from drain(keep_running=False)
