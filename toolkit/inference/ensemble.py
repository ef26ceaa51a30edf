"""Ensembles: several checkpoints of one task predicting as one model.

An ensemble checkpoint is an ordinary medsight checkpoint (``task``, ``config``, ``task_state``) whose
``ensemble`` entry holds its members: each member's weights (or compressed engine), config, structure and
learnt state, as a standalone checkpoint would. ``task_state`` is the ensemble's own: what was chosen on the
out-of-fold predictions (thresholds, post-processing, calibration) when ``medsight cv`` wrote it, else the
first member's. ``medsight.load`` gives a ``Model`` like any other, so predict, evaluate, export, compress and
info take it.

How the members run: each member is built once (its engine, precision and layout chosen as for a single
model), and the task gets an ``Ensemble`` module where it would get its network. The task runs the members
one after another on the batch it was given (read and preprocessed once) and combines them in its own
output space: segmentation and classification average the members' (calibrated) probabilities, detection
fuses the members' boxes (``tasks/detection/boxes.py``). One member's activations are alive at a time;
``Moments`` keeps the running mean and spread, so memory is one member's plus two buffers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from medsight.errors import CheckpointError

log = logging.getLogger(__name__)

#: what an ensemble checkpoint keeps of each member
MEMBER_KEYS = ("model", "ema", "engine", "config", "structure", "task_state", "trained_on", "data", "best",
               "domain")
#: config sections a member may change: how the network is built and trained, not what it is fed or gives
FREE_SECTIONS = ("model", "trainer", "optim", "loss")


class Ensemble(nn.Module):
    """The members' networks (torch modules or engines), in order, run one after another by the task
    (``members``), which combines their outputs in its own space. It has no output of its own: averaging raw
    outputs (logits, box regressions) would be a different, wrong model."""

    def __init__(self, networks: Sequence[nn.Module]):
        super().__init__()
        self.networks = nn.ModuleList(networks)

    def forward(self, *args, **kwargs):
        raise TypeError("an Ensemble is run member by member by its task (medsight.inference.ensemble.members)")

    def __len__(self) -> int:
        return len(self.networks)

    def extra_repr(self) -> str:
        return f"members={len(self.networks)}"


def members(model: nn.Module) -> list[nn.Module]:
    """The networks a task runs: an ensemble's members, in order, or the model itself."""
    return list(model.networks) if isinstance(model, Ensemble) else [model]


class Moments:
    """Running mean and (population) standard deviation of equally shaped tensors or arrays, added one at a
    time (Welford): the ensemble's mean and the members' spread in two buffers, whatever the count. The first
    value added is kept as the mean without a copy (callers hand over fresh results) and the spread buffer
    is made at the second: one model without TTA costs nothing here."""

    def __init__(self):
        self.count, self.mean, self._m2 = 0, None, None

    def add(self, value) -> None:
        value = value.float() if isinstance(value, torch.Tensor) else value.astype("float32", copy=False)
        self.count += 1
        if self.mean is None:
            self.mean = value
            return
        if self.count == 2:  # the first value becomes a buffer of ours before it is changed in place
            self.mean = self.mean.clone() if isinstance(self.mean, torch.Tensor) else self.mean.copy()
        delta = value - self.mean
        self.mean += delta / self.count
        delta *= value - self.mean
        if self._m2 is None:
            self._m2 = delta
        else:
            self._m2 += delta

    @property
    def std(self):
        if self.mean is None:
            return None
        if self._m2 is None:
            return self.mean * 0
        variance = self._m2 / max(self.count, 1)
        return variance.clamp_min(0).sqrt() if isinstance(variance, torch.Tensor) else variance.clip(0) ** 0.5


# -- ensemble checkpoints -----------------------------------------------------------------------------------
def member_state(state: dict, index: int) -> dict:
    """Member ``index`` of an ensemble checkpoint as a standalone checkpoint state."""
    member = state["ensemble"]["members"][index]
    return {"format": state.get("format"), "task": state["task"], **{k: v for k, v in member.items()
                                                                      if k in MEMBER_KEYS}}


def member_states(state: dict) -> Iterator[dict]:
    for index in range(len(state["ensemble"]["members"])):
        yield member_state(state, index)


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in FREE_SECTIONS}


