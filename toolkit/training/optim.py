"""Optimizer and learning-rate schedule from ``optim.*``: PyTorch's own classes, nothing home-made."""

from __future__ import annotations

import torch


def build_optimizer(model: torch.nn.Module, cfg, pretrained: set[str] | None = None) -> torch.optim.Optimizer:
    """AdamW or SGD; ``pretrained`` (parameter names loaded from starting weights) get
    ``optim.pretrained_lr_factor`` times the learning rate, in a group of their own."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if pretrained and cfg.pretrained_lr_factor != 1.0:
        params = [{"params": [p for n, p in named if n not in pretrained]},
                  {"params": [p for n, p in named if n in pretrained], "lr": cfg.lr * cfg.pretrained_lr_factor}]
        params = [group for group in params if group["params"]]
    else:
        params = [p for _, p in named]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_scheduler(optimizer, cfg, steps_per_epoch: int, max_epochs: int):
    """Per optimizer step: linear warm-up, then cosine, poly or step decay (PyTorch's schedulers)."""
    from torch.optim import lr_scheduler as S

    total = max(1, steps_per_epoch * max_epochs)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    remaining = max(1, total - warmup)
    if cfg.scheduler == "cosine":
        main = S.CosineAnnealingLR(optimizer, T_max=remaining, eta_min=cfg.min_lr)
    elif cfg.scheduler == "poly":
        main = S.PolynomialLR(optimizer, total_iters=remaining, power=cfg.poly_power)
    elif cfg.scheduler == "step":
        main = S.StepLR(optimizer, step_size=max(1, cfg.step_epochs * steps_per_epoch), gamma=cfg.gamma)
    else:
        main = S.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main
    ramp = S.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return S.SequentialLR(optimizer, schedulers=[ramp, main], milestones=[warmup])
