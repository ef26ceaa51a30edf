"""A cache of preprocessed 2D pictures (``data.cache=pictures``): decode, gray and resize once, read at
random for almost nothing afterwards.

Why this store (``bench/loader_speed.py`` measures the alternatives on the same pictures): a picture is
kept as ``S x S`` uint8 rows appended to a flat file read through ``numpy.memmap``. Reading one is a page
copy: no decoding, no unpickling, no per-file open. PNGs re-encoded at the stored size still pay zlib;
MONAI's ``PersistentDataset`` (one ``torch.save`` file of float32 per picture) pays an open, an unpickle
and 4x the bytes; one ``.npy`` file per picture pays an open and a header parse.

Layout of ``<cache dir>/pictures-<S>px-<settings hash>/``:

- ``<shard>.u8``: the rows, appended; ``<shard>.json``: ``{key: row}`` (or ``{key: {"error": message}}``
  for a picture that cannot be read, so ``data.on_error=skip`` skips it again without re-reading).
- A picture's key is a hash of its path, size and modification time: a replaced file gets a new row, the
  rest are kept. The folder's name hashes the decode settings (readers, stored size): changing them
  starts a new folder and leaves the old one for runs that still use it.
- Each process writes its own shard (``rank<N>``, under DDP each rank caches its own partition) under a
  file lock, and reads every shard's index: a shared file system holds one cache for all ranks and runs.

Values: 8-bit pictures are stored as they are (the resize's float result rounded: at most half a gray
level). Pictures outside 0..255 (16-bit PNGs, DICOM presentation values) are scaled from their own
minimum..maximum to 0..255 first; per-picture z-scoring, the default normalisation, does not see the
difference. The same quantisation runs when a model trained on the cache predicts, so training and
prediction see the same values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from monai.transforms import MapTransform

from medsight.errors import DataError
from medsight.io.writers import write_text

log = logging.getLogger(__name__)

#: rows written between two saves of a shard's index (an interrupted build keeps what it wrote)
SAVE_EVERY = 1000


def quantise(picture: torch.Tensor) -> np.ndarray:
    """(1, S, S) float picture -> (S, S) uint8 (see the module docstring for the rule)."""
    values = torch.as_tensor(picture, dtype=torch.float32)[0]
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        values = (values - low) * (255.0 / max(high - low, 1e-12))
    return values.round_().clamp_(0, 255).to(torch.uint8).numpy()


def file_key(path: str | os.PathLike) -> str:
    """A picture's cache key: its resolved path, size and modification time."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    return hashlib.sha1(f"{resolved}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


class PictureStore:
    """uint8 ``size x size`` pictures by key, in append-only shards of one folder (see the module docstring)."""

    def __init__(self, folder: Path, size: int, shard: str | None = None):
        self.folder, self.size = Path(folder), int(size)
        self.shard = shard or f"rank{os.environ.get('RANK', '0')}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, tuple[str, int] | str] = {}  # key -> (shard, row) or an error message
        self._maps: dict[str, np.memmap] = {}
        self.reload()

    def __getstate__(self):  # worker processes open their own maps
        return {**self.__dict__, "_maps": {}}

    @property
    def row_bytes(self) -> int:
        return self.size * self.size

    def reload(self) -> None:
        """Read every shard's index (others may have been written by other ranks or runs)."""
        self.index, self._maps = {}, {}
        for path in sorted(self.folder.glob("*.json")):
            shard = path.stem
            if path.name.startswith(".") or not path.with_suffix(".u8").is_file():  # a write in flight
                continue  # rows deleted by hand: their pictures are decoded again
            try:
                entries = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # a damaged index: its pictures are decoded again
            for key, value in entries.items():
                self.index.setdefault(key, value["error"] if isinstance(value, dict) else (shard, int(value)))

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def read(self, key: str, source: str = "") -> np.ndarray:
        """The stored picture (a read-only (S, S) view); DataError for a picture that could not be read."""
        entry = self.index[key]
        if isinstance(entry, str):
            raise DataError(entry, source)
        shard, row = entry
        rows = self._maps.get(shard)
        if rows is None or row >= len(rows):
            data = self.folder / f"{shard}.u8"
            count = data.stat().st_size // self.row_bytes
            rows = self._maps[shard] = np.memmap(data, dtype=np.uint8, mode="r", shape=(count, self.size, self.size))
        return rows[row]

    def add(self, items, total: int | None = None, desc: str = "caching pictures", mode: str = "auto") -> int:
        """Append ``(key, uint8 array | error message)`` pairs to this process's shard; returns how many."""
        from medsight.core.progress import progress

        data, index_path = self.folder / f"{self.shard}.u8", self.folder / f"{self.shard}.json"
        added = 0
        with FileLock(self.folder / f"{self.shard}.lock"):  # one writer per shard, whatever else shares the folder
            own = _read_index(index_path) if data.is_file() else {}
            display = progress(total, desc, mode, unit="picture")
            try:
                with open(data, "ab") as out:
                    row = out.tell() // self.row_bytes
                    if out.tell() % self.row_bytes:  # a torn last row from a killed build: skip past it
                        row += 1
                        out.write(b"\0" * (row * self.row_bytes - out.tell()))
                    for key, value in items:
                        if isinstance(value, str):
                            own[key] = {"error": value}
                        else:
                            out.write(np.ascontiguousarray(value, dtype=np.uint8).tobytes())
                            own[key] = row
                            row += 1
                        added += 1
                        display.update(1)
                        if added % SAVE_EVERY == 0:
                            out.flush()
                            write_text(json.dumps(own), index_path)  # readers see the old index or the new one
                    out.flush()
                write_text(json.dumps(own), index_path)  # readers see the old index or the new one
            finally:
                display.close()
        self.reload()
        return added


