"""medsight.inference.export: one exporter for every task. ONNX has a dynamic batch (and dynamic spatial axes
where the task runs on varying sizes) and names every output; both formats are checked against the eager module
before the file is written, and a file that disagrees is refused with nothing left behind."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

from medsight.core.config import resolve
from medsight.core.registry import TASKS
from medsight.datasets.chestxray14 import FINDINGS
from medsight.errors import MedsightError
from medsight.inference import engines
from medsight.inference.export import export_network

#: a small model of each task (cpu-small profile): overrides, learnt task state, the spatial axes ONNX leaves free
SMALL = {
    "classification": (["model.name=simple_cnn", "data.image_size=48"],
                       {"labels": list(FINDINGS), "multi_label": True, "thresholds": [0.5] * 14}, False),
    "detection": ([], {}, True),
    "segmentation": (["model.init_filters=8", "infer.roi_size=[32,32,16]"], {}, True),
}


def small(name: str):
    """(task, model) of ``name``, weights seeded."""
    overrides, state, _ = SMALL[name]
    task_class = TASKS.get(name)
    task = task_class(resolve(task_class.config_class, profile=task_class.profiles["cpu-small"], overrides=overrides))
    task.load_state_dict(state)
    task.learning = False
    torch.manual_seed(0)
    return task, task.build_model().eval()


def _eager(task, model, batch: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = task.export_module(model).float().eval()(batch)
    return [out] if isinstance(out, torch.Tensor) else list(out)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_onnx_export_has_a_dynamic_batch_and_every_output_named(tmp_path, name):
    task, model = small(name)
    path = export_network(task, model, "onnx", tmp_path / f"{name}.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))
    example = task.network_input().example
    batch = torch.cat([example, torch.rand(example.shape, generator=torch.Generator().manual_seed(1))])
    expected = _eager(task, model, batch)
    assert [o.name for o in graph.output] == [f"output_{i}" for i in range(len(expected))]
    if name == "detection":  # class and box maps of the three pyramid levels
        assert len(expected) == 6
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    dynamic_spatial = SMALL[name][2]
    assert all(bool(d.dim_param) == dynamic_spatial for d in dims[2:]), [str(d) for d in dims]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": batch.numpy()})  # batch 2 through a file exported at batch 1
    for want, have in zip(expected, got, strict=True):
        assert have.shape == tuple(want.shape) and want.shape[0] == 2
        torch.testing.assert_close(torch.from_numpy(have), want, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", ["classification", "segmentation"])
def test_torchscript_export_gives_the_eager_outputs(tmp_path, name):
    task, model = small(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = export_network(task, model, "torchscript", tmp_path / "model.ts")
    example = task.network_input().example
    with torch.inference_mode():
        got = torch.jit.load(str(path))(example)
    torch.testing.assert_close(got, _eager(task, model, example)[0], atol=1e-4, rtol=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the model is left as it was"


def _shifted(outputs, index: int, by: float):
    """``outputs`` with output ``index`` moved by ``by`` (as a broken exporter might give)."""
    return [o + by if i == index else o for i, o in enumerate(outputs)]


def test_an_onnx_file_that_disagrees_with_the_eager_module_is_refused_and_not_written(tmp_path, monkeypatch):
    task, model = small("detection")
    real = engines.onnxruntime_runner

    def drifting(data: bytes):
        run = real(data)
        return lambda array: _shifted(run(array), 3, 0.01)

    monkeypatch.setattr(engines, "onnxruntime_runner", drifting)
    out = tmp_path / "models" / "detector.onnx"
    with pytest.raises(MedsightError) as refused:
        export_network(task, model, "onnx", out)
    message = str(refused.value)
    assert message.startswith(f"{out}: the exported onnx model disagrees with the eager module on the task's example "
                              "input: output 3 differs by up to 0.01 (allowed: 0.0001 + 0.001 x |value|)"), message
    assert message.endswith("nothing was written")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_a_torchscript_file_that_disagrees_is_refused_and_a_missing_output_too(tmp_path, monkeypatch):
    task, model = small("classification")
    real = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda f: (lambda x: real(f)(x) * 1.01 + 0.001))
    out = tmp_path / "model.ts"
    with pytest.raises(MedsightError, match=r"the exported torchscript model disagrees .*: output 0 differs by up to"):
        export_network(task, model, "torchscript", out)
    def twice(f):
        loaded = real(f)
        return lambda x: (loaded(x), loaded(x))

    monkeypatch.setattr(torch.jit, "load", twice)
    with pytest.raises(MedsightError, match=r"the exported torchscript model gives 2 output\(s\), the eager module 1"):
        export_network(task, model, "torchscript", out)
    with pytest.raises(MedsightError, match=r"unknown export format 'tflite' \(torchscript or onnx\)"):
        export_network(task, model, "tflite", out)
    assert list(tmp_path.iterdir()) == []
