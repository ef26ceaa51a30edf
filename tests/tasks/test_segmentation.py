"""Segmentation: every naming and label convention, regions round trips, BraTS metric conventions,
predictions landing on the input's own grid (oblique NIfTI and DICOM series), and input errors."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import decollate_batch, list_data_collate
from scipy import ndimage

from medsight.core.config import resolve
from medsight.datasets import brats
from medsight.datasets.synth.brats import NECROSIS, OEDEMA, ET, labels_of, make_case
from medsight.datasets.synth.dicom import write_series
from medsight.errors import DataError, unwrap
from medsight.core.geometry import voxel_to_world
from medsight.core.registry import DATASETS
from medsight.tasks.segmentation import BrainTumourSegmentation
from medsight.tasks.segmentation.config import SegmentationConfig
from medsight.tasks.segmentation.metrics import HD95_ONE_EMPTY_MM, region_scores

SHAPE = (32, 32, 24)


def synth(tmp_path, naming, cases=2):
    return DATASETS.get("brats")().synth(tmp_path / naming, cases=cases, seed=1, naming=naming, shape=SHAPE)


@pytest.mark.parametrize("naming, layout, convention", [
    ("2021", "brats2021", "brats2021"),
    ("2023", "brats2023", "brats2023"),
    ("2015", "patterns", "brats2015"),
    ("msd", "msd", "msd"),
])
def test_every_naming_is_found_with_its_label_convention(tmp_path, naming, layout, convention):
    root = synth(tmp_path, naming)
    assert brats.detect_naming(root) == layout
    records = brats.records(root, "all", brats.BratsOptions(modalities=["flair", "t1c"]))
    assert len(records) == 2
    assert {r["convention"] for r in records} == {convention}
    record = records[0]
    if layout == "msd":
        assert record["channels"] == [0, 2]  # FLAIR and T1gd in the 4D file's channel order
    else:
        names = [Path(p).name.lower() for p in record["image"]]
        flair, t1c = {"brats2021": ("_flair", "_t1ce"), "brats2023": ("-t2f", "-t1c"),
                      "patterns": ("flair_", "t1c_")}[layout]
        assert flair in names[0] and t1c in names[1]  # matched by role, in the configured order
    assert Path(record["label"]).is_file()


def test_role_patterns_can_be_configured(tmp_path):
    case = tmp_path / "data" / "patient7"
    rng = np.random.default_rng(0)
    from medsight.datasets.synth.brats import write_case_files

    write_case_files(case, "patient7", rng, SHAPE, np.eye(4), {"flair": "ax_FLAIR_fs.nii.gz", "t1c": "T1_GD_post.nii.gz"},
                     "brats2015", "tumour_mask.nii.gz")
    patterns = {"flair": "flair", "t1c": "_gd_", "seg": "tumour_mask"}
    options = brats.BratsOptions(modalities=["flair", "t1c"], naming="patterns", patterns=patterns)
    records = brats.records(tmp_path / "data", "all", options)
    assert [Path(p).name for p in records[0]["image"]] == ["ax_FLAIR_fs.nii.gz", "T1_GD_post.nii.gz"]
    assert Path(records[0]["label"]).name == "tumour_mask.nii.gz"


def tissue_example() -> np.ndarray:
    return make_case(np.random.default_rng(3), SHAPE)[1]


@pytest.mark.parametrize("name", ["brats2021", "brats2023", "brats2015", "msd"])
def test_labels_to_regions_to_labels_round_trip(name):
    tissue = tissue_example()
    expected = np.stack([tissue == ET, np.isin(tissue, (ET, NECROSIS)), np.isin(tissue, (ET, NECROSIS, OEDEMA))])
    convention = brats.CONVENTIONS[name]
    labels = labels_of(tissue, name)
    regions = convention.to_regions(labels)
    np.testing.assert_array_equal(regions, expected)
    np.testing.assert_array_equal(convention.from_regions(regions), labels)
    assert regions[0].any() and regions[2].sum() > regions[1].sum() > regions[0].sum()


@pytest.mark.parametrize("name, et, core, oedema", [
    ("brats2021", 4, 1, 2),  # 1 NCR/NET, 2 ED, 4 ET
    ("brats2023", 3, 1, 2),  # 1 NETC, 2 SNFH, 3 ET
    ("brats2024", 3, 1, 2),  # as 2023, plus 4 RC (resection cavity: no tumour region)
    ("brats2015", 4, 1, 2),  # 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing
    ("msd", 3, 2, 1),        # 1 oedema, 2 non-enhancing, 3 enhancing
])
def test_each_convention_maps_a_hand_made_map_as_its_release_documents(name, et, core, oedema):
    convention = brats.CONVENTIONS[name]
    # voxels: enhancing, core without enhancement, oedema only, background
    regions = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=bool)
    assert convention.from_regions(regions).tolist() == [et, core, oedema, 0]
    labels = np.array([0, 1, 2, 3, 4])
    expected = {
        "brats2021": [[0, 0, 0, 0, 1], [0, 1, 0, 0, 1], [0, 1, 1, 0, 1]],
        "brats2023": [[0, 0, 0, 1, 0], [0, 1, 0, 1, 0], [0, 1, 1, 1, 0]],
        "brats2024": [[0, 0, 0, 1, 0], [0, 1, 0, 1, 0], [0, 1, 1, 1, 0]],
        "brats2015": [[0, 0, 0, 0, 1], [0, 1, 0, 1, 1], [0, 1, 1, 1, 1]],
        "msd": [[0, 0, 0, 1, 0], [0, 0, 1, 1, 0], [0, 1, 1, 1, 0]],
    }[name]
    assert convention.to_regions(labels).astype(int).tolist() == expected


def test_msd_labels_through_a_2018_converter_would_lose_et():
    msd_labels = labels_of(tissue_example(), "msd")
    wrong = brats.CONVENTIONS["brats2021"].to_regions(msd_labels)
    right = brats.CONVENTIONS["msd"].to_regions(msd_labels)
    assert wrong[0].sum() == 0 and right[0].sum() > 0
    with pytest.raises(DataError, match=r"label value\(s\) \[3\] are not in the brats2021 convention"):
        brats.CONVENTIONS["brats2021"].check_values(np.unique(msd_labels), "seg.nii.gz")


def test_2015_non_enhancing_counts_in_tc_and_wt():
    labels = np.array([0, 1, 2, 3, 4])
    regions = brats.CONVENTIONS["brats2015"].to_regions(labels)
    np.testing.assert_array_equal(regions, [[0, 0, 0, 0, 1], [0, 1, 0, 1, 1], [0, 1, 1, 1, 1]])


def cube(shape, low, high):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(a, b) for a, b in zip(low, high))] = True
    return mask


def test_metric_conventions_on_hand_made_masks():
    shape = (20, 20, 20)
    empty = torch.zeros(shape, dtype=torch.bool)
    truth = torch.stack([empty, cube(shape, (5, 5, 5), (10, 10, 10)), cube(shape, (4, 4, 4), (12, 12, 12))])
    # ET: both empty; TC: exact; WT: prediction shifted 2 voxels along x (2 x 1.5 mm).
    prediction = torch.stack([empty, truth[1], cube(shape, (6, 4, 4), (14, 12, 12))])
    scores = region_scores(prediction, truth, spacing_mm=(1.5, 1.0, 1.0))
    assert scores["dice_ET"] == 1.0 and scores["hd95_ET"] == 0.0
    assert scores["dice_TC"] == pytest.approx(1.0) and scores["hd95_TC"] == pytest.approx(0.0)
    assert scores["dice_WT"] == pytest.approx(2 * 6 * 8 * 8 / (2 * 8 * 8 * 8))
    assert scores["hd95_WT"] == pytest.approx(3.0)  # surface distances in mm
    missed = region_scores(torch.stack([truth[1], truth[1], truth[2]]) & False, truth, (1, 1, 1))
    assert missed["dice_TC"] == 0.0 and missed["hd95_TC"] == HD95_ONE_EMPTY_MM
    spurious = region_scores(torch.stack([truth[1], truth[1], truth[2]]), truth, (1, 1, 1))
    assert spurious["dice_ET"] == 0.0 and spurious["hd95_ET"] == HD95_ONE_EMPTY_MM


def make_task(**data) -> BrainTumourSegmentation:
    overrides = [f"data.{k}={v}" for k, v in data.items()]
    task = BrainTumourSegmentation(resolve(SegmentationConfig, overrides=overrides))
    task.state["convention"] = "brats2021"
    task.learning = False
    return task


def oracle_write(task, record: dict, label_path: str, out: Path) -> Path:
    """Run the real inference pipeline and writer with the true regions as 'prediction'."""
    infer = task.transforms("infer")(dict(record))
    val = task.transforms("val")({**record, "label": label_path})
    assert infer["image"].shape == val["image"].shape  # same preprocessing grid
    item = decollate_batch(list_data_collate([infer]))[0]
    written = task.prediction_writer(out).write(task.to_result(val["label"].as_tensor().float(), item))
    return [p for p in written if p.name.endswith("_seg.nii.gz")][0]


def world_centre(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return voxel_to_world(np.asarray(ndimage.center_of_mass(mask)), affine, space="RAS")[0]


def oblique_affine(spacing) -> np.ndarray:
    a = np.radians(25)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = [-40.0, 22.0, 31.0]
    return affine


def test_mask_predicted_on_an_oblique_anisotropic_nifti_lands_on_the_tumour(tmp_path):
    spacing = (1.3, 0.8, 2.0)  # resampled to 1 mm by the pipeline, then back
    affine = oblique_affine(spacing)
    images, tissue = make_case(np.random.default_rng(5), (36, 48, 24))
    folder = tmp_path / "case"
    folder.mkdir()
    for role in ("flair", "t1c"):
        nib.save(nib.Nifti1Image(images[role], affine), str(folder / f"case_{role}.nii.gz"))
    labels = labels_of(tissue, "brats2021")
    nib.save(nib.Nifti1Image(labels, affine), str(folder / "case_seg.nii.gz"))
    task = make_task(modalities="[flair,t1c]")
    record = task.input_records(None, images={"flair": str(folder / "case_flair.nii.gz"),
                                             "t1c": str(folder / "case_t1c.nii.gz")})[0]
    seg = nib.load(str(oracle_write(task, record, str(folder / "case_seg.nii.gz"), tmp_path / "out")))
    assert seg.shape == labels.shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-5)
    written = np.asarray(seg.dataobj)
    assert set(np.unique(written)) <= {0, 1, 2, 4}
    for values in ((1, 2, 4), (1, 4)):  # WT and TC
        true_centre = world_centre(np.isin(labels, values), affine)
        got_centre = world_centre(np.isin(written, values), seg.affine)
        assert np.linalg.norm(got_centre - true_centre) < min(spacing)  # within one voxel


def test_mask_predicted_on_dicom_series_lands_on_the_tumour(tmp_path):
    spacing = (0.9, 0.9, 2.5)
    a = np.radians(15)
    direction = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    images, tissue = make_case(np.random.default_rng(6), (40, 40, 20))
    origin = (-20.0, -110.0, 40.0)
    paths = {}
    for role in ("flair", "t1c"):
        paths[role] = tmp_path / role
        write_series(images[role].astype(np.float32) - 1024, origin, spacing, direction, paths[role],
                     rescale_intercept=-1024.0)
    labels = labels_of(tissue, "brats2021")
    from medsight.core.geometry import affine_from_itk
    from medsight.io.writers import write_nifti

    affine = affine_from_itk(origin, spacing, direction)
    write_nifti(labels, affine, tmp_path / "truth.nii.gz", dtype=np.uint8)
    task = make_task(modalities="[flair,t1c]")
    record = task.input_records(None, images={role: str(p) for role, p in paths.items()})[0]
    seg = nib.load(str(oracle_write(task, record, str(tmp_path / "truth.nii.gz"), tmp_path / "out")))
    assert seg.shape == labels.shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-4)
    written = np.asarray(seg.dataobj)
    for values in ((1, 2, 4), (1, 4)):
        distance = np.linalg.norm(world_centre(np.isin(written, values), seg.affine)
                                  - world_centre(np.isin(labels, values), affine))
        assert distance < min(spacing)


def test_missing_modality_is_an_error_naming_the_case_folder(tmp_path):
    root = synth(tmp_path, "2021", cases=1)
    case = next(p for p in root.iterdir() if p.is_dir())
    (case / f"{case.name}_t1ce.nii.gz").unlink()
    task = make_task()
    with pytest.raises(DataError) as error:
        task.input_records(str(case))
    assert str(error.value) == f"{case}: case {case.name}: no t1c image (found: t1, t2, flair)"


def test_modalities_on_different_grids_are_an_error_naming_the_file(tmp_path):
    root = synth(tmp_path, "2021", cases=1)
    case = next(p for p in root.iterdir() if p.is_dir())
    t2 = case / f"{case.name}_t2.nii.gz"
    image = nib.load(str(t2))
    moved = image.affine.copy()
    moved[0, 3] += 3.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), moved), str(t2))
    task = make_task()
    record = task.input_records(str(case))[0]
    with pytest.raises(Exception) as error:
        task.transforms("infer")(record)
    assert str(unwrap(error.value)).startswith(f"{t2}: geometry (affine) differs from that of")


def test_label_values_outside_the_convention_are_an_error_naming_the_file(tmp_path):
    root = synth(tmp_path, "2021", cases=1)
    case = next(p for p in root.iterdir() if p.is_dir())
    seg = case / f"{case.name}_seg.nii.gz"
    labels = np.asarray(nib.load(str(seg)).dataobj).copy()
    labels[labels == 4] = 3  # 2023-style ET in a 2021 folder
    nib.save(nib.Nifti1Image(labels, nib.load(str(seg)).affine), str(seg))
    task = make_task()
    record = brats.records(root, "all")[0]
    with pytest.raises(Exception) as error:
        task.transforms("val")(record)
    assert str(unwrap(error.value)).startswith(f"{seg}: label value(s) [3] are not in the brats2021 convention")


def test_config_refuses_unknown_roles_and_conventions():
    from medsight.errors import ConfigError

    with pytest.raises(ConfigError, match="data.modalities='t1gd' is not one of t1, t1c, t2, flair"):
        resolve(SegmentationConfig, overrides=["data.modalities=[flair,t1gd]"])
    with pytest.raises(ConfigError, match="data.label_convention='brats2019' is not one of"):
        resolve(SegmentationConfig, overrides=["data.label_convention=brats2019"])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A model trained for one quick epoch on 2021-naming synthetic data (geometry, not quality)."""
    from medsight.cli.main import main

    root = tmp_path_factory.mktemp("seg")
    data = DATASETS.get("brats")().synth(root / "data", cases=3, seed=2, shape=SHAPE)
    assert main(["train", "segmentation", "--data", str(data), "--profile", "cpu-small", "--out", str(root / "run"),
                 "trainer.max_epochs=1", "trainer.progress=never", "trainer.tensorboard=false",
                 "data.patch_size=[32,32,16]", "data.patches_per_case=1", "data.folds=3",
                 "data.modalities=[flair,t1c]", "infer.roi_size=[32,32,24]"]) == 0
    return root / "run" / "checkpoints" / "last.pt", data


