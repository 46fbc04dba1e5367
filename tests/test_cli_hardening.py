"""The CLI and batch runner facing hostile or unlucky inputs (issue #20, points 1 and 6)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image, features
from test_batch import make_photos
from typer.testing import CliRunner

from facelens.cli import app
from facelens.data.readers import read_dataset
from facelens.errors import ModelLoadError


@pytest.fixture(scope="module")
def shipped_models():
    from facelens.api import Analyzer

    try:
        Analyzer()
    except ModelLoadError as exc:
        pytest.skip(f"no shipped models: {exc}")


def _damaged(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 100, 50)).save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    data[len(data) // 2 :] = b"\xff" * (len(data) - len(data) // 2)
    return bytes(data[:2048])


def _errors(out: Path) -> dict[str, str]:
    with open(str(out) + ".errors.csv", newline="") as fh:
        return {Path(r["path"]).name: r["error"] for r in csv.DictReader(fh)}


def test_predict_folder_with_corrupt_exotic_files_and_bad_links(tmp_path, shipped_models):
    photos = make_photos(tmp_path / "photos", n=6)
    folder = tmp_path / "photos"
    fmts = ["DDS"] + (["AVIF"] if features.check("avif") else [])
    for fmt in fmts:
        (folder / f"damaged_{fmt.lower()}.jpg").write_bytes(_damaged(fmt))
    (folder / "dangling.jpg").symlink_to(folder / "deleted.jpg")
    (folder / "loop_a.jpg").symlink_to(folder / "loop_b.jpg")
    (folder / "loop_b.jpg").symlink_to(folder / "loop_a.jpg")
    n_bad = len(fmts) + 3
    out = tmp_path / "o.csv"
    res = CliRunner().invoke(app, ["predict", str(folder), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"{len(photos) + n_bad} of {len(photos) + n_bad} files processed" in res.output
    assert f"{len(photos)} ok" in res.output and f"{n_bad} failed" in res.output
    errors = _errors(out)
    assert set(errors) == {f"damaged_{f.lower()}.jpg" for f in fmts} | {"dangling.jpg", "loop_a.jpg", "loop_b.jpg"}
    for fmt in fmts:
        assert "not a recognised image format" in errors[f"damaged_{fmt.lower()}.jpg"]
    assert "broken symbolic link" in errors["dangling.jpg"]
    assert "loop" in errors["loop_a.jpg"]
    again = CliRunner().invoke(app, ["predict", str(folder), "--out", str(out), "--resume"])
    assert again.exit_code == 0, again.output
    assert f"{len(photos) + n_bad} skipped" in again.output


def test_explicit_dangling_link_gets_an_error_result(tmp_path, shipped_models):
    link = tmp_path / "gone.jpg"
    link.symlink_to(tmp_path / "never-existed.jpg")
    res = CliRunner().invoke(app, ["predict", str(link), "--json"])
    assert res.exit_code == 1
    record = json.loads(res.output.strip().splitlines()[-1])
    assert record["path"] == str(link) and "broken symbolic link" in record["error"]


@pytest.mark.parametrize("where", ["under_a_file", "sys"])
def test_unwritable_out_is_one_clear_line(tmp_path, shipped_models, where):
    photo = make_photos(tmp_path / "p", n=1)[0]
    if where == "sys":
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no /sys")
        out = Path("/sys/kernel/facelens-results.csv")
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        out = blocker / "results.csv"
    res = CliRunner().invoke(app, ["predict", str(photo), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "cannot write the results" in res.output and "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


@pytest.mark.parametrize(("option", "value"), [("--batch-size", "0"), ("--epochs", "0"), ("--patience", "0"),
                                               ("--lr", "0"), ("--max-images", "-1")])
def test_train_refuses_impossible_options_before_reading_data(tmp_path, option, value):
    out = tmp_path / "run"
    data = tmp_path / "does-not-matter"  # never read: the check comes first
    res = CliRunner().invoke(app, ["train", "age", "--data", str(data), "--out", str(out), option, value])
    assert res.exit_code == 2, res.output
    assert option in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_train_readers_list_broken_links(tmp_path):
    root = tmp_path / "utk"
    root.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (i, 0, 0)).save(root / f"{20 + i}_0_0_2017010{i}.jpg")
    (root / "30_1_0_20170110.jpg").symlink_to(root / "missing.jpg")
    (root / "31_1_0_20170111.jpg").symlink_to(root / "31_1_0_20170111.jpg")
    ds = read_dataset(root, "age")
    skipped = {p.name: why for p, why in ds.skipped}
    assert "broken symbolic link" in skipped["30_1_0_20170110.jpg"]
    assert "loop" in skipped["31_1_0_20170111.jpg"]
    assert len(ds.records) == 4
