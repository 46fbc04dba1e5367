"""Batch prediction: kill-and-resume loses and duplicates nothing, broken files are listed, bad globs are clear.

Photos are generated from ``skimage.data.astronaut()`` (public domain, one face) cropped and
re-encoded at different sizes. Models: the shipped ones when present, otherwise a throwaway
eye model built here (the batch logic does not depend on what the model predicts).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from facelens.api import Analyzer, default_model_path
from facelens.infer.batch import expand_inputs, run_batch

ROOT = Path(__file__).resolve().parents[1]
#: Enough photos that a run lasts a few seconds, so a kill or Ctrl-C after the third record lands mid-run even
#: on a loaded machine (60 were too few once the age model ran in int8, twice as fast).
N_PHOTOS = 120


@pytest.fixture(scope="module")
def models_env(tmp_path_factory) -> dict[str, str]:
    """Environment for subprocess runs: FACELENS_MODELS pointing at usable models."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    if default_model_path("age").is_file() and default_model_path("eyes").is_file():
        return env
    from test_export import tiny_checkpoint  # tests/ is on sys.path under pytest's default import mode

    from facelens.train.export import export_onnx

    d = tmp_path_factory.mktemp("models")
    export_onnx(tiny_checkpoint(d / "eyes-mobilenetv2.pt"), d / "eyes-mobilenetv2.onnx", parity_samples=2)
    env["FACELENS_MODELS"] = str(d)
    return env


@pytest.fixture()
def analyzer(models_env, monkeypatch) -> Analyzer:
    if "FACELENS_MODELS" in models_env:
        monkeypatch.setenv("FACELENS_MODELS", models_env["FACELENS_MODELS"])
    return Analyzer()


