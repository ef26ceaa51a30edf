"""The command line: one-line errors with exit status 2, data synth/check, info, tasks."""

from types import SimpleNamespace

from medsight.cli.main import main
from tests.conftest import run_cli


def cli(capsys, *args: str) -> SimpleNamespace:
    """``medsight ARGS`` in this process (what a subprocess would print, without paying its start-up)."""
    capsys.readouterr()
    try:
        status = main(list(args))
    except SystemExit as exc:  # argparse's --help
        status = exc.code
    printed = capsys.readouterr()
    return SimpleNamespace(returncode=status, stdout=printed.out, stderr=printed.err)


def test_data_check_is_clean_on_synthetic_data_and_fails_with_files_named(tmp_path, capsys):
    out = tmp_path / "brats"
    made = cli(capsys, "data", "synth", "brats", str(out), "--cases", "2", "--shape", "32,32,24")
    assert made.returncode == 0, made.stderr
    clean = cli(capsys, "data", "check", "brats", str(out))
    assert clean.returncode == 0 and f"brats: {out} is clean: " in clean.stdout
    assert "10 files in 2 cases read in full" in clean.stdout  # every voxel of 4 modalities + label, 2 cases
    assert clean.stdout.strip().endswith(", 2 test records")  # every case is in test; train + val hold both
    t1 = out / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz"
    t1.unlink()
    broken = cli(capsys, "data", "check", "brats", str(out))
    assert broken.returncode == 2
    assert f"problem: {t1.parent}: case BraTS2021_00001: t1 image missing" in broken.stdout.splitlines()


def test_errors_are_one_line_with_exit_status_2_and_no_traceback(tmp_path, capsys):
    result = cli(capsys, "data", "check", "luna16", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'nowhere'}: no such folder\n"
    unknown = cli(capsys, "data", "synth", "chestxray15", str(tmp_path / "x"))
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: dataset: unknown dataset 'chestxray15' (did you mean 'chestxray14'?)")
    assert "Traceback" not in unknown.stderr
    bad_option = cli(capsys, "data", "synth", "brats", str(tmp_path / "y"), "--naming", "2019")
    assert bad_option.returncode == 2 and bad_option.stderr == "error: synth: naming must be 2021, 2023, 2015 or msd, not '2019'\n"


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "data", "check", "luna16", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_info_reports_versions_device_and_readers():
    result = run_cli("info")
    assert result.returncode == 0
    for needle in ("medsight ", "torch ", "monai ", "SimpleITK ", "device: ", "NIfTI", "DICOM", "pydicom decoders"):
        assert needle in result.stdout


def test_each_task_adds_its_own_options_to_predict_and_evaluate(capsys):
    helped = cli(capsys, "predict", "--help")
    assert helped.returncode == 0
    text = helped.stdout
    assert "classification options:" in text and "--cam" in text.split("classification options:")[1]
    assert "segmentation options:" in text and "--tta" in text.split("segmentation options:")[1]
    evaluate = cli(capsys, "evaluate", "--help").stdout
    assert "detection options:" in evaluate and "--annotations" in evaluate.split("detection options:")[1]


def test_the_toolkit_names_no_task_and_no_task_option():
    """Tasks add their options (``Task.add_arguments``); the toolkit never imports a task or a format."""
    from pathlib import Path

    toolkit = Path(__file__).resolve().parents[2] / "toolkit"
    for source in toolkit.rglob("*.py"):
        text = source.read_text()
        for needle in ('"--cam"', '"--tta"', '"--annotations"', '"--bootstrap"', "infer.cam", "infer.tta",
                       "import medsight.tasks", "from medsight.tasks", "from medsight.datasets"):
            assert needle not in text, f"{source.name} mentions {needle}"


def test_data_check_agrees_with_train_on_the_same_folder_and_overrides(tmp_path, capsys):
    """BRATS 2015-style cases with FLAIR and T1c only: both refuse them with the default four modalities
    and both accept them with data.modalities=[flair,t1c]."""
    data = tmp_path / "brats2015"
    assert cli(capsys, "data", "synth", "brats", str(data), "--cases", "3", "--naming", "2015",
                   "--shape", "24,24,16").returncode == 0
    for extra in list(data.glob("*/T1_*")) + list(data.glob("*/T2_*")):
        extra.unlink()
    quick = ["--profile", "cpu-small", "trainer.max_epochs=1", "data.patch_size=[16,16,16]", "infer.roi_size=[24,24,16]",
             "model.init_filters=8", "data.folds=1", "trainer.tensorboard=false"]
    checked = cli(capsys, "data", "check", "brats", str(data))
    trained = cli(capsys, "train", "segmentation", "--data", str(data), "--out", str(tmp_path / "a"), *quick)
    assert checked.returncode == 2 and trained.returncode == 2
    assert "t1 image missing" in checked.stdout and "no t1, t2 image" in trained.stderr
    both = ["data.modalities=[flair,t1c]"]
    checked = cli(capsys, "data", "check", "brats", str(data), *both, "trainer.max_epochs=1", "data.patch_size=[16,16,16]")
    assert checked.returncode == 0, checked.stdout
    assert "ignored here: trainer.max_epochs=1 data.patch_size=[16,16,16]" in checked.stdout
    trained = cli(capsys, "train", "segmentation", "--data", str(data), "--out", str(tmp_path / "b"), *quick, *both)
    assert trained.returncode == 0, trained.stderr[-2000:]


