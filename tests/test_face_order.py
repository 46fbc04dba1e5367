"""Faces in reading order: rows top to bottom, each row left to right."""

from __future__ import annotations

import numpy as np

from facelens.face.order import group_rows, reading_order


def test_one_row_left_to_right_whatever_the_input_order() -> None:
    boxes = [(300, 100, 50, 60), (10, 110, 50, 60), (150, 95, 50, 60)]  # small vertical jitter
    assert reading_order(boxes) == [1, 2, 0]


def test_two_rows_top_row_first() -> None:
    # back row (higher in the photo, smaller faces), front row lower; given in detector (size) order
    front = [(400, 300, 80, 90), (50, 310, 80, 90), (220, 290, 80, 90)]
    back = [(120, 150, 60, 70), (330, 160, 60, 70)]
    boxes = front + back
    assert group_rows(boxes) == [[3, 4], [1, 2, 0]]
    assert reading_order(boxes) == [3, 4, 1, 2, 0]


def test_half_a_face_height_separates_rows() -> None:
    # centres 20 px apart with 60 px faces: one row; 40 px apart: two rows
    assert group_rows([(100, 0, 60, 60), (0, 20, 60, 60)]) == [[1, 0]]
    assert group_rows([(100, 0, 60, 60), (0, 40, 60, 60)]) == [[0], [1]]


def test_a_descending_line_does_not_chain_into_one_row() -> None:
    # each face 25 px lower than the previous (under half a face from its neighbour), 6 faces
    boxes = [(i * 70, i * 25, 60, 60) for i in range(6)]
    rows = group_rows(boxes)
    assert len(rows) > 1
    assert reading_order(boxes) == list(range(6))  # still top to bottom


def test_empty_and_single() -> None:
    assert reading_order([]) == []
    assert reading_order([(5, 5, 10, 10)]) == [0]


def test_every_index_exactly_once_on_random_boxes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        boxes = [tuple(float(v) for v in (*rng.uniform(0, 1000, 2), *rng.uniform(10, 120, 2))) for _ in range(n)]
        order = reading_order(boxes)
        assert sorted(order) == list(range(n))
        rows = group_rows(boxes)
        for row in rows:  # left to right inside each row
            cx = [boxes[i][0] + boxes[i][2] / 2 for i in row]
            assert cx == sorted(cx)
        means = [np.mean([boxes[i][1] + boxes[i][3] / 2 for i in row]) for row in rows]
        assert means == sorted(means)  # rows top to bottom
