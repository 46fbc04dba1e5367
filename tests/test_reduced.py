"""Reduced (DCT-draft) decoding: the same upright photo at a smaller scale, mapped exactly back to full pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facelens.errors import ImageLoadError
from facelens.images import _ORIENT, load_image, load_reduced
from facelens.reduced import (
    INVERSE_ORIENTATION,
    coarsest_factor,
    draft_size,
    factor_for_side,
    orient_box,
    orient_point,
    upright_size,
)

# Sides that are not multiples of 8: a flipped axis then leaves an offset the map must carry.
STORED = (203, 117)


def _jpeg(stored: np.ndarray, orientation: int = 1, quality: int = 95) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def _marked(size: tuple[int, int] = STORED, box: tuple[int, int, int, int] = (144, 16, 176, 48)) -> np.ndarray:
    """Grey image with one white square (stored pixels ``box``, on the 8 px block grid) near a corner."""
    w, h = size
    img = np.full((h, w, 3), 60, np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 250
    return img


def _centroid(rgb: np.ndarray) -> np.ndarray:
    """Centre of the bright pixels, in OpenCV centre coordinates (x, y)."""
    ys, xs = np.nonzero(rgb[..., 0] > 155)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_point_matches_the_array_rotation(orientation):
    h, w = 5, 7
    idx = np.arange(h * w).reshape(h, w)
    up = _ORIENT[orientation](idx[..., None])[..., 0] if orientation != 1 else idx
    assert up.shape[::-1] == upright_size((w, h), orientation)
    for y in range(h):
        for x in range(w):
            # pixel (x, y) spans [x, x+1) x [y, y+1): its upright box is one pixel holding the same value
            ux0, uy0, ux1, uy1 = orient_box((x, y, x + 1, y + 1), orientation, (w, h))
            assert (ux1 - ux0, uy1 - uy0) == (1, 1)
            assert up[uy0, ux0] == idx[y, x]
    back = orient_point(*orient_point(2.0, 3.0, orientation, (w, h)), INVERSE_ORIENTATION[orientation],
                        upright_size((w, h), orientation))
    assert back == (2.0, 3.0)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("min_side", [25, 50])  # factor 8 and 4 for a 203 px side
def test_reduced_decode_maps_back_to_full_pixels(orientation, min_side):
    data = _jpeg(_marked(), orientation)
    full = load_image(data)
    red = load_reduced(data, min_side=min_side)
    assert red.factor == factor_for_side(STORED, min_side) and red.factor in (4, 8)
    assert red.full_size == (full.shape[1], full.shape[0])
    assert red.pixels.shape[1::-1] == upright_size(draft_size(STORED, red.factor), orientation)
    # The mark lands on the same full-image spot (within a pixel) whichever way the photo was turned;
    # without the flip offset it would be off by up to factor - 1 px (5 px at 1/8 here).
    seen = red.to_full_centre(_centroid(red.pixels)[None])[0]
    assert np.abs(seen - _centroid(full)).max() < 1.0
    assert np.allclose(red.from_full_centre(red.to_full_centre(np.array([[3.0, 4.0]]))), [[3.0, 4.0]])


@pytest.mark.parametrize("orientation", [1, 3, 6, 7])
@pytest.mark.parametrize("finer", [1, 2])
def test_finer_region_is_the_same_pixels_as_a_whole_decode(orientation, finer):
    data = _jpeg(_marked(), orientation)
    red = load_reduced(data, min_side=30)
    box = (17.3, 40.0, 88.0, 101.6)  # upright full-image pixels
    part, other = red.finer(finer, [box, (0, 0, 9, 9)])  # one decode, one small array per box
    assert other.pixels.shape[:2] == (-(-9 // finer), -(-9 // finer)) and other.factor == finer
    whole = load_reduced(data, min_side=-(-max(STORED) // finer))
    assert whole.factor == finer and part.factor == finer and part.full_size == red.full_size
    # the region's first pixel sits where the maps say it does in the whole decode at that scale
    ox, oy = (int(round(v)) for v in (np.array(part.offset) - np.array(whole.offset)) / finer)
    h, w = part.pixels.shape[:2]
    assert (part.pixels == whole.pixels[oy:oy + h, ox:ox + w]).all()
    # and it covers the box asked for
    x0, y0 = part.to_full(np.array([[0, 0]]))[0]
    x1, y1 = part.to_full(np.array([[w, h]]))[0]
    assert x0 <= box[0] and y0 <= box[1] and x1 >= min(box[2], red.full_size[0]) and y1 >= box[3]


def test_finer_is_a_no_op_when_not_finer_or_not_a_jpeg():
    data = _jpeg(_marked())
    red = load_reduced(data, min_side=60)
    assert red.finer(red.factor, [(0, 0, 50, 50)]) == [red]
    buf = io.BytesIO()
    Image.fromarray(_marked()).save(buf, format="PNG")
    png = load_reduced(buf.getvalue(), min_side=30)
    assert png.factor == 1 and png.finer(1, [(0, 0, 50, 50)]) == [png]
    assert (png.pixels == load_image(buf.getvalue())).all()


def test_arrays_and_pil_images_come_whole():
    arr = _marked()
    assert load_reduced(arr, min_side=30).factor == 1
    assert (load_reduced(Image.fromarray(arr), min_side=30).pixels == arr).all()


def test_bad_inputs_keep_the_gate_errors(tmp_path):
    data = _jpeg(_marked())
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as e:
        load_reduced(bad, min_side=30)
    assert str(bad) in str(e.value) and e.value.reason == "truncated"
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    with pytest.raises(ImageLoadError) as e:
        load_reduced(text, min_side=30)
    assert e.value.reason == "not_an_image" and str(text) in str(e.value)
    with pytest.raises(ImageLoadError) as e:
        load_reduced(tmp_path / "missing.jpg", min_side=30)
    assert e.value.reason == "missing"
    with pytest.raises(ImageLoadError) as e:
        load_reduced(data, min_side=30, max_pixels=1000)  # checked on the full header size, not the draft's
    assert e.value.reason == "too_large"


def test_factor_choice():
    assert factor_for_side((6000, 4000), 1280) == 4
    assert factor_for_side((4000, 3000), 1280) == 2
    assert factor_for_side((6000, 4000), 512) == 8
    assert factor_for_side((300, 200), 512) == 1
    assert coarsest_factor(0.05) == 8  # crop px per full px: a big face keeps its detail at 1/8
    assert coarsest_factor(0.3) == 2
    assert coarsest_factor(0.5) == 2
    assert coarsest_factor(0.51) == 1
    assert coarsest_factor(3.0) == 1  # too small even in full: the full image


def test_detection_mapped_scales_box_and_landmarks():
    from facelens.face.detect import Detection

    d = Detection((10, 20, 30, 40), 0.9, (15, 30), (35, 30), (25, 40), (18, 50), (32, 50))
    m = d.mapped(lambda p: p * 4 + np.array([-5.0, 7.0]))
    assert m.box == (35.0, 87.0, 120.0, 160.0)
    assert m.left_eye == (135.0, 127.0) and m.mouth_left == (123.0, 207.0) and m.score == 0.9


@pytest.fixture(scope="module")
def analyzers():
    from facelens.api import Analyzer, default_model_path

    if not (default_model_path("age").is_file() and default_model_path("eyes").is_file()):
        pytest.skip("shipped models not present")
    fast = Analyzer()
    return fast, Analyzer(age_model=fast.age, eye_model=fast.eyes, full_decode=True)


def _camera_photo(orientation: int) -> bytes:
    """A 12 MP JPEG with the astronaut's face at two sizes, stored turned so that EXIF ``orientation`` makes it upright."""
    import cv2
    from skimage import data as skdata

    face = skdata.astronaut()[:400, 60:460]
    upright = np.full((3000, 4000, 3), 110, np.uint8)
    upright[200:2200, 300:2300] = cv2.resize(face, (2000, 2000), interpolation=cv2.INTER_AREA)  # face ~450 px wide
    upright[1900:2700, 2800:3600] = cv2.resize(face, (800, 800), interpolation=cv2.INTER_AREA)  # ~180 px: finer decode
    undo = _ORIENT.get(INVERSE_ORIENTATION[orientation])
    return _jpeg(np.ascontiguousarray(undo(upright)) if undo else upright, orientation, quality=90)