def test_data_check_counts_the_splits_train_reads_with_the_same_task_profile_and_overrides(tmp_path, capsys):
    """ChestX-ray14 read by classification (val_fraction 0.1 there, 0.2 in the formats' own defaults): the check
    counts what the task's records hold with that profile, not what the bare format would."""
    from medsight.cli.main import main
    from medsight.core.config import resolve
    from medsight.core.registry import DATASETS, TASKS
    from medsight.data.formats import DataSource

    data = DATASETS.get("chestxray14")().synth(tmp_path / "cxr", cases=40, seed=3, size=16)
    task_class = TASKS.get("classification")
    task = task_class(resolve(task_class.config_class, profile=task_class.profiles["cpu-small"],
                              overrides={"data.split_seed": 2}))
    source = task.open_data(data)
    task.learn_state(source)
    counts = ", ".join(f"{len(task.records(source, split))} {split}" for split in ("train", "val", "test"))
    assert counts == "31 train, 3 val, 6 test"
    fmt = DATASETS.get("chestxray14")
    assert DataSource(fmt(fmt.options_class(split_seed=2)), data).describe() == "24 train, 10 val, 6 test records"

    assert main(["data", "check", "chestxray14", str(data), "--task", "classification", "--profile", "cpu-small",
                 "--quick", "data.split_seed=2", "trainer.max_epochs=1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "(not about reading the data, ignored here: trainer.max_epochs=1)" in printed
    assert printed[-1] == f"chestxray14: {data} is clean: {counts} records"


def test_bad_numbers_and_names_on_the_data_commands_are_one_line(tmp_path, capsys):
    from medsight.cli.main import main

    data = tmp_path / "d"
    data.mkdir()
    cases = [(["data", "synth", "brats", str(tmp_path / "x"), "--cases", "0"],
              "error: command line: --cases must be a whole number of at least 1, got '0'"),
             (["data", "synth", "brats", str(tmp_path / "x"), "--seed", "-3"],
              "error: command line: --seed must be a whole number of at least 0, got '-3'"),
             (["data", "synth", "brats", str(tmp_path / "x"), "--shape", "24,x,16"],
              "error: synth: shape needs three comma-separated whole numbers, each at least 8, got '24,x,16'"),
             (["data", "check", "brats", str(data), "--workers", "-1"],
              "error: command line: --workers must be a whole number of at least 1, got '-1'"),
             (["data", "fingerprint", "brats", str(data), "--workers", "two"],
              "error: command line: --workers must be a whole number of at least 0, got 'two'"),
             (["data", "check", "chestxray14", str(data), "--task", "segmentation"],
              "error: command line: the segmentation task does not read chestxray14 data (tasks that do: "
              "classification)")]
    for argv, message in cases:
        assert main(argv, nested=True) == 2, argv
        assert capsys.readouterr().err.splitlines() == [message]
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_the_data_functions_return_what_the_commands_print_and_print_nothing(tmp_path, capsys):
    import json

    import medsight.data
    from medsight.data.check import check_data
    from medsight.data.formats import SYNTHETIC_MARKER

    out = medsight.data.synthesize("brats", tmp_path / "brats", cases=2, seed=1, shape="24,24,16")
    assert json.loads((out / SYNTHETIC_MARKER).read_text())["options"] == {"shape": "24,24,16"}
    report = check_data(out, overrides={"data.modalities": ["flair", "t1c"], "trainer.seed": 3},
                        report=tmp_path / "problems.csv")
    assert report.clean and report.format == "brats" and report.files == 6 and report.cases == 2
    # two cases in five balanced folds: fold 0 (validation) holds one of them
    assert report.splits == "1 train, 1 val, 2 test records" and report.ignored == ["trainer.seed=3"]
    assert report.report_path.read_text().splitlines() == ["path,kind,message"]
    assert capsys.readouterr().out == ""