def make_photos(folder: Path, n: int = N_PHOTOS) -> list[Path]:
    """``n`` one-face JPEG/PNG photos of various sizes (some large, so a run takes a few seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    face = skdata.astronaut()[20:320, 80:380]
    sizes = np.linspace(120, 1400, n).astype(int)
    out = []
    for i, s in enumerate(sizes):
        img = cv2.cvtColor(cv2.resize(face, (int(s), int(s * 1.1))), cv2.COLOR_RGB2BGR)
        p = folder / ("sub" if i % 5 == 0 else "") / f"photo_{i:03d}.{'png' if i % 7 == 0 else 'jpg'}"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        out.append(p)
    return sorted(out)


def predict_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from facelens.cli import main; main()", "predict", *args]


def read_paths(out: Path) -> list[str]:
    """One entry per photo record (CSV: per (path, face) row, checked for duplicates separately)."""
    if out.suffix == ".jsonl":
        return [json.loads(line)["path"] for line in out.read_text().splitlines()]
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    keys = Counter((r["path"], r["face"]) for r in rows)
    assert max(keys.values()) == 1, f"duplicate CSV rows: {[k for k, v in keys.items() if v > 1][:3]}"
    return sorted({r["path"] for r in rows})


def count_records(out: Path) -> int:
    if not out.exists():
        return 0
    lines = out.read_bytes().count(b"\n")
    return lines - 1 if out.suffix == ".csv" and lines else lines


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_sigkill_then_resume_keeps_every_photo_exactly_once(tmp_path, models_env, suffix):
    photos = make_photos(tmp_path / "photos")
    out = tmp_path / f"results{suffix}"
    proc = subprocess.Popen(predict_cmd(str(tmp_path / "photos"), "--out", str(out)), env=models_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while count_records(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    written = count_records(out)
    assert 0 < written < N_PHOTOS, "the kill must land mid-run for this test to mean anything"

    res = subprocess.run(predict_cmd(str(tmp_path / "photos"), "--out", str(out), "--resume"), env=models_env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "skipped as already in" in res.stderr
    paths = read_paths(out)
    assert Counter(paths) == Counter(str(p) for p in photos)  # all there, none twice
    assert not (tmp_path / f"results{suffix}.errors.csv").exists()
    # a second resume has nothing left to do and writes nothing
    size = out.stat().st_size
    res = subprocess.run(predict_cmd(str(tmp_path / "photos"), "--out", str(out), "--resume"), env=models_env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and out.stat().st_size == size
    assert f"0 of {N_PHOTOS} files processed" in res.stderr


def test_ctrl_c_prints_the_summary_and_the_resume_command(tmp_path, models_env):
    """SIGINT (Ctrl-C) mid-run: exit 130, the summary, and a --resume command that finishes the job."""
    import shlex

    photos = make_photos(tmp_path / "my photos")  # a space: the printed command must quote it
    out = tmp_path / "results.jsonl"
    proc = subprocess.Popen(predict_cmd(str(tmp_path / "my photos"), "--out", str(out)), env=models_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while count_records(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted:" in err and f"of {N_PHOTOS} files processed" in err
    written = count_records(out)
    assert 0 < written < N_PHOTOS, "the interrupt must land mid-run for this test to mean anything"
    line = err.strip().splitlines()[-1].strip()
    args = shlex.split(line)
    assert args[:2] == ["facelens", "predict"] and args[-1] == "--resume" and str(tmp_path / "my photos") in args
    res = subprocess.run(predict_cmd(*args[2:]), env=models_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert Counter(read_paths(out)) == Counter(str(p) for p in photos)


def test_resume_command_quotes_and_adds_resume_once():
    from facelens.cli import resume_command

    assert resume_command(["predict", "a b", "--out", "r.csv"]) == "facelens predict 'a b' --out r.csv --resume"
    assert resume_command(["predict", "x", "--out", "r.csv", "--resume"]).count("--resume") == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_cuts_a_torn_last_record(tmp_path, analyzer, suffix):
    photos = make_photos(tmp_path / "photos", n=4)
    out = tmp_path / f"r{suffix}"
    run_batch(analyzer, photos[:2], out, progress=False)
    with out.open("ab") as fh:  # what a kill in the middle of a write would leave
        fh.write(b'{"schema": "facelens/1", "path": "' if suffix == ".jsonl" else f"{photos[2]},0,12.0,".encode())
    summary = run_batch(analyzer, photos, out, resume=True, progress=False)
    # after a torn CSV tail the last complete photo is redone too (its rows might be incomplete)
    assert summary.skipped == (2 if suffix == ".jsonl" else 1)
    assert Counter(read_paths(out)) == Counter(str(p) for p in photos)
    if suffix == ".jsonl":
        assert all(json.loads(line) for line in out.read_text().splitlines())


def test_broken_files_are_listed_and_the_rest_analysed(tmp_path, analyzer):
    good = make_photos(tmp_path / "mixed", n=5)
    (tmp_path / "mixed" / "empty.jpg").write_bytes(b"")
    jpeg = good[1].read_bytes()
    (tmp_path / "mixed" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (tmp_path / "mixed" / "text.jpg").write_text("this is not a photo\nsecond line\n")
    bad = {"empty.jpg", "truncated.jpg", "text.jpg"}
    out = tmp_path / "out.csv"
    summary = run_batch(analyzer, expand_inputs([str(tmp_path / "mixed")]), out, progress=False)
    assert (summary.processed, summary.failed, summary.ok) == (8, 3, 5)
    with open(str(out) + ".errors.csv", newline="") as fh:
        errors = list(csv.DictReader(fh))
    assert {Path(e["path"]).name for e in errors} == bad
    assert all(e["error"] for e in errors)
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(by_name) == 8
    for name in bad:
        assert by_name[name]["error"] and not by_name[name]["score"]
    for p in good:
        assert not by_name[p.name]["error"] and float(by_name[p.name]["score"]) > 0.5  # a face was found
    assert "3 failed" in summary.text() and "errors.csv" in summary.text()
    # resuming does not list the broken files a second time
    summary = run_batch(analyzer, expand_inputs([str(tmp_path / "mixed")]), out, resume=True, progress=False)
    assert summary.processed == 0 and summary.skipped == 8
    assert len(Path(str(out) + ".errors.csv").read_text().splitlines()) == 1 + 3


def test_glob_matching_nothing_is_a_clear_error(tmp_path, models_env):
    res = subprocess.run(predict_cmd(str(tmp_path / "nothing-*.jpg"), "--out", str(tmp_path / "r.jsonl")),
                         env=models_env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "matches no files" in res.stderr and "nothing-*.jpg" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "r.jsonl").exists()


def test_expand_inputs_keeps_each_file_once(tmp_path):
    photos = make_photos(tmp_path / "p", n=3)
    got = expand_inputs([str(tmp_path / "p"), str(tmp_path / "p" / "*.jpg"), str(photos[0])])
    assert sorted(got) == sorted(photos) and len(got) == 3


def test_analyze_many_batches_across_photos_like_analyze(tmp_path, analyzer):
    """Batched, threaded analysis gives the same results, in input order, as one photo at a time."""
    photos = make_photos(tmp_path / "p", n=6)
    srcs = [photos[0], tmp_path / "missing.jpg", *photos[1:]]
    many = list(analyzer.analyze_many(srcs, batch_size=4))
    one = [analyzer.analyze(s) for s in srcs]
    assert [r.path for r in many] == [str(s) for s in srcs]
    assert many[1].error and not many[1].faces
    for a, b in zip(many, one, strict=True):
        da, db = a.to_dict(), b.to_dict()
        assert json.dumps(da, sort_keys=True) == json.dumps(db, sort_keys=True)


def test_analyzer_sessions_do_not_spin_but_plain_predictors_do(analyzer) -> None:
    """Between the analyzer's model calls the detector needs the cores; alone, spinning is faster."""
    from facelens.infer.predictor import OnnxPredictor, load_predictor

    onnx = [p for p in (analyzer.age, analyzer.eyes) if isinstance(p, OnnxPredictor)]
    assert onnx, "the analyzer should open .onnx models with ONNX Runtime"
    key = "session.intra_op.allow_spinning"
    for pred in onnx:
        assert pred.session.get_session_options().get_session_config_entry(key) == "0"
    alone = load_predictor(onnx[0].path).session.get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ONNX Runtime's default: spin
        alone.get_session_config_entry(key)


