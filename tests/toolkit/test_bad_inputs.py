"""Bad inputs under the contract: one line naming the file, exit 2 (a batch predict: 1, the good cases
written); degenerate inputs refused, never silently scored; outputs safe under write faults and concurrent
runs. ``scripts/bad_inputs.py`` tries the whole corpus through subprocesses; these are its fast core."""

from __future__ import annotations

import errno
import fcntl
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medsight.cli.main import main
from medsight.errors import DataError
from medsight.core.registry import DATASETS
from medsight.data.transforms import ImageGuardd

QUIET = ["trainer.progress=never", "trainer.tensorboard=false"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    data = DATASETS.get("chestxray14")().synth(root / "data", cases=20, seed=1, size=32)
    assert main(["train", "classification", "--data", str(data), "--out", str(root / "run"), "trainer.max_epochs=1",
                 "model.name=simple_cnn", "data.image_size=32", *QUIET]) == 0
    return data, root / "run" / "checkpoints" / "last.pt"


def guard(array: np.ndarray, kind: str = "volume", channels: int | None = None, affine=None):
    from monai.data import MetaTensor

    image = MetaTensor(torch.as_tensor(array)[None], affine=torch.as_tensor(np.eye(4) if affine is None else affine))
    image.meta["filename_or_obj"] = "case.nii.gz"
    ImageGuardd("image", kind=kind, channels=channels).check(image)


def test_degenerate_images_are_refused_naming_the_file():
    volume = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    guard(volume)  # a sound volume passes
    with_nan = volume.copy()
    with_nan[1, 2, 3] = np.nan
    cases = {"1 of 512 values are NaN or infinite": (with_nan, {}),
             "every value is 0: a blank image": (np.zeros((8, 8, 8), np.float32), {}),
             "volume is 1 x 1 x 1: too small": (np.ones((1, 1, 1), np.float32), {}),
             "picture is 1 x 1: too small": (np.ones((1, 1), np.float32), {"kind": "picture"}),
             "its affine is singular": (volume, {"affine": np.diag([1.0, 0.0, 1.0, 1.0])})}
    for message, (array, options) in cases.items():
        with pytest.raises(DataError, match=message) as error:
            guard(array, **options)
        assert error.value.where == "case.nii.gz"
    with pytest.raises(DataError, match="holds 2 volumes \\(a 4D image\\); expected 1"):
        from monai.data import MetaTensor

        four_d = MetaTensor(torch.randn(2, 8, 8, 8), affine=torch.eye(4))
        four_d.meta["filename_or_obj"] = "scan.nii.gz"
        ImageGuardd("image", channels=1).check(four_d)


def test_data_check_decodes_every_file_and_finds_a_truncated_flair(tmp_path, capsys):
    data = DATASETS.get("brats")().synth(tmp_path / "brats", cases=3, seed=1, shape=(24, 24, 16))
    flair = next(data.glob("*_00002/*_flair.nii.gz"))
    flair.write_bytes(flair.read_bytes()[:3000])
    assert main(["data", "check", "brats", str(data), "--quick"]) == 0  # the headers alone look fine
    capsys.readouterr()
    report = tmp_path / "problems.csv"
    assert main(["data", "check", "brats", str(data), "--report", str(report)]) == 2
    printed = capsys.readouterr().out
    assert f"problem: {flair}: cannot read NIfTI data" in printed
    assert "15 files in 3 cases read in full" in printed and "unreadable or truncated      1" in printed
    rows = report.read_text().splitlines()
    assert rows[0] == "path,kind,message" and rows[1].startswith(f"{flair},unreadable or truncated,")


def test_output_folders_that_cannot_be_written_are_one_line_before_any_work(classifier, tmp_path, capsys):
    data, checkpoint = classifier
    picture = str(next(data.glob("images_*/images/*.png")))
    (tmp_path / "a-file").write_text("x")
    for argv in (["predict", "--checkpoint", str(checkpoint), picture, "--out", str(tmp_path / "a-file")],
                 ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "a-file")],
                 ["data", "synth", "csv", str(tmp_path / "a-file"), "--cases", "2"]):
        assert main(argv) == 2
        assert capsys.readouterr().err == f"error: {tmp_path / 'a-file'}: --out is a file, not a folder\n"


