"""Seeded image fuzzing shared by tests/test_fuzz.py (a few seconds) and benchmarks/fuzz_images.py (100k inputs).

``seed_corpus()`` encodes small images in every allowed format and its common variants
(16-bit PNG, palette GIF, CMYK JPEG, compressed TIFF, lossless WebP, EXIF-rotated JPEG...),
plus files in formats the gate must refuse (AVIF, DDS, EPS headers); ``mutate()`` damages
one with a seeded mix of bit flips, byte overwrites, truncation, chunk duplication, inserted
junk and enlarged header fields. Everything is deterministic given the seed.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, features


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], axis=2)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def seed_corpus() -> dict[str, bytes]:
    """name -> encoded bytes: every allowed format and variant, and a few refused formats."""
    rgb = Image.fromarray(_photo())
    gray = rgb.convert("L")
    deep = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = {
        "jpeg": _encode(rgb, "JPEG", quality=85),
        "jpeg_progressive": _encode(rgb, "JPEG", quality=70, progressive=True),
        "jpeg_exif": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg_cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg_gray": _encode(gray, "JPEG"),
        "png": _encode(rgb, "PNG"),
        "png_rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "png_16bit": _encode(deep, "PNG"),
        "png_palette": _encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        "gif": _encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "GIF"),
        "gif_animated": _encode(rgb, "GIF", save_all=True, append_images=[gray.convert("RGB")], duration=50),
        "bmp": _encode(rgb, "BMP"),
        "bmp_gray": _encode(gray, "BMP"),
        "tiff": _encode(rgb, "TIFF"),
        "tiff_lzw": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff_deflate": _encode(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "tiff_16bit": _encode(deep, "TIFF"),
        "tiff_float": _encode(Image.fromarray(np.asarray(gray, np.float32) / 255.0), "TIFF"),
        "tiff_cmyk": _encode(rgb.convert("CMYK"), "TIFF"),
        "dds_as_jpg": _encode(rgb, "DDS"),
        "eps_header": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 56 40\n" + b"0 0 moveto\n" * 40,
        "text": b"this is not a photo\n" * 20,
    }
    if features.check("webp"):
        out["webp"] = _encode(rgb, "WEBP", quality=80)
        out["webp_lossless"] = _encode(rgb.convert("RGBA"), "WEBP", lossless=True)
    if features.check("avif"):
        out["avif_as_jpg"] = _encode(rgb, "AVIF", quality=60)
    return out


def _grow_header(data: bytes, rng: np.random.Generator) -> bytes:
    """Overwrite 2 or 4 bytes near the start with large values: claimed sizes, offsets, counts."""
    if len(data) < 8:
        return data
    pos = int(rng.integers(0, min(len(data) - 4, 64)))
    value = int(rng.choice([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 20000, 8000]))
    packed = struct.pack(">I", value) if rng.random() < 0.5 else struct.pack("<I", value)
    return data[:pos] + packed + data[pos + 4 :]


def _png_with_fixed_crc(data: bytes) -> bytes:
    """Recompute PNG chunk CRCs, so mutations get past the checksum into the decoder proper."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, pos = bytearray(data[:8]), 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        end = pos + 12 + length
        if end > len(data):
            out += data[pos:]
            return bytes(out)
        body = data[pos + 4 : pos + 8 + length]
        out += data[pos : pos + 8 + length] + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        pos = end
    out += data[pos:]
    return bytes(out)


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to four seeded damages of ``data``."""
    buf = bytearray(data)
    ops: list[Callable[[bytearray], bytearray]] = [
        lambda b: _flip_bits(b, rng),
        lambda b: _overwrite(b, rng),
        lambda b: b[: int(rng.integers(0, max(1, len(b))))],
        lambda b: _duplicate(b, rng),
        lambda b: _insert(b, rng),
        lambda b: bytearray(_grow_header(bytes(b), rng)),
    ]
    for _ in range(int(rng.integers(1, 5))):
        buf = ops[int(rng.integers(0, len(ops)))](buf)
    out = bytes(buf)
    return _png_with_fixed_crc(out) if rng.random() < 0.5 else out


def _flip_bits(b: bytearray, rng: np.random.Generator) -> bytearray:
    for _ in range(int(rng.integers(1, 9))):
        if b:
            i = int(rng.integers(0, len(b)))
            b[i] ^= 1 << int(rng.integers(0, 8))
    return b


def _overwrite(b: bytearray, rng: np.random.Generator) -> bytearray:
    if not b:
        return b
    i = int(rng.integers(0, len(b)))
    n = int(rng.integers(1, 17))
    b[i : i + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return b


def _duplicate(b: bytearray, rng: np.random.Generator) -> bytearray:
    if len(b) < 2:
        return b
    i = int(rng.integers(0, len(b) - 1))
    j = int(rng.integers(i + 1, min(len(b), i + 256) + 1))
    return b[:j] + b[i:j] + b[j:]


def _insert(b: bytearray, rng: np.random.Generator) -> bytearray:
    i = int(rng.integers(0, len(b) + 1))
    return b[:i] + bytearray(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()) + b[i:]


def fuzzed_inputs(seed: int, count: int) -> list[tuple[str, bytes]]:
    """``count`` mutated inputs, cycling through the seed corpus, reproducible from ``seed``."""
    corpus = sorted(seed_corpus().items())
    rng = np.random.default_rng(seed)
    return [(f"{corpus[i % len(corpus)][0]}-{seed}-{i}", mutate(corpus[i % len(corpus)][1], rng)) for i in range(count)]