@pytest.mark.parametrize("orientation", [1, 6, 3])
def test_analyzer_reduced_decode_reports_full_image_pixels_and_same_answers(analyzers, orientation):
    fast, full = analyzers
    data = _camera_photo(orientation)
    red = load_reduced(data, min_side=1280)
    assert red.factor == 2  # the analyzer's first decode really is reduced for this photo
    a, b = fast.analyze(data), full.analyze(data)
    assert (a.width, a.height) == (b.width, b.height) == red.full_size
    assert len(a.faces) == len(b.faces) == 2
    for fa, fb in zip(a.faces, b.faces, strict=True):
        # boxes and landmarks in the original (upright) photo's pixels, not the decoded ones
        assert np.abs(np.array(fa.box) - np.array(fb.box)).max() < 0.02 * fb.box[2] + 2
        for k, p in fa.landmarks.items():
            assert np.hypot(*(np.array(p) - np.array(fb.landmarks[k]))) < 0.02 * fb.box[2] + 2
        for ea, eb in zip(fa.sex.eyes, fb.sex.eyes, strict=True):
            assert np.abs(np.array(ea.box) - np.array(eb.box)).max() < 0.02 * fb.box[2] + 2
        assert abs(fa.age.value - fb.age.value) < 1.0
        assert abs(fa.sex.p_female - fb.sex.p_female) < 0.05


