"""The annotated image: a numbered badge on every face and labels that never overlap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from facelens.schema import AgeEstimate, EyeEstimate, Face, SexEstimate
from facelens.serve.render import _overlaps, annotate, badge_rects, face_label, place_labels


def _inside(rect, width, height) -> bool:
    return rect[0] >= 0 and rect[1] >= 0 and rect[2] <= width + 1e-9 and rect[3] <= height + 1e-9


def _check(rects, taken, width, height) -> None:
    got = [r for r in rects if r is not None]
    assert all(_inside(r, width, height) for r in got)
    for a, b in itertools.combinations(got, 2):
        assert not _overlaps(a, b), (a, b)
    for a in got:
        assert not any(_overlaps(a, t) for t in taken)


def test_labels_of_a_row_of_close_faces_do_not_overlap() -> None:
    boxes = [(20 + 70 * i, 100, 60, 60) for i in range(8)]  # the labels are wider than the gaps
    sizes = [(150, 20)] * 8
    badges = badge_rects(boxes, (16, 20), 640, 300)
    rects = place_labels(boxes, sizes, 640, 300, taken=badges)
    _check(rects, badges, 640, 300)
    assert sum(r is not None for r in rects) >= 4  # above and below, alternating, hold several


def test_a_lone_face_gets_its_label_above_and_at_the_top_edge_below() -> None:
    (r,) = place_labels([(100, 100, 50, 50)], [(80, 20)], 400, 400)
    assert r == (100, 80, 180, 100)
    (r,) = place_labels([(100, 5, 50, 50)], [(80, 20)], 400, 400)
    assert r == (100, 55, 180, 75)
    (r,) = place_labels([(380, 100, 20, 20)], [(80, 20)], 400, 400)  # pushed back inside on the right
    assert r[2] <= 400


def test_random_crowds_never_overlap() -> None:
    rng = np.random.default_rng(1)
    for _ in range(40):
        n = int(rng.integers(1, 25))
        boxes = [(float(rng.uniform(0, 560)), float(rng.uniform(0, 400)), 40.0, 40.0) for _ in range(n)]
        sizes = [(float(rng.uniform(40, 160)), 18.0) for _ in range(n)]
        badges = badge_rects(boxes, (14, 18), 600, 440)
        _check(place_labels(boxes, sizes, 600, 440, taken=badges), badges, 600, 440)


def test_a_label_too_big_for_the_image_is_left_out() -> None:
    assert place_labels([(10, 10, 20, 20)], [(500, 20)], 100, 100) == [None]


def _face(x: float, p_left: float = 0.9, p_right: float = 0.8) -> Face:
    eyes = (EyeEstimate(side="left", p_female=p_left, box=(x + 30, 30, 10, 10)),
            EyeEstimate(side="right", p_female=p_right, box=(x + 10, 30, 10, 10)))
    return Face(box=(x, 20, 50, 60), score=0.9, age=AgeEstimate(value=30, low=25, high=40), sex=SexEstimate(p_female=0.85, eyes=eyes))


def test_face_label_flags_disagreeing_eyes() -> None:
    assert face_label(1, _face(0)) == "#1 age 30 (25-40) P(female) 85%"
    assert face_label(2, _face(0, 0.9, 0.1)).endswith("eyes disagree")


@pytest.mark.parametrize("n", [1, 6])
def test_annotate_draws_a_badge_on_every_face(n: int) -> None:
    rgb = np.full((200, 70 * n + 20, 3), 255, np.uint8)
    faces = [_face(10 + 70 * i) for i in range(n)]
    img = np.asarray(annotate(rgb, faces))
    assert img.shape == rgb.shape
    for f in faces:  # the badge's dark fill (around its number) sits at each box's top-left corner
        x, y = int(f.box[0]), int(f.box[1])
        patch = img[y : y + 12, x : x + 12]
        assert (patch.max(axis=2) < 60).mean() > 0.4, (x, y)
