"""Safe image loading: every input becomes an upright 8-bit RGB array or a clear ImageLoadError.

Why a module of its own: photos arrive from cameras (EXIF rotation), scanners (CMYK),
PNG exporters (16-bit, alpha, palettes) and from strangers on the internet (truncated
files, text renamed .jpg, decompression bombs). One function handles all of them so that
training, the CLI, the batch runner and the web service agree on what an image is.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facelens.errors import ImageLoadError

#: Largest image we decode (width * height). 20000 x 20000 headers are refused before decoding.
MAX_PIXELS = 64_000_000
#: Smallest side we accept: below this no face or eye can be analysed.
MIN_SIDE = 8

ImageInput = str | Path | bytes | np.ndarray | Image.Image


def _source_name(src: ImageInput, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (str, Path)):
        return str(src)
    if isinstance(src, bytes):
        return "<bytes>"
    return "<array>"


def _to_rgb8(img: Image.Image, source: str) -> np.ndarray:
    """Convert any Pillow mode to an HxWx3 uint8 array (alpha is composited on white)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = max(float(arr.max() - arr.min()), 1e-12)
        arr = ((arr - arr.min()) / span * 255.0 + 0.5).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    try:
        return np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as exc:  # exotic modes Pillow cannot convert
        raise ImageLoadError(source, f"unsupported colour mode {mode!r}: {exc}", "unsupported_mode") from exc


def _from_array(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageLoadError(source, f"expected an HxW, HxWx3 or HxWx4 array, got shape {arr.shape}", "unsupported_mode")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        elif arr.dtype == np.uint16:
            arr = arr / 257.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _check_size(width: int, height: int, source: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageLoadError(
            source,
            f"image is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,} (possible decompression bomb); downscale it first",
            "too_large",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageLoadError(
            source, f"image is only {width}x{height} pixels; at least {MIN_SIDE} px per side is needed", "too_small"
        )


def load_image(src: ImageInput, *, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Load ``src`` (path, encoded bytes, array or PIL image) as an upright RGB uint8 array.

    Raises ``ImageLoadError`` naming the source and the problem; never returns garbage.
    """
    source = _source_name(src, name)
    if isinstance(src, np.ndarray):
        arr = _from_array(src, source)
        _check_size(arr.shape[1], arr.shape[0], source, max_pixels)
        return arr
    if isinstance(src, Image.Image):
        _check_size(src.width, src.height, source, max_pixels)
        return _to_rgb8(ImageOps.exif_transpose(src), source)
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.exists():
            raise ImageLoadError(source, "file does not exist", "missing")
        if path.is_dir():
            raise ImageLoadError(source, "is a directory, not an image file", "not_an_image")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageLoadError(source, f"cannot read file: {exc.strerror or exc}", "unreadable") from exc
    else:
        data = bytes(src)
    if not data:
        raise ImageLoadError(source, "file is empty (0 bytes)", "empty")
    return decode_image_bytes(data, source, max_pixels=max_pixels)


def decode_image_bytes(data: bytes, source: str = "<bytes>", *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes; the size check happens on the header, before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(img.width, img.height, source, max_pixels)
            img.load()
    except ImageLoadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageLoadError(source, "not a recognised image format (JPEG, PNG, WebP, BMP, TIFF, GIF)", "not_an_image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(source, f"refused as a possible decompression bomb: {exc}", "too_large") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc)
        reason = "truncated" if "truncated" in msg.lower() or "broken data stream" in msg.lower() else "corrupt"
        raise ImageLoadError(source, f"image data is damaged ({msg}); re-export or re-download it", reason) from exc
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        upright = img
    return _to_rgb8(upright, source)


def is_grayscale(rgb: np.ndarray, tolerance: int = 3) -> bool:
    """True when the three channels are (nearly) equal: grayscale stored as RGB."""
    small = rgb[:: max(1, rgb.shape[0] // 64), :: max(1, rgb.shape[1] // 64)].astype(np.int16)
    return bool(np.abs(small[..., 0] - small[..., 1]).max() <= tolerance and np.abs(small[..., 1] - small[..., 2]).max() <= tolerance)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
