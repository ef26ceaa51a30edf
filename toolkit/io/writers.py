"""Writers for predictions and reports. Every file is written atomically: to a temporary file in
the same folder, flushed to disk, then renamed over the target, so a crash or a kill never leaves a
half-written output and never destroys the previous one."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from filelock import FileLock, Timeout

from medsight.errors import DataError


#: the file ``exclusive`` locks in a folder written by one command at a time
LOCK_NAME = ".medsight.lock"

_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, siblings: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same name ending, so format detection by suffix works);
    on success it is synced and renamed onto ``path``, on failure removed. ``siblings``: the suffixes of
    files the writer also makes beside it (an OpenVINO ``.bin`` beside its ``.xml``); they are renamed
    first and ``path`` last, so a reader that finds ``path`` finds the whole set."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{uuid.uuid4().hex[:8]}.partial.{path.name}"
    pairs = [(tmp.with_suffix(suffix), path.with_suffix(suffix)) for suffix in siblings] + [(tmp, path)]
    try:
        yield tmp
        for written, _ in pairs:
            with open(written, "rb") as handle:
                os.fsync(handle.fileno())
        for written, target in pairs:
            os.replace(written, target)
        fsync_dir(path.parent)
    except OSError as exc:  # a full disk, a read-only or lost mount: name the file; nothing half-written stays
        if exc.errno not in _WRITE_ERRORS:
            raise
        raise DataError(f"cannot write ({exc.strerror or exc}); nothing was left half-written", path) from None
    finally:
        for written, _ in pairs:
            if written.exists():
                written.unlink()


def output_folder(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a folder to write into, made if needed; one clear DataError when it cannot be: it is a
    file, it cannot be made, or nothing can be written in it (read-only, no permission)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{what} is a file, not a folder", path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".{uuid.uuid4().hex[:8]}.write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(f"{what}: cannot write here ({exc.strerror or exc})", path) from None
    return path


def output_file(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a file to write: its folder made and writable; not an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} is a folder, not a file", path)
    output_folder(path.parent, f"{what}'s folder")
    return path


@contextlib.contextmanager
def exclusive(folder: str | Path, what: str):
    """Hold ``folder`` for one command at a time (``what``: the command): a second one refuses at once
    instead of interleaving its files with the first's. The lock is ``filelock``'s: ``flock`` on
    ``.medsight.lock`` on Linux and macOS (released by the kernel when the process ends, however it ends),
    ``msvcrt`` locking on Windows."""
    folder = output_folder(folder)
    lock = FileLock(folder / LOCK_NAME, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DataError(f"another medsight {what} is writing to this folder now; wait for it to finish or "
                        "choose another --out", folder) from None
    try:
        yield folder
    finally:
        lock.release()


def write_bytes(data: bytes, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(text: str, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(data, path: str | Path) -> Path:
    return write_text(json.dumps(data, indent=2, default=_jsonable) + "\n", path)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_csv(rows: Iterable[Mapping], path: str | Path, fieldnames: Sequence[str]) -> Path:
    """Rows as CSV with the given columns, in that order; floats keep full precision."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fieldnames), extrasaction="raise")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
    return Path(path)


def write_nifti(
    array: np.ndarray,
    affine_ras: np.ndarray,
    path: str | Path,
    reference: str | Path | None = None,
    dtype=None,
) -> Path:
    """Write ``array`` (indexed ``[x, y, z]`` or ``[x, y, z, c]``) as NIfTI on the grid ``affine_ras``.

    With a NIfTI ``reference`` (the input the array was predicted on), its header is kept (qform
    and sform codes, units, description) so viewers treat both files alike; otherwise qform and
    sform are set to the affine with code 1 (scanner). For DICOM and MHD inputs the affine is
    their own ITK geometry converted to RAS, so ITK-SNAP and 3D Slicer put each voxel of the mask
    on the same physical point as the input's.
    """
    array = np.asarray(array)
    if dtype is not None:
        array = array.astype(dtype)
    affine = np.asarray(affine_ras, dtype=np.float64)
    header = None
    if reference is not None and str(reference).endswith((".nii", ".nii.gz")):
        try:
            source = nib.load(str(reference))
        except Exception as exc:
            raise DataError(f"cannot read the reference header ({exc})", reference) from exc
        if tuple(source.shape[:3]) != tuple(array.shape[:3]):
            raise DataError(
                f"prediction shape {array.shape[:3]} differs from the input's {source.shape[:3]}", reference
            )
        header = source.header.copy()
        header.set_data_dtype(array.dtype)
        header.set_slope_inter(1.0, 0.0)
        if array.ndim > 3:
            header.set_dim_info(None, None, None)
    image = nib.Nifti1Image(array, affine, header=header)
    qcode = int(header["qform_code"]) if header is not None and int(header["qform_code"]) > 0 else 1
    scode = int(header["sform_code"]) if header is not None and int(header["sform_code"]) > 0 else 1
    image.set_qform(affine, code=qcode)
    image.set_sform(affine, code=scode)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return Path(path)
