"""Alignment geometry: similarity transforms, face alignment, eye-crop transforms."""

from __future__ import annotations

import numpy as np
import pytest

from facelens.face.align import (
    AGE_TEMPLATE,
    BOTH_EYES_GEOMETRY,
    DEFAULT_EYE_GEOMETRY,
    BothEyesGeometry,
    EyeCropGeometry,
    align_face,
    anchors,
    apply_transform,
    both_eyes_transform,
    cut_both_eyes,
    cut_eye,
    eye_crop_transform,
    invert_transform,
    shrink_for_warp,
    similarity_transform,
    warp_crop,
)


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a) * scale, np.sin(a) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def _face_points(centre, iod: float, roll_deg: float) -> dict[str, np.ndarray]:
    """Landmarks of an upright face (person's right eye on the image left), rolled about its centre."""
    upright = {
        "right_eye": np.array([-iod / 2, 0.0]),
        "left_eye": np.array([iod / 2, 0.0]),
        "mouth": np.array([0.0, 1.2 * iod]),
        "forehead": np.array([0.0, -0.8 * iod]),
    }
    m = _similarity(roll_deg, 1.0, *centre)
    return {k: apply_transform(m, v[None])[0] for k, v in upright.items()}


# ---------------------------------------------------------------- similarity_transform


@pytest.mark.parametrize(("angle", "scale", "tx", "ty"), [(0, 1, 0, 0), (30, 1.7, 5, -3), (-75, 0.4, 120.5, 33), (170, 2.5, -9, 4)])
def test_similarity_transform_recovers_known_transform(angle, scale, tx, ty):
    truth = _similarity(angle, scale, tx, ty)
    src = np.random.default_rng(1).uniform(-50, 150, size=(5, 2))
    dst = apply_transform(truth, src)
    np.testing.assert_allclose(similarity_transform(src, dst), truth, atol=1e-9)


def test_similarity_transform_two_points_exact():
    truth = _similarity(-20, 3.0, 7, 11)
    src = np.array([[10.0, 10.0], [30.0, 15.0]])
    np.testing.assert_allclose(apply_transform(similarity_transform(src, apply_transform(truth, src)), src),
                               apply_transform(truth, src), atol=1e-9)


def test_similarity_transform_rejects_coincident_points():
    src = np.array([[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]])
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(src, np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))


def test_similarity_transform_rejects_bad_shapes():
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((3, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((1, 2)), np.zeros((1, 2)))


def test_similarity_transform_never_reflects():
    src = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 12.0], [2.0, 7.0]])
    mirrored = src * np.array([-1.0, 1.0])  # a left-right mirror image of the points
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    # Without reflection the best fit cannot reproduce the mirror exactly.
    assert np.abs(apply_transform(m, src) - mirrored).max() > 1.0


def test_invert_transform_round_trip():
    m = _similarity(40, 1.3, 8, -2)
    pts = np.array([[1.0, 2.0], [30.0, -4.0]])
    np.testing.assert_allclose(apply_transform(invert_transform(m), apply_transform(m, pts)), pts, atol=1e-9)


# ---------------------------------------------------------------- align_face


