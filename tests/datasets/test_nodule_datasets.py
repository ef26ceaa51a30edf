"""The nodule-detection layouts: LUNA16 records (folds, nodules, excluded findings) and the generic
ct-nodules layout (NIfTI/NRRD/DICOM scans + nodules.csv): deterministic synthesis, clean checks,
damaged copies named file by file."""

import numpy as np
import pytest

from medsight.datasets.ct_nodules import find_scans, scan_records as records, stable_folds
from medsight.datasets.luna16 import scan_records as luna16_records
from medsight.errors import DataError
from medsight.core.registry import DATASETS


@pytest.fixture(scope="module")
def synth_ct_nodules(tmp_path_factory):
    return DATASETS.get("ct-nodules")().synth(tmp_path_factory.mktemp("ctn") / "data", cases=3, seed=4,
                                              shape=(40, 40, 12))


def test_ct_nodules_synthesis_is_deterministic_by_seed(tmp_path):
    fmt = DATASETS.get("ct-nodules")()
    a = fmt.synth(tmp_path / "a", cases=3, seed=11, shape=(32, 32, 10))
    b = fmt.synth(tmp_path / "b", cases=3, seed=11, shape=(32, 32, 10))
    c = fmt.synth(tmp_path / "c", cases=3, seed=12, shape=(32, 32, 10))
    # DICOM files carry freshly generated SOP instance uids: compare everything else
    assert [r["seriesuid"] for r in records(a)] == [r["seriesuid"] for r in records(b)]
    assert (a / "nodules.csv").read_text() == (b / "nodules.csv").read_text() != (c / "nodules.csv").read_text()


def test_ct_nodules_finds_volumes_and_dicom_series_by_uid(synth_ct_nodules):
    scans = find_scans(synth_ct_nodules)
    assert len(scans) == 3
    kinds = sorted("dicom" if path.is_dir() else path.suffix for path in scans.values())
    assert kinds == [".gz", ".nrrd", "dicom"]
    assert DATASETS.get("ct-nodules")().check(synth_ct_nodules) == []


def test_ct_nodules_folds_are_balanced_and_can_be_given(synth_ct_nodules, copy_of):
    rows = records(synth_ct_nodules)
    folds = stable_folds([r["seriesuid"] for r in rows])
    assert all(r["fold"] == folds[r["seriesuid"]] for r in rows)
    assert len({r["fold"] for r in rows}) == 3  # three scans in ten folds: one each in three of them
    root = copy_of(synth_ct_nodules)
    (root / "folds.csv").write_text("seriesuid,fold\n" + "".join(f"{r['seriesuid']},7\n" for r in rows))
    assert {r["fold"] for r in records(root)} == {7}
    # scans folds.csv leaves out are dealt into the ten folds among themselves
    (root / "folds.csv").write_text(f"seriesuid,fold\n{rows[0]['seriesuid']},7\n")
    given = {r["seriesuid"]: r["fold"] for r in records(root)}
    assert given == {rows[0]["seriesuid"]: 7, **stable_folds([r["seriesuid"] for r in rows[1:]])}


def test_damaged_ct_nodules_fails_check_naming_files(synth_ct_nodules, copy_of):
    root = copy_of(synth_ct_nodules)
    nodules = root / "nodules.csv"
    uid = next(uid for uid, path in find_scans(root).items() if path.name.endswith(".nrrd"))
    nodules.write_text(nodules.read_text() + f"{uid},9000,0,0,5\n9.9.9,0,0,0,5\n")
    problems = [str(p) for p in DATASETS.get("ct-nodules")().check(root)]
    assert f"{nodules}: seriesuid 9.9.9 has no scan" in problems
    assert any(p.startswith(f"{nodules}: nodule at (9000.0, 0.0, 0.0) mm lies outside scan {uid} (voxel ") for p in problems)
    with pytest.raises(DataError, match="seriesuid 9.9.9 has no scan"):
        records(root)


def test_luna16_records_refuse_annotations_of_missing_scans(synth_luna16, copy_of):
    root = copy_of(synth_luna16)
    (root / "annotations.csv").write_text((root / "annotations.csv").read_text() + "1.2.3,0,0,0,5\n")
    with pytest.raises(DataError) as error:
        luna16_records(root)
    assert str(error.value) == (f"{root / 'annotations.csv'}: seriesuid 1.2.3 has no scan in any subset folder "
                                f"(1 such); run `medsight data check luna16 {root}`")


def test_luna16_records_read_excluded_findings_with_unmeasured_diameters(synth_luna16):
    rows = luna16_records(synth_luna16)
    excluded = np.asarray([e for r in rows for e in r["excluded"]]).reshape(-1, 4)
    listed = (synth_luna16 / "annotations_excluded.csv").read_text().splitlines()[1:]
    assert len(excluded) == len(listed)
    assert all(d == -1.0 or 2.0 <= d <= 3.0 for d in excluded[:, 3])
