"""`medsight demo --quick`: every registered task synthesises its data, trains, evaluates and predicts
on inputs picked after the data exist (a task's demo inputs may list the synthetic folder)."""

from medsight.cli.main import main
from medsight.core.registry import TASKS


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
    # segmentation evaluates and predicts on cases synthesised apart (another seed), never on its training data
    held_out = tmp_path / "data" / "brats-held-out"
    assert (tmp_path / "segmentation/evaluation/held-out/metrics.json").is_file()
    assert [p.name for p in (tmp_path / "segmentation/predictions").glob("*_seg.nii.gz")] == \
        [f"{sorted(p.name for p in held_out.iterdir() if p.is_dir())[-1]}_seg.nii.gz"]
    page = (tmp_path / "report.html").read_text()
    for name, metric in (("classification", "mean_auroc"), ("detection", "cpm"), ("segmentation", "mean_dice")):
        section = page.split(f"<h2>{name}: ok in ")[1].split("</section>")[0]
        assert f"<b>{metric} " in section and '<img src="' in section, section
        picture = section.split('<img src="')[1].split('"')[0]
        assert (tmp_path / picture).is_file() and picture.endswith(".png")
    printed = capsys.readouterr().out
    assert "FAILED" not in printed
    # models trained on `medsight data synth` output say so: once per predict, and in their reports
    assert printed.count("note: this model was trained on synthetic data only") == len(demos)
    assert "synthetic data only</b>" in (tmp_path / "classification" / "report.html").read_text()


def test_progress_lines_say_where_a_long_step_stands(capsys):
    from medsight.core.progress import _Lines, setup_logging

    setup_logging()
    lines = _Lines(total=40, desc="epoch 2/5", unit="batch", every_s=0.0)
    lines.set_postfix(loss="0.4100")
    lines.update(10)
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("epoch 2/5: 10/40 (25%), ") and " s/batch, ETA " in printed
    assert printed.endswith(", loss 0.4100")


def test_the_detection_demo_data_are_luna16_scans_on_its_grid_with_nodules_of_its_sizes(tmp_path):
    """The demo's detector learns in a minute because its scans are coarse and its nodules 6-25 mm: the synthetic
    set it asks for must be that, in the official layout; the generator's own default still draws 3.5 mm ones."""
    import numpy as np
    from medsight.data import synthesize
    from medsight.datasets.luna16 import find_scans, header_geometry, read_annotations

    spec = TASKS.get("detection").demo
    low, high = spec.synth["nodule_mm"]
    options = {k: v for k, v in spec.synth.items() if k != "cases"}
    demo = synthesize("luna16", tmp_path / "demo", cases=6, seed=0, **options)
    scans = find_scans(demo)
    assert len(scans) == 6 and {fold for _, fold in scans.values()} == set(range(spec.synth["subsets"]))
    affine, shape, _ = header_geometry(next(iter(scans.values()))[0])
    assert shape == tuple(spec.synth["shape"])
    assert np.allclose(np.abs(np.diag(affine)[:3]), spec.synth["spacing"])
    assert f"data.spacing_mm=[{','.join(map(str, spec.synth['spacing']))}]" in spec.overrides  # trained on that grid
    diameters = [n.diameter_mm for found in read_annotations(demo / "annotations.csv").values() for n in found]
    assert len(diameters) >= 4 and all(0.8 * low <= d <= high for d in diameters), diameters
    plain = synthesize("luna16", tmp_path / "plain", cases=6, seed=0, shape="96,96,32", spacing="1.5,1.5,2.5")
    assert min(n.diameter_mm for found in read_annotations(plain / "annotations.csv").values() for n in found) < low
