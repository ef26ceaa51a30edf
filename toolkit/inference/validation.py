"""Validation (and ``medsight evaluate``): a task's ``validation_step`` over a dataset, gathered over ranks."""

from __future__ import annotations

import logging
from collections import defaultdict

import torch

from medsight.core.config import TaskConfig
from medsight.data.loading import SKIPPED, make_loader
from medsight.core.progress import progress as progress_display
from medsight.core.runtime import Runtime
from medsight.task import Task


def run_validation(task: Task, model: torch.nn.Module, dataset, config: TaskConfig, runtime: Runtime,
                   desc: str = "validation") -> dict[str, list]:
    """Run ``task.validation_step`` over a dataset (this rank's part) and gather the outputs of all ranks."""
    loader = make_loader(dataset, config.data, config.data.val_batch_size, shuffle=False, seed=0,
                         collate_fn=task.collate_fn("val"))
    outputs: dict[str, list] = defaultdict(list)
    was_training = model.training
    model.eval()
    display = progress_display(len(loader), desc, config.trainer.progress, unit="batch", enabled=runtime.is_main)
    with torch.inference_mode():
        for batch in loader:
            if isinstance(batch, dict) and SKIPPED in batch:  # data.on_error=skip
                skipped = batch.pop(SKIPPED)
                logging.getLogger(__name__).warning(f"warning: {len(skipped)} record(s) skipped: {skipped[0]}")
                if not batch:
                    display.update(1)
                    continue
            batch = runtime.to_device(batch, not task.windowed)
            with runtime.autocast():
                result = task.validation_step(model, batch)
            for key, values in result.items():
                outputs[key].extend(values)
            display.update(1)
    display.close()
    model.train(was_training)
    merged: dict[str, list] = defaultdict(list)
    for part in runtime.gather(dict(outputs)):
        for key, values in part.items():
            merged[key].extend(values)
    return dict(merged)
