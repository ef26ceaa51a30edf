"""Batch predict overlaps reading and writing with the network (``data.in_flight`` batches on either side) and
changes nothing: the same outputs as one case at a time, bad cases reported, every accepted result written."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import pytest

import medsight
from medsight.datasets.chestxray14 import FINDINGS
from medsight.errors import DataError
from medsight.inference.predict import Failure, PredictionReport, read_ahead, write_results
from medsight.task import PredictionWriter

CLS = {"trainer.progress": "never", "trainer.tensorboard": False, "trainer.threads": 1, "model.name": "simple_cnn",
       "data.image_size": 32, "trainer.max_epochs": 1}


def test_read_ahead_keeps_order_stays_within_its_depth_and_raises_where_the_source_did():
    made, taken = [], []

    def source():
        for i in range(20):
            made.append(i)
            if i == 15:
                raise ValueError("bad item 15")
            yield i

    with pytest.raises(ValueError, match="bad item 15"):
        for item in read_ahead(source(), 3):
            assert len(made) - len(taken) <= 3 + 1  # the consumer's item and at most 3 ahead
            taken.append(item)
    assert taken == list(range(15))
    assert list(read_ahead(iter(range(5)), 0)) == list(range(5))


class _Writer(PredictionWriter):
    def __init__(self):
        super().__init__(Path("unused"))
        self.threads, self.order = set(), []

    def write(self, result):
        self.threads.add(threading.current_thread().name)
        if result.id == "c2":
            raise DataError("cannot write", result.id)
        self.order.append(result.id)
        return [result.id]


class _Result:
    def __init__(self, name):
        self.id, self.quality = name, {}


def test_the_background_writer_writes_every_result_in_order_and_reports_its_failures():
    results = [_Result(f"c{i}") for i in range(6)]
    results.insert(3, Failure("c-bad: cannot read image"))
    writer, report = _Writer(), PredictionReport()
    write_results(iter(results), writer, report, debug=False, behind=2)
    assert writer.order == ["c0", "c1", "c3", "c4", "c5"] and report.cases == 5
    assert sorted(report.failures) == ["c-bad: cannot read image", "c2: cannot write"]
    assert all(name.startswith("medsight-write") for name in writer.threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelined")
    data = medsight.synthesize("chestxray14", root / "cxr", cases=24, seed=4, size=32)
    return medsight.load(medsight.train("classification", data, out=root / "run", overrides=CLS).last), data


CLS_LABELS = set(FINDINGS)


def _table(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_pipelined_predict_writes_what_one_case_at_a_time_writes(trained, tmp_path):
    model, data = trained
    pictures = sorted(data.rglob("*.png"))[:14]
    assert len(pictures) == 14
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    inputs = [*pictures[:5], broken, *pictures[5:]]
    tables = {}
    for ahead in (0, 2):
        report = model.predict_files(inputs, tmp_path / f"out{ahead}", batch_size=2,
                                     overrides=[f"data.in_flight={ahead}"])
        assert report.cases == len(pictures) and len(report.failures) == 1 and "broken.png" in report.failures[0]
        tables[ahead] = _table(tmp_path / f"out{ahead}" / "predictions.csv")
    assert tables[0] == tables[2] and len(tables[0]) == len(pictures)


def test_under_torchrun_each_rank_predicts_its_share_into_its_own_folder(trained, tmp_path, monkeypatch):
    model, data = trained
    pictures = sorted(data.rglob("*.png"))[:5]
    whole = _table(model.predict_files(pictures, tmp_path / "one").written[0].parent / "predictions.csv")
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        report = model.predict_files([*pictures, tmp_path / "missing.png"], tmp_path / "all")
        assert report.cases == len(pictures[rank::2]) and len(report.failures) == (1 - rank)  # bad input: once
        shares.append(_table(tmp_path / "all" / f"rank{rank}" / "predictions.csv"))
    assert [row["image"] for row in shares[0]] == [row["image"] for row in whole[0::2]]
    together = {row["image"]: row for row in shares[0] + shares[1]}
    assert sorted(together) == sorted(row["image"] for row in whole)
    for row in whole:  # the same predictions, up to the rounding of other batch compositions (fp32, 2 cores)
        assert all(abs(float(row[k]) - float(together[row["image"]][k])) < 1e-5 for k in row
                   if k in CLS_LABELS), row["image"]


def test_a_model_chooses_its_compute_threads_once_and_again_only_after_a_while(trained, tmp_path, monkeypatch):
    """Every predict call of one model runs on the thread count chosen at its first (no 0.1 s measurement per
    call, and bf16 sums that cannot move between two calls); a long-lived model measures again later."""
    from medsight.core import runtime
    from medsight.inference import model as model_module
    from medsight.io import checkpoint

    model, data = trained
    state = checkpoint.load(model.path)
    state["config"]["trainer"]["threads"] = None  # auto: the cores other processes leave free
    auto = medsight.load(checkpoint.save(state, tmp_path / "auto.pt"))
    measured = []
    monkeypatch.setattr(runtime, "busy_cores", lambda: measured.append(1) or 0.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "_DEFAULT_THREADS", 2)
    pictures = sorted(data.rglob("*.png"))[:2]
    first = [r.probabilities for r in auto.predict(pictures)]
    second = [r.probabilities for r in auto.predict(pictures)]
    assert len(measured) == 1 and all((a == b).all() for a, b in zip(first, second))
    monkeypatch.setattr(model_module, "THREADS_KEPT_S", 0.0)
    auto.predict(pictures[:1])
    assert len(measured) == 2