def test_batch_predict_goes_on_past_a_bad_case_and_lists_it(tiny_model, tmp_path, capsys):
    from medsight.cli.main import main

    checkpoint, data = tiny_model
    good, bad = sorted(p for p in data.iterdir() if p.is_dir())[:2]
    broken = tmp_path / bad.name
    broken.mkdir()
    (broken / f"{bad.name}_flair.nii.gz").write_bytes((bad / f"{bad.name}_flair.nii.gz").read_bytes())
    (broken / f"{bad.name}_t1ce.nii.gz").write_bytes(b"not a nifti file")
    capsys.readouterr()
    status = main(["predict", "--checkpoint", str(checkpoint), str(broken), str(good), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert status == 1
    assert (tmp_path / "out" / f"{good.name}_seg.nii.gz").is_file()
    assert (tmp_path / "out" / f"{good.name}_overlay.png").is_file()
    assert not (tmp_path / "out" / f"{bad.name}_seg.nii.gz").exists()
    assert f"failed: {broken / (bad.name + '_t1ce.nii.gz')}: cannot read NIfTI" in printed
    assert "1 input(s) failed; the others were written" in printed


def test_model_trained_on_2021_naming_predicts_2023_naming_on_the_inputs_grid(tiny_model, tmp_path):
    from medsight.cli.main import main

    checkpoint, _ = tiny_model
    case = next(p for p in synth(tmp_path, "2023", cases=1).iterdir() if p.is_dir())
    assert main(["predict", "--checkpoint", str(checkpoint), str(case), "--out", str(tmp_path / "out"), "--tta",
                 "infer.probabilities=true", "infer.threshold=0.3", "infer.postprocess=false"]) == 0
    seg = nib.load(str(tmp_path / "out" / f"{case.name}_seg.nii.gz"))
    source = nib.load(str(case / f"{case.name}-t2f.nii.gz"))
    assert seg.shape == source.shape
    np.testing.assert_allclose(seg.affine, source.affine)
    # the label map is the 2023 convention's reading of the written region probabilities, voxel for voxel
    probabilities = np.asarray(nib.load(str(tmp_path / "out" / f"{case.name}_prob.nii.gz")).dataobj)
    regions = np.moveaxis(probabilities, -1, 0) > 0.3
    assert regions[2].any(), "the tiny model calls some whole tumour at this threshold"
    written = np.asarray(seg.dataobj)
    np.testing.assert_array_equal(written, brats.CONVENTIONS["brats2023"].from_regions(regions))


def test_explicit_images_and_dicom_series_subfolders_are_inputs(tiny_model, tmp_path):
    from medsight.cli.main import main

    checkpoint, data = tiny_model
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    flair, t1c = case / f"{case.name}_flair.nii.gz", case / f"{case.name}_t1ce.nii.gz"
    assert main(["predict", "--checkpoint", str(checkpoint), "--image", f"flair={flair}", "--image", f"t1c={t1c}",
                 "--out", str(tmp_path / "explicit")]) == 0
    assert (tmp_path / "explicit" / f"{case.name}_flair_seg.nii.gz").is_file()
    folder = tmp_path / "dicom_case"
    from medsight.io.readers import load

    for role, path in (("flair", flair), ("t1c", t1c)):
        image = load(path)
        from medsight.core.geometry import itk_from_affine

        origin, spacing, direction = itk_from_affine(image.affine.numpy())
        write_series(image[0].numpy(), origin, spacing, direction, folder / role, rescale_intercept=0.0)
    assert main(["predict", "--checkpoint", str(checkpoint), str(folder), "--out", str(tmp_path / "dicom")]) == 0
    seg = nib.load(str(tmp_path / "dicom" / "dicom_case_seg.nii.gz"))
    np.testing.assert_allclose(seg.affine, nib.load(str(flair)).affine, atol=1e-4)
    missing = main(["predict", "--checkpoint", str(checkpoint), "--image", f"flair={flair}", "--out", str(tmp_path)])
    assert missing == 1


def test_an_option_of_another_task_is_refused_naming_its_task(tiny_model, tmp_path, capsys):
    from medsight.cli.main import main

    checkpoint, data = tiny_model
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    assert main(["predict", "--checkpoint", str(checkpoint), str(case), "--out", str(tmp_path), "--cam"]) == 2
    assert capsys.readouterr().err == ("error: command line: --cam is an option of the classification task; this "
                                       "checkpoint is a segmentation model\n")
