"""``predict --engine ray``: same records as the local engine, atomic shards, resume, broken files, worker crashes.

One real local Ray runtime (loopback, 2 CPUs) is started for the whole module and shut down at
the end; every run joins it (``connect`` leaves a runtime it did not start running). Photos are
made here from ``skimage.data.astronaut()`` (public domain): one-face crops at several sizes, a
two-face photo, a photo without a face and a file that is not an image.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

# Before Ray is imported: a private runtime binds to 127.0.0.1 only (facelens.ray_engine.connect).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")

from facelens.errors import DeviceError, FacelensError, ModelLoadError  # noqa: E402
from facelens.infer.batch import expand_inputs, run_batch  # noqa: E402
from facelens.infer.shards import ERRORS_FILE, SUCCESS_FILE, finished_shards, read_records  # noqa: E402
from facelens.ray_engine import ModelSpec, RayOptions, build_analyzer, connect, resolve_models, run_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Ray Data 2.60 warns about its own deprecated settings whenever it copies its context to a worker.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def ray_runtime():
    """A local Ray runtime for the module: 2 CPUs, loopback only, no dashboard."""
    os.environ.pop("RAY_ADDRESS", None)  # never join whatever cluster the environment names
    started, where = connect(None, workers=2)
    assert started and "loopback" in where
    assert ray.cluster_resources().get("CPU") == 2
    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())  # nothing listens beyond this machine
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    try:
        age, eyes = resolve_models(None, None, no_age=False, no_eyes=False)
    except ModelLoadError as exc:
        pytest.skip(f"no shipped models: {exc}")
    return ModelSpec(age_model=age, eye_model=eyes)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of 12 inputs: 9 one-face photos, one with two faces, one without a face, one broken file."""
    from skimage import data as skdata

    folder = tmp_path_factory.mktemp("photos")
    face = skdata.astronaut()[20:320, 80:380]
    for i, s in enumerate(np.linspace(140, 420, 9).astype(int)):
        img = cv2.resize(face, (int(s), int(s * 1.1)))
        name = folder / ("sub" if i % 3 == 0 else "") / f"face_{i:02d}.{'png' if i % 4 == 0 else 'jpg'}"
        name.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    pair = np.hstack([cv2.resize(face, (220, 240)), cv2.resize(face[:, ::-1], (180, 240))])
    cv2.imwrite(str(folder / "two_faces.jpg"), cv2.cvtColor(pair, cv2.COLOR_RGB2BGR))
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "no_face.png"), noise)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return folder


@pytest.fixture(scope="module")
def local_records(tmp_path_factory, photos, spec) -> dict[str, dict]:
    """The local engine's records for the same photos, keyed by path (the reference)."""
    out = tmp_path_factory.mktemp("local") / "results.jsonl"
    summary = run_batch(build_analyzer(spec), expand_inputs([str(photos)]), out, progress=False)
    assert summary.processed == 12 and summary.failed == 1
    return {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}


def _opts(**kw) -> RayOptions:
    return RayOptions(workers=2, progress=False, **{"files_per_batch": 3, **kw})


def assert_same_record(a: dict, b: dict) -> None:
    """Same keys everywhere, same faces in the same order, ages within 1e-4, same P(female)."""
    assert a.keys() == b.keys()
    assert (a["path"], a["width"], a["height"], a["error"], a["message"]) == (b["path"], b["width"], b["height"],
                                                                            b["error"], b["message"])
    assert len(a["faces"]) == len(b["faces"])
    for fa, fb in zip(a["faces"], b["faces"], strict=True):
        assert fa.keys() == fb.keys() and fa["landmarks"].keys() == fb["landmarks"].keys()
        assert fa["box"] == pytest.approx(fb["box"], abs=1e-6)
        for k in ("value", "low", "high"):
            assert fa["age"][k] == pytest.approx(fb["age"][k], abs=1e-4)
        assert fa["sex"]["p_female"] == fb["sex"]["p_female"]
        assert [e["p_female"] for e in fa["sex"]["eyes"]] == [e["p_female"] for e in fb["sex"]["eyes"]]
        assert fa["sex"].keys() == fb["sex"].keys()


