"""HTML reports, figures, atomic JSON and model cards from small synthetic inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facelens.evaluate.metrics import age_metrics, binary_metrics, paired_difference
from facelens.evaluate.model_card import render_model_card, write_model_card
from facelens.evaluate.report import write_age_report, write_eye_report, write_json_atomic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N = 120


def _age_arrays(seed: int, shift: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.uniform(1, 85, N)
    pred = y + rng.normal(shift, 5, N)
    return {"y_true": y, "y_pred": pred, "low": pred - 6, "high": pred + 6,
            "groups": {"gender": rng.choice(["female", "male"], N).tolist(),
                       "race": rng.choice(["white", "black", "asian"], N).tolist()}}


def _eye_arrays(seed: int, sharp: float) -> dict:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, N)
    y = (rng.uniform(size=N) < 1 / (1 + np.exp(-z))).astype(float)
    return {"y_true": y, "p_female": 1 / (1 + np.exp(-sharp * z)),
            "groups": {"colour": rng.choice(["grayscale", "colour"], N).tolist(),
                       "size": rng.choice(["<48px", "48-63px", ">=64px"], N).tolist()}}


def _gallery(n: int = 5) -> list[tuple[np.ndarray, str]]:
    rng = np.random.default_rng(9)
    return [(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), f"item {i}") for i in range(n)]


@pytest.fixture(scope="module")
def age_single(tmp_path_factory) -> Path:
    a = _age_arrays(0)
    metrics = {"resnet18": age_metrics(a["y_true"], a["y_pred"], a["low"], a["high"], a["groups"]) | {"split": "test"}}
    return write_age_report(tmp_path_factory.mktemp("age"), metrics, {"resnet18": a}, gallery_items=_gallery())


@pytest.fixture(scope="module")
def age_compare(tmp_path_factory) -> Path:
    # metrics omitted on purpose: they are computed from the arrays
    arrays = {"resnet18": _age_arrays(0), "mobile<net> v3": _age_arrays(1, shift=2.0)}
    err = np.abs(arrays["resnet18"]["y_pred"] - arrays["resnet18"]["y_true"])
    paired = {"mobile<net> v3": {"against": "resnet18", "all": paired_difference(err, err + 1.0),  # a year worse
                                 "by_source": {"same": paired_difference(err, err.copy())}}}
    return write_age_report(tmp_path_factory.mktemp("age2"), None, arrays, paired=paired)


@pytest.fixture(scope="module")
def eye_compare(tmp_path_factory) -> Path:
    arrays = {"eff": _eye_arrays(2, 3.0), "cal": _eye_arrays(2, 1.0)}
    metrics = {n: binary_metrics(a["y_true"], a["p_female"], a["groups"]) for n, a in arrays.items()}
    return write_eye_report(tmp_path_factory.mktemp("eyes"), metrics, arrays, gallery_items=_gallery(3))


def _check_report(html_path: Path) -> str:
    assert html_path.name == "report.html" and html_path.is_file()
    folder = html_path.parent
    html = html_path.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs, "the report references no figures"
    for ref in refs:
        assert "/" not in ref and "\\" not in ref, ref
        assert (folder / ref).is_file(), f"missing {ref}"
    pngs = sorted(folder.glob("*.png"))
    assert {p.name for p in pngs} == set(refs), "every PNG is shown and every shown PNG exists"
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_SIGNATURE, p.name
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.size[0] > 200 and im.size[1] > 100
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*")), "temporary files left behind"
    json.loads((folder / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    return html


def test_age_report_single_model(age_single):
    html = _check_report(age_single)
    names = {p.name for p in age_single.parent.glob("*.png")}
    assert {"pred_vs_true.png", "mae_by_decade.png", "bias_by_decade.png", "error_hist.png", "cs_curve.png",
            "mae_by_group.png", "coverage_by_decade.png", "gallery.png"} <= names
    assert "How to read this" in html and "MAE" in html and "test" in html


def test_age_report_compares_models_in_columns(age_compare):
    html = _check_report(age_compare)
    names = {p.name for p in age_compare.parent.glob("*.png")}
    assert "comparison.png" in names and "pred_vs_true_resnet18.png" in names
    assert any(n.startswith("pred_vs_true_mobile-net-v3") for n in names)
    assert "mobile&lt;net&gt; v3" in html and "mobile<net>" not in html  # names are escaped
    paired = re.search(r"<h2>Paired differences</h2>.*?</table>", html, re.S).group(0)
    assert "mobile&lt;net&gt; v3 minus resnet18" in paired and "95% interval" in paired
    assert "higher" in paired and "no clear difference" in paired  # the shifted model is worse; itself is no gap
    header = re.search(r"<thead><tr><th>metric</th>(.*?)</tr></thead>", html).group(1)
    assert header.count("<th>") == 2
    saved = json.loads((age_compare.parent / "metrics.json").read_text())["models"]
    assert saved["resnet18"]["mae"] == pytest.approx(age_metrics(**{k: _age_arrays(0)[k]
                                                                     for k in ("y_true", "y_pred")})["mae"])


def test_eye_report(eye_compare):
    html = _check_report(eye_compare)
    names = {p.name for p in eye_compare.parent.glob("*.png")}
    assert {"roc.png", "reliability_eff.png", "reliability_cal.png", "confusion_eff.png", "accuracy_by_group_cal.png",
            "comparison.png", "gallery.png"} <= names
    assert "ROC-AUC" in html and "ECE" in html and "gender identity" in html


def test_write_json_atomic_converts_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"), "d": np.int64(7),
                             "e": (1, 2), "f": tmp_path})
    data = json.loads(path.read_text())
    assert data == {"a": 1.5, "b": [0, 1, 2], "c": None, "d": 7, "e": [1, 2], "f": str(tmp_path)}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == data  # the previous file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


# ------------------------------------------------------------------------------------ model card

AGE_META = {"name": "facelens-age-test", "task": "age", "arch": "resnet18", "head": "age-bins", "input_size": 128,
            "facelens_version": "0.1.0", "training": {"train_seconds": 600.0, "epochs_run": 4, "best_epoch": 3,
                                                      "device": "cpu"},
            "interval_scale": 1.4, "data": ["/data/somewhere/utkface"],
            "commands": ["facelens train-age --data ../shared/data/utkface --out runs/age"]}


def _front_matter(card: str) -> list[str]:
    assert card.startswith("---\n")
    end = card.index("\n---\n", 4)
    lines = card[4:end].splitlines()
    for line in lines:  # a minimal YAML shape check: mappings, list items, indented blocks
        assert re.match(r"^( *)([A-Za-z_-]+:( .+)?|- .+)$", line), line
        m = re.search(r': (".*")$', line) or re.match(r'^ *- (".*")$', line)
        if m:
            json.loads(m.group(1))  # quoted scalars are valid (JSON-compatible) strings
    return lines


def test_age_model_card():
    a = _age_arrays(0)
    metrics = age_metrics(a["y_true"], a["y_pred"], a["low"], a["high"], a["groups"]) | {"split": "test"}
    card = render_model_card(AGE_META, metrics)
    header = _front_matter(card)
    assert "library_name: facelens" in header
    assert f"      value: {round(metrics['mae'], 4)}" in header
    for section in ("## Model details", "## Intended use", "## Out-of-scope use", "## Training data",
                    "## Evaluation", "## Limitations and biases", "## How to reproduce"):
        assert section in card
    oos = card[card.index("## Out-of-scope use"):card.index("## Training data")]
    for phrase in ("decisions about individuals", "identity verification", "sexual orientation", "criminality",
                   "ethnicity", "emotion"):
        assert phrase in oos
    assert "make-up" not in oos.lower()
    assert "UTKFace" in card and "non-commercial research use only" in card  # looked up from the data path
    assert "### By true-age decade" in card and "### By gender" in card and "### By race" in card
    assert "**test** split" in card
    assert AGE_META["commands"][0] in card
    assert "10.0 min" in card  # training time from meta


def test_card_numbers_follow_metrics():
    a = _age_arrays(0)
    m1 = age_metrics(a["y_true"], a["y_pred"])
    m2 = age_metrics(a["y_true"], a["y_pred"] + 4)
    c1, c2 = render_model_card(AGE_META, m1), render_model_card(AGE_META, m2)
    assert f"value: {round(m2['mae'], 4)}" in c2 and f"value: {round(m2['mae'], 4)}" not in c1


def test_eye_model_card(tmp_path):
    e = _eye_arrays(2, 3.0)
    metrics = binary_metrics(e["y_true"], e["p_female"], e["groups"]) | {"split": "val"}
    meta = {"name": "facelens-eyes-test", "task": "eyes", "arch": "mobilenet", "input_size": 64, "temperature": 1.8,
            "datasets": [{"name": "My eyes", "terms": "research only", "citation": "me"}]}
    path = write_model_card(tmp_path / "card.md", meta, metrics)
    card = path.read_text(encoding="utf-8")
    _front_matter(card)
    oos = card[card.index("## Out-of-scope use"):card.index("## Training data")]
    assert "make-up" in oos.lower() and "gender identity" in oos and "sexual orientation" in oos
    assert "**val** split" in card and "My eyes" in card and "research only" in card
    assert "### By colour" in card and "### Confusion matrix" in card
    assert "T = 1.800" in card
    assert "not recorded" in card  # no commands in meta
    assert [p.name for p in tmp_path.iterdir()] == ["card.md"]
    with pytest.raises(ValueError):
        render_model_card({"task": "emotion"}, {})
