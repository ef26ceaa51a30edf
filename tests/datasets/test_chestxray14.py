"""The ChestX-ray14 label file: official header (both revisions), findings, joins and splits."""

import gzip

import pytest

from medsight.datasets.chestxray14 import (
    FINDINGS,
    HEADER_2017,
    HEADER_2020,
    ChestXray14Options,
    read_data_entry,
    records,
)
from medsight.errors import DataError

ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.14300000000000002,0.14300000000000002",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,80,M,PA,2500,2048,0.171,0.171",
    # The follow-up number in the file name (003) differs from the column (5): join on the name.
    "00000003_003.png,Hernia|Pleural_Thickening,5,3,81,F,AP,2500,2048,0.168,0.168",
]


@pytest.mark.parametrize("header, trailer", [(HEADER_2017, ","), (HEADER_2020, "")])
def test_official_header_parses_in_both_revisions(tmp_path, header, trailer):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text("\n".join([header] + [row + trailer for row in ROWS]) + "\n")
    entries = read_data_entry(path)
    assert [e.image for e in entries] == ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_003.png"]
    assert entries[0].original_size == (2682, 2749)
    assert entries[0].pixel_spacing_mm == pytest.approx((0.143, 0.143))
    assert entries[3].follow_up == 5 and entries[3].view == "AP" and entries[3].sex == "F"


def test_findings_become_a_multi_hot_vector_in_the_fixed_order(tmp_path):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text("\n".join([HEADER_2017] + [row + "," for row in ROWS]) + "\n")
    entries = read_data_entry(path)
    assert FINDINGS[0] == "Atelectasis" and FINDINGS[-1] == "Hernia" and len(FINDINGS) == 14
    no_finding = entries[2].labels()
    assert no_finding.shape == (14,) and no_finding.sum() == 0
    multi = entries[1].labels()
    assert multi[FINDINGS.index("Cardiomegaly")] == 1 and multi[FINDINGS.index("Emphysema")] == 1 and multi.sum() == 2


def test_gzipped_label_file_parses(tmp_path):
    path = tmp_path / "Data_Entry_2017_v2020.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join([HEADER_2020] + ROWS) + "\n")
    assert len(read_data_entry(path)) == 4


def test_unknown_finding_names_file_and_line(tmp_path):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(HEADER_2020 + "\n" + ROWS[0] + "\n" + ROWS[1].replace("Emphysema", "Emphysem") + "\n")
    with pytest.raises(DataError) as error:
        read_data_entry(path)
    assert str(error.value).startswith(f"{path}:3: unknown finding 'Emphysem'")


def test_no_patient_is_in_two_splits(synth_chestxray14):
    options = ChestXray14Options(val_fraction=0.25)
    splits = {name: records(synth_chestxray14, name, options) for name in ("train", "val", "test")}
    patients = {name: {r["group"] for r in recs} for name, recs in splits.items()}
    assert all(splits.values())
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    total = sum(len(r) for r in splits.values())
    assert total == len((synth_chestxray14 / "Data_Entry_2017.csv").read_text().splitlines()) - 1
    first = splits["train"][0]
    assert set(first["names"]) <= set(FINDINGS)


def test_view_filter_keeps_only_that_view(synth_chestxray14):
    lines = (synth_chestxray14 / "Data_Entry_2017.csv").read_text().splitlines()[1:]
    ap = {line.split(",")[0] for line in lines if line.split(",")[6] == "AP"}
    options = ChestXray14Options(views=["AP"])
    kept = records(synth_chestxray14, "train", options) + records(synth_chestxray14, "test", options)
    assert kept and {r["id"] for r in kept} <= ap
