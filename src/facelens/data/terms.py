"""Sources and terms of the public datasets facelens knows, for model cards.

Model cards must name the data a model learned from and the terms it came with; users
training on their own data get "unknown (supplied by the user)" unless they say more.
"""

from __future__ import annotations

KNOWN_DATASETS: dict[str, dict[str, str]] = {
    "utkface": {
        "name": "UTKFace (aligned & cropped faces)",
        "citation": "Zhang, Song, Qi. Age Progression/Regression by Conditional Adversarial Autoencoder. CVPR 2017",
        "terms": "non-commercial research use only",
        "labels": "age 1..116, gender (0 male, 1 female) and race from the file names; labels were "
                  "annotated from the photos (not self-reported) and contain errors",
    },
    "faces-20-50": {
        "name": 'Kaggle "20-50" age set (per-age stratified sample of loose celebrity face crops, 128x128)',
        "citation": "Kaggle community data set scraped from the web",
        "terms": "no stated licence: research use only",
        "labels": "age 20..50 from the folder name; noisy (scraped celebrity photos)",
    },
    "eyes": {
        "name": 'Kaggle "Female and male eyes" (pavelbiz/eyes-rtte), single-eye crops',
        "citation": "Kaggle community data set scraped from the web",
        "terms": "no stated licence: research use only",
        "labels": "class from the folder name (femaleeyes / maleeyes); no person ids; many female crops show make-up",
    },
}


def describe_dataset(path: str) -> dict[str, str]:
    """Known description for a dataset path (matched on its folder names), else a neutral one."""
    parts = [p.lower() for p in str(path).replace("\\", "/").split("/") if p]
    for key, info in KNOWN_DATASETS.items():
        if key in parts:
            return {"path": str(path), **info}
    return {"path": str(path), "name": parts[-1] if parts else str(path), "citation": "supplied by the user",
            "terms": "unknown: check the data's own licence before sharing the model", "labels": "as supplied"}
