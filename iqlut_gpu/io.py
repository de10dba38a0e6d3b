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
place, so no half-written output ever appears under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The temporary name keeps the suffix (``.out.png.XXXX.part.png``) so tools that pick
    a format from the name still work. On any exception (KeyboardInterrupt included) the
    temporary file is removed and the destination is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix,
                               dir=path.parent)
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


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 (H,W), (H,W,3) or (H,W,4). Raises ImageError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a directory")
    try:
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
        raise ImageError(f"{path}: cannot decode image ({msg})") from None


def write_image(path: str | os.PathLike, image: np.ndarray, png_level: int | None = None) -> None:
    """Write uint8 (H,W), (H,W,3) or (H,W,4) atomically; the format follows the suffix.

    PNG goes through ``iqlut_gpu.png`` (parallel deflate; ``png_level`` 0-9, default
    ``png.DEFAULT_LEVEL``); other formats through Pillow (JPEG at quality 95)."""
    from PIL import Image

    from . import png

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
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