@pytest.mark.parametrize("layout", ["fused", "split"])
def test_ray_records_equal_the_local_engine(ray_runtime, photos, spec, local_records, tmp_path, layout):
    out = tmp_path / "ray-out"
    summary = run_ray(spec, expand_inputs([str(photos)]), out, _opts(shard_size=5, layout=layout))
    assert (summary.processed, summary.ok, summary.failed, summary.no_face) == (12, 11, 1, 1)
    records = read_records(out)
    assert Counter(r["path"] for r in records) == Counter(list(local_records))  # every input exactly once
    for r in records:
        assert_same_record(r, local_records[r["path"]])
    assert sum(len(r["faces"]) for r in records) == 11  # 9 one-face photos and the pair
    assert [p.name for p in finished_shards(out)] == ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    assert not list(out.glob(".*.tmp"))
    manifest = json.loads((out / SUCCESS_FILE).read_text())
    assert (manifest["inputs"], manifest["records"], manifest["failed"], manifest["format"]) == (12, 12, 1, "jsonl")
    with (out / ERRORS_FILE).open(newline="") as fh:
        errors = list(csv.DictReader(fh))
    broken = str(photos / "broken.jpg")
    assert errors == [{"path": broken, "error": local_records[broken]["error"]}]
    assert errors[0]["error"].startswith(f"{broken}: image data is damaged")  # names the file and the problem