def _read_index(path: Path) -> dict:
    """A shard's index; empty when missing or damaged (its rows are then unreferenced and rebuilt)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class CachedPicturesd(MapTransform):
    """``data[key]`` (a picture's path) -> its (1, S, S) uint8 picture: from the store once ``attach``-ed and
    built, else decoded by ``prepare`` and quantised the same way (prediction, evaluation)."""

    def __init__(self, keys, prepare: Callable, size: int):
        super().__init__(keys)
        self.prepare_steps, self.size = prepare, int(size)
        self.store: PictureStore | None = None
        self._keys: dict[str, str] = {}  # path -> key, as of the last build (no stat per read)

    def settings(self) -> str:
        """The hash of what a stored row depends on besides its file: decode steps, size, quantisation."""
        from medsight.data.keys import transform_hash

        steps = getattr(self.prepare_steps, "transforms", [self.prepare_steps])
        return hashlib.sha256(transform_hash(steps) + f"{self.size}:uint8:v1".encode()).hexdigest()[:12]

    def decode(self, path: str) -> np.ndarray:
        picture = self.prepare_steps({"image": path})["image"]
        return quantise(picture)

    def attach(self, cache_dir: Path) -> PictureStore:
        self.store = PictureStore(Path(cache_dir) / f"pictures-{self.size}px-{self.settings()}", self.size)
        return self.store

    def build(self, paths: list[str], workers: int = 0, mode: str = "auto") -> int:
        """Decode and store the pictures of ``paths`` not stored yet; returns how many were added."""
        store = self.store
        keys, missing = {}, []
        for path in dict.fromkeys(paths):
            try:
                key = file_key(path)
            except OSError:
                continue  # reading it fails with the file's name later, where the run's on_error decides
            keys[path] = key
            if key not in store:
                missing.append(path)
        self._keys.update(keys)
        if not missing:
            return 0
        from medsight.data.workers import Failed, map_in_workers

        log.info(f"caching {len(missing)} of {len(keys)} pictures at {self.size} px in {store.folder}")
        decoded = map_in_workers(self.decode, missing, workers)
        pairs = ((keys[path], value.message if isinstance(value, Failed) else value)
                 for path, value in zip(missing, decoded))
        return store.add(pairs, total=len(missing), mode=mode)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            stored = None
            if self.store is not None:
                file = self._keys.get(path)
                if file is not None and file in self.store:
                    stored = self.store.read(file, str(path))
            if stored is None:
                stored = self.decode(path)
            d[key] = torch.from_numpy(np.array(stored))[None]
        return d


def cached_loader(transform) -> CachedPicturesd | None:
    """The pipeline's picture-cache step, if it has one (the first step of a Compose)."""
    steps = getattr(transform, "transforms", ())
    return next((step for step in steps if isinstance(step, CachedPicturesd)), None)
