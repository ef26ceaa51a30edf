"""Structured pruning (``medsight compress --method prune``) and the pruned network's structure.

torch-pruning removes whole channels (the ``amount`` fraction of each prunable convolution's output
channels with the smallest L2 norm) and every channel that depends on them, so the network gets thinner,
not sparse: fewer FLOPs in every engine. Layers that produce the model's outputs keep their channels (found
by running the network once: the leaf modules whose output tensors are the outputs), and channel counts are
rounded to a multiple of every GroupNorm's group count (SegResNet: 8), so the groups stay whole.

A pruned network cannot be rebuilt from the config alone, so its structure travels in the checkpoint beside
its weights (``medsight.core.structure``).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from medsight.core.structure import structure
from medsight.io.checkpoint import parameter_count

log = logging.getLogger(__name__)

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


def prune(task, model: nn.Module, amount: float) -> dict:
    """Remove ``amount`` of the channels of ``model`` in place; returns its structure."""
    import torch_pruning as tp

    network = task.export_module(model).float().eval()
    example = task.network_input().example
    before = parameter_count(model)
    groups = [m.num_groups for m in network.modules() if isinstance(m, nn.GroupNorm)]
    pruner = tp.pruner.MagnitudePruner(network, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=amount, ignored_layers=output_layers(network, example),
                                       round_to=math.lcm(*groups) if groups else None)
    pruner.step()
    after = parameter_count(model)
    log.info(f"pruned {amount:.0%} of the channels: {before / 1e6:.2f}M -> {after / 1e6:.2f}M parameters")
    return structure(model, task.build_model())