def _dots_image(points: dict[str, np.ndarray], shape=(300, 400)) -> np.ndarray:
    """Black image with a red, a green and a blue dot (radius 3) at the three anchor points."""
    img = np.zeros((*shape, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for channel, key in enumerate(("right_eye", "left_eye", "mouth")):
        x, y = points[key]
        img[(xx - x) ** 2 + (yy - y) ** 2 <= 9, channel] = 255
    return img


def _centroid(channel: np.ndarray) -> np.ndarray:
    w = channel.astype(np.float64)
    w[w < 64] = 0
    yy, xx = np.mgrid[0 : channel.shape[0], 0 : channel.shape[1]]
    return np.array([(xx * w).sum() / w.sum(), (yy * w).sum() / w.sum()])


@pytest.mark.parametrize("roll", [-30.0, 0.0, 25.0])
def test_align_face_puts_anchors_on_template(roll):
    pts = _face_points(centre=(210, 120), iod=60, roll_deg=roll)
    img = _dots_image(pts)
    anchor_points = anchors(pts["right_eye"], pts["left_eye"], pts["mouth"])
    size = 112
    crop, m = align_face(img, anchor_points, size)
    assert crop.shape == (size, size, 3)
    target = AGE_TEMPLATE.points(size)
    mapped = apply_transform(m, anchor_points)
    # The three template points are not an exact similarity image of our face, so allow a few px.
    assert np.abs(mapped - target).max() < 4
    for channel in range(3):
        np.testing.assert_allclose(_centroid(crop[..., channel]), mapped[channel], atol=1.0)
    # The person's right eye stays on the crop's left, and the crop is upright (eyes above mouth).
    assert mapped[0, 0] < mapped[1, 0]
    assert mapped[2, 1] > mapped[:2, 1].max()


def test_align_face_exact_when_face_matches_template():
    size = 100
    truth = _similarity(15, 2.0, 30, 40)
    template = AGE_TEMPLATE.points(size)
    src = apply_transform(invert_transform(truth), template)  # a face that is exactly the template, moved
    crop, m = align_face(np.zeros((200, 200, 3), np.uint8), src, size)
    np.testing.assert_allclose(apply_transform(m, src), template, atol=1e-9)


# ---------------------------------------------------------------- shrinking before the warp


def _plain_warp(rgb: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.0, 2.5])
def test_warp_crop_is_a_plain_warp_from_half_scale_up(scale):
    """Crops at 0.5 crop px per image px and above are bit-identical to before: cached training crops stay valid."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    m = _similarity(12, scale, -40, -30)
    assert shrink_for_warp(img, m, 64)[0] is img
    assert (warp_crop(img, m, 64) == _plain_warp(img, m, 64)).all()


def test_warp_crop_averages_instead_of_aliasing():
    """A 1 px checkerboard shrunk 4x is flat grey when averaged; a bilinear warp alone picks pixels and keeps contrast."""
    board = ((np.indices((800, 800)).sum(0) % 2) * 200 + 20).astype(np.uint8)
    img = np.repeat(board[..., None], 3, axis=2)
    m = _similarity(7, 0.25, 10, 12)
    crop = warp_crop(img, m, 128).astype(float)
    assert abs(crop.mean() - 120) < 2 and crop.std() < 3
    assert _plain_warp(img, m, 128).astype(float).std() > 20


@pytest.mark.parametrize("scale", [0.12, 0.26, 0.45])
def test_shrunk_warp_keeps_the_anchors_in_place(scale):
    """The rewritten matrix maps the shrunk pixels where the original maps the full ones: dots land on the template."""
    iod = AGE_TEMPLATE.points(128)[1, 0] - AGE_TEMPLATE.points(128)[0, 0]
    pts = _face_points(centre=(900, 700), iod=iod / scale, roll_deg=20)
    img = np.zeros((1400, 1800, 3), np.uint8)
    yy, xx = np.mgrid[0:1400, 0:1800]
    for channel, key in enumerate(("right_eye", "left_eye", "mouth")):
        x, y = pts[key]
        img[(xx - x) ** 2 + (yy - y) ** 2 <= (6 / scale) ** 2, channel] = 255  # dots ~12 crop px across
    anchor_points = anchors(pts["right_eye"], pts["left_eye"], pts["mouth"])
    crop, m = align_face(img, anchor_points, 128)
    assert shrink_for_warp(img, m, 128)[0].shape[0] < img.shape[0] / 1.9  # the shrink really happened
    mapped = apply_transform(m, anchor_points)
    for channel in range(3):
        np.testing.assert_allclose(_centroid(crop[..., channel]), mapped[channel], atol=0.5)


def test_shrink_leaves_crops_outside_the_photo_alone():
    img = np.zeros((100, 100, 3), np.uint8)
    m = _similarity(0, 0.2, 500, 500)  # the crop reads far outside the photo
    assert shrink_for_warp(img, m, 32)[0] is img


# ---------------------------------------------------------------- eye crops


@pytest.mark.parametrize("roll", [-30.0, 0.0, 30.0])
@pytest.mark.parametrize("side", ["right_eye", "left_eye"])
def test_eye_crop_is_upright_for_both_eyes(roll, side):
    pts = _face_points(centre=(300, 200), iod=80, roll_deg=roll)
    other = "left_eye" if side == "right_eye" else "right_eye"
    size = 64
    m = eye_crop_transform(pts[side], pts[other], size)
    eye_c, other_c, mouth_c, forehead_c = apply_transform(
        m, np.stack([pts[side], pts[other], pts["mouth"], pts["forehead"]])
    )
    # The eye sits at the crop centre (shifted by dy), the inter-ocular line is horizontal.
    np.testing.assert_allclose(eye_c, [size / 2, size / 2 - DEFAULT_EYE_GEOMETRY.dy * size], atol=1e-9)
    assert abs(other_c[1] - eye_c[1]) < 1e-9
    # The other eye lies where it does on an upright face: person's left eye to the image right.
    if side == "right_eye":
        assert other_c[0] > eye_c[0]
    else:
        assert other_c[0] < eye_c[0]
    # Upright: the mouth is below, the forehead above.
    assert mouth_c[1] > eye_c[1] + 10
    assert forehead_c[1] < eye_c[1] - 10
    assert np.linalg.det(m[:, :2]) > 0  # no mirror


@pytest.mark.parametrize("roll", [-150.0, -120.0, -90.0, -45.0, 0.0, 60.0, 100.0, 135.0, 180.0])
@pytest.mark.parametrize("side", ["right_eye", "left_eye"])
def test_eye_crop_with_mouth_is_upright_at_any_roll(roll, side):
    pts = _face_points(centre=(300, 300), iod=80, roll_deg=roll)
    other = "left_eye" if side == "right_eye" else "right_eye"
    m = eye_crop_transform(pts[side], pts[other], 64, mouth=pts["mouth"])
    eye_c, other_c, mouth_c, forehead_c = apply_transform(
        m, np.stack([pts[side], pts[other], pts["mouth"], pts["forehead"]])
    )
    assert mouth_c[1] > eye_c[1] + 10 and forehead_c[1] < eye_c[1] - 10
    assert abs(other_c[1] - eye_c[1]) < 1e-9
    assert (other_c[0] > eye_c[0]) == (side == "right_eye")  # as on an upright face
    assert np.linalg.det(m[:, :2]) > 0


def test_eye_crop_scales_with_interocular_distance():
    size = 64
    geometry = EyeCropGeometry(side=0.8, dy=0.0)
    scales = []
    for iod in (40.0, 80.0, 160.0):
        m = eye_crop_transform(np.array([100.0, 100.0]), np.array([100.0 + iod, 100.0]), size, geometry)
        scales.append(np.sqrt(np.linalg.det(m[:, :2])))
        # The crop spans `side` inter-ocular distances of the image.
        np.testing.assert_allclose(scales[-1], size / (geometry.side * iod))
    np.testing.assert_allclose(scales[0] / scales[1], 2.0)
    np.testing.assert_allclose(scales[1] / scales[2], 2.0)


def test_eye_crop_rejects_coincident_eyes():
    with pytest.raises(ValueError):
        eye_crop_transform(np.array([10.0, 10.0]), np.array([10.0, 10.0]), 64)


@pytest.mark.parametrize("roll", [-30.0, 30.0])
def test_cut_eye_box_contains_the_eye(roll):
    pts = _face_points(centre=(200, 150), iod=70, roll_deg=roll)
    img = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for side, other in (("right_eye", "left_eye"), ("left_eye", "right_eye")):
        crop, (x, y, w, h) = cut_eye(img, pts[side], pts[other], 64)
        assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
        ex, ey = pts[side]
        assert x < ex < x + w and y < ey < y + h
        # A rotated square's bounding box: at least the square's side, at most side * sqrt(2).
        side_px = DEFAULT_EYE_GEOMETRY.side * 70
        assert side_px - 1e-6 <= w <= side_px * np.sqrt(2) + 1e-6
        assert abs(w - h) < 1e-6


def test_cut_eye_samples_the_eye_pixel():
    img = np.zeros((200, 200, 3), dtype=np.uint8)
    img[95:106, 55:66] = 255  # a white square on the right eye
    crop, _ = cut_eye(img, np.array([60.0, 100.0]), np.array([140.0, 100.0]), 64, EyeCropGeometry(side=0.65, dy=0.0))
    assert crop[32, 32].min() == 255
    assert crop[2, 2].max() == 0


@pytest.mark.parametrize("roll", [-150.0, -60.0, 0.0, 45.0, 100.0, 180.0])
def test_both_eyes_crop_puts_the_eyes_where_its_geometry_says_at_any_roll(roll):
    pts = _face_points(centre=(300, 300), iod=80, roll_deg=roll)
    g = BothEyesGeometry(width=2.6, height=1.6, below=0.08)
    size = 96
    m = both_eyes_transform(pts["right_eye"], pts["left_eye"], pts["mouth"], size, g)
    right_c, left_c, mouth_c, forehead_c = apply_transform(
        m, np.stack([pts["right_eye"], pts["left_eye"], pts["mouth"], pts["forehead"]]))
    # The person's right eye on the left, as on an upright face; both on one line, below the middle by `below`.
    np.testing.assert_allclose(right_c, [size / 2 - size / (2 * g.width), size / 2 + size * g.below / g.height], atol=1e-9)
    np.testing.assert_allclose(left_c, [size / 2 + size / (2 * g.width), size / 2 + size * g.below / g.height], atol=1e-9)
    assert mouth_c[1] > right_c[1] + 10 and forehead_c[1] < right_c[1] - 10
    assert np.linalg.det(m[:, :2]) > 0  # squeezed, never mirrored


def test_both_eyes_crop_box_holds_both_eyes_and_is_wider_than_tall():
    pts = _face_points(centre=(200, 150), iod=60, roll_deg=0.0)
    img = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    crop, (x, y, w, h) = cut_both_eyes(img, pts["right_eye"], pts["left_eye"], pts["mouth"], 96)
    assert crop.shape == (96, 96, 3) and crop.dtype == np.uint8
    for eye in ("right_eye", "left_eye"):
        ex, ey = pts[eye]
        assert x < ex < x + w and y < ey < y + h
    np.testing.assert_allclose([w, h], [BOTH_EYES_GEOMETRY.width * 60, BOTH_EYES_GEOMETRY.height * 60], atol=1e-6)
    with pytest.raises(ValueError, match="coincide"):
        both_eyes_transform(pts["right_eye"], pts["right_eye"], pts["mouth"], 96)
