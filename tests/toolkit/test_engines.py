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

from medsight.io import checkpoint
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
                 "trainer.max_epochs=1", "model.init_filters=16", "infer.roi_size=[32,32,24]",
                 "data.patch_size=[32,32,24]", "data.patches_per_case=1", *QUIET]) == 0
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
        pruned = state["structure"]
        assert pruned["shapes"], "some tensors are thinner"
        count = sum(t.numel() for t in state["model"].values())
        assert count < 0.8 * sum(t.numel() for t in original["model"].values())
        # a fine-tune from the pruned checkpoint keeps the thin network
        assert main(["train", "segmentation", "--data", str(data), "--profile", "cpu-small", "--init-weights", str(out),
                     "--out", str(work / "again"), "trainer.max_epochs=1", "infer.roi_size=[32,32,24]",
                     "data.patch_size=[32,32,24]", "data.patches_per_case=1", *QUIET]) == 0
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


def test_seconds_per_call_is_the_mean_of_three_calls_after_two_warm_ups_at_our_thread_count():
    import time

    from medsight.inference import engines
    calls, threads = [], []

    def run(x):  # 200 ms the first two calls (kernels being built), 20 ms after
        calls.append(x)
        threads.append(torch.get_num_threads())
        time.sleep(0.2 if len(calls) <= 2 else 0.02)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seconds = engines.seconds_per_call(run, torch.zeros(1))
    finally:
        torch.set_num_threads(before)
    assert len(calls) == 5 and threads == [2] * 5
    assert 0.02 <= seconds < 0.06, "the warm-up calls (0.2 s) are not timed"


def _fake_engines(monkeypatch, tmp_path, openvino_seconds: float, torch_seconds: float = 1.0,
                  channels_last_seconds: float = 1.0, onnxruntime_seconds: float = 2.0) -> list[str]:
    """``faster`` with the engines' conversion skipped and fixed timings; returns the candidates timed, in order
    (PyTorch's second timing in one choice is its channels-last layout)."""
    from medsight.inference import engines
    monkeypatch.setenv("MEDSIGHT_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engines, "build", lambda kind, module, spec, precision: engines.EngineNetwork(
        lambda array: [array], kind, precision))
    timed = []

    def seconds_per_call(run, probe):
        kind = run.kind if isinstance(run, engines.EngineNetwork) else "torch"
        if kind == "torch" and timed[-1:] == ["torch"]:
            kind = "torch+channels_last"
        timed.append(kind)
        return {"torch": torch_seconds, "torch+channels_last": channels_last_seconds, "openvino": openvino_seconds,
                "onnxruntime": onnxruntime_seconds}[kind]

    monkeypatch.setattr(engines, "seconds_per_call", seconds_per_call)
    return timed


def _small_network():
    from medsight.inference import engines
    torch.manual_seed(0)
    network = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    return network, engines.NetworkInput(torch.randn(1, 2, 8, 8, 8)), torch.randn(2, 2, 16, 16, 16)


@pytest.mark.parametrize("openvino_seconds, expected", [(0.85, "openvino"), (0.95, "torch"), (1.2, "torch")])
def test_auto_takes_openvino_only_when_a_call_is_at_least_10_percent_faster(tmp_path, monkeypatch,
                                                                          openvino_seconds, expected):
    from medsight.inference import engines
    timed = _fake_engines(monkeypatch, tmp_path, openvino_seconds)
    network, spec, probe = _small_network()
    assert engines.faster(network, spec, probe, "fp32", channels_last=False) == engines.EngineChoice(expected)
    assert timed == ["torch", "openvino", "onnxruntime"]
    notes = list((tmp_path / "cache").glob("choice-*.json"))
    assert len(notes) == 1
    assert json.loads(notes[0].read_text()) == {
        "engine": expected, "channels_last": False, "layout_asked": False,
        "seconds": {"torch": 1.0, "openvino": openvino_seconds, "onnxruntime": 2.0}, "input": [2, 2, 16, 16, 16],
        "precision": "fp32", "threads": torch.get_num_threads()}


