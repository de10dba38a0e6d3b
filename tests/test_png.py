"""iqlut_gpu.png: standard PNGs (read back exactly by Pillow), parallel bands, any level."""

import io
import zlib

import numpy as np
import pytest
from PIL import Image

import cases
from iqlut_gpu import png
from iqlut_gpu.io import ImageError, read_image, write_image


def decode(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.load()  # verifies every chunk's CRC and the zlib stream's Adler-32
    return np.asarray(img)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (7, 5, 3), (13, 6, 4), (5, 4, 1),
                                   (64, 33, 3)])
def test_round_trip_through_pillow(shape):
    rng = np.random.default_rng(cases.SESSION_SEED)
    img = rng.integers(0, 256, size=shape, dtype=np.int64).astype(np.uint8)
    for level in (0, 1, png.DEFAULT_LEVEL, 9):
        got = decode(png.encode(img, level))
        want = img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img
        assert got.shape == want.shape and np.array_equal(got, want), \
            f"{shape} level {level} seed {cases.SESSION_SEED}"


def test_many_bands_in_parallel_and_with_plain_zlib(monkeypatch):
    rng = np.random.default_rng(cases.SESSION_SEED)
    img = rng.integers(0, 256, size=(97, 50, 3), dtype=np.int64).astype(np.uint8)
    img[40:] = img[40]  # long runs too: the Up filter turns them into zeros
    monkeypatch.setattr(png, "BAND_BYTES", 700)  # about 5 rows per band: 20 bands
    monkeypatch.setattr(png, "CHUNK_BYTES", 999)  # and many IDAT chunks
    for threads in (1, 3):
        assert np.array_equal(decode(png.encode(img, 2, threads=threads)), img)
    monkeypatch.setattr(png, "_deflate", zlib)  # where zlib-ng is not installed
    assert np.array_equal(decode(png.encode(img, 6)), img)
    monkeypatch.setattr(png, "_isal", None)  # where isal is not installed either
    for level in (1, 2):
        assert np.array_equal(decode(png.encode(img, level, threads=3)), img)


def test_low_levels_use_isal_and_the_others_zlib_ng():
    isal_zlib = pytest.importorskip("isal.isal_zlib")
    zlib_ng = pytest.importorskip("zlib_ng.zlib_ng")
    assert set(png.ISAL_LEVEL) == {1, 2} and png.DEFAULT_LEVEL in png.ISAL_LEVEL
    data = np.random.default_rng(cases.SESSION_SEED).integers(0, 4, 1 << 16).astype(np.uint8)
    for level in range(10):
        c = png._compressor(level)
        raw = c.compress(data.tobytes()) + c.flush(zlib.Z_FINISH)
        assert zlib.decompress(raw, -15) == data.tobytes(), f"level {level}"
        if level in png.ISAL_LEVEL:
            d = isal_zlib.compressobj(png.ISAL_LEVEL[level], zlib.DEFLATED, -15)
        elif level == 0:
            d = zlib.compressobj(0, zlib.DEFLATED, -15)
        else:
            d = zlib_ng.compressobj(level, zlib.DEFLATED, -15)
        assert raw == d.compress(data.tobytes()) + d.flush(zlib.Z_FINISH), f"level {level}"


def idat_stream(data: bytes) -> bytes:
    """The zlib stream of a PNG: its IDAT chunks' payloads in order."""
    pos, out = 8, []
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            out.append(data[pos + 8:pos + 8 + n])
        pos += 12 + n
    return b"".join(out)


def test_band_checksums_combine_to_the_whole_streams(monkeypatch):
    rng = np.random.default_rng(cases.SESSION_SEED)
    for _ in range(20):
        n = int(rng.choice([0, 1, 5, 65520, 65521, 65522, 200_000]))
        data = rng.integers(0, 256, size=n + 300_000, dtype=np.int64).astype(np.uint8).tobytes()
        cut = int(rng.integers(0, len(data) + 1))
        x, y = data[:cut], data[cut:]
        assert png.adler32_concat(zlib.adler32(x), zlib.adler32(y), len(y)) == zlib.adler32(data), \
            f"seed {cases.SESSION_SEED}"
    # the whole file: zlib checks the combined Adler-32 (and the filtered rows) exactly
    img = rng.integers(0, 256, size=(97, 50, 3), dtype=np.int64).astype(np.uint8)
    monkeypatch.setattr(png, "BAND_BYTES", 700)  # 20 bands
    raw = zlib.decompress(idat_stream(png.encode(img, 1, threads=3)))
    whole = np.concatenate([png.filtered_rows(img, 0, 40), png.filtered_rows(img, 40)])
    assert raw == png.filtered_rows(img).tobytes() == whole.tobytes()


def test_bad_arguments():
    with pytest.raises(ValueError, match="uint8"):
        png.encode(np.zeros((2, 2), np.uint16))
    with pytest.raises(ValueError, match="channels"):
        png.encode(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="level"):
        png.encode(np.zeros((2, 2), np.uint8), level=10)


def test_write_image_uses_it_and_keeps_other_formats(tmp_path):
    rng = np.random.default_rng(cases.SESSION_SEED)
    img = rng.integers(0, 256, size=(20, 30, 3), dtype=np.int64).astype(np.uint8)
    write_image(tmp_path / "a.png", img, png_level=0)
    write_image(tmp_path / "b.png", img)
    assert np.array_equal(read_image(tmp_path / "a.png"), img)
    assert np.array_equal(read_image(tmp_path / "b.png"), img)
    assert (tmp_path / "a.png").stat().st_size > (tmp_path / "b.png").stat().st_size - 100
    write_image(tmp_path / "c.jpg", img)
    assert read_image(tmp_path / "c.jpg").shape == img.shape
    with pytest.raises(ImageError, match="alpha"):
        write_image(tmp_path / "d.jpg", np.zeros((4, 4, 4), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.jpg"]
