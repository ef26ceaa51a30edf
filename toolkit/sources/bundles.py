"""MONAI bundles (the MONAI Model Zoo's format): reading a bundle folder or zip, and downloading one.

A bundle is ``NAME/configs/metadata.json``, ``NAME/configs/inference.json`` (or ``.yaml``),
``NAME/models/model.pt`` (a state dict) and ``NAME/docs/`` (README, licences). medsight reads the
configs as data: it takes the literal values it needs (network arguments, sliding window, transforms
and their arguments) and never evaluates the ``$expressions`` a bundle may hold.

``download_bundle`` fetches the Model Zoo's index (``model_info.json``), picks the newest version of
a bundle, downloads its zip and checks the SHA-1 the index lists before anything reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medsight.errors import DataError
from medsight.io.checkpoint import read_torch_file

MODEL_INFO_URL = "https://raw.githubusercontent.com/Project-MONAI/model-zoo/dev/models/model_info.json"
RELEASES_URL = "https://github.com/Project-MONAI/model-zoo/releases/download/hosting_storage_v1"


@dataclass
class Bundle:
    name: str
    metadata: dict
    inference: dict
    weights: dict
    licence: str = ""
    files: list[str] = field(default_factory=list)

    def transforms(self, section: str = "preprocessing") -> list[dict]:
        """The ``{"_target_": ..., ...}`` steps of a Compose section of the inference config."""
        node = self.inference.get(section) or {}
        return [t for t in node.get("transforms", []) if isinstance(t, dict)]

    def transform(self, target: str, section: str = "preprocessing") -> dict | None:
        return next((t for t in self.transforms(section) if str(t.get("_target_", "")).split(".")[-1] == target), None)


class _Source:
    """Files of a bundle in a folder or a zip, addressed by their path under the bundle's root."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            self.names = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
            self.zip = None
        elif zipfile.is_zipfile(path):
            self.zip = zipfile.ZipFile(path)
            self.names = [n for n in self.zip.namelist() if not n.endswith("/")]
        else:
            raise DataError("not a MONAI bundle (a folder or zip with configs/metadata.json)", path)

    def find(self, suffix: str) -> str | None:
        hits = sorted((n for n in self.names if n == suffix or n.endswith("/" + suffix)), key=len)
        return hits[0] if hits else None

    def read(self, name: str) -> bytes:
        return self.zip.read(name) if self.zip else (self.path / name).read_bytes()


def is_bundle(path: Path) -> bool:
    try:
        return _Source(Path(path)).find("configs/metadata.json") is not None
    except (DataError, OSError):
        return False


def _config(source: _Source, stem: str) -> dict:
    for suffix in ("json", "yaml", "yml"):
        name = source.find(f"configs/{stem}.{suffix}")
        if name:
            text = source.read(name).decode("utf-8")
            try:
                return json.loads(text) if suffix == "json" else yaml.safe_load(text)
            except (ValueError, yaml.YAMLError) as exc:
                raise DataError(f"{name} is not valid {suffix.upper()} ({str(exc).splitlines()[0]})", source.path)
    raise DataError(f"no configs/{stem}.json in this bundle", source.path)


def read_bundle(path: Path) -> Bundle:
    """A bundle's metadata, inference config, weights (``weights_only``) and licence text."""
    source = _Source(Path(path))
    metadata_name = source.find("configs/metadata.json")
    if metadata_name is None:
        raise DataError("not a MONAI bundle: no configs/metadata.json", path)
    root = metadata_name[: -len("configs/metadata.json")].rstrip("/")
    metadata = _config(source, "metadata")
    inference = _config(source, "inference")
    weights_name = source.find("models/model.pt")
    if weights_name is None:
        raise DataError("the bundle has no models/model.pt (TorchScript-only bundles are not read)", path)
    weights = _load_weights(io.BytesIO(source.read(weights_name)), Path(path) / weights_name)
    licence = "\n".join(source.read(n).decode("utf-8", "replace").strip() for n in source.names
                        if re.search(r"docs/.*licen[sc]e", n, re.IGNORECASE))
    name = metadata.get("name") or Path(root or Path(path).stem).name
    return Bundle(name=str(name), metadata=metadata, inference=inference, weights=weights, licence=licence,
                  files=source.names)


