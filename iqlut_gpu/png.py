"""A fast PNG writer for large 8-bit outputs: one filter, deflate in parallel bands.

An x4 upscale of a 1080p photo is a 7680x4320 image (100 MB of RGB). Pillow writes it with
an adaptive per-row filter search and one single-threaded deflate stream: seconds, as long
as the upscaling itself. Here the image is written as a standard PNG (8-bit gray, RGB or
RGBA; no interlace) in a way that is fast on any number of cores:

- every row uses PNG's "Up" filter (the row minus the row above, bytewise mod 256: a
  NumPy subtraction; on photos and their upscales it compresses about as well as the
  adaptive choice);
- the image is cut into bands of rows that are filtered, deflated and checksummed in
  parallel threads (NumPy and zlib release the GIL); each band but the last ends with a
  full flush, which byte-aligns the stream and resets the dictionary, so the bands
  concatenate into one valid deflate stream (the trick pigz uses); the zlib header and the
  Adler-32 of all the data (combined from the bands', ``adler32_concat``) wrap it;
- deflate at levels 1 and 2 comes from Intel's ISA-L (the ``isal`` package, its levels 0
  and 1: 2-4x faster than zlib-ng's level 2 and no larger), at levels 3-9 from zlib-ng
  (the ``zlib-ng`` package, 2-3x faster than zlib); where a package is missing, the next
  one down (zlib-ng, then Python's zlib) at the same level: the bytes differ, the image
  not. Level 0 stores the data uncompressed.

``level`` is 0-9 as in zlib, smallest files at 9. ``DEFAULT_LEVEL`` was chosen by
measurement (docs: bench/README.md, "Writing PNG").
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
try:  # ISA-L: same API, levels 0-3, far faster than both at its low levels
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - exercised where isal is missing
    _isal = None
ISAL_LEVEL = {1: 0, 2: 1}  # our level -> ISA-L's, where ISA-L is used

DEFAULT_LEVEL = 2
BAND_BYTES = 4 << 20  # filtered bytes per deflate band (a few per core for a large image)
CHUNK_BYTES = 1 << 20  # bytes per IDAT chunk
_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (gray, RGB, RGBA)
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF))


def filtered_rows(image: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> the PNG scanlines [rows, 1 + W*C] of rows ``start`` to
    ``stop``: filter byte 2 ("Up") and each row minus the row above (the first row of the
    image minus zeros)."""
    H = image.shape[0]
    stop = H if stop is None else stop
    rows = np.ascontiguousarray(image).reshape(H, -1)
    out = np.empty((stop - start, rows.shape[1] + 1), np.uint8)
    out[:, 0] = 2
    if start == 0:
        out[0, 1:] = rows[0]
        np.subtract(rows[1:stop], rows[:stop - 1], out=out[1:, 1:])  # uint8 wraps: mod 256
    else:
        np.subtract(rows[start:stop], rows[start - 1:stop - 1], out=out[:, 1:])
    return out


ADLER_MOD = 65521


def adler32_concat(first: int, second: int, second_len: int) -> int:
    """The Adler-32 of data ``X + Y`` from ``adler32(X)``, ``adler32(Y)`` and ``len(Y)``.
    With ``a = 1 + sum of bytes`` and ``b = sum of the running a`` (mod 65521): the a of
    X + Y is ``a_X + a_Y - 1``, its b is ``b_X + b_Y + len(Y) * (a_X - 1)``."""
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    a = (a1 + a2 - 1) % ADLER_MOD
    b = (b1 + b2 + second_len * (a1 - 1)) % ADLER_MOD
    return (b << 16) | a


def _compressor(level: int):
    """A raw-deflate compress object for ``level`` (module docstring: which library)."""
    if level in ISAL_LEVEL and _isal is not None:
        return _isal.compressobj(ISAL_LEVEL[level], zlib.DEFLATED, -15)
    if level == 0:
        return zlib.compressobj(0, zlib.DEFLATED, -15)  # stored blocks
    return _deflate.compressobj(level, zlib.DEFLATED, -15)


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
    image = np.ascontiguousarray(image)
    rows_per_band = max(1, BAND_BYTES // (1 + W * channels))
    starts = list(range(0, H, rows_per_band))

    def band(i):
        """Filter, deflate and checksum band i (NumPy, zlib, zlib-ng and ISA-L release the
        GIL)."""
        data = filtered_rows(image, starts[i], min(H, starts[i] + rows_per_band))
        c = _compressor(int(level))
        last = i == len(starts) - 1
        packed = c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)
        return packed, zlib.adler32(data), data.nbytes

    workers = threads or min(len(starts), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="iqlut-png") as pool:
            parts = list(pool.map(band, range(len(starts))))
    else:
        parts = [band(i) for i in range(len(starts))]
    adler = 1  # the Adler-32 of no data
    for _, a, n in parts:
        adler = adler32_concat(adler, a, n)
    # zlib header (deflate, 32 KiB window, no preset dictionary; FCHECK makes it a multiple
    # of 31), the bands, the Adler-32 of the uncompressed data
    stream = b"".join([b"\x78\x01", *(p for p, _, _ in parts), struct.pack(">I", adler)])
    ihdr = struct.pack(">IIBBBBB", W, H, 8, _COLOR_TYPE[channels], 0, 0, 0)
    idat = [_chunk(b"IDAT", stream[i:i + CHUNK_BYTES]) for i in range(0, len(stream), CHUNK_BYTES)]
    return b"".join([SIGNATURE, _chunk(b"IHDR", ihdr), *idat, _chunk(b"IEND", b"")])
