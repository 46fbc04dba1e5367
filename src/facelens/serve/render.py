"""Draw what the models found onto the photo, and encode images for JSON answers.

Why server-side drawing: the box coordinates refer to the *upright* image the analyzer saw
(EXIF rotation applied), so drawing them on the same pixels avoids any browser-side
orientation mismatch. Large photos are downscaled first so the base64 answer stays small.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facelens.schema import Face

#: Longest side of the annotated JPEG; boxes are scaled along with the photo.
ANNOTATE_MAX_SIDE = 1280
BOX_COLOUR = (255, 196, 0)
EYE_COLOUR = (0, 200, 255)
TEXT_COLOUR = (0, 0, 0)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError, ImportError):  # pragma: no cover - Pillow built without FreeType
        return ImageFont.load_default()


def face_label(index: int, face: Face) -> str:
    """Short ASCII label for one face, e.g. ``#1 age 34 (28-41) P(female) 72%``."""
    parts = [f"#{index}"]
    if face.age is not None:
        parts.append(f"age {face.age.value:.0f} ({face.age.low:.0f}-{face.age.high:.0f})")
    if face.sex is not None:
        parts.append(f"P(female) {100 * face.sex.p_female:.0f}%")
    return " ".join(parts)


def annotate(rgb: np.ndarray, faces: Sequence[Face], max_side: int = ANNOTATE_MAX_SIDE) -> Image.Image:
    """Return a (possibly downscaled) copy of ``rgb`` with numbered face boxes, eye boxes and labels.

    The photo is shrunk as a numpy array before Pillow sees it: ``Image.fromarray`` of a 64 MP
    photo would first copy it at 4 bytes per pixel (256 MB), outside the service's memory budget.
    """
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        import cv2

        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    img = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(img)
    line = max(2, round(max(img.size) / 400))
    font = _font(max(14, round(max(img.size) / 36)))
    for i, face in enumerate(faces, 1):
        x, y, w, h = (v * scale for v in face.box)
        draw.rectangle((x, y, x + w, y + h), outline=BOX_COLOUR, width=line)
        if face.sex is not None:
            for eye in face.sex.eyes:
                ex, ey, ew, eh = (v * scale for v in eye.box)
                draw.rectangle((ex, ey, ex + ew, ey + eh), outline=EYE_COLOUR, width=max(1, line // 2))
        text = face_label(i, face)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = max(2, line)
        # Label above the box when it fits, else inside its top edge; always kept inside the image.
        ty = y - th - 2 * pad if y - th - 2 * pad >= 0 else y
        tx = min(max(0.0, x), max(0.0, img.width - tw - 2 * pad))
        draw.rectangle((tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad), fill=BOX_COLOUR)
        draw.text((tx + pad - left, ty + pad - top), text, fill=TEXT_COLOUR, font=font)
    return img


def to_jpeg(img: Image.Image, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def annotated_jpeg(rgb: np.ndarray, faces: Sequence[Face], max_side: int = ANNOTATE_MAX_SIDE) -> bytes:
    """The photo with boxes and labels drawn, as JPEG bytes."""
    return to_jpeg(annotate(rgb, faces, max_side))


def to_png(arr: np.ndarray) -> bytes:
    """Encode an HxWx3 uint8 crop (what a model saw) as PNG bytes, losslessly."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr).astype(np.uint8, copy=False)).save(buf, format="PNG")
    return buf.getvalue()
