"""Inference engines and compression: ONNX Runtime and OpenVINO give PyTorch fp32's outputs for every task
(the sliding window, box decoding and writers being the same code); ``compress`` writes checkpoints that
evaluate and predict take, each labelled with what it was measured to cost."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsight.core import checkpoint
from medsight.cli.main import main
from medsight.datasets.chestxray14 import FINDINGS
from medsight.core.registry import DATASETS
from tests.toolkit.test_dicom_out import random_checkpoint

QUIET = ["trainer.progress=never", "trainer.tensorboard=false"]
ENGINES = ("torch", "onnxruntime", "openvino")


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


def test_segmentation_probabilities_agree_across_engines(work):
    data = DATASETS.get("brats")().synth(work / "brats", cases=1, seed=1, shape=(40, 36, 24))
    case = next(p for p in data.iterdir() if p.is_dir())
    model = random_checkpoint("segmentation", work / "seg.pt", "infer.roi_size=[32,32,16]", "model.init_filters=8",
                              "infer.sw_batch_size=3")  # windows of 32x32x16 and a last, smaller batch
    probabilities = {}
    for engine in ENGINES:
        out = work / f"seg_{engine}"
        assert main(["predict", "--checkpoint", str(model), str(case), "--out", str(out), "--engine", engine,
                     "--precision", "fp32", "infer.probabilities=true"]) == 0
        probabilities[engine] = np.asarray(nib.load(str(next(out.glob("*_prob.nii.gz")))).dataobj, np.float32)
    assert probabilities["torch"].std() > 0.01, "a random network still gives varied probabilities"
    for engine in ENGINES[1:]:
        assert np.abs(probabilities[engine] - probabilities["torch"]).max() <= 1e-3, engine


def test_detection_marks_agree_across_engines_windowed_or_whole(work):
    data = DATASETS.get("luna16")().synth(work / "luna", cases=1, seed=1)
    scan = next(data.rglob("*.mhd"))
    model = random_checkpoint("detection", work / "det.pt", "infer.roi_size=[64,64,32]")
    for window in ("[64,64,32]", "[512,512,512]"):  # sliding window, then the whole scan in one call
        marks = {}
        for engine in ENGINES:
            out = work / f"det_{engine}_{len(window)}"
            assert main(["predict", "--checkpoint", str(model), str(scan), "--out", str(out), "--engine", engine,
                         "--precision", "fp32", "infer.score_threshold=0.0", f"infer.roi_size={window}"]) == 0
            marks[engine] = np.array([[float(r[k]) for k in ("coordX", "coordY", "coordZ", "probability")]
                                      for r in _rows(out / "submission.csv")])
        assert len(marks["torch"]) > 0
        for engine in ENGINES[1:]:
            assert marks[engine].shape == marks["torch"].shape, engine
            assert np.abs(marks[engine] - marks["torch"]).max() <= 1e-3, engine


def test_classification_probabilities_agree_and_grad_cam_needs_torch(work, capsys):
    data = DATASETS.get("chestxray14")().synth(work / "cxr", cases=6, seed=1, size=48)
    pictures = sorted(str(p) for p in data.rglob("*.png"))[:3]
    model = random_checkpoint("classification", work / "cls.pt", "model.name=simple_cnn", "data.image_size=48",
                              state={"labels": list(FINDINGS), "multi_label": True, "thresholds": [0.5] * 14})
    found = {}
    for engine in ENGINES:
        out = work / f"cls_{engine}"
        assert main(["predict", "--checkpoint", str(model), *pictures, "--out", str(out), "--engine", engine,
                     "--precision", "fp32"]) == 0
        found[engine] = np.array([[float(r[name]) for name in FINDINGS] for r in _rows(out / "predictions.csv")])
    for engine in ENGINES[1:]:
        assert np.abs(found[engine] - found["torch"]).max() <= 1e-3, engine
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(model), pictures[0], "--out", str(work / "cam_ov"), "--engine",
                 "openvino", "--cam"]) == 2
    assert capsys.readouterr().err.strip().endswith("--engine openvino: Grad-CAM (--cam) needs PyTorch's gradients; "
                                                    "use --engine torch")
    # the default engine (auto) falls back to torch where the options need it
    assert main(["predict", "--checkpoint", str(model), pictures[0], "--out", str(work / "cam_auto"), "--cam"]) == 0


@pytest.fixture(scope="module")
def trained_segmenter(work) -> tuple[Path, Path]:
    data = DATASETS.get("brats")().synth(work / "brats6", cases=6, seed=2, shape=(32, 32, 24))
    run = work / "seg_run"
    assert main(["train", "segmentation", "--data", str(data), "--profile", "cpu-small", "--out", str(run),
                 "trainer.max_epochs=1", "model.init_filters=16", "infer.roi_size=[32,32,24]", *QUIET]) == 0
    return data, run / "checkpoints" / "last.pt"


@pytest.mark.parametrize("method", ["int8", "bf16", "prune"])
def test_compressed_checkpoints_carry_their_measured_cost_and_run(trained_segmenter, work, method, capsys):
    data, source = trained_segmenter
    out = work / f"seg_{method}.pt"
    assert main(["compress", "--checkpoint", str(source), "--method", method, "--out", str(out), "--data", str(data),
                 "--samples", "8", *(["--finetune-epochs", "1"] if method == "prune" else [])]) == 0
    state = checkpoint.load(out)
    label = state["compression"]
    assert label["method"] == method and set(label["before"]["metrics"]) == set(label["after"]["metrics"])
    assert "mean_dice" in label["metric_change"] and label["after"]["cases"] == label["before"]["cases"] > 0
    assert json.loads((work / f"seg_{method}.pt.compression.json").read_text()) == label
    original = checkpoint.load(source)
    fp32 = sum(t.numel() * 4 for t in original["model"].values() if torch.is_floating_point(t))
    assert 0.99 * fp32 <= label["fp32_weights_bytes"] <= 1.01 * fp32 + 1e4, "the source's weights, before any pruning"
    if method == "int8":
        assert state["engine"]["kind"] == "openvino" and "model" not in state
        capsys.readouterr()
        assert main(["export", "--checkpoint", str(out), "--format", "onnx", "--out", str(work / "x.onnx")]) == 2
        assert "holds a compressed openvino model (medsight compress), not torch weights" in capsys.readouterr().err
    elif method == "bf16":
        assert all(t.dtype == torch.bfloat16 for t in state["model"].values() if torch.is_floating_point(t))
        assert label["size_ratio"] < 0.6
    else:
        pruned = state["task_state"]["pruned"]
        assert pruned["shapes"], "some tensors are thinner"
        count = sum(t.numel() for t in state["model"].values())
        assert count < 0.8 * sum(t.numel() for t in original["model"].values())
        # a fine-tune from the pruned checkpoint keeps the thin network
        assert main(["train", "segmentation", "--data", str(data), "--profile", "cpu-small", "--init-weights", str(out),
                     "--out", str(work / "again"), "trainer.max_epochs=1", "infer.roi_size=[32,32,24]", *QUIET]) == 0
        again = checkpoint.load(work / "again" / "checkpoints" / "last.pt")
        assert sum(t.numel() for t in again["model"].values()) == count
    case = next(p for p in data.iterdir() if p.is_dir())
    assert main(["predict", "--checkpoint", str(out), str(case), "--out", str(work / f"pred_{method}")]) == 0
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--out", str(work / f"eval_{method}")]) == 0
    assert main(["info", "--checkpoint", str(out)]) == 0
    assert f"compressed ({method})" in capsys.readouterr().out


def test_onnx_export_works_after_the_readme_install(work):
    model = random_checkpoint("segmentation", work / "seg_export.pt", "model.init_filters=8")
    assert main(["export", "--checkpoint", str(model), "--format", "onnx", "--out", str(work / "seg.onnx")]) == 0
    import onnx

    onnx.checker.check_model(onnx.load(str(work / "seg.onnx")))


@pytest.mark.parametrize("kind", ["openvino", "onnxruntime"])
def test_a_converted_engine_is_cached_by_its_weights(tmp_path, monkeypatch, kind):
    from monai.networks.nets import SegResNet

    from medsight.inference import engines
    monkeypatch.setenv("MEDSIGHT_ENGINE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    network = SegResNet(spatial_dims=3, init_filters=8, in_channels=2, out_channels=3).eval()
    spec = engines.NetworkInput(torch.randn(1, 2, 16, 16, 16))
    x = torch.randn(2, 2, 16, 16, 16)
    first = engines.build(kind, network, spec, "fp32")(x)
    def engine_files():  # (OpenVINO also keeps its compiled models, in a folder of its own)
        return sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_file())

    cached = engine_files()
    assert len(cached) == (2 if kind == "openvino" else 1) and not any("tmp" in n for n in cached)
    assert (tmp_path / "cache" / "compiled").is_dir() == (kind == "openvino")
    again = engines.build(kind, network, spec, "fp32")(x)  # read back: same files, same outputs
    assert engine_files() == cached
    assert torch.equal(first, again)
    with torch.no_grad():
        network.conv_final[-1].conv.bias.add_(1.0)  # other weights: another engine, never the stale one
    changed = engines.build(kind, network, spec, "fp32")(x)
    assert len(engine_files()) == 2 * len(cached)
    assert (changed - first).abs().max() > 0.5
    torch.testing.assert_close(changed, network(x), atol=1e-4, rtol=1e-4)
    monkeypatch.setenv("MEDSIGHT_ENGINE_CACHE", "off")
    assert engines.cache_folder() is None


def test_int8_of_a_gray_picture_model_keeps_its_single_channel_convolution_in_float(work):
    """OpenVINO's CPU plugin has no int8 kernel for a convolution with one input channel (a gray X-ray's
    first layer): compress keeps it in float, and the int8 model compiles and predicts."""
    data = DATASETS.get("chestxray14")().synth(work / "cxr_int8", cases=24, seed=4, size=48)
    model = random_checkpoint("classification", work / "cls_gray.pt", "model.name=simple_cnn", "data.image_size=48",
                              state={"labels": list(FINDINGS), "multi_label": True, "thresholds": [0.5] * 14})
    out = work / "cls_gray_int8.pt"
    assert main(["compress", "--checkpoint", str(model), "--method", "int8", "--out", str(out), "--data", str(data),
                 "--split", "all", "--samples", "8"]) == 0
    label = checkpoint.load(out)["compression"]
    assert label["after"]["engine"] == "openvino (int8)" and label["after"]["cases"] == label["before"]["cases"]
    picture = str(next(data.rglob("*.png")))
    assert main(["predict", "--checkpoint", str(out), picture, "--out", str(work / "cls_gray_pred")]) == 0


def test_a_damaged_engine_cache_entry_is_converted_again(tmp_path, monkeypatch):
    from monai.networks.nets import SegResNet

    from medsight.inference import engines
    monkeypatch.setenv("MEDSIGHT_ENGINE_CACHE", str(tmp_path / "cache"))
    network = SegResNet(spatial_dims=3, init_filters=8, in_channels=1, out_channels=2).eval()
    spec = engines.NetworkInput(torch.randn(1, 1, 16, 16, 16))
    x = torch.randn(1, 1, 16, 16, 16)
    first = engines.build("openvino", network, spec, "fp32")(x)
    xml = next((tmp_path / "cache").glob("*.xml"))
    xml.write_text("<net truncated")
    torch.testing.assert_close(engines.build("openvino", network, spec, "fp32")(x), first)


def test_auto_times_the_engines_once_and_remembers_the_faster(tmp_path, monkeypatch):
    """``--engine auto`` on a CPU: PyTorch and OpenVINO are timed on the task's typical input; the faster is
    remembered in the engine cache (a second run measures nothing); with the cache off, PyTorch."""
    import json

    from monai.networks.nets import SegResNet

    from medsight.inference import engines
    monkeypatch.setenv("MEDSIGHT_ENGINE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    network = SegResNet(spatial_dims=3, init_filters=8, in_channels=2, out_channels=3).eval()
    spec, probe = engines.NetworkInput(torch.randn(1, 2, 16, 16, 16)), torch.randn(2, 2, 32, 32, 32)
    choice = engines.faster(network, spec, probe, "fp32", channels_last=False)
    notes = list((tmp_path / "cache").glob("choice-*.json"))
    assert len(notes) == 1
    note = json.loads(notes[0].read_text())
    seconds = note["seconds"]
    assert choice == note["engine"] == ("openvino" if seconds["openvino"] < engines.OPENVINO_MARGIN * seconds["torch"]
                                        else "torch")
    assert note["input"] == [2, 2, 32, 32, 32] and set(note["seconds"]) == {"torch", "openvino"}

    def no_conversion(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(engines, "build", no_conversion)
    assert engines.faster(network, spec, probe, "fp32", channels_last=False) == choice
    with pytest.raises(AssertionError):  # another precision is another measurement
        engines.faster(network, spec, probe, "bf16", channels_last=True)
