"""``medsight.cross_validate`` / ``medsight cv``: balanced folds of the training pool, every fold trained once
(a stopped one resumed, a finished one kept), out-of-fold rows for every case, per-fold and pooled metrics."""

from __future__ import annotations

import csv
import json

import pytest

import medsight
from medsight.cli.main import main
from medsight.io import checkpoint

SETTINGS = ["model.name=simple_cnn", "data.image_size=32", "trainer.max_epochs=1", "trainer.progress=never",
            "trainer.tensorboard=false", "trainer.threads=1"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    return medsight.synthesize("chestxray14", tmp_path_factory.mktemp("cv") / "cxr", cases=40, seed=2, size=32)


def test_every_fold_trains_once_and_every_case_is_predicted_out_of_fold(pictures, tmp_path):
    out = tmp_path / "cv"
    first = medsight.cross_validate("classification", pictures, folds=3, out=out, overrides=SETTINGS, fold=1,
                                    bootstrap=50)
    assert [f.index for f in first.finished] == [1] and (out / "fold_1" / "fold.json").is_file()
    assert not (out / "fold_0").exists()  # --fold N runs that fold only

    groups = json.loads((out / "folds.json").read_text())["groups"]
    sizes = sorted(len(g) for g in groups)
    assert sizes[-1] - sizes[0] <= 1 and not set(groups[0]) & set(groups[1])  # balanced, no patient in two folds
    marker = (out / "fold_1" / "fold.json").stat().st_mtime_ns

    result = medsight.cross_validate("classification", pictures, folds=3, out=out, overrides=SETTINGS, bootstrap=50)
    assert [f.index for f in result.finished] == [0, 1, 2]
    assert (out / "fold_1" / "fold.json").stat().st_mtime_ns == marker  # a finished fold is not trained again

    pool = medsight.load(result.folds[0].checkpoint).configured()
    source = pool.open_data(pictures)
    cases = {r["id"]: r["group"] for split in ("train", "val") for r in pool.records(source, split)}
    with open(out / "oof.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["case"] for r in rows) == sorted(cases)  # every case of the pool, once
    for row in rows:
        assert cases[row["case"]] in groups[int(row["fold"])]  # predicted by the fold that never trained on it

    summary = json.loads((out / "cv.json").read_text())
    assert summary["finished"] == 3 and set(summary["mean"]) <= set(summary["sd"])
    low, high = summary["ci95_oof"]["mean_auroc"]
    assert low <= summary["pooled_oof"]["mean_auroc"] <= high and low < high
    thresholds = summary["chosen_on_oof"]["thresholds"]  # chosen on every case's OOF prediction at once
    assert len(thresholds) == 14 and thresholds == result.chosen["thresholds"]
    assert len(set(thresholds)) > 1  # one per label, not the 0.5 default


def test_a_stopped_fold_is_resumed_not_restarted(pictures, tmp_path, capsys):
    out = tmp_path / "cv"
    args = ["cv", "classification", "--data", str(pictures), "--folds", "2", "--out", str(out), "--resamples", "0",
            *SETTINGS]
    assert main([*args, "--fold", "0"]) == 0
    steps = checkpoint.load(out / "fold_0" / "checkpoints" / "last.pt")["global_step"]
    (out / "fold_0" / "fold.json").unlink()  # as if killed after its last checkpoint, before its OOF rows
    assert main([*args, "--fold", "0"]) == 0
    assert "fold 0: resuming" in capsys.readouterr().out
    assert checkpoint.load(out / "fold_0" / "checkpoints" / "last.pt")["global_step"] == steps
    assert (out / "fold_0" / "fold.json").is_file()

    assert main([*args, "--collect"]) == 0
    printed = capsys.readouterr().out
    assert "1 of 2 folds finished" in printed and "fold 1: " in printed and "not finished" in printed


def test_more_folds_than_patients_is_one_line(pictures, tmp_path, capsys):
    assert main(["cv", "classification", "--data", str(pictures), "--folds", "500", "--out", str(tmp_path / "x"),
                 *SETTINGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot fill 500 folds" in err[0] and str(pictures) in err[0]


def test_an_unknown_calibration_from_the_api_is_named_by_its_argument(pictures, tmp_path):
    """(The command line's --calibration has argparse choices.)"""
    from medsight.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        medsight.cross_validate("classification", pictures, folds=2, out=tmp_path / "x", calibration="isotonic")
    assert str(error.value) == "calibration: must be one of auto, platt, temperature, none, got 'isotonic'"


def test_configs_are_compared_on_the_same_folds_and_the_best_is_kept(pictures, tmp_path, capsys):
    """--configs: each configuration cross-validated on the same folds; singles and the pair scored on the
    pooled out-of-fold predictions; the winner's members in OUT/ensemble.pt."""
    wide = tmp_path / "wide.yaml"
    wide.write_text("model:\n  name: simple_cnn\noptim:\n  lr: 0.003\n")
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text("optim.lr: 0.0003\n")
    out = tmp_path / "cv"
    assert main(["cv", "classification", "--data", str(pictures), "--folds", "2", "--out", str(out),
                 "--configs", f"{wide},{narrow}", "--resamples", "0", *SETTINGS]) == 0
    groups = [json.loads((out / name / "folds.json").read_text())["groups"] for name in ("wide", "narrow")]
    assert groups[0] == groups[1] == json.loads((out / "folds.json").read_text())["groups"]
    summary = json.loads((out / "configurations.json").read_text())
    assert set(summary["candidates"]) == {"wide", "narrow", "wide+narrow"}
    scores = {name: metrics["mean_auroc"] for name, metrics in summary["candidates"].items()}
    assert summary["best"] == max(scores, key=scores.get)
    members = len(checkpoint.load(out / "ensemble.pt")["ensemble"]["members"])
    assert members == (4 if "+" in summary["best"] else 2)
    assert "best configuration: " + summary["best"] in capsys.readouterr().out
    assert main(["cv", "classification", "--data", str(pictures), "--out", str(out), "--configs", "gpu"]) == 2
    assert "two configurations or more" in capsys.readouterr().err
