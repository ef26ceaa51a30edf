"""`medsight demo --quick`: every registered task synthesises its data, trains, evaluates and predicts
on inputs picked after the data exist (a task's demo inputs may list the synthetic folder)."""

from medsight.cli import main
from medsight.registry import TASKS


def test_quick_demo_runs_every_task_to_predictions(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    demos = [name for name in TASKS.names() if TASKS.get(name).demo is not None]  # other tests add toy tasks
    assert {"classification", "detection", "segmentation"} <= set(demos)
    for name in demos:
        predictions = tmp_path / name / "predictions"
        assert predictions.is_dir() and any(predictions.iterdir()), name
    # each task's predict got its inputs from the data the demo had just synthesised
    assert len((tmp_path / "classification/predictions/predictions.csv").read_text().splitlines()) == 1 + 4
    assert len(list((tmp_path / "classification/predictions/cam").glob("*.png"))) == 4 * 2
    assert (tmp_path / "detection/predictions/submission.csv").read_text().startswith("seriesuid,coordX")
    assert len(list((tmp_path / "segmentation/predictions").glob("*_seg.nii.gz"))) == 1
    assert (tmp_path / "report.html").is_file()
    assert "FAILED" not in capsys.readouterr().out
