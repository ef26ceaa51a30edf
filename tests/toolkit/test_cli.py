"""The command line: one-line errors with exit status 2, data synth/check, info, tasks."""

from tests.conftest import run_cli


def test_data_check_is_clean_on_synthetic_data_and_fails_with_files_named(tmp_path):
    out = tmp_path / "brats"
    made = run_cli("data", "synth", "brats", str(out), "--cases", "2", "--shape", "32,32,24")
    assert made.returncode == 0, made.stderr
    clean = run_cli("data", "check", "brats", str(out))
    assert clean.returncode == 0 and clean.stdout.strip().startswith(f"brats: {out} is clean: ")
    assert clean.stdout.strip().endswith(", 2 test records")  # every case is in test; train + val hold both
    t1 = out / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz"
    t1.unlink()
    broken = run_cli("data", "check", "brats", str(out))
    assert broken.returncode == 2
    assert f"problem: {t1.parent}: case BraTS2021_00001: t1 image missing" in broken.stdout.splitlines()


def test_errors_are_one_line_with_exit_status_2_and_no_traceback(tmp_path):
    result = run_cli("data", "check", "luna16", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'nowhere'}: no such folder\n"
    unknown = run_cli("data", "synth", "chestxray15", str(tmp_path / "x"))
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: dataset: unknown dataset 'chestxray15' (did you mean 'chestxray14'?)")
    assert "Traceback" not in unknown.stderr
    bad_option = run_cli("data", "synth", "brats", str(tmp_path / "y"), "--naming", "2019")
    assert bad_option.returncode == 2 and bad_option.stderr == "error: synth: naming must be 2021, 2023, 2015 or msd, not '2019'\n"


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "data", "check", "luna16", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_info_reports_versions_device_and_readers():
    result = run_cli("info")
    assert result.returncode == 0
    for needle in ("medsight ", "torch ", "monai ", "SimpleITK ", "device: ", "NIfTI", "DICOM", "pydicom decoders"):
        assert needle in result.stdout
