"""Pure geometry for face alignment and eye crops (no I/O, no models: easy to test).

A face is described by three anchor points that every detector we support provides:
the two eye centres and the mouth centre. A similarity transform (rotation, uniform
scale, translation) maps them onto a canonical template, so that the age model always
sees faces of the same size, position and roll, whether they come from a training set
of pre-cropped faces or from a group photo.

Conventions: points are (x, y) in pixels; ``right_eye`` is the person's own right eye,
which appears on the *left* of an upright, non-mirrored image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np


@dataclass(frozen=True)
class FaceTemplate:
    """Where the anchors land in a square crop, as fractions of its side."""

    right_eye: tuple[float, float] = (0.375, 0.42)
    left_eye: tuple[float, float] = (0.625, 0.42)
    mouth: tuple[float, float] = (0.5, 0.71)

    def points(self, size: int) -> np.ndarray:
        return np.array([self.right_eye, self.left_eye, self.mouth], dtype=np.float64) * size


    @classmethod
    def from_meta(cls, crop: dict | None) -> FaceTemplate:
        """The template a model's metadata names (``meta["crop"]``); models without one used the loose crop."""
        if not crop:
            return LOOSE_AGE_TEMPLATE
        return cls(**{k: tuple(crop[k]) for k in ("right_eye", "left_eye", "mouth")})


#: The first age crop (models before the cross-source retraining): eyes 25% of the side apart, with
#: hair, neck and background in view. On a tight 200 px UTKFace chip (eyes 40% of the chip apart) this
#: square is 1.6x the chip, so about 60% of every UTKFace crop was replicated-edge streaks, while
#: photos with real margins (20-50, All-Age-Faces, family photos) showed real context: the network
#: learned the streaks as "UTKFace, any age" and context as "20-50, an adult".
LOOSE_AGE_TEMPLATE = FaceTemplate()

#: The age crop, forehead to chin: the square a UTKFace chip holds (measured on 2,000 chips: eyes
#: 0.40 of the chip apart, their centre at 0.30 of its height, mouth 0.97 eye distances lower), so
#: crops of chips and of photos with margins show the same part of a face and no border fill.
#: Eyes 41% of the side apart; at 128 px that is 52 px between the eyes.
TIGHT_AGE_TEMPLATE = FaceTemplate(right_eye=(0.295, 0.33), left_eye=(0.705, 0.33), mouth=(0.5, 0.78))

#: Between the two (opt-in, ``--face-crop medium``): the tight template scaled by 0.8 about the crop's centre,
#: eyes 33% of the side apart, so the crop shows the hairline, some hair and the top of the neck (cues
#: of age the tight crop cuts); on a UTKFace chip 7-11% of the crop's sides and top lie past the chip (border fill).
MEDIUM_AGE_TEMPLATE = FaceTemplate(right_eye=(0.336, 0.364), left_eye=(0.664, 0.364), mouth=(0.5, 0.724))

FACE_TEMPLATES = {"tight": TIGHT_AGE_TEMPLATE, "medium": MEDIUM_AGE_TEMPLATE, "loose": LOOSE_AGE_TEMPLATE}

#: The template new age models are trained with.
AGE_TEMPLATE = TIGHT_AGE_TEMPLATE