@pytest.mark.parametrize("seconds, expected", [
    ({"channels_last_seconds": 0.8, "openvino_seconds": 0.85, "onnxruntime_seconds": 0.9}, ("torch", True)),
    ({"channels_last_seconds": 0.97, "openvino_seconds": 1.2}, ("torch", False)),  # within the noise: default
    ({"channels_last_seconds": 0.8, "openvino_seconds": 0.75, "onnxruntime_seconds": 0.5}, ("onnxruntime", False)),
])
def test_auto_times_both_layouts_where_the_layout_is_left_to_it_and_onnx_runtime_in_fp32(tmp_path, monkeypatch,
                                                                                        seconds, expected):
    from medsight.inference import engines
    timed = _fake_engines(monkeypatch, tmp_path, **seconds)
    network, spec, probe = _small_network()
    assert engines.faster(network, spec, probe, "fp32", channels_last=None) == engines.EngineChoice(*expected)
    assert timed == ["torch", "torch+channels_last", "openvino", "onnxruntime"]
    _fake_engines(monkeypatch, tmp_path / "bf16", **seconds)
    assert engines.faster(network, spec, probe, "bf16", channels_last=True).engine in ("torch", "openvino")


def test_auto_remembers_its_choice_per_precision_and_measures_a_damaged_note_again(tmp_path, monkeypatch):
    from medsight.inference import engines
    timed = _fake_engines(monkeypatch, tmp_path, openvino_seconds=0.5)
    network, spec, probe = _small_network()
    assert engines.faster(network, spec, probe, "fp32", channels_last=False).engine == "openvino"
    assert engines.faster(network, spec, probe, "fp32", channels_last=False).engine == "openvino"
    assert timed == ["torch", "openvino", "onnxruntime"], "the second run reads the note and measures nothing"
    assert engines.faster(network, spec, probe, "bf16", channels_last=True).engine == "openvino"
    assert timed[3:] == ["torch", "openvino"], "another precision and layout is another measurement (no ONNX " \
        "Runtime in bf16: its CPU provider runs fp32)"
    for note in (tmp_path / "cache").glob("choice-*.json"):
        note.write_text('{"engi')
    _fake_engines(monkeypatch, tmp_path, openvino_seconds=2.0)  # measured again: now PyTorch is faster
    assert engines.faster(network, spec, probe, "fp32", channels_last=False) == engines.EngineChoice("torch")


def test_auto_runs_pytorch_when_the_engine_cache_is_off(work, tmp_path, monkeypatch):
    """``--engine auto`` on a CPU with MEDSIGHT_ENGINE_CACHE=off: PyTorch, nothing timed, nothing converted (each
    run would pay the conversion). With the cache on, the same command goes to the timing."""
    from medsight.inference import engines

    class Timed(Exception):
        pass

    def timed(*args, **kwargs):
        raise Timed

    data = DATASETS.get("chestxray14")().synth(work / "cxr_auto", cases=2, seed=1, size=32)
    picture = str(next(data.rglob("*.png")))
    model = random_checkpoint("classification", work / "cls_auto.pt", "model.name=simple_cnn", "data.image_size=32",
                              state={"labels": list(FINDINGS), "multi_label": True, "thresholds": [0.5] * 14})
    monkeypatch.setattr(engines, "faster", timed)
    monkeypatch.setattr(engines, "build", timed)
    command = ["predict", "--checkpoint", str(model), picture, "--device", "cpu", "--engine", "auto"]
    monkeypatch.setenv("MEDSIGHT_ENGINE_CACHE", "off")
    assert main([*command, "--out", str(tmp_path / "off")]) == 0
    assert len(_rows(tmp_path / "off" / "predictions.csv")) == 1
    monkeypatch.setenv("MEDSIGHT_ENGINE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(Timed):
        main([*command, "--out", str(tmp_path / "on")])


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_and_the_engine_choice_follow_the_cpus_bf16(native, tmp_path, monkeypatch):
    """Where bf16 is emulated (AVX2 only: ~100x slower) predict runs fp32 and asks the engine choice about fp32;
    where it is native, bf16 with channels-last."""
    import medsight
    from medsight.core import runtime
    from medsight.inference import engines

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    asked = []
    monkeypatch.setattr(engines, "faster", lambda module, spec, probe, precision, channels_last:
                        asked.append((precision, channels_last)) or engines.EngineChoice("torch", bool(channels_last)))
    monkeypatch.setattr(engines, "installed", lambda name: True)
    model = medsight.load(random_checkpoint("segmentation", tmp_path / "seg.pt", "model.init_filters=8"))
    task = model.configured()
    execution = model.execution(task, "predict")
    expected = "bf16" if native else "fp32"
    assert execution.runtime.precision == expected and execution.engine == "torch"
    # auto: channels-last with bf16's rounding; in the fp32 that precision auto chose, left to the engine choice
    assert asked == [(expected, True if native else None)]
    assert execution.runtime.channels_last is native
    assert model.execution(task, "predict", precision="fp32").runtime.precision == "fp32"
