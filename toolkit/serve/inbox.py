"""What the DICOM node has received: every instance (a file, fsynced, then a row) and the series they
make, open until complete. Kept in the serve folder's database beside the queue, so that a restarted
server completes and routes the series a killed one had accepted.

Series states: ``open`` (instances arriving) -> ``complete`` -> ``routed`` (a job made), ``waiting`` (one
role of a multi-series study, waiting for the other roles) or ``ignored`` (no rule matches; the reason
is kept).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from medsight.io.writers import fsync_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, state TEXT NOT NULL, first REAL NOT NULL, last REAL NOT NULL,
    calling_ae TEXT NOT NULL, association TEXT NOT NULL, attrs TEXT NOT NULL, rule TEXT, role TEXT,
    reason TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS instances (sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, path TEXT NOT NULL);
"""
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(uid) -> bool:
    return bool(uid) and len(str(uid)) <= 64 and bool(_UID.match(str(uid)))


def tag(uid: str) -> str:
    """A short stand-in for a UID in log lines (UIDs can be traced back to a patient's study)."""
    return hashlib.sha256(str(uid).encode()).hexdigest()[:16]


def series_attributes(ds) -> dict:
    """What routing rules look at, from one instance of the series."""
    image_type = ds.get("ImageType", [])
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return {"modality": str(ds.get("Modality", "")), "body_part": str(ds.get("BodyPartExamined", "")),
            "description": str(ds.get("SeriesDescription", "")), "image_type": [str(v) for v in values]}


class Inbox:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.incoming = self.folder / "incoming"
        # instances are written here, then renamed into their series folder: a write cut off by a kill leaves
        # its remains here, never beside the slices a job reads (cleared at start)
        self.scratch = self.incoming / ".partial"
        self.scratch.mkdir(parents=True, exist_ok=True)
        for leftover in self.scratch.iterdir():
            leftover.unlink()
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.folder / "queue.sqlite", isolation_level=None, check_same_thread=False,
                                   timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def series_folder(self, study_uid: str, series_uid: str) -> Path:
        return self.incoming / tag(study_uid) / tag(series_uid)  # no UID in a path that may reach a log

    def state(self, series_uid: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM series WHERE uid = ?", (series_uid,)).fetchone()
        return row[0] if row else None

    def store(self, encoded: bytes, sop_uid: str, study_uid: str, series_uid: str, attrs: dict, calling_ae: str,
              association: str) -> Path:
        """Write one instance (synced to disk), then record it: only then may its C-STORE be answered."""
        path = self.series_folder(study_uid, series_uid) / f"{sop_uid}.dcm"
        new_folder = not path.parent.is_dir()
        path.parent.mkdir(parents=True, exist_ok=True)
        if new_folder:  # the series' folder itself must survive a power cut
            fsync_dir(path.parent.parent)
            fsync_dir(self.incoming)
        tmp = self.scratch / uuid.uuid4().hex
        with open(tmp, "wb") as handle:
            handle.write(encoded)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO instances (sop_uid, series_uid, path) VALUES (?, ?, ?)",
                                 (sop_uid, series_uid, str(path)))
                self._db.execute(
                    "INSERT INTO series (uid, study_uid, state, first, last, calling_ae, association, attrs) "
                    "VALUES (?, ?, 'open', ?, ?, ?, ?, ?) ON CONFLICT(uid) DO UPDATE SET last = excluded.last, "
                    "association = excluded.association",
                    (series_uid, study_uid, now, now, calling_ae, association, json.dumps(attrs)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return path

    def open_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM series WHERE state = 'open'").fetchone()[0]

    def quiet(self, timeout_s: float) -> list[str]:
        """Open series without a new instance for ``timeout_s`` seconds."""
        with self._lock:
            rows = self._db.execute("SELECT uid FROM series WHERE state = 'open' AND last <= ?",
                                    (time.time() - timeout_s,)).fetchall()
        return [r[0] for r in rows]

    def of_association(self, association: str) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT uid FROM series WHERE state = 'open' AND association = ?",
                                    (association,)).fetchall()
        return [r[0] for r in rows]

    def in_state(self, state: str) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT uid FROM series WHERE state = ? ORDER BY last",
                                                   (state,)).fetchall()]

    def set_state(self, series_uid: str, state: str, rule: str | None = None, role: str | None = None,
                  reason: str = "") -> None:
        with self._lock:
            self._db.execute("UPDATE series SET state = ?, rule = ?, role = ?, reason = ? WHERE uid = ?",
                             (state, rule, role, reason, series_uid))

    def series(self, series_uid: str) -> dict:
        """A series' row, with ``slices`` (instances received) and ``folder``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM series WHERE uid = ?", (series_uid,)).fetchone()
            slices = self._db.execute("SELECT COUNT(*) FROM instances WHERE series_uid = ?",
                                      (series_uid,)).fetchone()[0]
        info = dict(row) | json.loads(row["attrs"])
        info.update(slices=slices, folder=str(self.series_folder(row["study_uid"], series_uid)))
        return info

    def waiting_in_study(self, study_uid: str, rule: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT uid FROM series WHERE study_uid = ? AND rule = ? AND state = 'waiting' "
                                    "ORDER BY last", (study_uid, rule)).fetchall()
        return [self.series(r[0]) for r in rows]
