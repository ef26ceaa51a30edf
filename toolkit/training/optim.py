"""Optimizer and learning-rate schedule from ``optim.*``: PyTorch's own classes, nothing home-made."""

from __future__ import annotations

import math

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


class BudgetSchedule:
    """The learning-rate factor of a run bounded by time (``trainer.max_minutes``): the schedule's shape
    (linear warm-up, then cosine, poly, step or constant) laid over ``planned`` optimizer steps, the steps
    the budget allows at the measured seconds per step (``replan``, at each epoch's end), instead of over
    ``max_epochs``, which a time-bounded run never reaches (100000 epochs: a constant learning rate). A
    callable object, so ``LambdaLR`` saves ``planned`` in the checkpoint and a resumed run keeps its plan."""

    def __init__(self, cfg, steps_per_epoch: int, max_steps: int):
        self.shape, self.min_ratio = cfg.scheduler, (cfg.min_lr / cfg.lr if cfg.lr else 0.0)
        self.power, self.gamma, self.step_size = cfg.poly_power, cfg.gamma, max(1, cfg.step_epochs * steps_per_epoch)
        self.max_steps = self.planned = max(1, max_steps)
        self.warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), self.max_steps - 1)

    def replan(self, done: int, seconds_per_step: float, seconds_left: float) -> int:
        """Steps in all: those done and those the remaining seconds allow (at least one more)."""
        if seconds_per_step > 0:
            self.planned = int(min(self.max_steps, done + max(1, round(seconds_left / seconds_per_step))))
        return self.planned

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        t = min(1.0, (step - self.warmup) / max(1, self.planned - self.warmup))
        if self.shape == "cosine":
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        if self.shape == "poly":
            return (1 - t) ** self.power
        if self.shape == "step":
            return self.gamma ** ((step - self.warmup) // self.step_size)
        return 1.0


def build_scheduler(optimizer, cfg, steps_per_epoch: int, max_epochs: int, budget: bool = False):
    """Per optimizer step: linear warm-up, then cosine, poly or step decay (PyTorch's schedulers); ``budget``
    (a run bounded by time): the same shapes over the steps the time allows (``BudgetSchedule``)."""
    from torch.optim import lr_scheduler as S

    if budget:
        return S.LambdaLR(optimizer, BudgetSchedule(cfg, steps_per_epoch, steps_per_epoch * max_epochs))
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
