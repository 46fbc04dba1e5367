"""Dataset readers on tiny fake datasets built in tmp_path (never the real data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from facelens.data.readers import concat, parse_utkface_name, read_csv_manifest, read_dataset
from facelens.errors import DatasetError

# The oddities listed in ../shared/data/README.md, plus ordinary names.
UTK_NAMES = {
    "25_0_0_20170116200000001.jpg.chip.jpg": {"age": "25", "gender": "male", "race": "white"},
    "3_1_2_20161219140000002.jpg.chip.jpg": {"age": "3", "gender": "female", "race": "asian"},
    "116_1_3_20170112220000003.jpg.chip.jpg": {"age": "116", "gender": "female", "race": "indian"},
    "39_1_20170116174525125.jpg.chip.jpg": {"age": "39", "gender": "female"},  # race missing
    "61_1_20170109150557335.jpg.chip.jpg": {"age": "61", "gender": "female"},  # race missing
    "55_0_0_20170116232725357jpg.chip.jpg": {"age": "55", "gender": "male", "race": "white"},  # no dot
    "24_0_1_20170116220224657 .jpg.chip.jpg": {"age": "24", "gender": "male", "race": "black"},  # space
}


def _labels(ds) -> dict[str, float | str]:
    return {r.path.name: r.label for r in ds.records}


@pytest.mark.parametrize(("name", "expected"), list(UTK_NAMES.items()))
def test_parse_utkface_name(name, expected):
    assert parse_utkface_name(name) == expected


@pytest.mark.parametrize("name", ["100.jpg", "photo_1.jpg", "25_2_0_2017.jpg", "25_10_0_2017.jpg", "abc_0_0.jpg"])
def test_parse_utkface_name_rejects_others(name):
    assert parse_utkface_name(name) is None


def test_utkface_folder(tmp_path, write_jpeg):
    for i, name in enumerate(UTK_NAMES):
        write_jpeg(tmp_path / name, seed=i)
    write_jpeg(tmp_path / "readme_picture.jpg", seed=99)  # not a UTKFace name: reported, not guessed
    (tmp_path / "notes.txt").write_text("not an image")
    ds = read_dataset(tmp_path, "age")
    assert ds.layout == "utkface-names"
    assert _labels(ds) == {name: float(info["age"]) for name, info in UTK_NAMES.items()}
    metas = {r.path.name: r.meta_dict() for r in ds.records}
    assert "race" not in metas["39_1_20170116174525125.jpg.chip.jpg"]
    assert metas["24_0_1_20170116220224657 .jpg.chip.jpg"] == {"gender": "male", "race": "black"}
    assert [p.name for p, _ in ds.skipped] == ["readme_picture.jpg"]
    assert "age" in ds.skipped[0][1]


def test_folder_per_age(tmp_path, write_jpeg):
    write_jpeg(tmp_path / "20" / "a.jpg", seed=1)
    write_jpeg(tmp_path / "20" / "b.jpg", seed=2)
    write_jpeg(tmp_path / "47" / "c.png", seed=3)
    (tmp_path / "47" / "c.txt").write_text("caption")
    write_jpeg(tmp_path / "unsorted" / "d.jpg", seed=4)
    ds = read_dataset(tmp_path, "age")
    assert ds.layout == "folder-per-age"
    assert _labels(ds) == {"a.jpg": 20.0, "b.jpg": 20.0, "c.png": 47.0}
    skipped = {p.name: why for p, why in ds.skipped}
    assert set(skipped) == {"c.txt", "d.jpg"}
    assert "unsorted" in skipped["d.jpg"]
    assert len(ds) == 3


def test_nested_train_test_folder_per_age(tmp_path, write_jpeg):
    write_jpeg(tmp_path / "train" / "20" / "a.jpg", seed=1)
    write_jpeg(tmp_path / "train" / "50" / "b.jpg", seed=2)
    write_jpeg(tmp_path / "test" / "35" / "c.jpg", seed=3)
    ds = read_dataset(tmp_path, "age")
    assert ds.layout.startswith("folder-per-age (nested")
    assert "train" in ds.layout and "test" in ds.layout
    assert _labels(ds) == {"a.jpg": 20.0, "b.jpg": 50.0, "c.jpg": 35.0}
    split_dirs = {r.path.name: r.meta_dict()["split_dir"] for r in ds.records}
    assert split_dirs == {"a.jpg": "train", "b.jpg": "train", "c.jpg": "test"}


def test_folder_per_class(tmp_path, write_jpeg):
    for i in range(3):
        write_jpeg(tmp_path / "femaleeyes" / f"{i}.jpg", seed=i)
    for i in range(2):
        write_jpeg(tmp_path / "maleeyes" / f"{i}.jpg", seed=10 + i)
    ds = read_dataset(tmp_path, "eyes")
    assert ds.layout == "folder-per-class"
    labels = sorted(r.label for r in ds.records)
    assert labels == ["femaleeyes"] * 3 + ["maleeyes"] * 2
    assert all(r.path.parent.name == r.label for r in ds.records)


def test_numbered_eye_files_are_not_read_as_utkface(tmp_path, write_jpeg):
    """Numbered names (1.jpg) directly in a folder are no known layout for age."""
    for i in range(3):
        write_jpeg(tmp_path / f"{i}.jpg", seed=i)
    with pytest.raises(DatasetError, match="cannot tell the layout"):
        read_dataset(tmp_path, "age")


def _write_manifest(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv_manifest(tmp_path, write_jpeg):
    write_jpeg(tmp_path / "imgs" / "p1_a.jpg", seed=1)
    write_jpeg(tmp_path / "imgs" / "p1_b.jpg", seed=2)
    write_jpeg(tmp_path / "imgs" / "p2_a.jpg", seed=3)
    absolute = write_jpeg(tmp_path / "elsewhere" / "p3.jpg", seed=4)
    manifest = _write_manifest(
        tmp_path / "labels.csv",
        [
            "path,age,group,source",
            "imgs/p1_a.jpg,31,person1,phone",
            "imgs/p1_b.jpg, 32.5 ,person1,",
            "imgs/p2_a.jpg,thirty,person2,scan",  # line 4: unusable label
            f"{absolute},60,,camera",
        ],
    )
    for source in (manifest, tmp_path):  # the file itself, or the folder holding it
        ds = read_dataset(source, "age")
        assert ds.layout == "csv-manifest"
        assert {r.path: r.label for r in ds.records} == {
            tmp_path / "imgs" / "p1_a.jpg": 31.0,
            tmp_path / "imgs" / "p1_b.jpg": 32.5,
            absolute: 60.0,
        }
        assert all(r.path.exists() for r in ds.records)
        groups = {r.path.name: r.group for r in ds.records}
        assert groups == {"p1_a.jpg": "person1", "p1_b.jpg": "person1", "p3.jpg": None}
        assert {r.path.name: r.meta_dict() for r in ds.records}["p1_a.jpg"] == {"source": "phone"}
        assert len(ds.skipped) == 1
        path, why = ds.skipped[0]
        assert path.name == "p2_a.jpg" and "line 4" in why and "thirty" in why


def test_csv_manifest_for_classes(tmp_path, write_jpeg):
    write_jpeg(tmp_path / "e1.jpg", seed=1)
    write_jpeg(tmp_path / "e2.jpg", seed=2)
    manifest = _write_manifest(tmp_path / "eyes.csv", ["path,label", "e1.jpg,female", "e2.jpg,", "e3.jpg,male"])
    ds = read_csv_manifest(manifest, "label")
    assert [(r.path.name, r.label) for r in ds.records] == [("e1.jpg", "female"), ("e3.jpg", "male")]
    assert [p.name for p, _ in ds.skipped] == ["e2.jpg"]


def test_csv_manifest_missing_columns(tmp_path):
    manifest = _write_manifest(tmp_path / "bad.csv", ["file,years", "a.jpg,3"])
    with pytest.raises(DatasetError, match="'path' and 'age'") as info:
        read_dataset(manifest, "age")
    assert "bad.csv" in str(info.value)


def test_stray_csv_does_not_hide_label_folders(tmp_path, write_jpeg):
    write_jpeg(tmp_path / "30" / "a.jpg", seed=1)
    _write_manifest(tmp_path / "kaggle_metadata.csv", ["id,notes", "1,x"])
    ds = read_dataset(tmp_path, "age")
    assert ds.layout == "folder-per-age"
    assert _labels(ds) == {"a.jpg": 30.0}


def test_folder_without_images(tmp_path):
    (tmp_path / "empty_sub").mkdir()
    (tmp_path / "readme.txt").write_text("nothing to see")
    with pytest.raises(DatasetError, match="no images found") as info:
        read_dataset(tmp_path, "age")
    assert str(tmp_path) in str(info.value)


def test_unknown_layout(tmp_path, write_jpeg):
    write_jpeg(tmp_path / "holiday.jpg", seed=1)
    write_jpeg(tmp_path / "portrait.jpg", seed=2)
    with pytest.raises(DatasetError, match="cannot tell the layout") as info:
        read_dataset(tmp_path, "eyes")
    message = str(info.value)
    assert str(tmp_path) in message and "CSV manifest" in message and "path,label" in message


def test_missing_source_and_non_csv_file(tmp_path, write_jpeg):
    with pytest.raises(DatasetError, match="no such file"):
        read_dataset(tmp_path / "nope", "age")
    img = write_jpeg(tmp_path / "one.jpg")
    with pytest.raises(DatasetError, match="folder or a .csv"):
        read_dataset(img, "age")


def test_concat(tmp_path, write_jpeg):
    write_jpeg(tmp_path / "a" / "20" / "x.jpg", seed=1)
    write_jpeg(tmp_path / "b" / "25_0_0_20170116200000001.jpg.chip.jpg", seed=2)
    write_jpeg(tmp_path / "b" / "odd.jpg", seed=3)
    ds = concat([read_dataset(tmp_path / "a", "age"), read_dataset(tmp_path / "b", "age")])
    assert ds.layout == "folder-per-age + utkface-names"
    assert sorted(r.label for r in ds.records) == [20.0, 25.0]
    assert [p.name for p, _ in ds.skipped] == ["odd.jpg"]