def test_detect_max_side_trades_small_faces_for_speed(models_env, monkeypatch) -> None:
    """A 60 px face in a 2400 px photo is lost at the default detection size and found at full size."""
    if "FACELENS_MODELS" in models_env:
        monkeypatch.setenv("FACELENS_MODELS", models_env["FACELENS_MODELS"])
    face = cv2.resize(skdata.astronaut()[20:320, 80:380], (90, 90), interpolation=cv2.INTER_AREA)
    photo = np.full((1800, 2400, 3), 128, dtype=np.uint8)
    photo[900:990, 1200:1290] = face
    assert Analyzer().analyze(photo).faces == []
    (found,) = Analyzer(detect_max_side=2400).analyze(photo).faces
    x, y, w, h = found.box
    assert 1190 < x + w / 2 < 1300 and 890 < y + h / 2 < 1000


@pytest.mark.parametrize("side", [0, 10, -512, 20000])
def test_detect_max_side_out_of_range_is_a_clear_error(side: int, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"between 64 and 8192 px, got {side}"):
        Analyzer(detect_max_side=side)
    photo = tmp_path / "p.jpg"
    cv2.imwrite(str(photo), np.zeros((64, 64, 3), np.uint8))
    res = subprocess.run([sys.executable, "-m", "facelens.cli", "predict", str(photo), "--detect-max-side", str(side)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and f"got {side}" in res.stderr and "Traceback" not in res.stderr
    serve = subprocess.run([sys.executable, "-m", "facelens.cli", "serve", "--port", "0", "--detect-max-side", str(side)],
                           capture_output=True, text=True, timeout=120)  # refused before the server starts
    assert serve.returncode != 0 and "--detect-max-side: detect max side must be between" in serve.stderr


def test_a_ctrl_c_python_drops_inside_a_finaliser_still_stops_the_run(tmp_path):
    """Python ignores an exception raised in ``__del__``; a Ctrl-C landing there must still end the run."""
    from types import SimpleNamespace

    class RaisesSigintWhenCollected:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)  # the handler's KeyboardInterrupt is raised here and dropped

    class StubAnalyzer:
        def analyze_many(self, paths, names, batch_size):
            for i, p in enumerate(paths):
                if i == 2:
                    RaisesSigintWhenCollected()  # collected at once: the interrupt lands in its finaliser
                yield SimpleNamespace(error=None, path=str(p), faces=[], to_dict=lambda p=p: {"path": str(p), "faces": []})

    paths = [tmp_path / f"p{i}.jpg" for i in range(10)]
    summary = run_batch(StubAnalyzer(), paths, tmp_path / "r.jsonl", progress=False)
    assert summary.interrupted and summary.processed == 3
    assert count_records(tmp_path / "r.jsonl") == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the previous handler is back
