"""Does a face's answer depend on how its photo was decoded? Same landmarks, crops from three decodes.

``bench_camera.py`` compares the whole reduced-decode pipeline with the full one, so its differences mix
two causes: the detector finding slightly different landmarks on a smaller image, and the crops
themselves being resampled differently. This isolates the second: on 24 MP group photos (the same
public-domain canvases as ``bench_camera.py``), every face is detected once, and its age crop and
eye crops are cut with those landmarks from the full decode and from the JPEG's 1/2 and 1/4 DCT
decodes (only where that decode still holds the crop's detail, as ``Analyzer`` would choose it). Reports
the mean and max |age difference| and |P(female) difference| against the full decode.

    PYTHONPATH=src .venv/bin/python benchmarks/decode_paths.py --photos 10
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_camera import make_canvas  # noqa: E402 - the shared photo maker, next to this file

from facelens.api import Analyzer  # noqa: E402
from facelens.face.align import align_face, crop_scale, cut_eye, eye_crop_transform, similarity_transform  # noqa: E402
from facelens.face.detect import Detection, detect_faces  # noqa: E402
from facelens.images import load_image, load_reduced  # noqa: E402
from facelens.infer.postprocess import decode_age, decode_face_logits  # noqa: E402
from facelens.reduced import ReducedImage  # noqa: E402

FACTORS = (2, 4)


def _crops(an: Analyzer, src: ReducedImage, d: Detection) -> tuple[np.ndarray, np.ndarray]:
    """The age crop and the two eye crops of ``d`` (full-image landmarks) cut from ``src``, as ``Analyzer`` cuts them."""
    right, left, mouth = src.from_full_centre(d.anchor_points())
    face = align_face(src.pixels, np.array([right, left, mouth]), an.age.model_meta.input_size, an.age_template)[0]
    size = an.eyes.model_meta.input_size
    eyes = [cut_eye(src.pixels, e, o, size, an.eye_geometry, mouth)[0] for e, o in ((left, right), (right, left))]
    return face, np.stack(eyes)


def _upscale(an: Analyzer, d: Detection) -> tuple[float, float]:
    """Crop px per full-image px of the age crop and of an eye crop: a decode at 1/f keeps detail while f * this <= 1."""
    age = crop_scale(similarity_transform(d.anchor_points(), an.age_template.points(an.age.model_meta.input_size)))
    eye = crop_scale(eye_crop_transform(np.array(d.left_eye), np.array(d.right_eye), an.eyes.model_meta.input_size,
                                        an.eye_geometry, np.array(d.mouth)))
    return age, eye


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=10, help="24 MP group photos (seeds 0..N-1)")
    args = ap.parse_args()
    an = Analyzer()
    age_diffs, p_diffs = [], []
    for seed in range(args.photos):
        buf = io.BytesIO()
        make_canvas((6000, 4000), seed, "group").save(buf, format="JPEG", quality=92)
        data = buf.getvalue()
        full = ReducedImage.of_array(load_image(data))
        decodes = {f: load_reduced(data, min_side=-(-6000 // f)) for f in FACTORS}
        first = decodes[4]
        for d in (d.mapped(first.to_full) for d in detect_faces(first.pixels)):
            face, eyes = _crops(an, full, d)
            up_age, up_eye = _upscale(an, d)
            for f, src in decodes.items():
                f_face, f_eyes = _crops(an, src, d)
                if up_age * f <= 1:
                    value = decode_age(an.age(np.stack([f_face, face])), an.age.model_meta)[0]
                    age_diffs.append(abs(value[0] - value[1]))
                if up_eye * f <= 1:
                    logits = an.eyes(np.concatenate([f_eyes, eyes])).reshape(2, 2).mean(1)
                    p = decode_face_logits(logits, an.eyes.model_meta)
                    p_diffs.append(abs(p[0] - p[1]))
    print(f"{args.photos} photos of 24 MP, same landmarks, crops from the 1/2 and 1/4 DCT decodes vs the full decode")
    print("| answer | n (face, decode) | mean abs diff | max abs diff |\n|---|---|---|---|")
    print(f"| age (years) | {len(age_diffs)} | {np.mean(age_diffs):.3f} | {np.max(age_diffs):.3f} |")
    print(f"| P(female) | {len(p_diffs)} | {np.mean(p_diffs):.4f} | {np.max(p_diffs):.4f} |")


if __name__ == "__main__":
    main()
