"""``medsight info``: versions, compute device and image reader back-ends."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from medsight.core.version import __version__
from medsight import _compat
PACKAGES = ("torch", "torchvision", "monai", "SimpleITK", "nibabel", "pydicom", "pylibjpeg",
            "segmentation-models-pytorch", "timm", "omegaconf", "numpy", "tensorboard")


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def describe() -> str:
    import torch

    from medsight.io.readers import DICOM_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, PICTURE_SUFFIXES

    lines = [f"medsight {__version__} (python {platform.python_version()}, {platform.platform()})"]
    for name in PACKAGES:
        lines.append(f"  {name:28s} {_version(name)}")
    if _compat._LIBRARY is not None:
        lines.append("  torchvision ops: compiled extension did not load; operator schemas defined by medsight "
                     "(pure-Python parts only; MONAI does its own NMS)")
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s), " \
                 f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'})"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = f"cpu ({torch.get_num_threads()} threads)"
    lines.append(f"device: {device}")
    lines.append("readers (MONAI LoadImage, chosen by suffix):")
    lines.append(f"  NIfTI      {', '.join(NIFTI_SUFFIXES):28s} nibabel (MONAI NibabelReader)")
    lines.append(f"  ITK        {', '.join(ITK_SUFFIXES):28s} SimpleITK")
    lines.append(f"  DICOM      folders, {', '.join(DICOM_SUFFIXES):19s} SimpleITK/GDCM volumes; pydicom for X-rays")
    lines.append(f"  pictures   {', '.join(PICTURE_SUFFIXES):28s} PIL (MONAI PILReader), 8/16-bit, colour -> gray")
    try:
        from pydicom.pixels import get_decoder
        from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless

        codecs = []
        for uid in (JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless):
            decoder = get_decoder(uid)
            codecs.append(f"{uid.name.split(' ')[0]} {uid.name.split('(')[0].split(' ', 1)[-1].strip()}: "
                          f"{'/'.join(decoder.available_plugins) or 'none'}")
        lines.append("pydicom decoders: " + "; ".join(codecs))
    except Exception as exc:  # informational only
        lines.append(f"pydicom decoders: unknown ({exc})")
    return "\n".join(lines)


def describe_checkpoint(path) -> str:
    """``medsight info --checkpoint C``: what a checkpoint is, where it came from, what it was trained on."""
    from medsight.io import checkpoint

    state = checkpoint.load(path)
    config = state.get("config", {})
    model = config.get("model", {})
    lines = [f"{path}: {state.get('task')} checkpoint, medsight {state.get('medsight_version', '?')}",
             f"  model: {model.get('name', '?')}" + (f"; epochs trained here: {state['epoch']}" if "epoch" in state else "")]
    task_state = state.get("task_state", {})
    for key in ("labels", "modalities", "convention"):
        if key in task_state:
            shown = task_state[key]
            lines.append(f"  {key}: {', '.join(shown) if isinstance(shown, list) else shown}")
    if task_state.get("postprocessing"):  # chosen on validation (segmentation); infer.postprocess=false: off
        plan = task_state["postprocessing"]
        lines.append("  post-processing (chosen on validation): " + ", ".join(f"{k} {v}" for k, v in plan.items()))
    best = state.get("best") or {}
    if best.get("value") is not None:
        lines.append(f"  best {best.get('metric')}: {best['value']:.4f} at epoch {best.get('epoch')}")
    trained = state.get("trained_on") or {}
    if trained:
        kind = "SYNTHETIC data only" if trained.get("synthetic") else "real data"
        where = trained.get("source") or trained.get("root") or "?"
        extra = f", format {trained['format']}" if trained.get("format") else ""
        extra += f", fingerprint {trained['fingerprint'][:16]}" if trained.get("fingerprint") else ""
        lines.append(f"  trained on: {where} ({kind}{extra})")
    started = state.get("started_from") or {}
    if started:
        lines.append(f"  started from: {started.get('path')} (sha256 {str(started.get('sha256', ''))[:16]}...)")
    engine, label = state.get("engine"), state.get("compression") or {}
    if engine:
        from medsight.inference.engines import engine_size

        size = engine_size(engine) / 1e6
        lines.append(f"  engine: {engine.get('kind')} {engine.get('precision')} ({size:.1f} MB)")
    if (state.get("structure") or {}).get("shapes"):
        lines.append(f"  pruned: {len(state['structure']['shapes'])} tensors thinner than the config's network")
    if label.get("after"):
        before, after = label["before"], label["after"]
        lines.append(f"  compressed ({label['method']}) from {label['source']}, measured on {label['data']} "
                     f"({label['split']}): size x{label['size_ratio']}"
                     + (f" (x{label['size_ratio_vs_fp32_weights']} of the fp32 weights)"
                        if label.get("size_ratio_vs_fp32_weights") else "")
                     + f", evaluate speed x{label['speed_ratio']} ({before['engine']} -> {after['engine']})")
        lines += [f"    {key}: {before['metrics'][key]:.4f} -> {after['metrics'][key]:.4f}"
                  for key in label.get("metric_change", {})]
    if state.get("ensemble"):
        from medsight.inference.ensemble import describe

        lines += [f"  {line}" for line in describe(state)]
    if task_state.get("calibration") or task_state.get("temperature"):
        from medsight.core.calibration import describe as describe_calibration, stored

        method = task_state.get("calibration_method") or "temperature"
        lines.append(f"  calibration ({method} scaling on out-of-fold predictions, sigmoid(slope z + intercept)): "
                     + describe_calibration(stored(task_state)))
    elif task_state.get("calibration_method") == "none":
        lines.append("  calibration: none (no map fitted on out-of-fold predictions beat them cross-fitted)")
    provenance = state.get("provenance")
    if provenance:
        lines.append("  provenance:")
        lines += [f"    {line}" for line in describe_provenance(provenance)]
    return "\n".join(lines)


def describe_provenance(provenance: dict | None) -> list[str]:
    """Lines for people: where a checkpoint came from."""
    if not provenance:
        return []
    keys = (("source", "source"), ("version", "version"), ("licence", "licence"),
            ("published_metrics", "published"), ("applies_to", "applies to"), ("imported_from", "imported from"),
            ("sha256", "sha256"), ("imported_at", "imported"))
    lines = []
    for key, label in keys:
        value = provenance.get(key)
        if value in (None, "", {}):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        lines.append(f"{label}: {value}")
    return lines
