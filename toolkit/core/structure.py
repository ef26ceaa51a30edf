"""A network's structure where it differs from what its config builds: a pruned network's thinner layers.

A pruned network cannot be rebuilt from the config alone, so its structure travels in the checkpoint beside
its weights (``state["structure"]``: changed integer attributes and tensor shapes, plain numbers that load
weights-only; checkpoints of format 1 kept it in ``task_state["pruned"]``, which ``checkpoint.load`` moves).
``build_model`` applies it to a freshly built network; ``train --init-weights PRUNED.pt`` inherits it (a
fine-tune keeps the thin network), and resume, evaluate, predict and export read it back.
"""

from __future__ import annotations

import torch
from torch import nn

#: the checkpoint key of the structure
KEY = "structure"


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


def build_model(task, network_structure: dict | None = None) -> nn.Module:
    """``task.build_model()``, with ``network_structure`` (a checkpoint's ``structure``) applied when given."""
    model = task.build_model()
    return restore(model, network_structure) if network_structure else model
