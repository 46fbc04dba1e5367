"""Safe image loading: every input becomes an upright 8-bit RGB array or a clear ImageLoadError.

Why a module of its own: photos arrive from cameras (EXIF rotation), scanners (CMYK),
PNG exporters (16-bit, alpha, palettes) and from strangers on the internet (truncated
files, text renamed .jpg, decompression bombs, fuzzed files in exotic formats). This is the
one decoding gate: training, the CLI, the batch runner and the web service all go through it,
so they agree on what an image is and no decoder failure escapes as anything but an
``ImageLoadError``.

The gate, in order:

1. only the formats in ``ALLOWED_FORMATS`` are tried (``Image.open(formats=...)``): Pillow
   knows some 40 formats, several with little-used C decoders (AVIF, DDS, EPS asks for
   Ghostscript...), and each one is attack surface that a face photo never needs;
2. the header's size is checked before any pixel is decoded: at most ``MAX_PIXELS`` pixels
   and ``MAX_DECODED_BYTES`` decoded bytes (width x height x channels x bytes per sample),
   because a 124 KB 16-bit PNG can claim 8000 x 8000 pixels;
3. any exception from Pillow or its decoders (OSError, ValueError, RuntimeError,
   NotImplementedError, struct.error, MemoryError, ...) becomes an ``ImageLoadError`` with one
   of the documented reasons (``facelens.errors``);
4. conversion to 8-bit RGB works in integers and in row blocks, so a 16-bit photo costs about
   its own size in memory, not eight times that in float64.

``load_reduced`` goes through the same gate but decodes a JPEG at 1/2, 1/4 or 1/8 scale in the
DCT domain, with finer decodes of regions on demand (``facelens.reduced``; issue #22): the
analyzer needs 512 px for detection and 64-128 px crops, not 24 MP.
"""

from __future__ import annotations

import errno
import io
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from threading import Condition
from typing import IO

import numpy as np
from PIL import Image, ImageMode, UnidentifiedImageError

from facelens.errors import ImageLoadError
from facelens.reduced import INVERSE_ORIENTATION, Box, ReducedImage, draft_size, factor_for_side, orient_box, region_offset, upright_size

#: Largest image we decode (width * height). 20000 x 20000 headers are refused before decoding.
MAX_PIXELS = 64_000_000
#: Largest decoded size (width x height x channels x bytes per sample): every 8-bit RGB photo under
#: MAX_PIXELS fits (192 MB), as does an 8000 x 8000 16-bit grey PNG (128 MB); RGBA, CMYK and 32-bit
#: images are capped at 50 MP.
MAX_DECODED_BYTES = 200_000_000
#: Smallest side we accept: below this no face or eye can be analysed.
MIN_SIDE = 8
#: Pillow format names tried, in this order; everything else is "not a recognised image format".
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
#: Rows converted at a time: bounds the temporaries of the 16-bit and float conversions.
_BLOCK_PIXELS = 1 << 18

ImageInput = str | Path | bytes | bytearray | memoryview | np.ndarray | Image.Image | IO[bytes]

# Pillow warns at 89 MP and refuses at 179 MP; facelens refuses at MAX_PIXELS (lower) with its own
# message, so Pillow's warning would only be noise in logs.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow's plugins warn about damaged metadata ("Corrupt EXIF data", "Tag data larger than file"); the
# image either decodes anyway or fails with an ImageLoadError naming it, so the warnings only fill logs.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

_FORMAT_LIST = ", ".join("WebP" if f == "WEBP" else f for f in ALLOWED_FORMATS)