def test_small_faces_get_a_finer_region_decode(analyzers, monkeypatch):
    """The ~180 px face needs full-size pixels for its 64 px eye crops: one decode at 1/1, keeping its region only."""
    from facelens.reduced import ReducedImage

    fast, _ = analyzers
    calls = []
    real = ReducedImage.finer

    def spy(self, factor, boxes):
        out = real(self, factor, boxes)
        calls.append((self.factor, factor, [o.pixels.shape for o in out]))
        return out

    monkeypatch.setattr(ReducedImage, "finer", spy)
    fast.analyze(_camera_photo(1))
    assert len(calls) == 1
    first, finer, shapes = calls[0]
    assert first == 2 and finer == 1 and len(shapes) == 1
    assert shapes[0][0] * shapes[0][1] < 0.05 * 4000 * 3000  # the small face's region, not the 12 MP photo


def test_every_decode_waits_on_the_budget_for_its_own_scale():
    """The first decode holds the estimate at its draft scale, the finer one at its own: what a worker really needs."""
    from facelens.images import MemoryBudget, decode_memory_estimate

    held = []

    class Spy(MemoryBudget):
        def hold(self, nbytes, timeout=None):
            held.append(nbytes)
            return super().hold(nbytes, timeout)

    red = load_reduced(_jpeg(_marked()), min_side=25, budget=Spy(10**9))
    red.finer(1, [(0, 0, 20, 20), (100, 50, 140, 90)])  # two regions, one decode
    assert held == [decode_memory_estimate(*draft_size(STORED, 8), "RGB"), decode_memory_estimate(*STORED, "RGB")]


def test_budget_keeps_two_threads_from_decoding_full_frames_at_once(monkeypatch):
    """With room for one full decode, two threads refining at once take turns (the batch runner's two workers)."""
    import threading

    from facelens import images
    from facelens.images import MemoryBudget, decode_memory_estimate

    data = _jpeg(_marked(), 1)
    budget = MemoryBudget(decode_memory_estimate(*STORED, "RGB") + 1000)
    inside, most = [0], [0]
    lock = threading.Lock()
    real = images._decode_scaled

    def slow(*args, **kwargs):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            threading.Event().wait(0.05)
            return real(*args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    reds = [load_reduced(data, min_side=25, budget=budget) for _ in range(2)]
    monkeypatch.setattr(images, "_decode_scaled", slow)
    threads = [threading.Thread(target=r.finer, args=(1, [(0, 0, 50, 50)])) for r in reds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


@pytest.mark.parametrize(("mode", "progressive"), [("RGB", False), ("RGB", True), ("L", False), ("CMYK", False)])
def test_draft_decode_of_every_jpeg_mode_is_the_shrunk_photo(mode, progressive):
    """Grey, CMYK and progressive JPEGs draft too, and come out as the same RGB photo, shrunk."""
    import cv2

    yy, xx = np.mgrid[0:192, 0:256]
    rgb = np.stack([xx, yy, (xx + yy) // 2], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, format="JPEG", quality=95, progressive=progressive)
    full = load_image(buf.getvalue())
    red = load_reduced(buf.getvalue(), min_side=64)
    assert red.factor == 4 and red.pixels.shape == (48, 64, 3) and red.pixels.dtype == np.uint8
    shrunk = cv2.resize(full, (64, 48), interpolation=cv2.INTER_AREA)
    assert np.abs(red.pixels.astype(int) - shrunk.astype(int)).mean() < 3


def test_a_failing_finer_decode_is_an_error_naming_the_photo(analyzers, monkeypatch, tmp_path):
    """The first (reduced) decode worked but the finer one fails: the result carries the gate's error, not a crash."""
    from facelens import images

    fast, _ = analyzers
    path = tmp_path / "camera.jpg"
    path.write_bytes(_camera_photo(1))
    real, calls = images._decode_scaled, []

    def second_fails(img, source, factor, *args):
        calls.append(factor)
        if len(calls) > 1:
            raise OSError("broken data stream when reading image file")
        return real(img, source, factor, *args)

    monkeypatch.setattr(images, "_decode_scaled", second_fails)
    result = fast.analyze(path)
    assert calls == [2, 1] and not result.faces
    assert str(path) in result.error and "damaged" in result.error


def test_multi_picture_jpegs_draft_too():
    """Phone and camera JPEGs with an MPF block (gain maps, previews) open as "MPO"; they are JPEGs all the same."""
    stored = _marked()
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="MPO", save_all=True, append_images=[Image.fromarray(stored[:40, :60])])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    red = load_reduced(buf.getvalue(), min_side=50)
    assert red.factor == 4 and red.refine is not None
    assert np.abs(red.to_full_centre(_centroid(red.pixels)[None])[0] - _centroid(load_image(buf.getvalue()))).max() < 1
