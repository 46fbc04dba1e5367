"""Photos decoded at a reduced scale, with every coordinate still in full-image pixels.

Why: a 24 MP camera JPEG costs ~5x the rest of the pipeline to decode and shrink in full, while
detection runs at 512 px and the models see 128 px (age) and 64 px (eye) crops. JPEG can be
decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's ``Image.draft``) for a fraction of
the time and memory. A ``ReducedImage`` is such a decode: the upright pixels at some scale, the
map from its pixels to the full upright photo's pixels, and a way to decode a region at a finer
scale when a face is too small to keep its detail at this one.

Conventions. ``factor`` is full-image pixels per decoded pixel (1, 2, 4 or 8). Coordinates are
continuous "edge" coordinates (pixel ``i`` spans ``[i, i + 1)``), as the detector maps its own
downscaling; OpenCV's warps put pixel ``i``'s centre at ``i``, so warps use
``from_full_centre``, which is the same map written for centres. The map is a pure scale plus
offset: EXIF rotation turns the decoded image exactly as it turns the full one, so the
rotations cancel, but a flipped axis whose length is not a multiple of the factor leaves an
offset (the last decoded column covers fewer full pixels).

Everything here but ``ReducedImage.finer`` is pure geometry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Scales a JPEG can be decoded at in the DCT domain, coarsest first.
DRAFT_FACTORS = (8, 4, 2, 1)
#: EXIF orientation -> the orientation that undoes it (5-7 are their own inverses, 6 and 8 swap).
INVERSE_ORIENTATION = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (edge coordinates, x1/y1 exclusive)


def upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) after EXIF ``orientation``: 5-8 turn the image a quarter, swapping the sides."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def orient_point(x: float, y: float, orientation: int, size: tuple[int, int]) -> tuple[float, float]:
    """Where edge point (x, y) of a stored image of ``size`` lands once turned upright.

    Matches ``facelens.images._ORIENT`` (and Pillow's ``ImageOps.exif_transpose``); checked
    pixel by pixel in tests/test_reduced.py.
    """
    w, h = size
    return {
        1: (x, y), 2: (w - x, y), 3: (w - x, h - y), 4: (x, h - y),
        5: (y, x), 6: (h - y, x), 7: (h - y, w - x), 8: (y, w - x),
    }[orientation]


def orient_box(box: Box, orientation: int, size: tuple[int, int]) -> Box:
    """The box covering the same pixels after turning a stored image of ``size`` upright."""
    x0, y0, x1, y1 = box
    xs, ys = zip(*(orient_point(x, y, orientation, size) for x, y in ((x0, y0), (x1, y1))), strict=True)
    return int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))


def draft_size(size: tuple[int, int], factor: int) -> tuple[int, int]:
    """Size libjpeg gives when decoding at 1/``factor``: every partial 8x8 block still yields pixels."""
    return -(-size[0] // factor), -(-size[1] // factor)


def factor_for_side(size: tuple[int, int], min_side: int) -> int:
    """Coarsest draft factor whose decode keeps the longest side at least ``min_side`` px."""
    for f in DRAFT_FACTORS:
        if max(draft_size(size, f)) >= min_side:
            return f
    return 1


def coarsest_factor(upscale: float, tolerance: float = 0.0) -> int:
    """Coarsest draft factor at which a warp of ``upscale`` crop px per full px still does not enlarge.

    A crop that is enlarged from its source is blurrier than the one cut from the full photo;
    one that is shrunk (``upscale * factor <= 1``) keeps all the detail it can hold. Faces too
    small even at full size give 1 (the full image).
    """
    for f in DRAFT_FACTORS:
        if upscale * f <= 1.0 + tolerance:
            return f
    return 1


def region_offset(orientation: int, full_stored: tuple[int, int], factor: int, origin: tuple[int, int],
                  region_stored: tuple[int, int]) -> tuple[float, float]:
    """Offset t in ``full = factor * p + t`` for a stored region decoded at 1/``factor`` and turned upright.

    ``origin`` is the region's top-left in stored decoded pixels, ``region_stored`` its stored
    size; the whole photo is ``origin=(0, 0)`` and ``region_stored=draft_size(full_stored, factor)``.
    The map is the region's upright origin carried back through the rotation, the scaling and
    the rotation of the full photo: the rotations cancel, only this offset is left.
    """
    inverse = INVERSE_ORIENTATION[orientation]
    x, y = orient_point(0.0, 0.0, inverse, upright_size(region_stored, orientation))
    return orient_point((x + origin[0]) * factor, (y + origin[1]) * factor, orientation, full_stored)


@dataclass
class ReducedImage:
    """Upright RGB pixels decoded at 1/``factor`` of a photo (or a region of it), mapped to full pixels.

    ``offset``: full = factor * p + offset for edge coordinates p in ``pixels``. ``full_size``:
    the upright photo's (width, height). ``refine(factor, boxes)``: decodes the full-image boxes
    at the finer ``factor`` (None for arrays and formats with no scaled decode, which
    are already at factor 1).
    """

    pixels: np.ndarray
    factor: int
    offset: tuple[float, float]
    full_size: tuple[int, int]
    refine: Callable[[int, list[Box]], list[ReducedImage]] | None = None

    @classmethod
    def of_array(cls, rgb: np.ndarray) -> ReducedImage:
        """A fully decoded photo: factor 1, no offset."""
        return cls(rgb, 1, (0.0, 0.0), (int(rgb.shape[1]), int(rgb.shape[0])))

    def to_full(self, points: np.ndarray) -> np.ndarray:
        """Edge coordinates in ``pixels`` -> full-image edge coordinates (detector output)."""
        return np.asarray(points, dtype=np.float64) * self.factor + np.asarray(self.offset)

    def from_full_centre(self, points: np.ndarray) -> np.ndarray:
        """Full-image points as OpenCV sees them (pixel centres at integers) -> the same in ``pixels``."""
        shift = np.asarray(self.offset) + (self.factor - 1) / 2
        return (np.asarray(points, dtype=np.float64) - shift) / self.factor

    def to_full_centre(self, points: np.ndarray) -> np.ndarray:
        """Inverse of ``from_full_centre``."""
        return np.asarray(points, dtype=np.float64) * self.factor + np.asarray(self.offset) + (self.factor - 1) / 2

    def finer(self, factor: int, boxes: list[tuple[float, float, float, float]]) -> list[ReducedImage]:
        """Each full-image box (x0, y0, x1, y1), from one decode at ``factor``; this image when it is not coarser.

        One decode for all the boxes (a decode costs a pass over the whole file), one small array
        per box (their union could be most of a 24 MP photo).
        """
        if factor >= self.factor or self.refine is None or not boxes:
            return [self] * len(boxes)
        w, h = self.full_size
        clipped = [(max(0, int(np.floor(b[0]))), max(0, int(np.floor(b[1]))), min(w, int(np.ceil(b[2]))),
                    min(h, int(np.ceil(b[3])))) for b in boxes]
        if any(x1 <= x0 or y1 <= y0 for x0, y0, x1, y1 in clipped):
            raise ValueError(f"a crop region lies outside the {w}x{h} photo: {boxes}")
        return self.refine(factor, clipped)