def _source_name(src: object, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (str, Path)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(src, np.ndarray):
        return "<array>"
    file_name = getattr(src, "name", None)
    if isinstance(file_name, str) and file_name:
        return file_name
    if isinstance(src, Image.Image):
        return "<PIL image>"
    return f"<{type(src).__name__}>"


# ---------------------------------------------------------------- sizes


def _bytes_per_sample(mode: str) -> int:
    try:
        typestr = ImageMode.getmode(mode).typestr
    except KeyError:
        return 4
    return max(1, int(typestr[-1])) if typestr[-1].isdigit() else 1


def _channels(mode: str) -> int:
    try:
        return len(ImageMode.getmode(mode).bands)
    except KeyError:
        return 4


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """Size of the decoded pixels: width x height x channels x bytes per sample."""
    return width * height * _channels(mode) * _bytes_per_sample(mode)


def decode_memory_estimate(width: int, height: int, mode: str) -> int:
    """Peak bytes to decode and convert one image: Pillow's buffer plus the RGB uint8 result.

    Pillow stores single-band 8-bit modes in 1 byte per pixel, 16-bit in 2 and everything else
    (RGB, RGBA, CMYK, 32-bit) in 4; the result adds 3 bytes per pixel. Used to budget memory.
    """
    channels, depth = _channels(mode), _bytes_per_sample(mode)
    stored = depth if channels == 1 else 4
    return width * height * (stored + 3)


def _check_size(width: int, height: int, source: str, max_pixels: int, mode: str | None = None,
                max_decoded_bytes: int = MAX_DECODED_BYTES) -> None:
    if width * height > max_pixels:
        raise ImageLoadError(
            source,
            f"image is {width}x{height} = {width * height:,} pixels, more than facelens's limit of "
            f"{max_pixels:,} (possible decompression bomb); downscale it first",
            "too_large",
        )
    if mode is not None and decoded_bytes(width, height, mode) > max_decoded_bytes:
        size = decoded_bytes(width, height, mode)
        raise ImageLoadError(
            source,
            f"image is {width}x{height} in mode {mode} = {size / 1e6:,.0f} MB once decoded, more than facelens's "
            f"limit of {max_decoded_bytes / 1e6:,.0f} MB (possible decompression bomb); downscale it or save it as 8-bit",
            "too_large",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageLoadError(
            source, f"image is only {width}x{height} pixels; at least {MIN_SIDE} px per side is needed", "too_small"
        )


# ---------------------------------------------------------------- memory budget


class MemoryBudget:
    """A counting semaphore over bytes: decodes wait until their estimated peak memory fits.

    Why bytes rather than a count: one 64 MP photo needs ~450 MB while a 640 x 480 one needs 2 MB;
    a count small enough for the first would serialise the second for nothing. A request larger
    than the whole budget still runs, alone.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.in_use = 0
        self._cond = Condition()

    @contextmanager
    def hold(self, nbytes: int, timeout: float | None = None) -> Iterator[None]:
        """Reserve ``nbytes`` (capped at the limit) for the ``with`` block; TimeoutError if it never fits."""
        need = min(max(0, int(nbytes)), self.limit)
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_use + need <= self.limit, timeout):
                raise TimeoutError(f"waited {timeout:.0f} s for {need / 1e6:.0f} MB of decode memory")
            self.in_use += need
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= need
                self._cond.notify_all()


# ---------------------------------------------------------------- conversions


def _row_blocks(h: int, w: int) -> Iterator[tuple[int, int]]:
    rows = max(1, _BLOCK_PIXELS // max(1, w))
    for r in range(0, h, rows):
        yield r, min(h, r + rows)


def _scale_block(block: np.ndarray, scale: int | tuple[float, float]) -> np.ndarray:
    """Grey samples to uint8: integers rounded from 0..scale, floats stretched over (lo, hi)."""
    if isinstance(scale, tuple):
        lo, hi = scale
        with np.errstate(all="ignore"):  # inf/nan samples in damaged float TIFFs: mapped below, not warned
            g = (block.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-12)) + 0.5
        return np.clip(np.nan_to_num(g, nan=0.0, posinf=255.0, neginf=0.0), 0, 255).astype(np.uint8)
    b = block.astype(np.int64)  # in place from here: one 8-byte temporary per sample of the block
    np.clip(b, 0, scale, out=b)
    b *= 255
    b += scale // 2
    b //= scale
    return b.astype(np.uint8)


def _gray_to_rgb8(src: np.ndarray | Image.Image, scale: int | tuple[float, float]) -> np.ndarray:
    """Grey samples (array or single-band Pillow image) to HxWx3 uint8, one block of rows at a time.

    Why blocks: ``np.asarray`` of a whole 16-bit Pillow image copies it, and the int64/float32
    temporaries would be 4-8 times its size; per block they stay near 2 MB.
    """
    h, w = (src.height, src.width) if isinstance(src, Image.Image) else src.shape
    out = np.empty((h, w, 3), np.uint8)
    for r0, r1 in _row_blocks(h, w):
        block = np.asarray(src.crop((0, r0, w, r1))) if isinstance(src, Image.Image) else src[r0:r1]
        out[r0:r1] = _scale_block(block, scale)[..., None]
    return out


def _integer_scale(max_value: int) -> int:
    """What an integer sample's full scale is: 8-bit if it fits, else 16-bit, else its own maximum."""
    if max_value <= 255:
        return 255
    if max_value <= 65535:
        return 65535
    return int(max_value)


def _to_rgb8(img: Image.Image, source: str) -> np.ndarray:
    """Convert any Pillow mode to an HxWx3 uint8 array (alpha is composited on white)."""
    mode = img.mode
    if mode.startswith("I;16"):
        return _gray_to_rgb8(img, 65535)
    if mode == "I":
        return _gray_to_rgb8(img, _integer_scale(int(img.getextrema()[1])))
    if mode == "F":
        lo, hi = img.getextrema()
        finite = [v for v in (lo, hi) if np.isfinite(v)]
        return _gray_to_rgb8(img, (min(finite), max(finite)) if len(finite) == 2 else (0.0, 1.0))
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode == "L":
        gray = np.asarray(img)
        return np.repeat(gray[..., None], 3, axis=2)
    try:
        return np.asarray(img if mode == "RGB" else img.convert("RGB"))
    except (ValueError, OSError) as exc:  # exotic modes Pillow cannot convert
        raise ImageLoadError(source, f"unsupported colour mode {mode!r}: {exc}", "unsupported_mode") from exc


def _from_array(arr: np.ndarray, source: str) -> np.ndarray:
    """An HxW, HxWx1, HxWx3 or HxWx4 numeric array to HxWx3 uint8.

    Integers are scaled from their full range (0-255 or 0-65535, whatever their dtype: an int64
    array of 16-bit values is scaled, not clipped); floats in 0-1 are scaled to 0-255, larger
    floats clipped; booleans become 0/255; NaN becomes 0.
    """
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageLoadError(source, f"expected a numeric array, got dtype {arr.dtype}", "unsupported_mode")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ImageLoadError(source, f"expected an HxW, HxWx3 or HxWx4 array, got shape {arr.shape}", "unsupported_mode")
    if arr.size == 0:
        raise ImageLoadError(source, f"the array is empty (shape {arr.shape})", "empty")
    if arr.dtype == np.uint8:
        out = arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)
        return np.ascontiguousarray(out)
    if np.issubdtype(arr.dtype, np.floating):
        finite_max = float(np.nanmax(np.where(np.isinf(arr), np.nan, arr))) if np.isfinite(arr).any() else 0.0
        factor = 255.0 if finite_max <= 1.0 else 1.0
        out = np.clip(np.nan_to_num(arr.astype(np.float32) * factor, nan=0.0), 0, 255)
        out = out.astype(np.uint8)
    else:
        scale = _integer_scale(int(arr.max(initial=0)))
        if arr.ndim == 2:
            return _gray_to_rgb8(arr, scale)
        out = ((np.clip(arr.astype(np.int64), 0, scale) * 255 + scale // 2) // scale).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.ascontiguousarray(out)


# EXIF orientation (tag 0x0112) -> the numpy operation that makes the photo upright (as ImageOps.exif_transpose).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation, 1 when absent or unreadable (a broken EXIF block must not lose a good image)."""
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if value in _ORIENT else 1
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means "no rotation"
        return 1


def _upright(img: Image.Image, source: str) -> np.ndarray:
    """Decoded Pillow image -> upright RGB uint8 (rotation done on the 3-byte array, not on a Pillow copy)."""
    turn = _ORIENT.get(_orientation(img))
    rgb = _to_rgb8(img, source)
    return np.ascontiguousarray(turn(rgb)) if turn else rgb


# ---------------------------------------------------------------- errors


def _decode_error(exc: BaseException, source: str, max_pixels: int) -> ImageLoadError:
    """Map any exception a decoder raised to an ImageLoadError with a documented reason."""
    if isinstance(exc, ImageLoadError):
        return exc
    if isinstance(exc, UnidentifiedImageError):
        return ImageLoadError(source, f"not a recognised image format ({_FORMAT_LIST})", "not_an_image")
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageLoadError(source, f"image is larger than facelens's limit of {max_pixels:,} pixels "
                                      "(possible decompression bomb); downscale it first", "too_large")
    if isinstance(exc, MemoryError):
        return ImageLoadError(source, "not enough memory to decode the image; downscale it first", "too_large")
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if len(msg) > 200:
        msg = msg[:200] + "..."
    low = msg.lower()
    reason = "truncated" if "truncated" in low or "broken data stream" in low or "premature end" in low else "corrupt"
    return ImageLoadError(source, f"image data is damaged ({type(exc).__name__}: {msg}); re-export or re-download it",
                          reason)


# ---------------------------------------------------------------- public API


def open_image(data: bytes, source: str = "<bytes>", *, max_pixels: int = MAX_PIXELS,
               max_decoded_bytes: int = MAX_DECODED_BYTES) -> Image.Image:
    """Parse the header only (no pixels decoded) and check format and size; the image is still lazy.

    Lets a caller see the size (``decode_memory_estimate``) and wait for memory before decoding.
    """
    if not data:
        raise ImageLoadError(source, "file is empty (0 bytes)", "empty")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        _check_size(img.width, img.height, source, max_pixels, img.mode, max_decoded_bytes)
        return img
    except Exception as exc:  # noqa: BLE001 - the gate: every failure becomes an ImageLoadError
        raise _decode_error(exc, source, max_pixels) from exc


def decode_image_bytes(data: bytes, source: str = "<bytes>", *, max_pixels: int = MAX_PIXELS,
                       max_decoded_bytes: int = MAX_DECODED_BYTES) -> np.ndarray:
    """Decode encoded image bytes; the size checks happen on the header, before decoding."""
    img = open_image(data, source, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)
    return decode_opened(img, source, max_pixels=max_pixels)


def decode_opened(img: Image.Image, source: str, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image from ``open_image`` to upright RGB uint8, and close it (its buffer is freed now)."""
    try:
        img.load()
        return _upright(img, source)
    except Exception as exc:  # noqa: BLE001 - the gate: every failure becomes an ImageLoadError
        raise _decode_error(exc, source, max_pixels) from exc
    finally:
        img.close()  # free Pillow's buffer now, not when the garbage collector gets to it


def _read_file(path: Path, source: str) -> bytes:
    """Bytes of ``path``, with broken links, loops, folders and unreadable files named as such."""
    if path.is_symlink() and not path.exists():
        try:
            path.stat()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ImageLoadError(source, "symbolic link loop", "unreadable") from exc
        raise ImageLoadError(source, f"broken symbolic link (points to {path.readlink()})", "missing")
    if not path.exists():
        raise ImageLoadError(source, "file does not exist", "missing")
    if path.is_dir():
        raise ImageLoadError(source, "is a directory, not an image file", "not_an_image")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(source, f"cannot read file: {exc.strerror or exc}", "unreadable") from exc


def _read_stream(stream: IO[bytes], source: str, limit: int) -> bytes:
    """Read a binary file object, refusing more than ``limit`` bytes (a pipe could be endless)."""
    try:
        data = stream.read(limit + 1)
    except Exception as exc:  # noqa: BLE001 - closed files, text-mode files, sockets...
        raise ImageLoadError(source, f"cannot read the file object ({type(exc).__name__}: {exc})", "unreadable") from exc
    if isinstance(data, str):
        raise ImageLoadError(source, "file object is open in text mode; open it with 'rb'", "unreadable")
    if not isinstance(data, (bytes, bytearray)):
        raise ImageLoadError(source, f"file object returned {type(data).__name__}, not bytes", "unreadable")
    if len(data) > limit:
        raise ImageLoadError(source, f"file object holds more than {limit / 1e6:.0f} MB", "too_large")
    return bytes(data)


#: Largest encoded input read from a file object (paths and bytes are read as given).
MAX_STREAM_BYTES = 512 * 1024 * 1024


def load_image(src: ImageInput, *, name: str | None = None, max_pixels: int = MAX_PIXELS,
               max_decoded_bytes: int = MAX_DECODED_BYTES) -> np.ndarray:
    """Load ``src`` (path, encoded bytes, binary file object, array or PIL image) as an upright RGB uint8 array.

    Raises ``ImageLoadError`` naming the source and the problem; never returns garbage and
    never lets another exception out.
    """
    source = _source_name(src, name)
    try:
        return _load(src, source, max_pixels, max_decoded_bytes)
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - last line of the gate; any other failure is still the input's
        raise _decode_error(exc, source, max_pixels) from exc


def _load(src: object, source: str, max_pixels: int, max_decoded_bytes: int) -> np.ndarray:
    if src is None:
        raise ImageLoadError(source, "no image given (None)", "empty")
    if isinstance(src, np.ndarray):
        arr = _from_array(src, source)
        _check_size(arr.shape[1], arr.shape[0], source, max_pixels)
        return arr
    if isinstance(src, Image.Image):
        _check_size(src.width, src.height, source, max_pixels, src.mode, max_decoded_bytes)
        try:
            src.load()  # a lazily opened file decodes here, and may turn out truncated
            return _upright(src, source)
        except Exception as exc:  # noqa: BLE001 - the gate
            raise _decode_error(exc, source, max_pixels) from exc
    data = _encoded_bytes(src, source)
    return decode_image_bytes(data, source, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)


def _encoded_bytes(src: object, source: str) -> bytes:
    """The encoded bytes of a path, bytes-like or binary file object; a clear error for anything else."""
    if isinstance(src, (str, Path)):
        return _read_file(Path(src), source)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    if hasattr(src, "read"):
        return _read_stream(src, source, MAX_STREAM_BYTES)
    raise ImageLoadError(source, f"cannot read an image from a {type(src).__name__}: give a path, bytes, "
                                 "a binary file object, a numpy array or a PIL image", "unsupported_mode")


# ---------------------------------------------------------------- reduced decoding


def load_reduced(src: ImageInput, *, min_side: int, name: str | None = None, max_pixels: int = MAX_PIXELS,
                 max_decoded_bytes: int = MAX_DECODED_BYTES, budget: MemoryBudget | None = None) -> ReducedImage:
    """Load ``src`` like ``load_image``, but decode a JPEG at the coarsest scale keeping ``min_side`` px.

    Why: the pipeline detects at ~512 px and cuts 64-128 px crops, so decoding a 24 MP photo in
    full is mostly wasted (issue #22). A JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT
    domain (``Image.draft``), turned upright by its EXIF orientation like the full image, and
    keeps its encoded bytes so ``ReducedImage.finer`` can decode a region at a finer scale for
    a face that needs it. Other formats, arrays and PIL images have no cheap scaled decode and
    come at factor 1. Same checks (on the full header size) and the same errors as ``load_image``.
    ``budget``: every decode, this one and the finer ones, first waits until its estimated memory
    (``decode_memory_estimate`` at the scale decoded) fits, so threads decoding at once cannot add
    up several full frames.
    """
    source = _source_name(src, name)
    try:
        if src is None or isinstance(src, (np.ndarray, Image.Image)):
            return ReducedImage.of_array(_load(src, source, max_pixels, max_decoded_bytes))
        data = _encoded_bytes(src, source)
        img = open_image(data, source, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)
        return _decode_reduced(img, data, source, min_side, (max_pixels, max_decoded_bytes), budget)
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - the gate
        raise _decode_error(exc, source, max_pixels) from exc


def _decode_reduced(img: Image.Image, data: bytes, source: str, min_side: int, limits: tuple[int, int],
                    budget: MemoryBudget | None) -> ReducedImage:
    """Decode an opened image at the coarsest JPEG draft keeping ``min_side``; the bytes stay for ``finer``."""
    max_pixels, max_decoded_bytes = limits
    # Pillow opens JPEGs with a multi-picture (MPF) block as "MPO": phones and cameras write one for
    # gain maps and previews, and its first picture is an ordinary JPEG that drafts the same way.
    stored, orientation, is_jpeg, mode = img.size, _orientation(img), img.format in ("JPEG", "MPO"), img.mode
    factor = factor_for_side(stored, min_side) if is_jpeg else 1

    def held(f: int) -> AbstractContextManager[None]:
        """The budget's hold for a decode at 1/``f`` (Pillow's buffer of the whole photo at that scale)."""
        return budget.hold(decode_memory_estimate(*draft_size(stored, f), mode)) if budget else nullcontext()

    with held(factor):
        (pixels,), factor = _decode_scaled(img, source, factor, [None], orientation, max_pixels)

    def refine(finer: int, boxes: list[Box]) -> list[ReducedImage]:
        """The upright full-image ``boxes`` from one more decode at 1/``finer``; any failure is an ImageLoadError."""
        try:
            return _refine(finer, boxes)
        except ImageLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - the gate covers the second decode too
            raise _decode_error(exc, source, max_pixels) from exc

    def _refine(finer: int, boxes: list[Box]) -> list[ReducedImage]:
        """Each box cropped from Pillow's buffer before conversion, so only the regions become arrays."""
        dw, dh = draft_size(stored, finer)
        crops = []
        for box in boxes:
            sx0, sy0, sx1, sy1 = orient_box(box, INVERSE_ORIENTATION[orientation], upright_size(stored, orientation))
            crops.append((sx0 // finer, sy0 // finer, min(dw, -(-sx1 // finer)), min(dh, -(-sy1 // finer))))
        again = open_image(data, source, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)
        with held(finer):
            parts, got = _decode_scaled(again, source, finer, crops, orientation, max_pixels)
        if got != finer:  # the draft did not take: the crop boxes were meant for another scale
            raise ImageLoadError(source, f"JPEG decoded at 1/{got} instead of 1/{finer}", "corrupt")
        return [ReducedImage(part, finer, region_offset(orientation, stored, finer, c[:2], (c[2] - c[0], c[3] - c[1])),
                             upright_size(stored, orientation)) for part, c in zip(parts, crops, strict=True)]

    offset = region_offset(orientation, stored, factor, (0, 0), draft_size(stored, factor))
    return ReducedImage(pixels, factor, offset, upright_size(stored, orientation), refine if is_jpeg else None)


def _decode_scaled(img: Image.Image, source: str, factor: int, crops: list[Box | None], orientation: int,
                   max_pixels: int) -> tuple[list[np.ndarray], int]:
    """(upright RGB pixels of each crop, the factor really used) of ``img`` drafted at 1/``factor``.

    Each crop (in stored, drafted pixels; None for the whole image) is cut from Pillow's buffer
    before the RGB conversion and the rotation, so regions of a full-size decode cost Pillow's
    buffer plus the regions, not a second copy of the photo.
    """
    w, h = img.size
    try:
        if factor > 1:
            img.draft(img.mode, (w // factor, h // factor))
        img.load()
        got = next((f for f in (8, 4, 2, 1) if draft_size((w, h), f) == img.size), 1)
        turn = _ORIENT.get(orientation)
        out = []
        for crop in crops:
            rgb = _to_rgb8(img if crop is None else img.crop(crop), source)
            out.append(np.ascontiguousarray(turn(rgb)) if turn else rgb)
        return out, got
    except Exception as exc:  # noqa: BLE001 - the gate: every failure becomes an ImageLoadError
        raise _decode_error(exc, source, max_pixels) from exc
    finally:
        img.close()


def is_grayscale(rgb: np.ndarray, tolerance: int = 3) -> bool:
    """True when the three channels are (nearly) equal: grayscale stored as RGB."""
    small = rgb[:: max(1, rgb.shape[0] // 64), :: max(1, rgb.shape[1] // 64)].astype(np.int16)
    return bool(np.abs(small[..., 0] - small[..., 1]).max() <= tolerance and np.abs(small[..., 1] - small[..., 2]).max() <= tolerance)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
