"""Structured pruning (``medsight compress --method prune``) and the pruned network's structure.

torch-pruning removes whole channels (the ``amount`` fraction of each prunable convolution's output
channels with the smallest L2 norm) and every channel that depends on them, so the network gets thinner,
not sparse: fewer FLOPs in every engine. Layers that produce the model's outputs keep their channels (found
by running the network once: the leaf modules whose output tensors are the outputs), and channel counts are
rounded to a multiple of every GroupNorm's group count (SegResNet: 8), so the groups stay whole.

A pruned network cannot be rebuilt from the config alone, so its structure travels in the task's learnt
state (``task_state["pruned"]``: changed integer attributes and tensor shapes, plain numbers that load
weights-only). ``build_model`` applies it to a freshly built network; ``train --init-weights PRUNED.pt``
inherits it (a fine-tune keeps the thin network), and resume, evaluate, predict and export read it back.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

STATE_KEY = "pruned"


def output_layers(module: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The leaf modules whose outputs are ``module``'s outputs (their channels are the model's outputs)."""
    producers: dict[int, nn.Module] = {}

    def remember(layer, _inputs, output):
        if isinstance(output, torch.Tensor):
            producers[output.data_ptr()] = layer

    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [leaf.register_forward_hook(remember) for leaf in leaves]
    try:
        with torch.no_grad():
            out = module(example)
    finally:
        for hook in hooks:
            hook.remove()
    outputs = [out] if isinstance(out, torch.Tensor) else list(out)
    return [producers[o.data_ptr()] for o in outputs if o.data_ptr() in producers]


def _shape_facts(model: nn.Module) -> dict[str, dict]:
    attributes = {}
    for name, module in model.named_modules():
        ints = {k: v for k, v in vars(module).items() if not k.startswith("_") and
                (isinstance(v, int) and not isinstance(v, bool) or
                 isinstance(v, tuple) and v and all(isinstance(i, int) for i in v))}
        attributes[name] = ints
    return attributes


def structure(model: nn.Module, reference: nn.Module) -> dict:
    """What differs between the pruned ``model`` and a fresh ``reference``: integer attributes and shapes."""
    mine, theirs = _shape_facts(model), _shape_facts(reference)
    attributes = {name: {k: (list(v) if isinstance(v, tuple) else v) for k, v in facts.items()
                         if theirs.get(name, {}).get(k) != v}
                  for name, facts in mine.items()}
    own = reference.state_dict()
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()
              if name in own and tuple(own[name].shape) != tuple(tensor.shape)}
    return {"attributes": {k: v for k, v in attributes.items() if v}, "shapes": shapes}


def restore(model: nn.Module, pruned: dict) -> nn.Module:
    """Give a freshly built network the pruned structure (weights are loaded afterwards)."""
    modules = dict(model.named_modules())
    for name, attributes in pruned.get("attributes", {}).items():
        for key, value in attributes.items():
            setattr(modules[name], key, tuple(value) if isinstance(value, list) else value)
    for name, shape in pruned.get("shapes", {}).items():
        owner, _, leaf = name.rpartition(".")
        module = modules[owner]
        tensor = getattr(module, leaf)
        replacement = torch.zeros(shape, dtype=tensor.dtype)
        if isinstance(tensor, nn.Parameter):
            setattr(module, leaf, nn.Parameter(replacement, requires_grad=tensor.requires_grad))
        else:
            module.register_buffer(leaf, replacement)
    return model


def build_model(task) -> nn.Module:
    """``task.build_model()``, with the pruned structure of the task's learnt state applied."""
    model = task.build_model()
    pruned = task.state.get(STATE_KEY)
    return restore(model, pruned) if pruned else model


def inherit_structure(task, weights: str | Path) -> None:
    """A run started from a pruned checkpoint builds the pruned network (called before ``build_model``)."""
    try:
        state = torch.load(weights, map_location="meta", weights_only=True)
    except Exception:  # not a medsight checkpoint, or unreadable: the weights loader says why
        return
    pruned = isinstance(state, dict) and (state.get("task_state") or {}).get(STATE_KEY)
    if pruned:
        task.state[STATE_KEY] = pruned
        log.info(f"the starting weights are a pruned network: {len(pruned.get('shapes', {}))} tensors thinner")


def prune(task, model: nn.Module, amount: float) -> dict:
    """Remove ``amount`` of the channels of ``model`` in place; returns its structure."""
    import torch_pruning as tp

    if not 0 < amount < 1:
        from medsight.errors import ConfigError

        raise ConfigError(f"--amount must be between 0 and 1, got {amount}", "command line")
    network = task.export_module(model).float().eval()
    example = task.network_input().example
    before = sum(p.numel() for p in model.parameters())
    groups = [m.num_groups for m in network.modules() if isinstance(m, nn.GroupNorm)]
    pruner = tp.pruner.MagnitudePruner(network, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=amount, ignored_layers=output_layers(network, example),
                                       round_to=math.lcm(*groups) if groups else None)
    pruner.step()
    after = sum(p.numel() for p in model.parameters())
    log.info(f"pruned {amount:.0%} of the channels: {before / 1e6:.2f}M -> {after / 1e6:.2f}M parameters")
    return structure(model, task.build_model())
