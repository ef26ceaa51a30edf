"""medsight: deep learning for chest X-rays, lung-nodule CT and brain-tumour MRI.

The Python API is what the command line calls (``medsight.train``, ``medsight.load(...).predict``, ...); its
names are imported on first use, so ``import medsight`` stays light. Importing medsight has one side effect:
torchvision, whenever something first imports it, is made importable with a CPU-only torch (``_compat``).
"""

from medsight._compat import make_torchvision_importable_on_first_import
from medsight.core.version import __version__
from medsight.errors import CheckpointError, ConfigError, DataError, MedsightError, TaskError, TrainingError

make_torchvision_importable_on_first_import()

#: public name -> the module that defines it (imported when the name is first used)
_API = {
    "train": "medsight.training.run", "Run": "medsight.training.run",
    "cross_validate": "medsight.training.cv", "CrossValidation": "medsight.training.cv",
    "find_best_configuration": "medsight.training.configurations",
    "ensemble": "medsight.inference.ensemble",
    "load": "medsight.inference.model", "Model": "medsight.inference.model", "export": "medsight.inference.model",
    "Predictions": "medsight.inference.model", "Evaluation": "medsight.inference.model",
    "PredictionReport": "medsight.inference.predict", "Result": "medsight.task",
    "import_model": "medsight.sources.importers", "compress": "medsight.compression.compress",
    "serve": "medsight.serve.server", "Server": "medsight.serve.server",
    "check_data": "medsight.data.check", "fingerprint": "medsight.planning.plans", "synthesize": "medsight.data",
}


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'medsight' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


__all__ = ["CheckpointError", "ConfigError", "DataError", "MedsightError", "TaskError", "TrainingError",
           "__version__", *_API]
