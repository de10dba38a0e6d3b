"""Input images: what is converted, what is refused, and how a batch carries on."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from iqlut_gpu.io import MAX_PIXELS, ImageError, read_image, write_image

PHOTO = os.path.join(os.path.dirname(__file__), "..", "iqlut_gpu", "data", "astronaut_256.png")


@pytest.fixture(scope="module")
def rgb():
    return np.asarray(Image.open(PHOTO).convert("RGB"))[80:112, 100:140]  # 32x40 real content


def save(tmp_path, name, img, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_plain_modes_read_as_they_are(tmp_path, rgb):
    for mode, shape in (("L", (32, 40)), ("RGB", (32, 40, 3)), ("RGBA", (32, 40, 4))):
        img = Image.fromarray(rgb).convert(mode)
        got = read_image(save(tmp_path, f"{mode}.png", img))
        assert got.dtype == np.uint8 and got.shape == shape
        assert np.array_equal(got, np.asarray(img))


def test_palette_becomes_rgb_or_rgba(tmp_path, rgb):
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    got = read_image(save(tmp_path, "p.png", pal))
    assert got.shape == (32, 40, 3) and np.array_equal(got, np.asarray(pal.convert("RGB")))
    got = read_image(save(tmp_path, "pt.png", pal, transparency=0))
    assert got.shape == (32, 40, 4)


def test_gray_alpha_becomes_rgba(tmp_path, rgb):
    la = Image.fromarray(rgb).convert("LA")
    got = read_image(save(tmp_path, "la.png", la))
    assert got.shape == (32, 40, 4) and np.array_equal(got[..., 0], np.asarray(la)[..., 0])


def test_16_bit_png_is_scaled_to_8_bits_with_rounding(tmp_path):
    a = np.array([[0, 257, 65535, 32768, 128, 129]], np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(a).save(path)
    got = read_image(path)
    assert got.dtype == np.uint8
    assert got.tolist() == [[0, 1, 255, 128, 0, 1]]  # round(v * 255 / 65535)


def test_cmyk_jpeg_becomes_rgb(tmp_path, rgb):
    cmyk = Image.fromarray(rgb).convert("CMYK")
    got = read_image(save(tmp_path, "c.jpg", cmyk, quality=95))
    assert got.shape == (32, 40, 3)


def test_exif_orientation_is_applied(tmp_path, rgb):
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = save(tmp_path, "o.jpg", img, exif=exif, quality=100)
    got = read_image(path)
    assert got.shape == (40, 32, 3)  # upright: width and height swapped


def test_float_images_are_refused(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.zeros((4, 4), np.float32)).save(path)
    with pytest.raises(ImageError, match="unsupported pixel format 'F'"):
        read_image(path)


@pytest.mark.parametrize("maker,fragment", [
    (lambda p, good: p.write_bytes(b""), "not an image"),
    (lambda p, good: p.write_text("hello, not an image\n"), "not an image"),
    (lambda p, good: p.write_bytes(good[: len(good) // 2]), "cannot decode"),
    (lambda p, good: p.write_bytes(good[:40]), "cannot decode|not an image"),
])
def test_truncated_corrupt_zero_byte_png(tmp_path, rgb, maker, fragment):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    path = tmp_path / "bad.png"
    maker(path, buf.getvalue())
    with pytest.raises(ImageError, match=fragment) as e:
        read_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_corrupt_jpeg(tmp_path, rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    path = tmp_path / "bad.jpg"
    path.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(ImageError):
        read_image(path)


def _png_header_only(width, height):
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9000, 60000])
def test_decompression_bomb_refused_before_decoding(tmp_path, side):
    assert side * side > MAX_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(side, side))
    with pytest.raises(ImageError, match="too large|pixel limit"):
        read_image(path)


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)


def test_write_is_atomic_and_leaves_nothing_on_failure(tmp_path, rgb):
    with pytest.raises(ImageError, match="alpha"):
        write_image(tmp_path / "a.jpg", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ImageError, match="unknown output format"):
        write_image(tmp_path / "a.xyz", rgb)
    with pytest.raises(ImageError):
        write_image(tmp_path / "missing_dir" / "a.png", rgb)
    assert sorted(os.listdir(tmp_path)) == []
    write_image(tmp_path / "ok.png", rgb)
    assert sorted(os.listdir(tmp_path)) == ["ok.png"]
    assert oct(os.stat(tmp_path / "ok.png").st_mode & 0o777) != oct(0o600)


def test_batch_reports_bad_files_and_processes_the_rest(run_cli, tmp_path, rgb):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb).save(src / "a_good.png")
    (src / "b_empty.png").write_bytes(b"")
    (src / "c_text.jpg").write_text("not a jpeg")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(src / "d_palette.png")
    proc = run_cli("upscale", src, "-o", tmp_path / "out", "--scale", "2", "--quiet")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 2 and "b_empty.png" in errors[0] and "c_text.jpg" in errors[1], proc.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["a_good.png", "d_palette.png"]
    assert Image.open(tmp_path / "out" / "d_palette.png").size == (80, 64)