def test_a_full_disk_leaves_no_partial_file_and_one_line(classifier, tmp_path, capsys, monkeypatch):
    _, checkpoint = classifier
    real = Path.write_bytes

    def full_disk(self, data):
        if ".partial." in self.name:
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    out = tmp_path / "models" / "model.ts"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: {out}: cannot write (No space left on device); nothing was left "
                                       "half-written\n")
    assert list((tmp_path / "models").iterdir()) == []


def test_a_second_predict_into_the_same_folder_is_refused_while_the_first_runs(classifier, tmp_path, capsys):
    data, checkpoint = classifier
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".medsight.lock", "a+") as held:  # the first run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["predict", "--checkpoint", str(checkpoint), str(next(data.glob("images_*/images/*.png"))),
                     "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {out}: another medsight predict is writing to this folder now")
    assert not (out / "predictions.csv").exists()


def test_checkpoints_that_are_text_or_random_bytes_say_what_they_are(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 8)
    for name, message in (("notes.txt", "a text file, not a checkpoint"),
                          ("noise.pt", "not a checkpoint: neither a PyTorch file nor a pickle")):
        assert main(["predict", "--checkpoint", str(tmp_path / name), "x.png", "--out", str(tmp_path / "o")]) == 2
        assert capsys.readouterr().err.startswith(f"error: {tmp_path / name}: {message}")


def test_table_paths_outside_the_dataset_are_refused_unless_allowed(tmp_path, capsys):
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(outside)
    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.csv").write_text("path,label\n../elsewhere.png,Mass\n")
    assert main(["data", "check", "csv", str(data), "--quick"]) == 2
    assert "path '../elsewhere.png' leads outside the dataset folder" in capsys.readouterr().out
    assert main(["data", "check", "csv", str(data), "--quick", "data.allow_outside=true"]) == 0


def test_a_bad_case_stops_training_naming_it_or_is_skipped_and_counted(tmp_path, capsys):
    data = DATASETS.get("brats")().synth(tmp_path / "brats", cases=4, seed=2, shape=(24, 24, 16))
    t1ce = next(data.glob("*_00003/*_t1ce.nii.gz"))
    image = nib.load(str(t1ce))
    nib.save(nib.Nifti1Image(np.full(image.shape, np.nan, np.float32), image.affine), str(t1ce))
    common = ["train", "segmentation", "--data", str(data), "--profile", "cpu-small", "trainer.max_epochs=1",
              "data.patch_size=[16,16,16]", "infer.roi_size=[24,24,16]", "data.folds=1", "model.init_filters=8",
              "data.cache=none", *QUIET]
    assert main([*common, "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == f"error: {t1ce}: {24 * 24 * 16} of {24 * 24 * 16} values are NaN or infinite\n"
    assert main([*common, "--out", str(tmp_path / "b"), "data.on_error=skip"]) == 0
    assert f"1 record(s) skipped (data.on_error=skip); first: {t1ce}" in capsys.readouterr().out
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["skipped_records"] for entry in logged if entry["phase"] == "train"] == [1]


def test_a_4d_scan_among_good_ones_fails_alone(tmp_path, capsys):
    from medsight.io import checkpoint
    from medsight.core.config import resolve, to_dict
    from medsight.core.registry import TASKS

    task_class = TASKS.get("detection")
    cfg = resolve(task_class.config_class, profile=task_class.profiles["cpu-small"],
                  overrides=["infer.roi_size=[64,64,32]", "infer.overlays_per_scan=0"])
    torch.manual_seed(0)
    path = tmp_path / "det.pt"
    checkpoint.save({"task": "detection", "config": to_dict(cfg), "task_state": {},
                     "model": task_class(cfg).build_model().state_dict()}, path)
    luna = DATASETS.get("luna16")().synth(tmp_path / "luna", cases=1, seed=1, shape=(48, 48, 16),
                                          spacing=(1.8, 1.8, 3.0))
    good = next(luna.glob("subset*/*.mhd"))
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8, 2), np.float32), np.eye(4)), str(four_d))
    assert main(["predict", "--checkpoint", str(path), str(four_d), str(good), "--out", str(tmp_path / "out")]) == 1
    printed = capsys.readouterr().out
    assert f"failed: {four_d}: holds 2 volumes (a 4D image); expected 1" in printed
    assert "predicted 1 case(s)" in printed  # the good scan went on and was written
    assert (tmp_path / "out" / "submission.csv").read_text().startswith("seriesuid,coordX")
