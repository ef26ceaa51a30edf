"""Out-of-distribution flags (``medsight.inference.domain``): each task's facts of synthetic cases, summarised as a
checkpoint stores them, flag every perturbed input (5 mm slices, a CT for an MRI model, a head not skull-stripped,
HU x1000, a CT without its intercept, 16-bit and lateral X-rays) and no held-out in-domain case; a tiny trained
classifier stores the summary and predict flags, marks and (strict) refuses through the API and the CLI."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import medsight
from medsight.cli.main import main
from medsight.core.config import resolve
from medsight.core.registry import DATASETS, TASKS
from medsight.datasets.synth.brats import make_case
from medsight.datasets.synth.dicom import write_xray
from medsight.inference import domain
from medsight.training.provenance import training_domain

QUIET = ["trainer.progress=never", "trainer.tensorboard=false"]
ROLES = ("t1", "t1c", "t2", "flair")


def task_of(name: str, overrides=()):
    cls = TASKS.get(name)
    return cls(resolve(cls.config_class, overrides=list(overrides)))


def summary_of(task, root: Path) -> dict:
    source = task.open_data(root)
    task.learn_state(source)
    return training_domain(task, task.records(source, "train") + task.records(source, "val"))


def flags(task, summary, record) -> list[str]:
    return domain.reasons(summary, task.domain_case(record))


def write_case(folder: Path, images: dict, affine: np.ndarray) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for role, image in images.items():
        nib.save(nib.Nifti1Image(np.asarray(image), affine), folder / f"{role}.nii.gz")
    return {"image": [str(folder / f"{role}.nii.gz") for role in ROLES], "id": folder.name}


# -- segmentation: MRI ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mri(synth_brats):
    task = task_of("segmentation")
    return task, summary_of(task, synth_brats)


@pytest.fixture(scope="module")
def held_out_brain():
    images, tissue = make_case(np.random.default_rng(101), (48, 48, 32))
    return images, tissue


def test_the_mri_summary_holds_the_training_brains_ranges(mri):
    summary = mri[1]
    facts = summary["facts"]
    assert summary["cases"] == summary["of"] == 3
    assert facts["modality"]["values"] == ["MR"]
    assert facts["spacing_mm"]["max"] == [1.0, 1.0, 1.0]
    # a synthetic brain fills about 36% of its 48 x 48 x 32 mm box (74 mL)
    assert 15 < facts["nonbackground_ml"]["min"] <= facts["nonbackground_ml"]["max"] < 40
    assert set(facts["intensity"]) == set(ROLES)


def test_no_held_out_synthetic_brain_is_flagged(mri, tmp_path):
    task, summary = mri
    root = DATASETS.get("brats")().synth(tmp_path / "held_out", cases=6, seed=23, shape=(48, 48, 32))
    cases = task.input_records(str(root))
    assert len(cases) == 6
    assert {case["id"]: flags(task, summary, case) for case in cases} == {case["id"]: [] for case in cases}


def test_five_millimetre_slices_are_flagged_for_a_one_millimetre_model(mri, held_out_brain, tmp_path):
    task, summary = mri
    images, _ = held_out_brain
    thick = {role: image[:, :, ::5] for role, image in images.items()}  # every fifth slice: 5 mm apart
    record = write_case(tmp_path / "thick", thick, np.diag([1.0, 1.0, 5.0, 1.0]))
    assert flags(task, summary, record) == ["5 mm voxels along z where the training data's were at most 1 x 1 x 1 mm"]
    same = write_case(tmp_path / "same", images, np.eye(4))
    assert flags(task, summary, same) == []


def test_a_ct_given_to_the_mri_model_is_flagged_as_ct(mri, tmp_path):
    from medsight.datasets.synth.luna16 import make_scan

    task, summary = mri
    scan = make_scan(0, np.random.default_rng(3), shape=(48, 48, 32), spacing=(1.0, 1.0, 1.0))
    record = write_case(tmp_path / "ct", {role: scan.volume for role in ROLES}, np.eye(4))
    found = flags(task, summary, record)
    assert found[0].startswith("looks like CT (") and found[0].endswith("where the training data were MR")
    assert "of voxels at the -1000 HU of air" in found[0]


def test_a_head_that_is_not_skull_stripped_is_flagged(mri, held_out_brain, tmp_path):
    task, summary = mri
    images, tissue = held_out_brain
    rng = np.random.default_rng(5)
    outside = tissue == 0
    # scalp and skull around the brain, and noisy air beyond: nothing outside the brain is exactly background
    head = {role: np.where(outside, rng.normal(300, 40, image.shape), image).astype(np.float32)
            for role, image in images.items()}
    found = flags(task, summary, write_case(tmp_path / "head", head, np.eye(4)))
    assert len(found) == 1 and found[0].startswith("74 mL of signal above the background where the training images")
    assert found[0].endswith("not skull-stripped, or a wider field of view")


def test_mri_on_another_scale_is_not_flagged_because_the_model_z_scores_each_case(mri, held_out_brain, tmp_path):
    task, summary = mri
    images, _ = held_out_brain
    scaled = {role: image.astype(np.float32) * 1000 for role, image in images.items()}
    assert flags(task, summary, write_case(tmp_path / "x1000", scaled, np.eye(4))) == []


# -- detection: CT ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct(synth_luna16):
    task = task_of("detection")
    return task, summary_of(task, synth_luna16)


@pytest.fixture(scope="module")
def held_out_scans(tmp_path_factory):
    return DATASETS.get("luna16")().synth(tmp_path_factory.mktemp("ct") / "data", cases=3, seed=31, shape=(64, 64, 24),
                                          spacing=(1.4, 1.4, 2.5))


def scans_in(root: Path) -> list[Path]:
    return sorted(root.glob("subset*/*.mhd"))


def test_the_ct_summary_is_in_hounsfield_units(ct):
    facts = ct[1]["facts"]
    assert facts["modality"]["values"] == ["CT"]
    assert facts["spacing_mm"]["max"] == [1.4, 1.4, 2.5]
    assert 800 < facts["intensity_spread"]["min"] <= facts["intensity_spread"]["max"] < 3000


def test_no_held_out_synthetic_scan_is_flagged(ct, held_out_scans):
    task, summary = ct
    found = {scan.name: flags(task, summary, {"image": str(scan), "id": scan.stem})
             for scan in scans_in(held_out_scans)}
    assert len(found) == 3 and found == {name: [] for name in found}


def write_like(scan: Path, values: np.ndarray, out: Path) -> dict:
    import SimpleITK as sitk

    source = sitk.ReadImage(str(scan))
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(source)
    sitk.WriteImage(image, str(out))
    return {"image": str(out), "id": out.stem}


def test_a_ct_times_1000_and_a_ct_without_its_intercept_are_flagged(ct, held_out_scans, tmp_path):
    import SimpleITK as sitk

    task, summary = ct
    scan = scans_in(held_out_scans)[0]
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(scan))).astype(np.float32)
    times = flags(task, summary, write_like(scan, hu * 1000, tmp_path / "x1000.nrrd"))
    assert len(times) == 2 and times[0].startswith("looks like MR (no voxels at the -1000 HU of air")  # air at -1e6
    assert times[1].startswith("intensities on another scale: a 0.5-99.5 percentile spread of 1,1")
    stored = flags(task, summary, write_like(scan, hu + 1024, tmp_path / "stored.nrrd"))
    assert stored == [("looks like MR (no voxels at the -1000 HU of air: not Hounsfield units) where the training "
                       "data were CT")]


def test_thick_slices_are_flagged_for_the_ct_model_and_an_mri_summary_never_sees_hu_spread(ct, mri, held_out_scans,
                                                                                             tmp_path):
    import SimpleITK as sitk

    task, summary = ct
    image = sitk.ReadImage(str(scans_in(held_out_scans)[0]))
    image.SetSpacing((1.4, 1.4, 6.0))
    sitk.WriteImage(image, str(tmp_path / "thick.nrrd"))
    found = flags(task, summary, {"image": str(tmp_path / "thick.nrrd"), "id": "thick"})
    assert found[0] == "6 mm voxels along z where the training data's were at most 1.4 x 1.4 x 2.5 mm"
    assert "intensity_spread" not in mri[1]["facts"]


# -- classification: X-rays -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xray(synth_chestxray14):
    task = task_of("classification")
    return task, summary_of(task, synth_chestxray14)


def pictures_in(root: Path) -> list[Path]:
    return sorted(root.glob("images_*/images/*.png"))


def test_the_xray_summary_has_8_bit_frontal_views_from_the_table(xray):
    facts = xray[1]["facts"]
    assert facts["bit_depth"] == {"min": 8.0, "median": 8.0, "max": 8.0}
    assert facts["view"]["values"] == ["AP", "PA"] and facts["view"]["unknown"] == 0
    assert facts["aspect"]["min"] == facts["aspect"]["max"] == 1.0


def test_no_held_out_synthetic_xray_is_flagged(xray, tmp_path):
    task, summary = xray
    root = DATASETS.get("chestxray14")().synth(tmp_path / "held_out", cases=24, seed=41, size=64)
    found = {p.name: flags(task, summary, {"image": str(p), "id": p.name}) for p in pictures_in(root)}
    assert len(found) == 24 and found == {name: [] for name in found}


def test_a_16_bit_picture_is_flagged_for_an_8_bit_model(xray, synth_chestxray14, tmp_path):
    task, summary = xray
    eight = np.asarray(Image.open(pictures_in(synth_chestxray14)[0]))
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    assert flags(task, summary, {"image": str(tmp_path / "sixteen.png"), "id": "s"}) == [
        "16-bit values where the training pictures were 8-bit"]


def test_a_lateral_xray_is_flagged_from_its_dicom_header_or_its_table_row(xray, synth_chestxray14, tmp_path):
    task, summary = xray
    eight = np.asarray(Image.open(pictures_in(synth_chestxray14)[0]))
    write_xray(tmp_path / "lateral.dcm", eight.astype(np.uint16), bits_stored=8, identifiers={"ViewPosition": "LL"})
    assert flags(task, summary, {"image": str(tmp_path / "lateral.dcm"), "id": "d"}) == [
        "view LL (lateral) where the training pictures were AP, PA"]
    write_xray(tmp_path / "frontal.dcm", eight.astype(np.uint16), bits_stored=8)  # ViewPosition PA
    assert flags(task, summary, {"image": str(tmp_path / "frontal.dcm"), "id": "f"}) == []
    folder = tmp_path / "nih" / "images"
    folder.mkdir(parents=True)
    shutil.copy(pictures_in(synth_chestxray14)[0], folder / "00000099_000.png")
    (tmp_path / "nih" / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
        "00000099_000.png,No Finding,0,99,50,F,LL\n")
    assert flags(task, summary, {"image": str(folder / "00000099_000.png"), "id": "t"}) == [
        "view LL (lateral) where the training pictures were AP, PA"]


# -- the comparison itself --------------------------------------------------------------------------------------
def test_reasons_compare_only_the_facts_both_sides_have():
    summary = {"facts": domain.summarise([{"spacing_mm": [1.0, 1.0, 1.0], "modality": "MR"},
                                          {"spacing_mm": [1.0, 1.0, 1.5], "modality": "MR"}])}
    assert summary["facts"]["spacing_mm"] == {"min": [1.0, 1.0, 1.0], "median": [1.0, 1.0, 1.25],
                                              "max": [1.0, 1.0, 1.5]}
    assert domain.reasons(summary, {"spacing_mm": [1.0, 1.0, 3.0]}) == []  # exactly 2x the coarsest: kept
    assert domain.reasons(summary, {"spacing_mm": [1.0, 1.0, 3.1], "view": "LL"}) == [
        "3.1 mm voxels along z where the training data's were at most 1 x 1 x 1.5 mm"]
    assert domain.reasons(None, {"modality": "CT"}) == [] and domain.reasons(summary, {}) == []


# -- end to end: a tiny trained classifier ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier(tmp_path_factory, synth_chestxray14):
    root = tmp_path_factory.mktemp("domain-cls")
    assert main(["train", "classification", "--data", str(synth_chestxray14), "--out", str(root / "run"),
                 "trainer.max_epochs=1", "trainer.max_steps_per_epoch=1", "model.name=simple_cnn",
                 "data.image_size=32", *QUIET]) == 0
    return root / "run" / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def unlike(tmp_path_factory, synth_chestxray14):
    """(an in-domain picture, a 16-bit one, a lateral DICOM)."""
    folder = tmp_path_factory.mktemp("inputs")
    source = pictures_in(synth_chestxray14)[0]
    eight = np.asarray(Image.open(source))
    shutil.copy(source, folder / "alike.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(folder / "sixteen.png")
    write_xray(folder / "lateral.dcm", eight.astype(np.uint16), bits_stored=8, identifiers={"ViewPosition": "LL"})
    return [folder / "alike.png", folder / "sixteen.png", folder / "lateral.dcm"]


def test_a_trained_checkpoint_stores_the_summary_and_predict_flags_and_marks(classifier, unlike, caplog):
    model = medsight.load(classifier, engine="torch")
    assert model.state["domain"]["facts"]["bit_depth"]["max"] == 8.0
    with caplog.at_level(logging.WARNING, logger="medsight"):
        results = model.predict([str(p) for p in unlike])
    assert [r.quality["domain"] for r in results] == [
        "", "16-bit values where the training pictures were 8-bit",
        "view LL (lateral) where the training pictures were AP, PA"]
    assert [r.quality.get("review") for r in results][1:] == [True, True]
    lines = [r.getMessage() for r in caplog.records if "unlike the training data" in r.getMessage()]
    assert lines == [f"{unlike[1]}: unlike the training data: {results[1].quality['domain']}",
                     f"{unlike[2]}: unlike the training data: {results[2].quality['domain']}"]
    strict = model.predict([str(p) for p in unlike], strict_domain=True)
    assert [r.id for r in strict] == ["alike.png"] and len(strict.failures) == 2
    assert strict.failures[0].startswith(f"{unlike[1]}: unlike the training data: 16-bit")
    with pytest.raises(medsight.DataError, match="lateral.dcm: unlike the training data: view LL"):
        model.predict(str(unlike[2]), strict_domain=True)


def test_a_checkpoint_without_a_summary_is_not_compared(classifier, unlike, caplog):
    model = medsight.load(classifier, engine="torch")
    model.state.pop("domain")
    with caplog.at_level(logging.DEBUG, logger="medsight"):
        results = model.predict([str(p) for p in unlike], strict_domain=True)
    assert len(results) == 3 and all("domain" not in r.quality for r in results)
    assert any("holds no summary of its training data" in r.getMessage() for r in caplog.records)
    model.state["domain"] = {"version": domain.VERSION + 1, "facts": {"bit_depth": {"min": 16, "max": 16}}}
    assert all("domain" not in r.quality for r in model.predict([str(p) for p in unlike], strict_domain=True))


def test_the_cli_predicts_flagged_inputs_and_refuses_them_with_strict_domain(classifier, unlike, tmp_path, capsys):
    inputs = [str(p) for p in unlike]
    assert main(["predict", "--checkpoint", str(classifier), *inputs, "--out", str(tmp_path / "a"),
                 "--engine", "torch"]) == 0
    assert "sixteen.png: unlike the training data: 16-bit values" in capsys.readouterr().out
    assert main(["predict", "--checkpoint", str(classifier), *inputs, "--out", str(tmp_path / "b"),
                 "--engine", "torch", "--strict-domain"]) == 1
    out = capsys.readouterr().out
    assert f"failed: {unlike[2]}: unlike the training data: view LL (lateral)" in out
    assert "2 input(s) failed" in out


def test_a_trained_segmentation_model_flags_and_refuses_a_case_of_thick_slices(synth_brats, held_out_brain,
                                                                                 tmp_path, monkeypatch):
    run = medsight.train("segmentation", synth_brats, out=tmp_path / "run", profile="cpu-small", overrides=[
        *QUIET, "trainer.max_epochs=1", "trainer.max_steps_per_epoch=1", "data.patch_size=[32,32,16]",
        "data.patches_per_case=1", "data.folds=3", "infer.roi_size=[32,32,32]", "model.init_filters=8"])
    model = run.load()
    assert model.state["domain"]["facts"]["modality"]["values"] == ["MR"]
    images, _ = held_out_brain
    alike = write_case(tmp_path / "alike", images, np.eye(4))
    thick = write_case(tmp_path / "thick", {r: image[:, :, ::5] for r, image in images.items()},
                       np.diag([1.0, 1.0, 5.0, 1.0]))
    inputs = [dict(zip(ROLES, case["image"])) for case in (alike, thick)]
    from medsight.io import readers
    read = []
    real_read = readers.NiftiReader.read
    monkeypatch.setattr(readers.NiftiReader, "read", lambda self, data, **kw: read.append(data) or real_read(
        self, data, **kw))
    results = model.predict(inputs, ids=["alike", "thick"])
    assert [r.quality["domain"] for r in results] == [
        "", "5 mm voxels along z where the training data's were at most 1 x 1 x 1 mm"]
    files = [str(f) for case in (alike, thick) for f in case["image"]]
    assert sorted(map(str, [f for r in read for f in (r if isinstance(r, (list, tuple)) else [r])])) == sorted(files), \
        "each file is read once: the domain facts are measured where predict reads the case"
    strict = model.predict(inputs, ids=["alike", "thick"], strict_domain=True)
    assert [r.id for r in strict] == ["alike"]
    assert strict.failures == [(f"{tmp_path / 'thick'}: unlike the training data: 5 mm voxels along z where the "
                                "training data's were at most 1 x 1 x 1 mm (refused: strict domain)")]
