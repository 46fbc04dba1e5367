"""load_image: every awkward input becomes an upright RGB uint8 array or an ImageLoadError naming the file."""

from __future__ import annotations

import io
import resource
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from facelens.errors import ImageLoadError
from facelens.images import MIN_SIDE, is_grayscale, load_image


def _gradient(h: int = 32, w: int = 48) -> np.ndarray:
    """A smooth colour image (compresses well, survives JPEG nearly unchanged)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], axis=2).astype(np.uint8)


def _jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def _load_error(src, **kw) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(src, **kw)
    return info.value


def _assert_names(err: ImageLoadError, path: Path) -> None:
    """Every error must let the user find the offending file."""
    assert path.name in str(err)
    assert path.name in err.source


# ---------------------------------------------------------------- bad inputs


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    err = _load_error(p)
    assert err.reason == "empty"
    _assert_names(err, p)


def test_truncated_jpeg(tmp_path):
    data = _jpeg_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    p = tmp_path / "cut_in_half.jpg"
    p.write_bytes(data[: len(data) // 2])
    err = _load_error(p)
    assert err.reason == "truncated"
    _assert_names(err, p)


def test_text_renamed_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a photo\n" * 10)
    err = _load_error(p)
    assert err.reason == "not_an_image"
    _assert_names(err, p)


def test_one_pixel_image(tmp_path):
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(p)
    err = _load_error(p)
    assert err.reason == "too_small"
    _assert_names(err, p)


def test_smallest_accepted_side(tmp_path):
    p = tmp_path / "tiny.png"
    Image.new("RGB", (MIN_SIDE, MIN_SIDE), (10, 20, 30)).save(p)
    assert load_image(p).shape == (MIN_SIDE, MIN_SIDE, 3)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG whose IHDR claims width x height, with only a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20000, 9000])  # 9000^2 is under Pillow's own limit but over ours
def test_decompression_bomb_refused_without_decoding(tmp_path, side):
    p = tmp_path / "bomb.png"
    p.write_bytes(_bomb_png(side, side))
    assert p.stat().st_size < 200
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    err = _load_error(p)
    elapsed = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert err.reason == "too_large"
    _assert_names(err, p)
    assert elapsed < 1.0
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB: the pixels were allocated"


def test_pixel_limit_is_configurable(tmp_path):
    p = tmp_path / "medium.png"
    Image.fromarray(_gradient(100, 100)).save(p)
    assert load_image(p).shape == (100, 100, 3)
    err = _load_error(p, max_pixels=5000)
    assert err.reason == "too_large"
    _assert_names(err, p)


def test_missing_file(tmp_path):
    p = tmp_path / "nowhere" / "ghost.jpg"
    err = _load_error(p)
    assert err.reason == "missing"
    _assert_names(err, p)


def test_directory(tmp_path):
    d = tmp_path / "photos.jpg"
    d.mkdir()
    err = _load_error(d)
    assert err.reason == "not_an_image"
    _assert_names(err, d)


def test_bad_bytes_use_given_name():
    with pytest.raises(ImageLoadError) as info:
        load_image(b"GIF89a but not really", name="upload.gif")
    assert "upload.gif" in str(info.value)
    assert info.value.reason in ("not_an_image", "truncated", "corrupt")


def test_empty_bytes():
    err = _load_error(b"", name="blank.jpg")
    assert err.reason == "empty"
    assert "blank.jpg" in str(err)


def test_bad_array_shape():
    err = _load_error(np.zeros((16, 16, 2), dtype=np.uint8), name="frame-7")
    assert err.reason == "unsupported_mode"
    assert "frame-7" in str(err)


# ---------------------------------------------------------------- colour modes


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = np.zeros((16, 32, 4), dtype=np.uint8)
    cmyk[:, 16:, 0] = 255  # right half: full cyan ink; left half: no ink = white paper
    p = tmp_path / "print.jpg"
    Image.fromarray(cmyk, mode="CMYK").save(p, quality=100)
    assert Image.open(p).mode == "CMYK"
    arr = load_image(p)
    assert arr.shape == (16, 32, 3) and arr.dtype == np.uint8
    white, cyan = arr[8, 4].astype(int), arr[8, 28].astype(int)
    assert (white > 235).all()
    assert cyan[0] < 30 and cyan[1] > 225 and cyan[2] > 225


def test_16bit_png_scaled_to_8bit(tmp_path):
    values = np.array([0, 257 * 100, 32768, 65535], dtype=np.uint16)
    arr16 = np.repeat(np.repeat(values[None, :], 8, axis=0), 4, axis=1)  # 8 x 16
    p = tmp_path / "deep.png"
    Image.fromarray(arr16).save(p)
    assert Image.open(p).mode.startswith("I")
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (8, 16, 3)
    assert out[0, ::4, 0].tolist() == [0, 100, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((8, 24, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red-ish everywhere
    rgba[:, :8, 3] = 0  # transparent -> white
    rgba[:, 8:16, 3] = 255  # opaque -> the colour
    rgba[:, 16:, 3] = 128  # half -> halfway to white
    p = tmp_path / "logo.png"
    Image.fromarray(rgba, mode="RGBA").save(p)
    out = load_image(p)
    assert out.shape == (8, 24, 3)
    assert out[4, 2].tolist() == [255, 255, 255]
    assert out[4, 12].tolist() == [200, 0, 0]
    half = out[4, 20].astype(int)
    assert abs(half[0] - 228) <= 2 and abs(half[1] - 127) <= 2 and abs(half[2] - 127) <= 2


def test_grayscale_gives_three_equal_channels(tmp_path):
    gray = _gradient()[..., 0]
    p = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(p)
    out = load_image(p)
    assert out.shape == (*gray.shape, 3)
    for c in range(3):
        assert (out[..., c] == gray).all()
    assert is_grayscale(out)
    assert not is_grayscale(_gradient())


def test_palette_png(tmp_path):
    rgb = np.zeros((8, 16, 3), dtype=np.uint8)
    rgb[:, :8] = (255, 0, 0)
    rgb[:, 8:] = (0, 0, 255)
    p = tmp_path / "palette.png"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(p)
    assert Image.open(p).mode == "P"
    out = load_image(p)
    assert out[4, 2].tolist() == [255, 0, 0]
    assert out[4, 12].tolist() == [0, 0, 255]


def test_palette_png_with_transparency(tmp_path):
    img = Image.new("P", (16, 8), 0)
    img.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    img.paste(1, (8, 0, 16, 8))
    p = tmp_path / "pal_alpha.png"
    img.save(p, transparency=1)
    out = load_image(p)
    assert out[4, 2].tolist() == [0, 255, 0]
    assert out[4, 12].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    ("orientation", "marked_corner"),
    [
        (6, (0, -1)),  # rotate 90 degrees clockwise: stored top-left ends up top-right
        (8, (-1, 0)),  # rotate 90 degrees counter-clockwise: stored top-left ends up bottom-left
    ],
)
def test_exif_orientation(tmp_path, orientation, marked_corner):
    stored = np.full((20, 40, 3), 128, dtype=np.uint8)  # 20 rows x 40 columns as stored
    stored[:6, :6] = (255, 0, 0)  # red mark in the stored top-left corner
    img = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"camera_{orientation}.jpg"
    img.save(p, quality=95, exif=exif.tobytes())
    assert Image.open(p).getexif().get(0x0112) == orientation
    out = load_image(p)
    assert out.shape == (40, 20, 3)  # upright: the sides swap
    r, c = marked_corner
    corner = out[r, c].astype(int)
    assert corner[0] > 200 and corner[1] < 60 and corner[2] < 60
    for rr, cc in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        if (rr, cc) != (r, c):
            assert out[rr, cc, 0] < 180  # the other corners are grey


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp(tmp_path):
    p = tmp_path / "web.webp"
    Image.fromarray(_gradient()).save(p, lossless=True)
    out = load_image(p)
    assert (out == _gradient()).all()


# ---------------------------------------------------------------- other input kinds


def test_bytes_input():
    arr = _gradient()
    out = load_image(_jpeg_bytes(arr))
    assert out.shape == arr.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - arr).mean() < 3


def test_path_given_as_string(tmp_path):
    p = tmp_path / "plain.png"
    Image.fromarray(_gradient()).save(p)
    assert (load_image(str(p)) == _gradient()).all()


def test_numpy_inputs():
    arr = _gradient()
    assert (load_image(arr) == arr).all()
    gray = load_image(arr[..., 0])
    assert gray.shape == arr.shape and (gray[..., 2] == arr[..., 0]).all()
    floats = load_image(arr.astype(np.float32) / 255.0)
    assert np.abs(floats.astype(int) - arr).max() <= 1
    deep = load_image(arr.astype(np.uint16) * 257)
    assert (deep == arr).all()
    rgba = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert (load_image(rgba) == arr).all()
    assert load_image(arr[::-1]).flags["C_CONTIGUOUS"]


def test_pil_input_is_exif_rotated(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "pil.jpg"
    Image.fromarray(stored).save(p, exif=exif.tobytes())
    with Image.open(p) as im:
        assert load_image(im).shape == (40, 20, 3)
