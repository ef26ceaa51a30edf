"""One exporter: a task's network as TorchScript or ONNX, checked against the eager module before it is written.

- ``torchscript``: the task's export module traced (``torch.jit.trace``) on the task's example input.
- ``onnx``: ``medsight.inference.engines.onnx_bytes``, the export the ONNX Runtime engine runs: opset 17, the
  input named ``input``, every output named (``output_0``, ``output_1``, ...: a detector's class and box maps
  of each pyramid level), the batch axis dynamic and, where the task says so
  (``NetworkInput.dynamic_spatial``: a detector on whole scans, a segmenter's window), the spatial axes too.

Either file is read back and run on the task's example input (TorchScript by ``torch.jit.load``, ONNX by ONNX
Runtime) and every output compared with the eager module's (``ATOL`` + ``RTOL`` x |value|). A mismatch is a
MedsightError naming the file and the largest difference, and nothing is written; the file that passes is
written atomically (``medsight.io.writers``), so a failed or killed export leaves no partial file.
"""

from __future__ import annotations

import copy
import importlib.util
import io
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from medsight.core.quiet import library_warnings_quiet, tracing
from medsight.errors import MedsightError
from medsight.inference import engines
from medsight.io.writers import write_bytes

if TYPE_CHECKING:
    from medsight.task import Task

FORMATS = ("torchscript", "onnx")
#: how closely an exported network must give the eager module's outputs (fp32 on the CPU)
ATOL, RTOL = 1e-4, 1e-3


def export_network(task: Task, model: nn.Module, fmt: str, out: str | Path) -> Path:
    """Write ``task.export_module(model)`` to ``out`` as ``fmt`` (torchscript or onnx), in fp32, after checking
    it gives the eager module's outputs on ``task.network_input().example``. ``model`` is left as it was."""
    out = Path(out)
    if fmt not in FORMATS:
        raise MedsightError(f"unknown export format {fmt!r} ({' or '.join(FORMATS)})", "export")
    module = copy.deepcopy(task.export_module(model)).float().eval()  # exporting must not change the caller's
    spec = task.network_input()
    spec = engines.NetworkInput(spec.example.float(), spec.dynamic_spatial)
    with torch.inference_mode():
        expected = _flat(module(spec.example))
    data, got = _torchscript(module, spec.example) if fmt == "torchscript" else _onnx(module, spec)
    check_outputs(expected, got, f"exported {fmt} model", out)
    return write_bytes(data, out)


def _torchscript(module: nn.Module, example: torch.Tensor) -> tuple[bytes, list[torch.Tensor]]:
    """The traced module as bytes, and the outputs of those bytes loaded back."""
    with library_warnings_quiet(*tracing()):
        with torch.no_grad():
            traced = torch.jit.trace(module, example, check_trace=False)
        buffer = io.BytesIO()  # in memory first: a full disk is then an OSError at the write, not a native abort
        torch.jit.save(traced, buffer)
        data = buffer.getvalue()
        with torch.inference_mode():
            got = _flat(torch.jit.load(io.BytesIO(data))(example))
    return data, got


def _onnx(module: nn.Module, spec: engines.NetworkInput) -> tuple[bytes, list[torch.Tensor]]:
    """The module as ONNX bytes (``engines.onnx_bytes``), and what ONNX Runtime computes from them."""
    for package in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(package) is None:
            raise MedsightError(f"ONNX export needs the {package} package: pip install {package}", "export")
    data = engines.onnx_bytes(module, spec)
    run = engines.onnxruntime_runner(data)
    return data, [torch.from_numpy(output) for output in run(spec.example.numpy())]


def _flat(outputs) -> list[torch.Tensor]:
    """A network's output(s) as a flat list of tensors (one tensor, or a tuple/list of them)."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for item in outputs for t in _flat(item)]


def check_outputs(expected: list[torch.Tensor], got: list[torch.Tensor], what: str, where: str | Path) -> None:
    """MedsightError (at ``where``) unless ``got`` has ``expected``'s outputs, shapes and values (``ATOL`` +
    ``RTOL`` x |value|); the message names the output that differs most, and by how much."""
    if len(got) != len(expected):
        raise MedsightError(f"the {what} gives {len(got)} output(s), the eager module {len(expected)}; "
                            "nothing was written", where)
    worst: tuple[float, int] | None = None
    for index, (want, have) in enumerate(zip(expected, got)):
        if tuple(have.shape) != tuple(want.shape):
            raise MedsightError(f"the {what}'s output {index} has shape {tuple(have.shape)}, the eager module's "
                                f"{tuple(want.shape)}; nothing was written", where)
        have = have.to(want.dtype)
        if not torch.allclose(have, want, atol=ATOL, rtol=RTOL, equal_nan=True):
            difference = float((have - want).abs().nan_to_num(float("inf")).max())
            worst = max(worst or (difference, index), (difference, index))
    if worst is not None:
        raise MedsightError(f"the {what} disagrees with the eager module on the task's example input: output "
                            f"{worst[1]} differs by up to {worst[0]:.3g} (allowed: {ATOL:g} + {RTOL:g} x |value|); "
                            "nothing was written", where)
