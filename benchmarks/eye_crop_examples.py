"""Draw how facelens cuts periocular crops from a whole photo (for the README).

Uses only the public-domain NASA portrait bundled with scikit-image (``skimage.data.astronaut``):
no dataset image is copied into the repository. The figure shows the photo with both crop
boxes and the two 64x64 crops the eye model receives.

    python benchmarks/eye_crop_examples.py --out docs/eye_crops.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from facelens.face.align import DEFAULT_EYE_GEOMETRY, cut_eye
from facelens.face.detect import detect_faces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/eye_crops.png"))
    args = ap.parse_args()
    rgb = data.astronaut()
    face = detect_faces(rgb)[0]
    canvas = rgb.copy()
    crops = []
    for side, eye, other in (("right", face.right_eye, face.left_eye), ("left", face.left_eye, face.right_eye)):
        crop, (x, y, w, h) = cut_eye(rgb, np.array(eye), np.array(other), 64, DEFAULT_EYE_GEOMETRY, np.array(face.mouth))
        cv2.rectangle(canvas, (round(x), round(y)), (round(x + w), round(y + h)), (255, 200, 0), 2)
        crops.append((side, crop))
    x, y, w, h = (round(v) for v in face.box)
    pad = w // 2
    view = canvas[max(0, y - pad): y + h + pad, max(0, x - pad): x + w + pad]
    view = cv2.resize(view, (256, round(256 * view.shape[0] / view.shape[1])))
    tiles = [cv2.resize(c, (128, 128), interpolation=cv2.INTER_NEAREST) for _, c in crops]
    right = np.vstack(tiles)
    height = max(view.shape[0], right.shape[0])
    pad_img = lambda im: np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0)), constant_values=255)  # noqa: E731
    fig = np.hstack([pad_img(view), np.full((height, 8, 3), 255, np.uint8), pad_img(right)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(fig, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} (geometry {DEFAULT_EYE_GEOMETRY}; top: person's right eye, bottom: left eye)")


if __name__ == "__main__":
    main()
