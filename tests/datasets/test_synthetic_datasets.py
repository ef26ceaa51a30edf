"""Each synthetic dataset is deterministic, in the official layout, and passes `data check`;
a damaged copy fails it with the damaged file named."""

import hashlib

import nibabel as nib
import numpy as np
import pytest

from medsight.datasets.chestxray14 import HEADER_2017
from medsight.datasets.luna16 import find_scans, read_annotations
from medsight.core.geometry import world_to_voxel
from medsight.io.readers import load
from medsight.core.registry import DATASETS


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("name, options", [("chestxray14", {"size": 48}), ("brats", {"shape": (32, 32, 24)}),
                                           ("luna16", {"shape": (40, 40, 12)})])
def test_synthetic_data_is_deterministic_by_seed(tmp_path, name, options):
    fmt = DATASETS.get(name)()
    a = fmt.synth(tmp_path / "a", cases=3, seed=11, **options)
    b = fmt.synth(tmp_path / "b", cases=3, seed=11, **options)
    c = fmt.synth(tmp_path / "c", cases=3, seed=12, **options)
    assert digest(a) == digest(b) != digest(c)


@pytest.mark.parametrize("fixture, name", [("synth_chestxray14", "chestxray14"), ("synth_luna16", "luna16"),
                                           ("synth_brats", "brats")])
def test_synthetic_dataset_passes_check(request, fixture, name):
    assert DATASETS.get(name)().check(request.getfixturevalue(fixture)) == []


def test_chestxray14_layout_and_header(synth_chestxray14):
    lines = (synth_chestxray14 / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == HEADER_2017
    assert lines[0] == ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
    assert all(line.endswith(",") for line in lines)
    assert (synth_chestxray14 / "images_001" / "images").is_dir() and (synth_chestxray14 / "images_002" / "images").is_dir()
    findings = [line.split(",")[1] for line in lines[1:]]
    assert "No Finding" in findings and any("|" in f for f in findings)
    patients = [line.split(",")[3] for line in lines[1:]]
    assert len(set(patients)) < len(patients)  # several images per patient


def test_luna16_annotations_point_at_nodules(synth_luna16):
    scans = find_scans(synth_luna16)
    annotations = read_annotations(synth_luna16 / "annotations.csv")
    assert annotations, "the synthetic set should have nodules"
    for uid, nodules in annotations.items():
        image = load(scans[uid][0])
        assert not np.allclose(image.meta["origin"], 0)
        np.testing.assert_allclose(image.meta["spacing"], [1.4, 1.4, 2.5])
        for nodule in nodules:
            index = np.round(world_to_voxel(nodule.centre, image.affine.numpy(), "LPS")[0]).astype(int)
            assert image[0][tuple(index)] > -400, "a nodule centre is soft tissue, not lung"
    assert uid.startswith("1.3.6.1.4.1.14519.5.2.1.6279.6001.")


def test_brats_2023_naming(tmp_path):
    root = DATASETS.get("brats")().synth(tmp_path / "b23", cases=1, naming="2023", shape=(32, 32, 24))
    names = sorted(p.name for p in (root / "BraTS-GLI-00001-000").iterdir())
    assert names == [f"BraTS-GLI-00001-000-{s}.nii.gz" for s in ("seg", "t1c", "t1n", "t2f", "t2w")]
    labels = np.unique(np.asarray(nib.load(str(root / "BraTS-GLI-00001-000" / names[0])).dataobj))
    assert set(labels.tolist()) <= {0, 1, 2, 3} and 3 in labels


def test_damaged_chestxray14_fails_check_naming_files(synth_chestxray14, copy_of):
    root = copy_of(synth_chestxray14)
    images = sorted(root.glob("images_*/images/*.png"))
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes()[:100])
    problems = [str(p) for p in DATASETS.get("chestxray14")().check(root)]
    assert f"{root / 'Data_Entry_2017.csv'}: row for {images[0].name}: image file not found" in problems
    assert any(p.startswith(f"{images[1]}: unreadable image (") for p in problems)


def test_chestxray14_with_a_foreign_header_fails_check(synth_chestxray14, copy_of):
    root = copy_of(synth_chestxray14)
    csv = root / "Data_Entry_2017.csv"
    csv.write_text("path,label\n" + "\n".join(csv.read_text().splitlines()[1:]))
    problems = [str(p) for p in DATASETS.get("chestxray14")().check(root)]
    assert problems == [f"{csv}: header is not ChestX-ray14's; expected it to start with Image Index,Finding Labels,"
                        "Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]


def test_damaged_luna16_fails_check_naming_files(synth_luna16, copy_of):
    root = copy_of(synth_luna16)
    raws = sorted(root.glob("subset*/*.raw"))
    raws[0].write_bytes(raws[0].read_bytes()[:1000])
    annotations = root / "annotations.csv"
    annotations.write_text(annotations.read_text() + f"{raws[1].stem},5000.0,0.0,0.0,6.0\n9.9.9,0,0,0,5\n")
    problems = [str(p) for p in DATASETS.get("luna16")().check(root)]
    assert any(p.startswith(f"{raws[0]}: 1000 bytes, expected") for p in problems)
    assert any(p.startswith(f"{annotations}: nodule at (5000.0, 0.0, 0.0) mm lies outside scan {raws[1].stem}")
               for p in problems)
    assert f"{annotations}: seriesuid 9.9.9 has no scan in any subset folder" in problems


def test_damaged_brats_fails_check_naming_files(synth_brats, copy_of):
    root = copy_of(synth_brats)
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    (cases[0] / f"{cases[0].name}_t2.nii.gz").unlink()
    flair = cases[1] / f"{cases[1].name}_flair.nii.gz"
    image = nib.load(str(flair))
    cropped = np.asarray(image.dataobj)[:-1]
    nib.save(nib.Nifti1Image(cropped, image.affine), str(flair))
    seg = cases[2] / f"{cases[2].name}_seg.nii.gz"
    labels = np.asarray(nib.load(str(seg)).dataobj).copy()
    labels[0, 0, 0] = 3  # not a 2021 label
    nib.save(nib.Nifti1Image(labels, nib.load(str(seg)).affine), str(seg))
    problems = [str(p) for p in DATASETS.get("brats")().check(root)]
    assert f"{cases[0]}: case {cases[0].name}: t2 image missing" in problems
    assert any(p.startswith(f"{flair}: shape {cropped.shape} differs from") for p in problems)
    assert any(p.startswith(f"{seg}: label value(s) [3] are not in the brats2021 convention") for p in problems)
