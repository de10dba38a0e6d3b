"""A fast PNG writer for large 8-bit outputs: one filter, deflate in parallel bands.

An x4 upscale of a 1080p photo is a 7680x4320 image (100 MB of RGB). Pillow writes it with
an adaptive per-row filter search and one single-threaded deflate stream: seconds, as long
as the upscaling itself. Here the image is written as a standard PNG (8-bit gray, RGB or
RGBA; no interlace) in a way that is fast on any number of cores:

- every row uses PNG's "Up" filter (the row minus the row above, bytewise mod 256: one
  NumPy subtraction for the whole image; on photos and their upscales it compresses about
  as well as the adaptive choice);
- the filtered rows are cut into bands that are deflated in parallel threads (zlib
  releases the GIL); each band but the last ends with a full flush, which byte-aligns the
  stream and resets the dictionary, so the bands concatenate into one valid deflate stream
  (the trick pigz uses); the zlib header and the Adler-32 of all the data wrap it;
- deflate comes from zlib-ng (the ``zlib-ng`` package, 2-3x faster than zlib at the low
  levels) when it is installed, else from Python's zlib: the bytes differ, the image not.

``level`` is zlib's 0-9. ``DEFAULT_LEVEL`` was chosen by measurement (docs: bench/README.md,
"Writing PNG").
"""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # zlib-ng: same API, faster at the low levels
    from zlib_ng import zlib_ng as _deflate
except ImportError:  # pragma: no cover - exercised where zlib-ng is missing
    _deflate = zlib

DEFAULT_LEVEL = 2
BAND_BYTES = 4 << 20  # filtered bytes per deflate band (a few per core for a large image)
CHUNK_BYTES = 1 << 20  # bytes per IDAT chunk
_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (gray, RGB, RGBA)
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF))


def filtered_rows(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> the PNG scanlines [H, 1 + W*C]: filter byte 2 ("Up")
    and each row minus the row above (the first row minus zeros)."""
    H = image.shape[0]
    rows = np.ascontiguousarray(image).reshape(H, -1)
    out = np.empty((H, rows.shape[1] + 1), np.uint8)
    out[:, 0] = 2
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8 wraps: mod 256
    return out


def encode(image: np.ndarray, level: int = DEFAULT_LEVEL, threads: int | None = None) -> bytes:
    """The PNG file of uint8 ``image`` (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"PNG needs uint8 (H, W) or (H, W, C), got {image.dtype} {image.shape}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in _COLOR_TYPE or 0 in image.shape:
        raise ValueError(f"PNG needs 1, 3 or 4 channels and a non-empty image, got {image.shape}")
    if not 0 <= int(level) <= 9:
        raise ValueError(f"PNG compression level must be 0..9, got {level}")
    H, W = image.shape[:2]
    data = filtered_rows(image)
    rows_per_band = max(1, BAND_BYTES // data.shape[1])
    bands = [data[y:y + rows_per_band] for y in range(0, H, rows_per_band)]

    def deflate(i):
        c = _deflate.compressobj(int(level), zlib.DEFLATED, -15)  # raw deflate
        last = i == len(bands) - 1
        return c.compress(bands[i]) + c.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)

    workers = threads or min(len(bands), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="iqlut-png") as pool:
            parts = list(pool.map(deflate, range(len(bands))))
    else:
        parts = [deflate(i) for i in range(len(bands))]
    # zlib header (deflate, 32 KiB window, no preset dictionary; FCHECK makes it a multiple
    # of 31), the bands, the Adler-32 of the uncompressed data
    stream = b"".join([b"\x78\x01", *parts, struct.pack(">I", zlib.adler32(data) & 0xFFFFFFFF)])
    ihdr = struct.pack(">IIBBBBB", W, H, 8, _COLOR_TYPE[channels], 0, 0, 0)
    idat = [_chunk(b"IDAT", stream[i:i + CHUNK_BYTES]) for i in range(0, len(stream), CHUNK_BYTES)]
    return b"".join([SIGNATURE, _chunk(b"IHDR", ihdr), *idat, _chunk(b"IEND", b"")])
