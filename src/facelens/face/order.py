"""Reading order for faces: rows from top to bottom, each row from left to right.

Why: the detector returns faces by size (or score), so "face 1" in a group photo could be
the rightmost person in the back row. People number faces the way they read: a row at a
time. Pure geometry on boxes, so it is easy to test and shared by every output (API, CLI,
service, web page, annotated image).
"""

from __future__ import annotations

from collections.abc import Sequence

#: Two faces are in one row when their vertical centres differ by at most this fraction of the
#: row's mean face height (about half a face: heads in one row of a group photo sit at roughly
#: the same height, while the next row is about a face height lower).
ROW_TOLERANCE = 0.5

Box = tuple[float, float, float, float]  # x, y, w, h


def group_rows(boxes: Sequence[Box], tolerance: float = ROW_TOLERANCE) -> list[list[int]]:
    """Indices of ``boxes`` grouped into rows, top row first, each row left to right.

    Boxes are taken by vertical centre; a box joins the current row when its centre is within
    ``tolerance`` x the row's mean height of the row's mean centre, else it starts a new row.
    Comparing with the row's mean (not the last box added) keeps a slowly descending line of
    faces from chaining into one endless row.
    """
    by_centre = sorted(range(len(boxes)), key=lambda i: (boxes[i][1] + boxes[i][3] / 2, boxes[i][0]))
    rows: list[list[int]] = []
    for i in by_centre:
        cy = boxes[i][1] + boxes[i][3] / 2
        if rows:
            row = rows[-1]
            row_cy = sum(boxes[j][1] + boxes[j][3] / 2 for j in row) / len(row)
            row_h = sum(boxes[j][3] for j in row) / len(row)
            if abs(cy - row_cy) <= tolerance * max(row_h, boxes[i][3]):
                row.append(i)
                continue
        rows.append([i])
    return [sorted(row, key=lambda j: boxes[j][0] + boxes[j][2] / 2) for row in rows]


def reading_order(boxes: Sequence[Box], tolerance: float = ROW_TOLERANCE) -> list[int]:
    """Indices of ``boxes`` in reading order (see ``group_rows``)."""
    return [i for row in group_rows(boxes, tolerance) for i in row]
