"""The teacher of knowledge distillation (``loss.distill_from``): a classification checkpoint, loaded frozen
for inference, after checking that it reads pictures prepared as this run prepares them and answers with
the same labels in the same order."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from medsight.io import checkpoint
from medsight.errors import ConfigError
from medsight.tasks.classification.config import ClassificationConfig
from medsight.tasks.classification.labels import LabelSet

#: how a picture becomes the network's input: the teacher gets the student's batches, so these must agree
INPUT_SETTINGS = ("image_size", "channels", "normalize", "intensity_percentiles")


def load_teacher(path: str | Path, config: ClassificationConfig, labels: LabelSet) -> nn.Module:
    """The teacher's network (its EMA weights when its run kept them) in eval mode with no gradients, on the
    CPU in float32; ConfigError when it cannot stand in for this run's model on this run's pictures."""
    from medsight.inference.model import Model

    where = f"loss.distill_from={path}"
    if not Path(path).is_file():
        raise ConfigError("no such teacher checkpoint", where)
    loaded = Model(checkpoint.load(path, task="classification"), Path(path), engine="torch")
    if loaded.torch_model is None:
        raise ConfigError(f"the teacher holds a compressed {loaded.carried['kind']} model: distil from the "
                          "checkpoint it came from", where)
    theirs, ours = loaded.task.config.data, config.data
    for key in INPUT_SETTINGS:
        if getattr(theirs, key) != getattr(ours, key):
            raise ConfigError(f"the teacher was trained with data.{key}={getattr(theirs, key)}, this run has "
                              f"data.{key}={getattr(ours, key)}: set data.{key}={getattr(theirs, key)} so that it "
                              "sees pictures prepared as it was trained", where)
    taught = loaded.task.labels
    if list(taught.names) != list(labels.names) or taught.multi_label != labels.multi_label:
        raise ConfigError(f"the teacher's labels ({', '.join(taught.names)}) are not this run's "
                          f"({', '.join(labels.names)})", where)
    return loaded.torch_model.float().eval().requires_grad_(False)
