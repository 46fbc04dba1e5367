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


# ---------------------------------------------------------------- the decoding gate (issue #20)


def _rgb_image() -> Image.Image:
    return Image.fromarray(_gradient(40, 56))


@pytest.mark.parametrize("fmt", ["AVIF", "DDS"])
def test_refused_formats_renamed_jpg_are_not_an_image(tmp_path, fmt):
    """Formats outside the allowlist never reach their decoder, intact or damaged."""
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("Pillow built without AVIF")
    buf = io.BytesIO()
    _rgb_image().save(buf, format=fmt)
    data = buf.getvalue()
    damaged = bytearray(data)
    damaged[len(damaged) // 2 :] = bytes(len(damaged) - len(damaged) // 2)  # second half zeroed
    for i, payload in enumerate((data, bytes(damaged))):
        p = tmp_path / f"holiday_{fmt}_{i}.jpg"
        p.write_bytes(payload)
        err = _load_error(p)
        assert err.reason == "not_an_image"
        assert "JPEG, PNG, WebP" in err.message
        _assert_names(err, p)


def test_eps_header_never_reaches_ghostscript(tmp_path, monkeypatch):
    import subprocess

    def no_subprocess(*a, **k):
        raise AssertionError("a decoder tried to run a program")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    monkeypatch.setattr(subprocess, "check_call", no_subprocess)
    p = tmp_path / "poster.jpg"
    p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n")
    assert _load_error(p).reason == "not_an_image"


@pytest.mark.parametrize("exc", [RuntimeError("decoder exploded"), NotImplementedError("no such codec"),
                                 struct.error("unpack requires a buffer"), MemoryError(), KeyError("tile")])
def test_any_decoder_exception_becomes_an_image_load_error(tmp_path, monkeypatch, exc):
    p = tmp_path / "odd.png"
    Image.fromarray(_gradient()).save(p)

    def explode(self):
        raise exc

    monkeypatch.setattr(Image.Image, "load", explode)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", explode)
    err = _load_error(p)
    assert err.reason in ("corrupt", "too_large")
    _assert_names(err, p)


def _png_header_only(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def test_decoded_byte_limit_checked_from_the_header():
    """60 MP is under the pixel limit, but 60 MP of RGBA is 240 MB decoded: refused before decoding."""
    err = _load_error(_png_header_only(8000, 7500, 8, 6), name="poster.png")
    assert err.reason == "too_large"
    assert "MB once decoded" in err.message and "facelens" in err.message
    assert "poster.png" in str(err)
    # The same size in 8-bit grey is 60 MB decoded: past the size checks (then truncated, as it has no data).
    assert _load_error(_png_header_only(8000, 7500, 8, 0), name="grey.png").reason == "truncated"


def test_bomb_message_quotes_facelens_limit_not_pillows():
    err = _load_error(_bomb_png(20000, 20000), name="bomb.png")
    assert err.reason == "too_large"
    assert "64,000,000" in err.message
    assert "178956970" not in err.message and "89478485" not in err.message


def test_16bit_png_decodes_without_float64_blowup():
    """A 16-bit 2000 x 2000 PNG: numpy's peak stays near the 12 MB result, not 8 bytes per sample."""
    import tracemalloc

    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (2000, 2000), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(deep).save(buf, format="PNG", compress_level=1)
    tracemalloc.start()
    try:
        out = load_image(buf.getvalue())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (2000, 2000, 3)
    assert (out[..., 0].astype(int) - (deep.astype(int) * 255 + 32767) // 65535 == 0).all()
    # The result (3 bytes per pixel) plus the encoded input, its copy and small per-block temporaries;
    # the float64 conversion this replaces peaked above 8 bytes per pixel on top of that.
    budget = 3 * deep.size + 2 * len(buf.getvalue()) + 8_000_000
    assert peak < budget, f"numpy peak {peak / 1e6:.0f} MB for a {deep.size / 1e6:.0f} MP image"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation):
    from PIL import ImageOps

    stored = np.random.default_rng(orientation).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    assert (load_image(buf.getvalue()) == expected).all()


def test_file_objects_are_read():
    data = _jpeg_bytes(_gradient())
    assert load_image(io.BytesIO(data)).shape == (32, 48, 3)


def test_text_mode_file_object_is_an_error(tmp_path):
    p = tmp_path / "photo.txt"
    p.write_text("not binary")
    with p.open() as fh:
        err = _load_error(fh)
    assert err.reason == "unreadable" and "photo.txt" in str(err)


@pytest.mark.parametrize(("src", "reason"), [
    (None, "empty"),
    (42, "unsupported_mode"),
    (np.array([["a", "b"], ["c", "d"]]), "unsupported_mode"),
    (np.empty((0, 0, 3), np.uint8), "empty"),
    (np.array([[object()] * 9] * 9), "unsupported_mode"),
])
def test_unusable_inputs_are_errors(src, reason):
    assert _load_error(src, name="input-3").reason == reason


def test_lazily_opened_truncated_pil_image(tmp_path):
    data = _jpeg_bytes(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    p = tmp_path / "half.jpg"
    p.write_bytes(data[: len(data) // 2])
    with Image.open(p) as im:  # the header is fine: Pillow only finds out when decoding
        err = _load_error(im, name=str(p))
    assert err.reason == "truncated"
    _assert_names(err, p)


def test_int64_array_of_16bit_values_is_scaled_not_clipped():
    arr = _gradient().astype(np.int64) * 257
    assert (load_image(arr) == _gradient()).all()
    assert (load_image(arr[..., 0]) == np.repeat(_gradient()[..., :1], 3, axis=2)).all()
    assert (load_image(_gradient().astype(np.int32)) == _gradient()).all()  # 8-bit values in a wide dtype


def test_broken_and_looping_symlinks_are_named(tmp_path):
    dangling = tmp_path / "gone.jpg"
    dangling.symlink_to(tmp_path / "deleted.jpg")
    err = _load_error(dangling)
    assert err.reason == "missing" and "broken symbolic link" in err.message
    _assert_names(err, dangling)
    loop_a, loop_b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    err = _load_error(loop_a)
    assert err.reason == "unreadable" and "loop" in err.message
    _assert_names(err, loop_a)