def _load_weights(buffer: io.BytesIO, where: Path) -> dict:
    import torch

    state = read_torch_file(buffer, "bundle model.pt", where=where)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # saved by MONAI's CheckpointSaver with a {"model": ...} dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError("models/model.pt holds no state dict", where)
    return dict(state)


def bundle_id(bundle: Bundle, path: Path) -> str:
    """The Model Zoo name of a bundle (``brats_mri_segmentation``): from its folder or zip name, else metadata."""
    stem = re.sub(r"_v\d+(\.\d+)*$", "", Path(path).stem if Path(path).is_file() else Path(path).name)
    return stem if stem else re.sub(r"\W+", "_", bundle.name.lower())


def bundle_provenance(bundle: Bundle, path: Path, applies_to: str, trained_on: str) -> dict:
    """What an imported checkpoint records of its bundle: name, version, licence's first line, the published
    metrics, what it applies to (``applies_to`` + the bundle's intended use) and its training data."""
    metadata = bundle.metadata
    return {"source": f"MONAI Model Zoo: {bundle_id(bundle, path)}", "version": metadata.get("version", ""),
            "licence": (bundle.licence.splitlines() or [""])[0][:200] or "see the bundle's docs/",
            "published_metrics": metadata.get("eval_metrics", {}),
            "applies_to": f"{applies_to}; {metadata.get('intended_use', '')}".strip(),
            "trained_on": metadata.get("data_source", trained_on)}


# -- download -------------------------------------------------------------------------------------
def _fetch(url: str, timeout: float = 30.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https URLs)
        return response.read()


def download_bundle(name: str, folder: Path) -> Path:
    """The newest ``name`` bundle of the Model Zoo, downloaded into ``folder`` and checked against the SHA-1
    the zoo's index lists. Offline: one line saying what to download and where to put it."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise DataError(f"{name!r} is not a Model Zoo bundle name (e.g. brats_mri_segmentation)", "command line")
    try:
        index = json.loads(_fetch(MODEL_INFO_URL))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(
            f"cannot reach the MONAI Model Zoo ({getattr(exc, 'reason', exc)}): on a machine with network access "
            f"download {RELEASES_URL}/{name}_vX.Y.Z.zip (the newest version in {MODEL_INFO_URL}), or run "
            f"`python -m monai.bundle download {name} --bundle_dir DIR`, copy it here and run "
            f"`medsight import PATH/{name}_vX.Y.Z.zip --out CKPT`", f"monai:{name}") from None
    versions = sorted((key for key in index if key.startswith(f"{name}_v")),
                      key=lambda key: [int(v) for v in re.findall(r"\d+", key.rsplit("_v", 1)[1])])
    if not versions:
        raise DataError(f"the Model Zoo lists no bundle {name!r}", f"monai:{name}")
    entry = index[versions[-1]]
    data = _fetch(entry["source"], timeout=300.0)
    digest = hashlib.sha1(data).hexdigest()  # noqa: S324 (the zoo's index lists SHA-1)
    if digest != entry.get("checksum"):
        raise DataError(f"downloaded {entry['source']} has SHA-1 {digest}, the zoo lists {entry.get('checksum')}: "
                        "refused", f"monai:{name}")
    target = Path(folder) / f"{versions[-1]}.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def value(node: Any, default: Any = None) -> Any:
    """A literal config value; ``$expressions`` and ``@references`` are not evaluated (None, or ``default``)."""
    if isinstance(node, str) and node[:1] in ("$", "@", "%"):
        return default
    return default if node is None else node