#: Where the anchors sit in a UTKFace chip (fractions of its side; measured on 2,000 chips), and its size.
UTKFACE_CHIP = FaceTemplate(right_eye=(0.282, 0.295), left_eye=(0.678, 0.295), mouth=(0.48, 0.68))
CHIP_SIZE = 200


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991) taking ``src`` points to ``dst``.

    Returns a 2x3 matrix M with ``dst ~= M @ [x, y, 1]``. Reflections are excluded so a face
    is never mirrored.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two matching (N>=2, 2) point arrays, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("source points coincide; cannot estimate a transform")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def apply_transform(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a 2x3 affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def invert_transform(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    return cv2.invertAffineTransform(np.asarray(m, dtype=np.float64))


def chip_insets(template: FaceTemplate, chip: FaceTemplate = UTKFACE_CHIP) -> tuple[float, float, float, float]:
    """Where a chip cut around the face with ``chip``'s geometry ends inside a crop cut with
    ``template``: (left, top, right, bottom) as fractions of the crop's side, 0 where the chip
    reaches past the crop. Beyond these lines a crop of a chip is border fill; a crop of a photo
    shows hair, neck or background there."""
    to_crop = similarity_transform(chip.points(1), template.points(1))
    (x0, y0), (x1, y1) = apply_transform(to_crop, np.array([[0.0, 0.0], [1.0, 1.0]]))
    return (max(0.0, float(x0)), max(0.0, float(y0)), max(0.0, float(1.0 - x1)), max(0.0, float(1.0 - y1)))


def anchors(right_eye, left_eye, mouth) -> np.ndarray:
    return np.array([right_eye, left_eye, mouth], dtype=np.float64)


def align_face(
    rgb: np.ndarray, anchor_points: np.ndarray, size: int, template: FaceTemplate = AGE_TEMPLATE
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``rgb`` so the anchors land on the template; returns (crop, 2x3 matrix from ``rgb`` pixels)."""
    m = similarity_transform(anchor_points, template.points(size))
    return warp_crop(rgb, m, size), m


#: Below this many crop px per image px, a bilinear warp reads only some of the source pixels
#: (OpenCV's ``warpAffine`` has no area filter: it treats INTER_AREA as bilinear) and the crop
#: aliases: fine texture such as skin and wrinkles turns into noise whose strength depends on the
#: decode path. Such regions are first shrunk by a power of two with area averaging, as a
#: JPEG DCT draft shrinks them, so the full and the reduced decode give the same crop.
MIN_DIRECT_SCALE = 0.5


def shrink_for_warp(rgb: np.ndarray, m: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, matrix) to warp instead of (``rgb``, ``m``): the crop's region area-averaged when ``m`` shrinks it past 2x.

    ``k`` is the largest power of two that leaves the warp at or under 1x, the factor a JPEG draft
    decode would use, so a photo decoded in full and one decoded at 1/2 or 1/4 reach the warp
    alike. The region is cut on a grid of ``k`` (so the result does not depend on where the
    footprint starts), shrunk ``k`` times with ``cv2.INTER_AREA`` and the matrix
    rewritten for it: small pixel centre j sits at full centre ``x0 + k * j + (k - 1) / 2``.
    Crops at ``MIN_DIRECT_SCALE`` and above come back unchanged, bit for bit what a plain warp gives.
    Training crops are cut by this same code (their cache is keyed on ``data.crops.CROP_VERSION``).
    """
    scale = _scale(m)
    k = 2 ** int(np.floor(np.log2(1.0 / scale))) if scale < MIN_DIRECT_SCALE else 1
    if k < 2:
        return rgb, m
    h, w = rgb.shape[:2]
    fx0, fy0, fx1, fy1 = crop_footprint(m, size)
    x0, y0 = max(0, (int(np.floor(fx0)) // k - 1) * k), max(0, (int(np.floor(fy0)) // k - 1) * k)
    x1, y1 = min(w, (int(np.ceil(fx1)) // k + 2) * k), min(h, (int(np.ceil(fy1)) // k + 2) * k)
    nw, nh = (x1 - x0) // k, (y1 - y0) // k
    if nw < 2 or nh < 2:  # the crop lies (almost) outside the photo: nothing to average
        return rgb, m
    small = cv2.resize(rgb[y0 : y0 + nh * k, x0 : x0 + nw * k], (nw, nh), interpolation=cv2.INTER_AREA)
    a = m[:, :2]
    origin = np.array([x0 + (k - 1) / 2, y0 + (k - 1) / 2])
    return small, np.hstack([a * k, (a @ origin + m[:, 2])[:, None]])


def warp_crop(rgb: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` px square that the 2x3 matrix ``m`` cuts from ``rgb``, without aliasing.

    Pixels outside the photo are filled by edge replication, which keeps borders of
    pre-cropped training faces from turning into black frames the model could learn.
    """
    src, m = shrink_for_warp(rgb, m, size)
    return cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _scale(m: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


def crop_scale(m: np.ndarray) -> float:
    """Crop pixels per image pixel of a 2x3 crop transform: above 1 the crop enlarges its source and loses detail."""
    return _scale(m)


def crop_footprint(m: np.ndarray, size: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in image pixels of the area a ``size`` px crop cut with ``m`` reads from.

    Used to decode just that region at a finer scale; one pixel of margin covers the interpolation.
    """
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], dtype=np.float64)
    pts = apply_transform(invert_transform(m), corners)
    x0, y0 = pts.min(0) - 1
    x1, y1 = pts.max(0) + 1
    return float(x0), float(y0), float(x1), float(y1)


@dataclass(frozen=True)
class EyeCropGeometry:
    """How a single-eye crop is cut: a square centred on the eye, ``side`` inter-ocular distances wide.

    ``dy`` moves the eye up (positive) or down (negative) in the crop, as a fraction of the side.
    The defaults were chosen by measurement: ``benchmarks/eyes_on_faces.py --split val --sweep``
    cut crops from UTKFace *validation* faces with 28 geometries and scored the eye model on
    them; side 0.7 / dy -0.1 (eye a little below the centre, brow in view, as in the Kaggle
    crops) gave the best ROC-AUC (0.870; 0.5 px-wide crops 0.815, 1.0-wide 0.825).
    """

    side: float = 0.7
    dy: float = -0.1

    #: The crops one face gives, in order: the person's own left eye, then the right one.
    sides: ClassVar[tuple[str, ...]] = ("left", "right")

    def meta(self) -> dict:
        """How a model's metadata names it (``meta["eye_crop"]``)."""
        return {"side": self.side, "dy": self.dy}

    def transform(self, anchor_points: np.ndarray, side: str, size: int) -> np.ndarray:
        """2x3 matrix cutting eye ``side`` ('left' / 'right', the person's own) of a face given by its anchors."""
        right, left, mouth = np.asarray(anchor_points, dtype=np.float64)
        eye, other = (left, right) if side == "left" else (right, left)
        return eye_crop_transform(eye, other, size, self, mouth)


#: The first eye crop, matched to the Kaggle single-eye crops (eye and brow, little else).
TIGHT_EYE_GEOMETRY = EyeCropGeometry(side=0.7, dy=-0.1)
#: Eye, whole brow, eyelid fold and the skin around them: a square one inter-ocular distance wide,
#: reaching from the bridge of the nose to the temple. Cut from small faces in whole photos
#: (All-Age-Faces eyes are ~40 px apart), the tight crop holds ~28 source pixels; this one ~40.
WIDE_EYE_GEOMETRY = EyeCropGeometry(side=1.0, dy=-0.05)
EYE_GEOMETRIES = {"tight": TIGHT_EYE_GEOMETRY, "wide": WIDE_EYE_GEOMETRY}

DEFAULT_EYE_GEOMETRY = TIGHT_EYE_GEOMETRY


@dataclass(frozen=True)
class BothEyesGeometry:
    """One crop holding both eyes: a rectangle ``width`` x ``height`` inter-ocular distances, centred between
    the eyes with the eye line ``below`` eye distances under its middle, squeezed into the model's square.

    Why: measured against two single-eye answers of the 1.6-wide crop (``benchmarks/eyes_both_crop.py``,
    docs/experiments.md), one crop spanning both (2.6 x 1.6: the two single crops' span and height) gave a
    lower validation log loss (0.2090 -> 0.1967) and children's and teenagers' faces 2-5 points more often
    right, at about the same pixels per face (one 96 px square against two 64 px ones).
    """

    width: float = 2.6
    height: float = 1.6
    below: float = 0.08

    #: One crop per face.
    sides: ClassVar[tuple[str, ...]] = ("both",)

    def meta(self) -> dict:
        """How a model's metadata names it (``meta["eye_crop"]``)."""
        return {"both_eyes": True, "width": self.width, "height": self.height, "below": self.below}

    def transform(self, anchor_points: np.ndarray, side: str, size: int) -> np.ndarray:
        """2x3 matrix cutting the crop of both eyes (``side`` is 'both') of a face given by its anchors."""
        right, left, mouth = np.asarray(anchor_points, dtype=np.float64)
        return both_eyes_transform(right, left, mouth, size, self)


BOTH_EYES_GEOMETRY = BothEyesGeometry()

#: How an eye model's crops are cut from a face: one crop per eye, or one holding both.
EyeGeometry = EyeCropGeometry | BothEyesGeometry


def eye_geometry_from_meta(crop: dict | None) -> EyeGeometry:
    """The geometry an eye model's metadata names (``meta["eye_crop"]``); models from before the option used the tight one."""
    if not crop:
        return TIGHT_EYE_GEOMETRY
    if crop.get("both_eyes"):
        return BothEyesGeometry(width=float(crop["width"]), height=float(crop["height"]), below=float(crop["below"]))
    return EyeCropGeometry(side=float(crop["side"]), dy=float(crop["dy"]))


def both_eyes_transform(right_eye: np.ndarray, left_eye: np.ndarray, mouth: np.ndarray, size: int,
                        geometry: BothEyesGeometry = BOTH_EYES_GEOMETRY) -> np.ndarray:
    """2x3 matrix cutting ``geometry``'s rectangle around both eyes into a ``size`` px square, upright by the mouth
    (the eye line alone cannot tell up from down), scaled by the inter-ocular distance."""
    right, left, mouth = (np.asarray(p, dtype=np.float64) for p in (right_eye, left_eye, mouth))
    vec = left - right
    dist = float(np.hypot(*vec))
    if dist < 1e-6:
        raise ValueError("eye points coincide")
    angle = np.arctan2(vec[1], vec[0])
    centre = (right + left) / 2
    down = mouth - centre
    if -np.sin(angle) * down[0] + np.cos(angle) * down[1] < 0:  # mouth would land above the eyes: turn over
        angle += np.pi
    c, s = np.cos(-angle), np.sin(-angle)
    sx, sy = size / (geometry.width * dist), size / (geometry.height * dist)
    a = np.diag([sx, sy]) @ np.array([[c, -s], [s, c]])
    target = np.array([size / 2.0, size / 2.0 + geometry.below * dist * sy])
    return np.hstack([a, (target - a @ centre)[:, None]])


def parse_eye_geometry(text: str) -> EyeGeometry:
    """A named geometry (``tight``, ``wide``: one crop per eye; ``both``: one crop of both eyes) or ``SIDE,DY``
    (e.g. ``1.3,-0.05``, one crop per eye) for experiments."""
    if text == "both":
        return BOTH_EYES_GEOMETRY
    if text in EYE_GEOMETRIES:
        return EYE_GEOMETRIES[text]
    try:
        side, dy = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--eye-crop must be one of {', '.join(EYE_GEOMETRIES)}, both or SIDE,DY (e.g. 1.3,-0.05), "
                         f"got {text!r}") from None
    if not (0.2 <= side <= 3.0 and -0.5 <= dy <= 0.5):
        raise ValueError(f"--eye-crop {text}: side must be in [0.2, 3] eye distances and dy in [-0.5, 0.5]")
    return EyeCropGeometry(side=side, dy=dy)


def eye_crop_transform(
    eye: np.ndarray, other_eye: np.ndarray, size: int, geometry: EyeCropGeometry = DEFAULT_EYE_GEOMETRY,
    mouth: np.ndarray | None = None,
) -> np.ndarray:
    """2x3 matrix that cuts an upright square crop of ``size`` px around ``eye``.

    The crop is rotated so the line between the eyes is horizontal (the training crops are
    upright) and scaled by the inter-ocular distance, so it does not depend on image size.
    The eye line alone cannot tell up from down; with ``mouth`` given, the crop is turned so
    the mouth lies below the eyes, which keeps it upright at any head roll (without it,
    faces rolled past 90 degrees would give upside-down crops).
    """
    eye = np.asarray(eye, dtype=np.float64)
    other = np.asarray(other_eye, dtype=np.float64)
    vec = other - eye
    dist = float(np.hypot(*vec))
    if dist < 1e-6:
        raise ValueError("eye points coincide")
    angle = np.arctan2(vec[1], vec[0])  # rotating by -angle makes the eye line point to +x
    if mouth is not None:
        down = np.asarray(mouth, dtype=np.float64) - (eye + other) / 2
        if -np.sin(angle) * down[0] + np.cos(angle) * down[1] < 0:  # mouth would land above the eyes
            angle += np.pi
    elif vec[0] < 0:  # no mouth: assume a roll under 90 degrees, i.e. up is up in the image
        angle = np.arctan2(-vec[1], -vec[0])
    side_px = geometry.side * dist
    scale = size / side_px
    c, s = np.cos(-angle) * scale, np.sin(-angle) * scale
    rot = np.array([[c, -s], [s, c]])
    centre = np.array([size / 2.0, size / 2.0 - geometry.dy * size])
    t = centre - rot @ eye
    return np.hstack([rot, t[:, None]])


def cut_eye(
    rgb: np.ndarray, eye: np.ndarray, other_eye: np.ndarray, size: int, geometry: EyeCropGeometry = DEFAULT_EYE_GEOMETRY,
    mouth: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Cut one eye crop; returns (crop, axis-aligned box of the crop in image pixels)."""
    return _crop_and_box(rgb, eye_crop_transform(eye, other_eye, size, geometry, mouth), size)


def cut_both_eyes(
    rgb: np.ndarray, right_eye: np.ndarray, left_eye: np.ndarray, mouth: np.ndarray, size: int,
    geometry: BothEyesGeometry = BOTH_EYES_GEOMETRY,
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Cut the crop holding both eyes; returns (crop, axis-aligned box of the crop in image pixels)."""
    return _crop_and_box(rgb, both_eyes_transform(right_eye, left_eye, mouth, size, geometry), size)


def cut_eye_region(rgb: np.ndarray, anchor_points: np.ndarray, side: str, size: int, geometry: EyeGeometry
                   ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Cut crop ``side`` (one of ``geometry.sides``) of the face with these anchors; returns (crop, box in image pixels)."""
    return _crop_and_box(rgb, geometry.transform(anchor_points, side, size), size)


def _crop_and_box(rgb: np.ndarray, m: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    crop = warp_crop(rgb, m, size)
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], dtype=np.float64)
    img_corners = apply_transform(invert_transform(m), corners)
    x0, y0 = img_corners.min(0)
    x1, y1 = img_corners.max(0)
    return crop, (float(x0), float(y0), float(x1 - x0), float(y1 - y0))
