"""The Python API as a notebook uses it: only ``medsight.*`` names, no command line. Each task trains briefly
on synthetic data, predicts on images in memory, and ``.save()`` writes what ``medsight predict`` writes."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

import medsight

QUIET = {"trainer.progress": "never", "trainer.tensorboard": False, "trainer.max_epochs": 1}


def cli(*args: str) -> int:
    from medsight.cli.main import main  # the test compares with the command line; the package never calls it

    return main(list(args))


@pytest.fixture(scope="module")
def brats_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-seg")
    data = medsight.synthesize("brats", root / "data", cases=3, seed=2, shape="40,40,24")
    run = medsight.train("segmentation", data, out=root / "run", profile="cpu-small", overrides={
        **QUIET, "data.patch_size": [32, 32, 16], "data.patches_per_case": 1, "data.folds": 3,
        "data.modalities": ["flair", "t1c"], "infer.roi_size": [32, 32, 24], "model.init_filters": 8})
    return run, data


def test_train_returns_the_run_with_its_checkpoints_and_history(brats_model):
    run, _ = brats_model
    assert run.dir.is_dir() and run.last == run.dir / "checkpoints" / "last.pt" and run.last.is_file()
    assert run.summary["epochs"] == 1
    phases = {record["phase"] for record in run.history}
    assert "train" in phases
    assert run.report is not None and run.report.is_file()


def test_segmentation_of_numpy_volumes_keeps_their_grid_and_saves_what_the_cli_writes(brats_model, tmp_path,
                                                                                     monkeypatch):
    # one thread count for both calls: predict sizes its threads by the cores other processes keep busy, and bf16
    # sums over another thread count can flip a voxel on the threshold (seen once in a fresh-clone CI run)
    monkeypatch.setenv("OMP_NUM_THREADS", str(__import__("torch").get_num_threads()))
    run, data = brats_model
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    files = {role: next(case.glob(f"*_{role}.nii.gz")) for role in ("flair", "t1ce")}
    # an oblique grid of 1.5 mm voxels, not the files': the label map must come back on it
    affine = np.array([[0.0, -1.5, 0.0, 30.0], [1.5, 0.0, 0.0, -12.0], [0.0, 0.0, 1.5, 5.0], [0.0, 0.0, 0.0, 1.0]])
    arrays = {"flair": np.asarray(nib.load(files["flair"]).dataobj, dtype=np.float32),
              "t1c": np.asarray(nib.load(files["t1ce"]).dataobj, dtype=np.float32)}
    model = run.load()
    result = model.predict(arrays, affine=affine, ids="numpy-case")
    assert result.id == "numpy-case" and result.labels.shape == arrays["flair"].shape
    np.testing.assert_allclose(result.affine, affine)
    assert result.labels.dtype == np.uint8 and set(np.unique(result.labels)) <= {0, 1, 2, 4}
    assert result.regions.shape == (3, *arrays["flair"].shape)

    # the same volumes as NIfTI files through the command line (which names a case after its first
    # modality's file): the same label map on the same grid
    for role, array in arrays.items():
        nib.save(nib.Nifti1Image(array, affine), tmp_path / ("numpy-case.nii.gz" if role == "flair" else f"{role}.nii.gz"))
    assert cli("predict", "--checkpoint", str(run.last), "--image", f"flair={tmp_path / 'numpy-case.nii.gz'}",
               "--image", f"t1c={tmp_path / 't1c.nii.gz'}", "--out", str(tmp_path / "cli"),
               "infer.overlay=false") == 0
    saved = result.save(tmp_path / "api")
    assert [p.name for p in saved] == ["numpy-case_seg.nii.gz", "numpy-case_overlay.png", "numpy-case_viewer.html",
                                       "cases.csv"]
    api, by_cli = nib.load(tmp_path / "api" / "numpy-case_seg.nii.gz"), nib.load(tmp_path / "cli" / "numpy-case_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(api.dataobj), np.asarray(by_cli.dataobj))
    np.testing.assert_allclose(api.affine, by_cli.affine, atol=1e-5)


def test_a_list_predicts_in_order_and_lists_a_bad_input_the_others_go_on(brats_model):
    run, data = brats_model
    cases = sorted(p for p in data.iterdir() if p.is_dir())
    model = medsight.load(run.last)
    results = model.predict([cases[0], np.zeros((4, 4)), cases[1]])
    assert [r.id for r in results] == [cases[0].name, cases[1].name]
    assert len(results.failures) == 1 and "input-2" in results.failures[0]
    with pytest.raises(medsight.DataError, match="a volume is a 3D array"):
        model.predict(np.zeros((4, 4)))
    with pytest.raises(medsight.ConfigError, match="segmentation has no option 'cam'"):
        model.predict(cases[0], cam=True)


@pytest.fixture(scope="module")
def xray_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-cls")
    data = medsight.synthesize("chestxray14", root / "data", cases=40, seed=3, size=64)
    run = medsight.train("classification", data, out=root / "run", profile="cpu-small",
                         overrides=[*(f"{k}={str(v).lower()}" for k, v in QUIET.items()), "model.name=simple_cnn",
                                    "data.image_size=64", "data.batch_size=8"])
    return run, data


def test_an_xray_in_a_numpy_array_gets_the_findings_the_file_gets(xray_model, tmp_path):
    run, data = xray_model
    picture_file = sorted(data.glob("images_*/images/*.png"))[0]
    pixels = np.asarray(Image.open(picture_file))
    model = medsight.load(run.best or run.last)
    in_memory = model.predict(pixels, ids=picture_file.name)
    from_file = model.predict(picture_file)
    assert list(in_memory.labels) == list(from_file.labels) and len(in_memory.labels) == 14
    np.testing.assert_allclose(in_memory.probabilities, from_file.probabilities, atol=1e-6)
    assert in_memory.positive == from_file.positive
    assert in_memory.probability(in_memory.labels[0]) == pytest.approx(float(in_memory.probabilities[0]))

    with_cam = model.predict(pixels, cam=True, cam_top_k=2)
    assert len(with_cam.cams) == 2 and all(cam.shape == (64, 64) for cam in with_cam.cams.values())

    # the list's save writes one predictions.csv, as the command line does for the same files
    files = sorted(data.glob("images_*/images/*.png"))[:3]
    model.predict(files).save(tmp_path / "api")
    assert cli("predict", "--checkpoint", str(model.path), *map(str, files), "--out", str(tmp_path / "cli")) == 0
    read = lambda folder: list(csv.DictReader(open(folder / "predictions.csv")))  # noqa: E731
    assert read(tmp_path / "api") == read(tmp_path / "cli")

    evaluation = model.evaluate(data, "test")
    assert 0.0 <= evaluation.metrics["mean_auroc"] <= 1.0
    assert len(evaluation.cases) == len(medsight.load(model.path).task.records(
        medsight.load(model.path).task.open_data(data), "test"))


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-det")
    data = medsight.synthesize("luna16", root / "data", cases=3, seed=5, shape="64,64,24", spacing="1.4,1.4,2.5")
    run = medsight.train("detection", data, out=root / "run", profile="cpu-small", overrides={
        **QUIET, "data.patch_size": [32, 32, 16], "data.patches_per_scan": 1, "infer.roi_size": [64, 64, 32]})
    return run, data


def test_a_simpleitk_ct_gets_world_marks_and_saves_the_cli_submission(ct_model, tmp_path):
    run, data = ct_model
    scan = sorted(data.glob("subset*/*.mhd"))[0]
    image = sitk.ReadImage(str(scan))
    model = medsight.load(run.last)
    options = {"score_threshold": 0.0, "overlays_per_scan": 1}
    result = model.predict(image, ids=scan.stem, **options)
    assert result.seriesuid == scan.stem and result.marks.shape[1] == 5
    assert np.all(np.diff(result.marks[:, 3]) <= 0)  # most probable first
    origin, extent = np.asarray(image.GetOrigin()), np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    if len(result.marks):  # centres in world mm (LPS), inside the scan
        assert np.all(result.marks[:, :3] >= origin - 1e-3) and np.all(result.marks[:, :3] <= origin + extent + 1e-3)
    result.save(tmp_path / "api")
    assert cli("predict", "--checkpoint", str(run.last), str(scan), "--out", str(tmp_path / "cli"),
               "infer.score_threshold=0.0", "infer.overlays_per_scan=1") == 0
    read = lambda folder: [(r["seriesuid"], *(round(float(r[k]), 3) for k in ("coordX", "coordY", "coordZ",  # noqa: E731
                                                                              "probability", "diameter_mm")))
                           for r in csv.DictReader(open(folder / "submission.csv"))]
    assert read(tmp_path / "api") == read(tmp_path / "cli")
    assert sorted(p.name for p in (tmp_path / "api" / "overlays").glob("*.png")) == \
        sorted(p.name for p in (tmp_path / "cli" / "overlays").glob("*.png"))
