"""The shard folder of ``--engine ray`` (``facelens.infer.shards``), without Ray: atomic shards, resume, dedupe, refusals."""

from __future__ import annotations

import json
import os
import stat

import pytest

from facelens.errors import FacelensError
from facelens.infer.shards import ERRORS_FILE, SUCCESS_FILE, ShardWriter, finished_shards, read_records


def record(i: int, error: str | None = None) -> dict:
    face = {"box": [1.0, 2.0, 30.0, 40.0], "score": 0.9,
            "landmarks": {k: [float(i), 2.0] for k in ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")},
            "age": {"value": 20.0 + i, "low": 15.0, "high": 30.0, "interval": 0.8},
            "sex": {"p_female": 0.7, "p_male": 0.3, "eyes_disagree": False, "caution": None,
                    "eyes": [{"side": s, "p_female": 0.7, "p_male": 0.3, "box": [1.0, 1.0, 5.0, 5.0]} for s in ("left", "right")]}}
    return {"schema": "facelens/1", "path": f"/photos/{i:03d}.jpg", "width": 64, "height": 64,
            "faces": [] if error else [face], "error": error, "message": None}


def test_shards_are_numbered_counted_and_duplicates_dropped(tmp_path):
    out = tmp_path / "out"
    w = ShardWriter.open(out, shard_size=3)
    added = [w.add(record(i)) for i in range(7)]
    assert added == [True] * 7
    assert w.add(record(2)) is False and w.duplicates_dropped == 1  # a retried batch's second copy
    assert w.add(record(7, error="/photos/007.jpg: not an image")) is True
    w.finish(inputs=8)
    assert [p.name for p in finished_shards(out)] == ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    assert [r["path"] for r in read_records(out)] == [f"/photos/{i:03d}.jpg" for i in range(8)]
    manifest = json.loads((out / SUCCESS_FILE).read_text())
    assert (manifest["records"], manifest["ok"], manifest["failed"], manifest["faces"]) == (8, 7, 1, 7)
    assert (out / ERRORS_FILE).read_text() == 'path,error\n/photos/007.jpg,/photos/007.jpg: not an image\n'
    mode = stat.S_IMODE(os.stat(out / "part-00000.jsonl").st_mode)
    assert mode == 0o666 & ~_umask()  # readable like any file the user writes, not the temp file's 0600


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def test_resume_after_a_killed_driver_continues_after_the_last_finished_shard(tmp_path):
    out = tmp_path / "out"
    w = ShardWriter.open(out, shard_size=2)
    for i in range(5):
        w.add(record(i))  # 4 committed in 2 shards, the 5th still pending: a kill now loses only it
    (out / ".part-00002.jsonl.abc123.tmp").write_text(json.dumps(record(4))[:40])  # the torn temp file of the kill
    assert not (out / SUCCESS_FILE).exists()
    with pytest.raises(FacelensError, match="already exists and is not empty; pass --resume"):
        ShardWriter.open(out)
    w2 = ShardWriter.open(out, shard_size=2, resume=True)
    assert w2.done == {f"/photos/{i:03d}.jpg" for i in range(4)}
    assert not list(out.glob(".*.tmp"))
    for i in range(7):
        w2.add(record(i))  # the driver skips done inputs before sending them; anything that slips through is dropped
    w2.finish(inputs=7)
    paths = [r["path"] for r in read_records(out)]
    assert sorted(paths) == [f"/photos/{i:03d}.jpg" for i in range(7)] and len(paths) == len(set(paths))
    assert [p.name for p in finished_shards(out)][-1] == "part-00003.jsonl"
    assert json.loads((out / SUCCESS_FILE).read_text())["records"] == 7


def test_refusals_name_the_folder_and_the_fix(tmp_path):
    a_file = tmp_path / "results.jsonl"
    a_file.write_text("")
    with pytest.raises(FacelensError, match="is a file; --engine ray writes a folder"):
        ShardWriter.open(a_file)
    with pytest.raises(FacelensError, match="--format must be one of jsonl, parquet"):
        ShardWriter.open(tmp_path / "x", fmt="csv")
    with pytest.raises(FacelensError, match="--shard-size must be >= 1"):
        ShardWriter.open(tmp_path / "x", shard_size=0)
    out = tmp_path / "jsonl-run"
    w = ShardWriter.open(out)
    w.add(record(0))
    w.finish(1)
    pytest.importorskip("pyarrow")
    with pytest.raises(FacelensError, match="holds jsonl shards; resume it with --format jsonl"):
        ShardWriter.open(out, fmt="parquet", resume=True)


def test_a_corrupt_shard_is_named(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000.jsonl").write_text('{"path": "a"}\n{not json\n')
    with pytest.raises(FacelensError, match=r"part-00000\.jsonl: cannot read this result shard"):
        ShardWriter.open(out, resume=True)


def test_parquet_rows_equal_the_records_they_were_made_from(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "out"
    w = ShardWriter.open(out, fmt="parquet", shard_size=2)
    recs = [record(0), record(1, error="/photos/001.jpg: empty file"), record(2)]
    for r in recs:
        w.add(r)
    w.finish(3)
    assert pq.read_table(out).to_pylist() == recs  # the folder reads as one table; _errors.csv and _SUCCESS are skipped
