"""Calibrating a model on validation outputs and scoring it on test outputs, as training, export and
``facelens evaluate`` all do.

Why one module: the numbers a run reports at the end of training, the numbers an exported variant
carries and the numbers ``facelens evaluate`` prints must be computed by the same code, or a model
card could compare figures that were measured differently.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from facelens.evaluate.calibration import fit_interval_scale, fit_platt, fit_temperature
from facelens.evaluate.groups import FACE_AGE, FACE_AGE_ESTIMATE, FACE_ID, NOT_BREAKDOWNS
from facelens.evaluate.metrics import age_metrics, binary_metrics
from facelens.infer.postprocess import MetaLike, age_from_bins, decode_age, decode_eyes, decode_face_logits
from facelens.models.meta import in_age_band
from facelens.tasks import task_spec


def per_face(outputs: np.ndarray, y: np.ndarray, face_ids: list[str | None], groups: dict[str, list] | None = None,
             age_key: str = FACE_AGE) -> tuple[np.ndarray, np.ndarray, dict[str, list], np.ndarray | None]:
    """Eye-crop logits averaged per face (as ``Analyzer`` combines a face's two eyes), with the face's
    label, breakdown groups and age from ``groups[age_key]`` (the label by default; NaN unknown; None when
    no face has one); crops not cut from a face are left out."""
    order: dict[str, list[int]] = {}
    for k, f in enumerate(face_ids):
        if f is not None:
            order.setdefault(f, []).append(k)
    idx = list(order.values())
    logits = np.array([outputs.reshape(-1)[ks].mean() for ks in idx])
    labels = np.array([y[ks[0]] for ks in idx])
    face_groups = {key: [vals[ks[0]] for ks in idx] for key, vals in (groups or {}).items()
                   if key not in NOT_BREAKDOWNS}
    face_groups = {key: vals for key, vals in face_groups.items() if any(v is not None for v in vals)}
    age_vals = (groups or {}).get(age_key)
    ages = None if age_vals is None else np.array([np.nan if (a := age_vals[ks[0]]) is None else a for ks in idx],
                                                  dtype=np.float64)
    return logits, labels, face_groups, ages


#: Age bands [low, high) of the whole-face calibration (``models.meta.BandCalibration``): children, whose
#: eyes say little; teenagers; adults; people over 60, whose answers lean male. (A split of the children at 3
#: was tried and not kept: docs/experiments.md.)
Bands = tuple[tuple[int, int | None], ...]
CALIBRATION_BANDS: Bands = ((0, 13), (13, 20), (20, 60), (60, None))
#: Fewest validation faces a band's calibration is fitted on; fewer: the band gets the all-ages temperature.
MIN_BAND_FACES = 50


def band_age_key(groups: dict[str, list] | None) -> str:
    """Which age picks a face's calibration band: the age model's estimate where the groups carry it
    (as ``predict`` picks it), else the label (no age model available)."""
    return FACE_AGE_ESTIMATE if FACE_AGE_ESTIMATE in (groups or {}) else FACE_AGE


def face_band_index(ages: np.ndarray | None, bands: Bands = CALIBRATION_BANDS) -> np.ndarray:
    """Index into ``bands`` per face; ``len(bands)`` for an unknown age."""
    if ages is None:
        return np.zeros(0, dtype=int)
    out = np.full(len(ages), len(bands))
    for b, (lo, hi) in enumerate(bands):
        out[in_age_band(ages, lo, hi)] = b
    return out


def fit_band_calibration(logits: np.ndarray, labels: np.ndarray, ages: np.ndarray,
                         bands: Bands = CALIBRATION_BANDS) -> list[dict]:
    """Platt calibration (``fit_platt``) per band of ``bands`` holding >= ``MIN_BAND_FACES`` faces."""
    band = face_band_index(ages, bands)
    out = []
    for b, (lo, hi) in enumerate(bands):
        inside = band == b
        if inside.sum() >= MIN_BAND_FACES:
            t, c = fit_platt(logits[inside], labels[inside])
            out.append({"low": lo, "high": hi, "temperature": t, "offset": c, "n": int(inside.sum())})
    return out


def calibrate(head: str, val_out: np.ndarray, val_y: np.ndarray, groups: dict[str, list] | None = None,
              age_answer_map: list[float] | None = None) -> dict:
    """Calibration parameters fitted on the validation split only.

    Eyes: one temperature for single crops and, when crops were cut from faces (``groups[FACE_ID]``), a
    second for the face's two eyes combined (their mean logit), which is the probability ``predict``
    reports, and, when the faces carry ages, a calibration per age band (``fit_band_calibration``).
    Bands are fitted on the faces' labelled ages and chosen, in ``predict`` and in evaluation, by the age
    model's estimate (``band_age_key``); fitting on the estimate was measured and not better
    (docs/rules/RULE-eyes-band-by-estimate.txt, docs/experiments.md).
    """
    if head == "age-bins":  # the interval is scaled around the answers the model gives, its answer map applied
        value, low, high = age_from_bins(val_out, answer_map=age_answer_map)
        return {"interval": 0.8, "interval_scale": float(fit_interval_scale(val_y, value, low, high, target=0.8))}
    if head == "regression":
        resid = val_y - val_out.reshape(-1)
        return {"interval": 0.8, "residual_q": [float(np.quantile(resid, 0.1)), float(np.quantile(resid, 0.9))]}
    out = {"temperature": float(fit_temperature(val_out.reshape(-1), val_y))}
    face_ids = (groups or {}).get(FACE_ID)
    if face_ids is not None and sum(f is not None for f in face_ids) >= 20:
        logits, labels, _, ages = per_face(val_out, val_y, face_ids, groups)
        out["face_temperature"] = float(fit_temperature(logits, labels))
        if ages is not None and (bands := fit_band_calibration(logits, labels, ages)):
            out["age_band_calibration"] = bands
    return out


def compute_metrics(task: str, outputs: np.ndarray, y: np.ndarray, meta: MetaLike, groups: dict[str, list[str]]) -> dict:
    """Test metrics of a model's raw ``outputs`` against ``y``, broken down by ``groups`` (``METRICS[task]``)."""
    return METRICS[task_spec(task).name](outputs, y, meta, groups)


def _age_metrics(outputs: np.ndarray, y: np.ndarray, meta: MetaLike, groups: dict[str, list[str]]) -> dict:
    value, low, high = decode_age(outputs, meta)
    out = age_metrics(y, value, low, high, groups=groups)
    src = np.asarray(groups.get("source", []))
    if len(set(src)) > 1:
        out["by_source"] = {s: age_metrics(y[src == s], value[src == s], low[src == s], high[src == s])
                            for s in sorted(set(src))}
    return out


def _eye_metrics(outputs: np.ndarray, y: np.ndarray, meta: MetaLike, groups: dict[str, list[str]]) -> dict:
    """Single crops, and whole faces (their eyes' mean logit, as ``predict`` answers) where crops were cut from faces."""
    face_ids = groups.get(FACE_ID)
    crop_groups = {k: v for k, v in groups.items() if k not in NOT_BREAKDOWNS}
    p_crop = decode_eyes(outputs, meta)
    out = binary_metrics(y, p_crop, groups=crop_groups) | _by_source(y, p_crop, crop_groups)
    if face_ids and any(f is not None for f in face_ids):
        logits, labels, face_groups, ages = per_face(outputs, y, face_ids, groups, band_age_key(groups))
        p = decode_face_logits(logits, meta, ages)
        out["faces"] = binary_metrics(labels, p, groups=face_groups) | _by_source(labels, p, face_groups)
    return out


def _by_source(y: np.ndarray, p: np.ndarray, groups: dict[str, list]) -> dict:
    """``{"by_source": {source: binary_metrics with the other groups}}``, or {} for a single source."""
    src = np.asarray(groups.get("source", []))
    if len(set(src.tolist())) < 2:
        return {}
    out = {}
    for s in sorted(set(src.tolist())):
        keep = np.flatnonzero(src == s)
        sub = {k: [vals[i] for i in keep] for k, vals in groups.items() if k != "source"}
        out[s] = binary_metrics(y[keep], p[keep], groups=sub)
    return {"by_source": out}


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def headline(task: str, m: dict) -> str:
    """One line of the key test numbers (undefined metrics, e.g. R² of constant ages, show as n/a)."""
    return HEADLINES[task_spec(task).name](m)


def _age_headline(m: dict) -> str:
    s = f"MAE {_fmt(m['mae'], '.2f')}, RMSE {_fmt(m['rmse'], '.2f')}, R² {_fmt(m['r2'], '.3f')}, CS@5 {_fmt(m['cs5'], '.3f')}"
    if m.get("coverage") is not None:
        s += f", 80% interval coverage {m['coverage']:.3f}"
    for src, sm in m.get("by_source", {}).items():
        s += f" | {src}: MAE {_fmt(sm['mae'], '.2f')} RMSE {_fmt(sm['rmse'], '.2f')} R² {_fmt(sm['r2'], '.3f')}"
    return s


def _eye_headline(m: dict) -> str:
    return (f"accuracy {_fmt(m['accuracy'], '.4f')}, balanced {_fmt(m['balanced_accuracy'], '.4f')}, "
            f"ROC-AUC {_fmt(m['roc_auc'], '.4f')}, ECE {_fmt(m['ece'], '.4f')}")


#: Per task (``facelens.tasks``): its test metrics from raw outputs, and their one-line summary.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray, MetaLike, dict[str, list[str]]], dict]] = {
    "age": _age_metrics, "eyes": _eye_metrics}
HEADLINES: dict[str, Callable[[dict], str]] = {"age": _age_headline, "eyes": _eye_headline}