def _data_without_split(config: dict) -> dict:
    """What a member is fed, without how its training data were split (folds differ by design)."""
    data = dict(config.get("data") or {})
    for key in ("fold", "folds", "val_groups", "split_seed", "val_fraction", "test_fraction", "batch_size",
                "val_batch_size", "num_workers", "loader", "cache", "cache_rate", "cache_dir"):
        data.pop(key, None)
    return data


def check_compatible(states: Sequence[dict], paths: Sequence[str | Path]) -> None:
    """CheckpointError naming the first member that cannot join the first: another task, other inputs
    (data section, inference settings) or other outputs (label set)."""
    first, first_path = states[0], paths[0]
    for state, path in zip(states[1:], paths[1:]):
        if state.get("task") != first.get("task"):
            raise CheckpointError(f"made for task {state.get('task')!r}, the first member ({first_path}) for "
                                  f"{first.get('task')!r}", path)
        mine, theirs = state.get("config") or {}, first.get("config") or {}
        if _data_without_split(mine) != _data_without_split(theirs):
            changed = sorted(k for k in set(_data_without_split(mine)) | set(_data_without_split(theirs))
                             if _data_without_split(mine).get(k) != _data_without_split(theirs).get(k))
            raise CheckpointError(f"its inputs differ from the first member's ({first_path}): data."
                                  f"{', data.'.join(changed)}; members must be fed the same preprocessing", path)
        for key in ("labels", "convention", "modalities"):
            a, b = (state.get("task_state") or {}).get(key), (first.get("task_state") or {}).get(key)
            if a is not None and b is not None and a != b:
                raise CheckpointError(f"its {key} ({a}) differ from the first member's ({b}, {first_path})", path)


def ensemble_state(states: Sequence[dict], paths: Sequence[str | Path], *, task_state: dict | None = None,
                   extra: dict | None = None) -> dict:
    """One checkpoint state holding every member (``states``, loaded checkpoints; nested ensembles are
    flattened); ``task_state``: the ensemble's own learnt state (default: the first member's)."""
    flat_states, flat_paths = [], []
    for state, path in zip(states, paths):
        if state.get("ensemble"):
            flat_states += list(member_states(state))
            flat_paths += [f"{path}[{i}]" for i in range(len(state["ensemble"]["members"]))]
        else:
            flat_states.append(state)
            flat_paths.append(str(path))
    if len(flat_states) < 2:
        raise CheckpointError("an ensemble needs at least two members", paths[0] if paths else "ensemble")
    check_compatible(flat_states, flat_paths)
    first = flat_states[0]
    members_ = []
    for state, path in zip(flat_states, flat_paths):
        member = {k: state[k] for k in MEMBER_KEYS if state.get(k) is not None}
        if member.get("ema"):  # keep the weights inference uses, not the training state around them
            from medsight.io.checkpoint import model_weights

            member["model"] = model_weights(state)
            member.pop("ema")
        member["source"] = str(path)
        members_.append(member)
    state = {"task": first["task"], "config": first["config"],
             "task_state": dict(task_state if task_state is not None else first.get("task_state") or {}),
             "trained_on": first.get("trained_on"), "data": first.get("data"), "domain": first.get("domain"),
             "ensemble": {"members": members_}}
    state.update(extra or {})
    return {k: v for k, v in state.items() if v is not None}


def ensemble(checkpoints: Sequence[str | Path], out: str | Path, *, task_state: dict | None = None) -> Path:
    """``medsight ensemble CKPT... --out E.pt``: one checkpoint of every member, checked compatible."""
    from medsight.io import checkpoint

    paths = [checkpoint.resolve_path(p) for p in checkpoints]
    states = [checkpoint.load(p) for p in paths]
    state = ensemble_state(states, paths, task_state=task_state)
    written = checkpoint.save(state, out)
    log.info(f"ensemble of {len(state['ensemble']['members'])} {state['task']} members -> {written}")
    return written


def describe(state: dict) -> list[str]:
    """Lines for ``medsight info``: the members and what the ensemble chose."""
    lines = [f"ensemble: {len(state['ensemble']['members'])} members"]
    for index, member in enumerate(state["ensemble"]["members"]):
        kind = f"{member['engine'].get('kind')} engine" if member.get("engine") else "torch weights"
        model = (member.get("config") or {}).get("model") or {}
        lines.append(f"  {index}: {model.get('name', '?')} ({kind}) from {member.get('source', '?')}")
    return lines