def test_parquet_rows_are_the_json_records(ray_runtime, photos, spec, local_records, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "ray-parquet"
    run_ray(spec, expand_inputs([str(photos)]), out, _opts(fmt="parquet", shard_size=8))
    shards = finished_shards(out)
    assert [p.suffix for p in shards] == [".parquet", ".parquet"]
    # every shard carries the same explicit schema, so readers can concatenate them
    assert pq.read_schema(shards[0]).equals(pq.read_schema(shards[1]))
    # the folder reads as one table: the errors file and manifest start with "_", which Parquet readers skip
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 12 and (out / ERRORS_FILE).exists()
    for r in rows:
        assert_same_record(r, local_records[r["path"]])


def test_resume_skips_finished_inputs_and_duplicates_nothing(ray_runtime, photos, spec, tmp_path):
    paths = expand_inputs([str(photos)])
    out = tmp_path / "ray-resume"
    first = run_ray(spec, paths[:5], out, _opts())
    assert first.processed == 5
    with pytest.raises(FacelensError, match="already exists.*--resume"):
        run_ray(spec, paths, out, _opts())
    second = run_ray(spec, paths, out, _opts(), resume=True)
    assert (second.skipped, second.processed) == (5, 7)
    assert "5 skipped as already in" in second.text()
    records = read_records(out)
    assert Counter(r["path"] for r in records) == Counter(str(p) for p in paths)
    shards_before = [p.name for p in finished_shards(out)]
    third = run_ray(spec, paths, out, _opts(), resume=True)
    assert (third.skipped, third.processed) == (12, 0)
    assert [p.name for p in finished_shards(out)] == shards_before  # nothing left to do, nothing written
    assert json.loads((out / SUCCESS_FILE).read_text())["records"] == 12


def test_a_killed_worker_is_retried_and_each_input_is_written_once(ray_runtime, photos, spec, tmp_path):
    marker = tmp_path / "killed-once"
    out = tmp_path / "ray-kill"
    paths = expand_inputs([str(photos)])
    summary = run_ray(spec, paths, out, _opts(kill_once_marker=str(marker)))
    assert marker.exists(), "no worker was killed: the test proves nothing"
    assert summary.processed == 12
    assert Counter(r["path"] for r in read_records(out)) == Counter(str(p) for p in paths)


def test_gpus_are_refused_where_the_cluster_has_none(ray_runtime, photos, spec, tmp_path):
    if ray.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("this runtime has a GPU")
    with pytest.raises(DeviceError, match="--gpus-per-worker 0.5: .* has no GPU"):
        run_ray(spec, expand_inputs([str(photos)]), tmp_path / "gpu", _opts(gpus_per_worker=0.5))


def test_cli_engine_ray_and_its_flag_checks(ray_runtime, photos, spec, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from facelens.cli import app

    runner = CliRunner()
    out = tmp_path / "cli-out"
    res = runner.invoke(app, ["predict", str(photos / "sub"), str(photos / "broken.jpg"), "--out", str(out),
                              "--engine", "ray", "--workers", "2", "--format", "parquet", "--shard-size", "2",
                              "--ray-layout", "fused"])
    assert res.exit_code == 0, res.output
    assert "4 of 4 files processed" in res.output and "1 failed" in res.output
    assert len(finished_shards(out)) == 2 and (out / SUCCESS_FILE).exists()
    res = runner.invoke(app, ["predict", str(photos), "--out", str(tmp_path / "x.jsonl"), "--workers", "2"])
    assert res.exit_code == 2 and "--workers: only with --engine ray" in res.output
    res = runner.invoke(app, ["predict", str(photos), "--engine", "ray"])
    assert res.exit_code == 2 and "needs --out" in res.output
    res = runner.invoke(app, ["predict", str(photos), "--engine", "ray", "--out", str(tmp_path / "z"), "--ray-layout", "x"])
    assert res.exit_code == 2 and "--ray-layout must be fused or split" in res.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    res = runner.invoke(app, ["predict", str(photos), "--out", str(tmp_path / "y"), "--engine", "ray"])
    assert res.exit_code == 2 and "pip install 'facelens[ray]'" in res.output


def test_the_local_engine_does_not_import_ray(photos, tmp_path):
    code = ("import sys\nfrom facelens.cli import app\n"
            f"app(['predict', {str(photos / 'sub')!r}, '--out', {str(tmp_path / 'r.jsonl')!r}], standalone_mode=False)\n"
            "print('ray' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "False"
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 3


def test_the_cluster_driver_actor_path_gives_the_same_records(ray_runtime, photos, spec, local_records):
    """The path a Ray Client (ray://) process takes: the dataset runs in an actor, polled batch by batch."""
    from facelens.ray_engine import _through_cluster_driver

    paths = expand_inputs([str(photos)])
    items = [{"path": str(p), "file": str(p.absolute())} for p in paths]
    batches = list(_through_cluster_driver(ray, ModelSpec(**vars(spec)), items, 2, _opts()))
    assert len(batches) > 1  # batch by batch, not one reply at the end
    records = [json.loads(t) for b in batches for t in b]
    assert sorted(r["path"] for r in records) == sorted(local_records)
    for r in records:
        assert_same_record(r, local_records[r["path"]])


def test_workers_load_the_models_the_driver_sent(ray_runtime, photos, spec, local_records, tmp_path):
    """A worker node need not have the model files: the driver ships their bytes (checked by deleting them first)."""
    import shutil

    from facelens.ray_engine import _record_batches, ship_models

    copies = {}
    for task in ("age_model", "eye_model"):
        src = Path(getattr(spec, task))
        copies[task] = str(shutil.copy(src, tmp_path / src.name))
    shipped = ship_models(ModelSpec(**{**vars(spec), **copies}))
    assert set(shipped.shipped) == set(copies.values())
    for path in copies.values():
        Path(path).unlink()  # gone from every "node"'s disk
    paths = expand_inputs([str(photos / "sub")])
    items = [{"path": str(p), "file": str(p.absolute())} for p in paths]
    records = [json.loads(t) for b in _record_batches(shipped, items, 2, _opts()) for t in b]
    assert sorted(r["path"] for r in records) == sorted(map(str, paths))
    for r in records:
        assert_same_record(r, local_records[r["path"]])


def test_a_broken_model_is_refused_before_ray_runs(photos, spec, tmp_path):
    bad = tmp_path / "age.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=f"{bad}: not a loadable ONNX model"):
        run_ray(ModelSpec(**{**vars(spec), "age_model": str(bad)}), expand_inputs([str(photos)]), tmp_path / "o", _opts())
    eyes_as_age = ModelSpec(**{**vars(spec), "age_model": spec.eye_model})
    with pytest.raises(ModelLoadError, match="is a 'eyes' model, expected a 'age' model"):
        run_ray(eyes_as_age, expand_inputs([str(photos)]), tmp_path / "o", _opts())
