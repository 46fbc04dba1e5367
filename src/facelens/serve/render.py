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
BADGE_COLOUR = (20, 20, 20)
BADGE_TEXT = (255, 196, 0)


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
        if face.sex.eyes_disagree:
            parts.append("eyes disagree")
    return " ".join(parts)


Box = tuple[float, float, float, float]  # x, y, w, h
Rect = tuple[float, float, float, float]  # x0, y0, x1, y1


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def badge_rects(boxes: Sequence[Box], size: tuple[float, float], width: float, height: float) -> list[Rect]:
    """Where each face's number badge goes: at its box's top-left corner, kept inside the image."""
    bw, bh = size
    out = []
    for x, y, _, _ in boxes:
        bx = min(max(0.0, x), max(0.0, width - bw))
        by = min(max(0.0, y), max(0.0, height - bh))
        out.append((bx, by, bx + bw, by + bh))
    return out


def place_labels(boxes: Sequence[Box], sizes: Sequence[tuple[float, float]], width: float, height: float,
                 taken: Sequence[Rect] = ()) -> list[Rect | None]:
    """A rectangle for each face's label, none overlapping another label or anything in ``taken``.

    Why: in a group photo, labels drawn above every box cover each other and the faces next
    to them. Each label tries, in turn, above its box, below it (left- then right-aligned),
    then inside the bottom of the box; first avoiding every other face, then only avoiding
    the labels and ``taken`` (the number badges). A label that fits nowhere is left out
    (None): the face keeps its number badge, and the full answer is in the list beside the
    photo. Pure geometry, in image pixels.
    """
    placed: list[Rect] = []
    out: list[Rect | None] = []
    face_rects = [(x, y, x + w, y + h) for x, y, w, h in boxes]
    for i, ((x, y, w, h), (tw, th)) in enumerate(zip(boxes, sizes, strict=True)):
        spots = [(x, y - th), (x, y + h), (x + w - tw, y - th), (x + w - tw, y + h), (x, y + h - th)]
        others = [r for j, r in enumerate(face_rects) if j != i]
        choice = None
        for avoid in (others + list(taken) + placed, list(taken) + placed):
            for sx, sy in spots:
                sx = min(max(0.0, sx), width - tw)
                if sx < 0 or sy < 0 or sy + th > height:
                    continue
                rect = (sx, sy, sx + tw, sy + th)
                if not any(_overlaps(rect, r) for r in avoid):
                    choice = rect
                    break
            if choice:
                break
        out.append(choice)
        if choice:
            placed.append(choice)
    return out


def annotate(rgb: np.ndarray, faces: Sequence[Face], max_side: int = ANNOTATE_MAX_SIDE) -> Image.Image:
    """Return a (possibly downscaled) copy of ``rgb`` with boxes, eye boxes, number badges and labels.

    Faces are numbered in the order given (the analyzer's reading order), matching the list
    on the web page. Every face gets a numbered badge; labels never overlap (``place_labels``).
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
    pad = max(2, line)
    boxes = [tuple(v * scale for v in face.box) for face in faces]
    for face, (x, y, w, h) in zip(faces, boxes, strict=True):
        draw.rectangle((x, y, x + w, y + h), outline=BOX_COLOUR, width=line)
        if face.sex is not None:
            for eye in face.sex.eyes:
                ex, ey, ew, eh = (v * scale for v in eye.box)
                draw.rectangle((ex, ey, ex + ew, ey + eh), outline=EYE_COLOUR, width=max(1, line // 2))

    def text_size(text: str) -> tuple[float, float, int, int]:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        return right - left + 2 * pad, bottom - top + 2 * pad, left, top

    numbers = [str(i) for i in range(1, len(faces) + 1)]
    badge_w = max((text_size(n)[0] for n in numbers), default=0.0)
    badge_h = text_size("0")[1]
    badges = badge_rects(boxes, (badge_w, badge_h), img.width, img.height)
    labels = [face_label(i, f) for i, f in enumerate(faces, 1)]
    sizes = [text_size(t) for t in labels]
    spots = place_labels(boxes, [s[:2] for s in sizes], img.width, img.height, taken=badges)
    for number, rect in zip(numbers, badges, strict=True):
        _, _, left, top = text_size(number)
        draw.rectangle(rect, fill=BADGE_COLOUR)
        draw.text((rect[0] + pad - left, rect[1] + pad - top), number, fill=BADGE_TEXT, font=font)
    for text, (_, _, left, top), rect in zip(labels, sizes, spots, strict=True):
        if rect is not None:
            draw.rectangle(rect, fill=BOX_COLOUR)
            draw.text((rect[0] + pad - left, rect[1] + pad - top), text, fill=TEXT_COLOUR, font=font)
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
