"""Checkpoints written by earlier releases keep loading: format 1 (before the Python API) kept a pruned network's
structure in the task state and wrote a ``sampler`` entry; today's reader upgrades it. The test writes such a
file itself, in format 1's exact layout."""

import io

import numpy as np
import torch

import medsight
from medsight.compression.pruning import prune
from medsight.core.config import resolve, to_dict
from medsight.core.registry import TASKS
from medsight.io import checkpoint


def format_one_checkpoint(path, pruned: bool):
    """A segmentation checkpoint as medsight-checkpoint/1 wrote it (the keys of that release's run_state)."""
    task_class = TASKS.get("segmentation")
    config = resolve(task_class.config_class, profile=task_class.profiles["cpu-small"],
                     overrides=["model.init_filters=16", "infer.roi_size=[32,32,32]", "data.modalities=[flair]"])
    task = task_class(config)
    task.state = {"convention": "brats2021", "modalities": ["flair"], "spacing_mm": [1.0, 1.0, 1.0]}
    torch.manual_seed(0)
    model = task.build_model()
    task_state = dict(task.state)
    if pruned:
        task_state["pruned"] = prune(task, model, 0.5)
    state = {"format": "medsight-checkpoint/1", "medsight_version": "0.1.0", "task": "segmentation",
             "config": to_dict(config), "data": "/gone", "data_format": "brats", "trained_on": None,
             "started_from": None, "task_state": task_state, "model": model.state_dict(), "ema": None, "epoch": 1,
             "step_in_epoch": 0, "global_step": 3, "progress": {"epoch": 1, "global_step": 3},
             "sampler": {"seed": 0, "epoch": 1, "batches_done": 0, "world_size": 1}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getvalue())
    return path, model


def test_a_format_one_checkpoint_loads_as_format_two(tmp_path):
    path, _ = format_one_checkpoint(tmp_path / "old.pt", pruned=False)
    state = checkpoint.load(path)
    assert state["format"] == checkpoint.FORMAT == "medsight-checkpoint/2"
    assert "sampler" not in state and state.get("structure") is None


def test_a_pruned_format_one_checkpoint_rebuilds_its_thin_network_and_predicts(tmp_path):
    path, model = format_one_checkpoint(tmp_path / "old_pruned.pt", pruned=True)
    state = checkpoint.load(path)
    assert "pruned" not in state["task_state"] and state["structure"]["shapes"]
    loaded = medsight.load(path, engine="torch")
    thin = dict(loaded.torch_model.state_dict())
    assert {k: tuple(v.shape) for k, v in thin.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    volume = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    result = loaded.predict({"flair": volume}, affine=np.eye(4))
    assert result.labels.shape == (32, 32, 32)
