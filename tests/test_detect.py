"""YuNet face detection: one face on a known photo, none on a blank image, full-resolution coordinates."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("yuface")

from facelens.face.detect import DEFAULT_MIN_SCORE, Detection, detect_faces  # noqa: E402
from facelens.images import load_image  # noqa: E402


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # public domain NASA portrait, 512x512 RGB


def _inside(point, box) -> bool:
    x, y, w, h = box
    return x <= point[0] <= x + w and y <= point[1] <= y + h


def _check_face_geometry(face: Detection) -> None:
    for name, point in face.landmarks().items():
        assert _inside(point, face.box), name
    # Person's right eye appears on the image left of an upright, non-mirrored photo.
    assert face.right_eye[0] < face.left_eye[0]
    assert face.mouth_right[0] < face.mouth_left[0]
    eyes_y = max(face.right_eye[1], face.left_eye[1])
    assert eyes_y < face.nose[1] < face.mouth[1]


def test_astronaut_has_one_face(astronaut):
    faces = detect_faces(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.6
    _check_face_geometry(face)
    # Her face is in the upper middle of the photo (by eye: roughly x 170..270, y 60..180).
    cx, cy = face.box[0] + face.box[2] / 2, face.box[1] + face.box[3] / 2
    assert 170 < cx < 270 and 60 < cy < 180
    anchors = face.anchor_points()
    assert anchors.shape == (3, 2)
    np.testing.assert_allclose(anchors[2], face.mouth)


def test_mirrored_photo_swaps_sides(astronaut):
    """Sides are the person's own: mirroring the photo mirrors the landmarks, not the labels."""
    face = detect_faces(astronaut)[0]
    mirrored = detect_faces(np.ascontiguousarray(astronaut[:, ::-1]))[0]
    w = astronaut.shape[1]
    assert mirrored.right_eye[0] < mirrored.left_eye[0]
    assert abs((w - mirrored.right_eye[0]) - face.left_eye[0]) < 6
    assert abs((w - mirrored.left_eye[0]) - face.right_eye[0]) < 6


def test_blank_image_has_no_face():
    assert detect_faces(np.full((480, 640, 3), 128, dtype=np.uint8)) == []


def test_min_score_filters(astronaut):
    assert detect_faces(astronaut, min_score=0.999) == []
    assert all(f.score >= DEFAULT_MIN_SCORE for f in detect_faces(astronaut))


def test_large_photo_coordinates_map_back(astronaut):
    """A 4000x3000 photo is detected downscaled; boxes and landmarks come back in full-resolution pixels."""
    import cv2

    small = detect_faces(astronaut)[0]
    factor, offset = 3000 / 512, 700  # upscale to 3000x3000, then pad to 4000 wide
    big = np.full((3000, 4000, 3), 90, dtype=np.uint8)
    big[:, offset : offset + 3000] = cv2.resize(astronaut, (3000, 3000), interpolation=cv2.INTER_LINEAR)
    faces = detect_faces(big)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.6
    _check_face_geometry(face)

    def expected(p):
        return np.array([p[0] * factor + offset, p[1] * factor])

    iod = np.hypot(*(expected(small.left_eye) - expected(small.right_eye)))
    assert iod > 200  # sanity: we are really in full-resolution pixels
    for name, point in face.landmarks().items():
        err = np.hypot(*(np.asarray(point) - expected(small.landmarks()[name])))
        assert err < 0.15 * iod, (name, err, iod)
    x, y, w, h = face.box
    assert abs(w - small.box[2] * factor) < 0.15 * w and abs(h - small.box[3] * factor) < 0.15 * h
    assert abs(x - expected(small.box[:2])[0]) < 0.15 * w and abs(y - expected(small.box[:2])[1]) < 0.15 * h


@pytest.mark.data
def test_detection_rate_on_utkface(shared_data):
    files = sorted((shared_data / "utkface").glob("*.jpg"))
    if len(files) < 100:
        pytest.skip("fewer than 100 UTKFace images available")
    sample = files[:: len(files) // 100][:100]  # spread over ages (names start with the age)
    found = sum(bool(detect_faces(load_image(p))) for p in sample)
    assert found >= 95, f"found a face on only {found}/100 UTKFace images"


def test_thread_setting_reaches_every_loaded_openmp_runtime(astronaut):
    """After `import torch`, yuface's GOMP calls bind to torch's libgomp: both must get the setting."""
    import threading
    from pathlib import Path

    import torch  # noqa: F401 - loads torch's libgomp into the global symbol scope
    import yuface

    from facelens.face import detect

    libs = detect._loaded_libgomps(Path(yuface.__file__).resolve().parent.parent / "yuface.libs")
    assert any("torch" in p for p in libs), libs
    assert any("yuface" in p for p in libs), libs
    seen = {}

    def probe() -> None:  # a fresh thread, as in the service's pool
        import ctypes

        detect.detect_faces(astronaut)
        seen.update({p: ctypes.CDLL(p).omp_get_max_threads() for p in libs})

    detect.set_detection_threads(2)
    try:
        t = threading.Thread(target=probe)
        t.start()
        t.join()
    finally:
        detect.set_detection_threads(1)
    assert set(seen.values()) == {2}, seen
