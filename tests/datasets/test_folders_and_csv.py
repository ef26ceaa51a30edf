"""Class-per-folder and generic CSV image sets: layouts, label parsing, splits by group, checks."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.datasets import csv_table, folders
from medsight.datasets.csv_table import CsvOptions
from medsight.datasets.folders import FoldersOptions
from medsight.errors import DataError
from medsight.core.registry import DATASETS


def picture(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)
    return path


def tree(root: Path, layout: dict[str, int]) -> Path:
    """``{"train/NORMAL": 3, ...}`` -> that many pictures in each folder."""
    for folder, count in layout.items():
        for index in range(count):
            picture(root / folder / f"img{index}.png")
    return root


def test_split_folders_with_a_valid_folder_give_each_split_and_sorted_classes(tmp_path):
    root = tree(tmp_path / "xray", {"train/PNEUMONIA": 3, "train/NORMAL": 2, "valid/NORMAL": 1, "valid/PNEUMONIA": 1,
                                    "test/NORMAL": 2})
    assert folders.class_names(root) == ["NORMAL", "PNEUMONIA"]
    train = folders.records(root, "train")
    assert sorted(r["names"] for r in train) == [("NORMAL",)] * 2 + [("PNEUMONIA",)] * 3
    assert {r["id"] for r in folders.records(root, "val")} == {"valid/NORMAL/img0.png", "valid/PNEUMONIA/img0.png"}
    assert [r["names"] for r in folders.records(root, "test")] == [("NORMAL",), ("NORMAL",)]
    assert len(folders.records(root, "all")) == 9


def test_without_a_validation_folder_validation_comes_out_of_train_disjointly(tmp_path):
    root = tree(tmp_path / "xray", {"train/a": 100, "train/b": 100, "test/a": 1})
    options = FoldersOptions(val_fraction=0.25)
    train, val = folders.records(root, "train", options), folders.records(root, "val", options)
    assert len(train) + len(val) == 200 and 30 <= len(val) <= 70  # 50 expected; binomial spread
    assert not {r["id"] for r in train} & {r["id"] for r in val}


def test_class_folders_without_split_folders_put_every_image_in_exactly_one_split(tmp_path):
    root = tree(tmp_path / "xray", {"cat": 20, "dog": 20})
    options = FoldersOptions(val_fraction=0.1, split_seed=3)
    parts = {s: {r["id"] for r in folders.records(root, s, options)} for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 40
    assert parts["test"] and parts["val"] and parts["train"]
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"])


def test_folders_check_names_empty_class_folders_unlabelled_and_damaged_pictures(tmp_path):
    root = tree(tmp_path / "xray", {"train/a": 2, "train/b": 1})
    (root / "train" / "c").mkdir()
    (root / "train" / "b" / "broken.png").write_bytes(b"not a png")
    picture(root / "train" / "stray.png")
    problems = {p.path: p.message for p in DATASETS.get("folders")().check(root)}
    assert problems[str(root / "train" / "c")] == "class folder holds no images"
    assert problems[str(root / "train" / "b" / "broken.png")].startswith("unreadable image")
    assert problems[str(root / "train" / "stray.png")] == "image outside a class folder: it has no label"


def test_folder_without_class_folders_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        folders.class_names(tmp_path / "empty")


def write_table(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_one_label_column_reads_multi_label_rows_and_the_negative_name(tmp_path):
    for name in ("a", "b", "c"):
        picture(tmp_path / "images" / f"{name}.png")
    table = write_table(tmp_path / "labels.csv", ["path,label,split", "images/a.png,Effusion|Mass,train",
                                                  "images/b.png,No Finding,train", "images/c.png,Mass,test"])
    rows = csv_table.read_table(table, CsvOptions())
    assert [r.names for r in rows] == [("Effusion", "Mass"), (), ("Mass",)]
    assert csv_table.label_names(rows, CsvOptions()) == ["Effusion", "Mass"]
    assert rows[0].image == tmp_path / "images" / "a.png"
    test = csv_table.records(table, "test")
    assert test == [{"image": str(tmp_path / "images" / "c.png"), "names": ("Mass",), "id": "images/c.png",
                     "group": "images/c.png"}]  # no group column: each picture is its own group


def test_csv_flag_columns_keep_their_order_and_a_bad_value_names_file_and_line(tmp_path):
    picture(tmp_path / "a.png")
    columns = CsvOptions(label_columns=["Mass", "Effusion"])
    good = write_table(tmp_path / "good.csv", ["path,Mass,Effusion", "a.png,0,1.0"])
    assert [r.names for r in csv_table.read_table(good, columns)] == [("Effusion",)]
    assert csv_table.label_names(csv_table.read_table(good, columns), columns) == ["Mass", "Effusion"]
    bad = write_table(tmp_path / "bad.csv", ["path,Mass,Effusion", "a.png,0,1", "a.png,-1,0"])
    with pytest.raises(DataError) as error:
        csv_table.read_table(bad, columns)
    assert str(error.value) == f"{bad}:3: label value '-1' in column 'Mass' is neither 1 nor 0"


def test_csv_without_split_column_keeps_each_patient_in_one_split(tmp_path):
    lines = ["path,label,patient"]
    for index in range(60):
        picture(tmp_path / f"{index}.png")
        lines.append(f"{index}.png,{'Mass' if index % 3 else 'No Finding'},p{index // 3}")
    table = write_table(tmp_path / "labels.csv", lines)
    columns = CsvOptions(group_column="patient", val_fraction=0.2)
    patients = {}
    for split in ("train", "val", "test"):
        ids = [r["id"] for r in csv_table.records(table, split, columns)]
        patients[split] = {int(i.split(".")[0]) // 3 for i in ids}
        assert ids
    assert sum(len(p) for p in patients.values()) == 20  # every patient once
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])


def test_csv_missing_column_lists_the_columns_there_are(tmp_path):
    table = write_table(tmp_path / "labels.csv", ["file,finding", "a.png,Mass"])
    with pytest.raises(DataError) as error:
        csv_table.read_table(table, CsvOptions())
    assert str(error.value) == (f"{table}: no column 'path' (columns: file, finding); set data.path_column / "
                                "data.label_columns")


def test_csv_check_lists_rows_whose_image_is_missing(tmp_path):
    picture(tmp_path / "a.png")
    table = write_table(tmp_path / "labels.csv", ["path,label", "a.png,Mass", "gone.png,Mass"])
    problems = DATASETS.get("csv")().check(tmp_path)
    assert [str(p) for p in problems] == [f"{table}:3: image file not found: {tmp_path / 'gone.png'}"]


@pytest.mark.parametrize("name", ["folders", "csv"])
def test_synthetic_folders_and_csv_sets_are_deterministic_and_pass_check(tmp_path, name):
    fmt = DATASETS.get(name)()
    a = fmt.synth(tmp_path / "a", cases=10, seed=4, size=32)
    b = fmt.synth(tmp_path / "b", cases=10, seed=4, size=32)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    assert fmt.check(a) == []


def test_validation_can_come_out_of_train_by_the_patient_in_the_file_name(tmp_path):
    """Ignoring a validation folder that shares patients with training, and keeping patients whole."""
    layout = {}
    for patient in range(1, 11):
        for follow_up in range(3):
            layout[f"train/{'sick' if patient % 2 else 'well'}/{patient:08d}_{follow_up:03d}.png"] = 1
    root = tmp_path / "nih"
    for name in layout:
        picture(root / name)
    picture(root / "valid" / "well" / "00000001_007.png")
    options = FoldersOptions(val_fraction=0.3, group_pattern=r"^(\d+)_", val_source="train")
    train, val = folders.records(root, "train", options), folders.records(root, "val", options)
    patient = lambda r: Path(r["id"]).name.split("_")[0]  # noqa: E731
    assert val and len(val) + len(train) == 30 and len(val) % 3 == 0  # whole patients, all their pictures
    assert not {patient(r) for r in train} & {patient(r) for r in val}
    assert all("valid" not in r["id"] for r in train + val)
    assert [r["id"] for r in folders.records(root, "val")] == ["valid/well/00000001_007.png"]


def test_csv_validation_rows_can_be_ignored_for_a_patient_split_of_train(tmp_path):
    lines = ["path,label,split,patient"]
    for index in range(40):
        picture(tmp_path / f"{index}.png")
        lines.append(f"{index}.png,Mass,{'valid' if index >= 30 else 'train'},p{index // 2}")
    table = write_table(tmp_path / "labels.csv", lines)
    assert len(csv_table.records(table, "val", CsvOptions(group_column="patient"))) == 10
    columns = CsvOptions(group_column="patient", val_fraction=0.2, val_source="train")
    val, train = csv_table.records(table, "val", columns), csv_table.records(table, "train", columns)
    assert val and len(val) + len(train) == 30 and len(val) % 2 == 0  # whole training patients, 2 rows each
    assert {r["group"] for r in val}.isdisjoint(r["group"] for r in train)
    assert all(int(r["id"].split(".")[0]) < 30 for r in val + train)


def test_a_synthetic_csv_set_is_detected_as_csv_not_as_a_class_folder_named_images(tmp_path):
    from medsight.data.formats import open_dataset
    from medsight.datasets.schemas import LABELLED_PICTURES

    data = DATASETS.get("csv")().synth(tmp_path / "S", cases=10, seed=0, size=16)
    assert (data / "images").is_dir()  # what folders would take for a class
    assert open_dataset(data, None, LABELLED_PICTURES).format_name == "csv"
    assert open_dataset(data / "labels.csv", None, LABELLED_PICTURES).format_name == "csv"
    classes = tree(tmp_path / "classes", {"cat": 2, "dog": 2})
    assert open_dataset(classes, None, LABELLED_PICTURES).format_name == "folders"
