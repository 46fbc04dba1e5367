"""Does the age model still hold when a photo looks scanned, old or small? (issue #16)

The issue's hardest held-back set is scanned family photos (ages 0-69), where the first models put
children 16 years too old. We do not have those photos; this measures the nearest thing we can: the
model's own *test* photos of UTKFace and All-Age-Faces, degraded the way scans and old prints are,
each run through the whole prediction pipeline (detection, alignment, crop, model), and the MAE and
bias by age band compared with the clean photos. The degradations are written here with OpenCV and
NumPy, independently of the training augmentation (``train.augment``), and are applied to the whole
photo before detection, as a scanner would.

    python benchmarks/age_degradations.py                      # the shipped age model
    python benchmarks/age_degradations.py --model runs/age/mobilenetv2/model.pt --max-per-source 800
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from facelens.api import default_model_path
from facelens.data.crops import face_crop_from_image
from facelens.data.prepare import prepare_as_model
from facelens.errors import ImageLoadError
from facelens.evaluate.metrics import AGE_BANDS, age_metrics
from facelens.face.align import FaceTemplate
from facelens.images import load_image
from facelens.infer.postprocess import decode_age
from facelens.infer.predictor import load_predictor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def grayscale(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.repeat(g[..., None], 3, axis=2)


def old_print(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sepia toning, then faded: blacks lifted towards a warm paper tone, contrast lowered."""
    sepia = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
    x = np.clip(rgb.astype(np.float64) @ sepia.T, 0, 255)
    paper = np.array([235.0, 222.0, 190.0])
    return np.clip(0.7 * x + 0.3 * paper, 0, 255).astype(np.uint8)


def scan(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A scanned black-and-white print: grey, slightly soft, grainy, saved as a low-quality JPEG."""
    g = cv2.GaussianBlur(grayscale(rgb, rng).astype(np.float64), (0, 0), 1.0)
    g = g + rng.normal(0, 6, g.shape[:2])[..., None]
    return jpeg(np.clip(g, 0, 255).astype(np.uint8), rng, quality=35)


def small(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo at half its size (a face of ~45 px, as in a group photo or a small scan)."""
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)


def jpeg(rgb: np.ndarray, rng: np.random.Generator, quality: int = 20) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


DEGRADATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "clean": lambda rgb, rng: rgb, "grayscale": grayscale, "old print": old_print, "scan": scan,
    "half size": small, "jpeg q20": jpeg,
}


def band_rows(y: np.ndarray, pred: np.ndarray) -> dict[str, dict]:
    """n / MAE / bias for all and per ``AGE_BANDS`` band (``evaluate.metrics.age_metrics``)."""
    m = age_metrics(y, pred)
    return {k: {"n": v["n"], "mae": v["mae"], "bias": v["mean_signed_error"]}
            for k, v in {"all": m, **m["by_age_band"]}.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="age model (.onnx or .pt); default: the shipped one")
    ap.add_argument("--data", action="append", default=None,
                    help="datasets (default: ../shared/data/utkface and all-age-faces; the model's split is rebuilt "
                         "with every dataset it was trained on, so pass all of them when you pass any)")
    ap.add_argument("--max-per-source", type=int, default=0, help="a seeded sample of each source's test photos (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    pred = load_predictor(args.model or default_model_path("age"))
    meta = pred.model_meta
    data = args.data or [str(DATA / "utkface"), str(DATA / "faces-20-50" / "train"), str(DATA / "all-age-faces")]
    prep = prepare_as_model(pred.meta, data, log=lambda m: None)
    rng = np.random.default_rng(args.seed)
    chosen = []
    for src in ("utkface", "all-age-faces"):
        idx = np.flatnonzero((prep.splits == "test") & (np.asarray(prep.sources) == src))
        if args.max_per_source and len(idx) > args.max_per_source:
            idx = np.sort(rng.choice(idx, args.max_per_source, replace=False))
        chosen.extend(idx.tolist())
    template = FaceTemplate.from_meta(meta.crop)
    result: dict = {"model": str(args.model or default_model_path("age")), "split": "test", "variants": {}}
    found: dict[str, list[tuple[np.ndarray, float, str]]] = {name: [] for name in DEGRADATIONS}
    missed = {name: {"utkface": 0, "all-age-faces": 0} for name in DEGRADATIONS}
    for i in tqdm(chosen, desc="photos"):  # each photo decoded once, every degradation cut from it
        try:
            rgb = load_image(prep.records[i].path)
        except ImageLoadError:
            continue
        for name, degrade in DEGRADATIONS.items():
            face = face_crop_from_image(degrade(rgb, np.random.default_rng(i)), meta.input_size, template)
            if face is None:
                missed[name][prep.sources[i]] += 1
            else:
                found[name].append((face[0], prep.targets[i], prep.sources[i]))
    for name, rows in found.items():
        crops, y, src = np.stack([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
        ages = decode_age(pred(crops), pred.model_meta)[0]  # the decoder predict uses (an int8 file's answer map too)
        result["variants"][name] = {s: {"no_face": missed[name][s], **band_rows(y[src == s], ages[src == s])}
                                    for s in ("utkface", "all-age-faces")}
    cols = ["all"] + [f"{lo}+" if hi is None else f"{lo}-{hi}" for lo, hi in AGE_BANDS]
    print(f"model: {result['model']} (test split; MAE / bias by true age)\n")
    print("| source | photos | no face | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for src in ("utkface", "all-age-faces"):
        for name, v in result["variants"].items():
            rows = v[src]
            cells = [f"{rows[c]['mae']:.2f} / {rows[c]['bias']:+.2f}" if c in rows else "" for c in cols]
            print(f"| {src} | {name} | {rows['no_face']} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
