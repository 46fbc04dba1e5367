"""Is this really a single-eye crop? ``predict-eyes`` checks, so a whole face photo is not scored silently.

Why: the eye model gives a confident-looking probability for any picture it is handed; a
face photo passed to ``predict-eyes`` gets squeezed into one 64 px "eye" and scored as such.
The face detector tells the two apart. On eye crops it does sometimes fire (about 1 in 6
Kaggle crops, measured on 3,000), but those hallucinated faces score below 0.89 and their box
spills far past the little crop, while a real face in a photo scores >= 0.8 (min 0.81 on 200
"20-50" photos, 0.90 on 300 UTKFace chips) with >= 91% of its box inside the picture.
With the rule below, 6 of 4,000 random Kaggle eye crops were flagged, and 895 of 900 face
photos (300 each of UTKFace, "20-50" and All-Age-Faces).
"""

from __future__ import annotations

import numpy as np

from facelens.face.detect import detect_faces

#: A detection counts as a real face when it is this confident ...
FACE_PHOTO_MIN_SCORE = 0.8
#: ... and this much of its box lies inside the image.
FACE_PHOTO_MIN_INSIDE = 0.9

FACE_PHOTO_WARNING = ("this looks like a face photo, not a single-eye crop (a face was detected): the estimate "
                      "below is not meaningful; use `facelens predict` for photos")


def box_inside_fraction(box: tuple[float, float, float, float], width: int, height: int) -> float:
    """Fraction of a box's area (x, y, w, h) that lies inside a ``width`` x ``height`` image."""
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return 0.0
    ix = max(0.0, min(x + w, width) - max(x, 0.0))
    iy = max(0.0, min(y + h, height) - max(y, 0.0))
    return ix * iy / (w * h)


def looks_like_face_photo(rgb: np.ndarray) -> bool:
    """True when ``rgb`` holds a whole face (a confident detection lying inside the image)."""
    h, w = rgb.shape[:2]
    return any(d.score >= FACE_PHOTO_MIN_SCORE and box_inside_fraction(d.box, w, h) >= FACE_PHOTO_MIN_INSIDE
               for d in detect_faces(rgb, min_score=FACE_PHOTO_MIN_SCORE))
