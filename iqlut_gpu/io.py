"""Still-image I/O and safe file writing.

Reading decides what is converted and what is refused (README, "Input images"):

- 8-bit gray (L), RGB and RGBA are read as they are;
- palette (P) becomes RGB or RGBA (if it has transparency), LA becomes RGBA, CMYK and
  YCbCr become RGB, 1-bit becomes gray;
- 16-bit and 32-bit integer images (I;16, I) are scaled to 8 bits with rounding
  (65535 -> 255); float images (F) are refused;
- EXIF orientation is applied, so the output is upright;
- images whose header declares more than ``MAX_PIXELS`` are refused before decoding
  (decompression bombs).

Every write goes to a temporary file in the destination folder and is renamed into
place, so no half-written output ever appears under the final name. The temporary name is
hidden and says whose it is (``.out.png.XXXX.iqlut-HOST-PID.part.png``): a process killed
before its rename (SIGKILL, a lost machine) leaves one behind, and the first write of a later
process into that folder removes it once no process PID runs on HOST any more
(``remove_stale_parts``); temporaries of other hosts, of live processes and of other tools
are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

# 67 M pixels (8192 x 8192): anything declared larger is refused before decoding; its
# output would be r*r times larger still (3.2 GB for RGB at x4).
MAX_PIXELS = 1 << 26
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                  ".pgm", ".pnm", ".tga")


class ImageError(ValueError):
    """An input image cannot be read or an output cannot be written; one line says why."""


# A hidden temporary of ours: ".NAME.RANDOM.iqlut-HOST-PID.part[.EXT]" (a file of
# atomic_path, or a folder of iqlut_gpu.cluster's segmented video).
_PART = re.compile(r"^\..+\.iqlut-(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.part(\.[A-Za-z0-9_]+)?$")
_swept: set = set()  # folders this process has already cleared of stale temporaries
_swept_lock = threading.Lock()


def _host() -> str:
    """This machine's name as it appears in temporary names (letters, digits, '-', '_')."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "localhost"


def part_marker() -> str:
    """What names a temporary file as this process's: ``.iqlut-HOST-PID`` (before ``.part``)."""
    return f".iqlut-{_host()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def remove_stale_parts(folder) -> list[Path]:
    """Remove the hidden temporaries of ``folder`` that a process of this host left when it
    died (its PID no longer runs); return what was removed. Temporaries of other hosts, of
    live processes and names of other tools are left alone; errors are ignored."""
    removed, host = [], _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _PART.match(entry.name)
        if not m or m["host"] != host or _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def sweep_once(folder: Path) -> None:
    """``remove_stale_parts(folder)`` the first time this process writes into it."""
    key = (os.getpid(), os.path.abspath(folder))
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    remove_stale_parts(folder)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The temporary name is hidden, names its owner and keeps the suffix
    (``.out.png.XXXX.iqlut-HOST-PID.part.png``) so tools that pick a format from the name
    still work. On any exception (KeyboardInterrupt included) the temporary file is removed
    and the destination is untouched; the first call for a folder also removes the stale
    temporaries that dead processes of this host left there (``remove_stale_parts``).
    """
    path = Path(path)
    sweep_once(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.",
                               suffix=f"{part_marker()}.part{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _to_uint8(img) -> np.ndarray:
    """A decoded Pillow image in any supported mode -> uint8 (H,W), (H,W,3) or (H,W,4)."""
    mode = img.mode
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(img, dtype=np.uint8)
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        return np.asarray(img.convert("RGBA" if has_alpha else "RGB"), dtype=np.uint8)
    if mode == "LA":
        return np.asarray(img.convert("RGBA"), dtype=np.uint8)
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.int64)
        peak = 65535
        return ((np.clip(a, 0, peak) * 255 + peak // 2) // peak).astype(np.uint8)
    raise ImageError(f"unsupported pixel format {mode!r} (supported: 8/16-bit gray, gray+alpha, "
                     "palette, RGB, RGBA, CMYK)")


@contextlib.contextmanager
def image_errors(path: Path, doing: str = "decode"):
    """Pillow's and the OS's errors while opening or decoding ``path``, as one-line
    ImageErrors (``read_image``; ``datasets.image_size`` reads headers with it)."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (or an unsupported format)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: declared size is too large (decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{path}: cannot {doing} image ({msg})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 (H,W), (H,W,3) or (H,W,4). Raises ImageError."""
    from PIL import Image, ImageOps

    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a directory")
    with image_errors(path):
        with warnings.catch_warnings():
            # Our own limit (checked below, before decoding) replaces Pillow's warning;
            # Pillow still raises DecompressionBombError beyond twice its own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageError(f"{path}: {w}x{h} is larger than the {MAX_PIXELS} pixel limit")
                img = ImageOps.exif_transpose(img)
                img.load()
                return _to_uint8(img)


def _format(suffix: str) -> str | None:
    """Pillow's format name for a file suffix. The common formats (PNG, JPEG, BMP, GIF,
    PPM) are known after ``Image.preinit``; ``registered_extensions`` imports all of
    Pillow's ~45 format plugins (0.1-0.2 s of every command), so only for the others."""
    from PIL import Image

    Image.preinit()
    return Image.EXTENSION.get(suffix) or Image.registered_extensions().get(suffix)


def write_image(path: str | os.PathLike, image: np.ndarray, png_level: int | None = None) -> None:
    """Write uint8 (H,W), (H,W,3) or (H,W,4) atomically; the format follows the suffix.

    PNG goes through ``iqlut_gpu.png`` (parallel deflate; ``png_level`` 0-9, default
    ``png.DEFAULT_LEVEL``); other formats through Pillow (JPEG at quality 95)."""
    from PIL import Image

    from . import png

    path = Path(path)
    fmt = _format(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown output format {path.suffix!r} (use .png, .jpg, ...)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if fmt == "JPEG" and image.ndim == 3 and image.shape[2] == 4:
        raise ImageError(f"{path}: JPEG cannot store an alpha channel; use .png")
    try:
        if fmt == "PNG":
            data = png.encode(image, png.DEFAULT_LEVEL if png_level is None else png_level)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            return
        img = Image.fromarray(np.ascontiguousarray(image))
        with atomic_path(path) as tmp:
            img.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    except OSError as e:
        raise ImageError(f"{path}: cannot write ({e.strerror or e})") from None
