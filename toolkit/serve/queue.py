"""The durable job queue of ``medsight serve``: one SQLite database in WAL mode in the serve folder.

Why SQLite: the queue must survive SIGKILL and power loss at any moment, one process owns it, and its
jobs are few (studies, not messages). SQLite is in the standard library, a committed transaction is on
disk (``synchronous=FULL``), WAL lets the HTTP API read while workers write, and ``BEGIN IMMEDIATE``
makes claiming a job atomic across threads. A broker (Redis, RabbitMQ) would add a second service to
run and would still need a store for the idempotency keys.

States: ``received`` (inputs arriving) -> ``queued`` -> ``running`` -> ``done``; a failed try goes to
``failed`` and is tried again after a back-off; after ``max_attempts`` tries it goes to ``dead`` with the
reason (``retry_failed`` re-queues it). Processing is at least once: a job found ``running`` when the
queue opens was cut off by a crash and is queued again. Delivery is exactly once per destination: the
results of a job are recorded (with their SOP Instance UIDs) before anything is sent, and each
(destination, SOP Instance UID) sent is recorded; a retried job sends only what is not recorded.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: states a job waits or works in: they count against the queue's capacity
PENDING = ("received", "queued", "running", "failed")
STATES = (*PENDING, "done", "dead")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '', created REAL NOT NULL,
    updated REAL NOT NULL, started REAL, finished REAL, produced INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, next_at, created);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL, sop_instance_uid TEXT NOT NULL, path TEXT NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid));
CREATE TABLE IF NOT EXISTS deliveries (
    destination TEXT NOT NULL, sop_instance_uid TEXT NOT NULL, job_id TEXT NOT NULL, delivered REAL NOT NULL,
    PRIMARY KEY (destination, sop_instance_uid));
"""


@dataclass(frozen=True)
class Retry:
    """How often and how soon a failed job is tried again: ``backoff_s * 2**(try - 1)``, at most
    ``max_backoff_s``; after ``max_attempts`` tries it is dead-lettered."""

    max_attempts: int = 5
    backoff_s: float = 2.0
    max_backoff_s: float = 300.0

    def delay(self, attempts: int) -> float:
        return min(self.backoff_s * 2 ** max(attempts - 1, 0), self.max_backoff_s)


@dataclass
class Job:
    id: str
    state: str
    payload: dict = field(default_factory=dict)
    attempts: int = 0
    reason: str = ""
    created: float = 0.0
    started: float | None = None
    finished: float | None = None

    def as_dict(self) -> dict:
        return {"id": self.id, "state": self.state, "attempts": self.attempts, "reason": self.reason,
                "created": self.created, "started": self.started, "finished": self.finished,
                "model": self.payload.get("model"), "kind": self.payload.get("kind")}


class JobQueue:
    """The jobs of one serve folder (``<folder>/queue.sqlite``); safe to share between threads."""

    def __init__(self, folder: str | Path, retry: Retry = Retry(), capacity: int = 100):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "queue.sqlite"
        self.retry, self.capacity = retry, capacity
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before anything is acknowledged
        self._db.executescript(_SCHEMA)

    # -- plumbing -----------------------------------------------------------------------------------
    def _write(self, sql: str, args: Iterable = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, tuple(args))

    def _transaction(self):
        return _Transaction(self)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- adding work --------------------------------------------------------------------------------
    def receive(self, payload: dict, job_id: str | None = None) -> str:
        """A job whose inputs are still arriving (a DICOM series, an upload); idempotent for a given id."""
        job_id = job_id or uuid.uuid4().hex
        now = time.time()
        self._write("INSERT OR IGNORE INTO jobs (id, state, payload, created, updated) VALUES (?, 'received', ?, ?, ?)",
                    (job_id, json.dumps(payload), now, now))
        return job_id

    def enqueue(self, job_id: str, payload: dict | None = None) -> None:
        """Its inputs are complete (on disk): the job may run. ``payload`` replaces the received one."""
        with self._transaction() as db:
            if payload is not None:
                db.execute("UPDATE jobs SET payload = ? WHERE id = ?", (json.dumps(payload), job_id))
            db.execute("UPDATE jobs SET state = 'queued', updated = ? WHERE id = ? AND state = 'received'",
                       (time.time(), job_id))

    def submit(self, payload: dict, job_id: str | None = None) -> str:
        """A job whose inputs are already on disk: queued at once."""
        job_id = self.receive(payload, job_id)
        self.enqueue(job_id)
        return job_id

    def has_room(self) -> bool:
        return self.pending() < self.capacity

    # -- working ------------------------------------------------------------------------------------
    def recover(self) -> int:
        """At start: jobs left ``running`` by a killed server are queued again (or dead-lettered once they
        have used up their tries). Returns how many were taken back."""
        with self._transaction() as db:
            rows = db.execute("SELECT id, attempts FROM jobs WHERE state = 'running'").fetchall()
            for row in rows:
                if row["attempts"] >= self.retry.max_attempts:
                    db.execute("UPDATE jobs SET state = 'dead', reason = ?, updated = ? WHERE id = ?",
                               (f"the server stopped while running it {row['attempts']} times", time.time(),
                                row["id"]))
                else:
                    db.execute("UPDATE jobs SET state = 'queued', updated = ? WHERE id = ?", (time.time(), row["id"]))
        return len(rows)

    def claim(self) -> Job | None:
        """The oldest job ready to run, now ``running`` (one try more), or None."""
        now = time.time()
        ready = "SELECT * FROM jobs WHERE state IN ('queued', 'failed') AND next_at <= ? ORDER BY created LIMIT 1"
        with self._lock:
            if self._db.execute(ready, (now,)).fetchone() is None:  # an idle poll takes no write lock
                return None
        with self._transaction() as db:
            row = db.execute(ready, (now,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, started = ?, updated = ? "
                       "WHERE id = ?", (now, now, row["id"]))
        return self.get(row["id"])

    def finish(self, job_id: str) -> None:
        now = time.time()
        self._write("UPDATE jobs SET state = 'done', reason = '', finished = ?, updated = ? WHERE id = ?",
                    (now, now, job_id))

    def fail(self, job_id: str, reason: str, retry: bool = True) -> str:
        """A try failed: ``failed`` (tried again after the back-off) or, out of tries or not worth retrying,
        ``dead`` with the reason. Returns the new state."""
        job = self.get(job_id)
        now = time.time()
        dead = not retry or job.attempts >= self.retry.max_attempts
        if dead and retry:
            reason = f"{reason} (after {job.attempts} tries)"
        self._write("UPDATE jobs SET state = ?, reason = ?, next_at = ?, updated = ?, finished = ? WHERE id = ?",
                    ("dead" if dead else "failed", reason[:2000], now + self.retry.delay(job.attempts), now,
                     now if dead else None, job_id))
        return "dead" if dead else "failed"

    def retry_failed(self) -> int:
        """Dead-lettered and failed jobs queued again with fresh tries (``medsight serve --retry-failed``)."""
        cursor = self._write("UPDATE jobs SET state = 'queued', attempts = 0, next_at = 0, reason = '', "
                             "updated = ? WHERE state IN ('dead', 'failed')", (time.time(),))
        return cursor.rowcount

    # -- results and deliveries (the idempotency keys) -----------------------------------------------
    def record_results(self, job_id: str, results: Iterable[tuple[str, str]]) -> None:
        """The job's result objects (SOP Instance UID, file), recorded in one transaction before any is sent:
        from then on the job's results are these, however often it runs again."""
        with self._transaction() as db:
            db.executemany("INSERT OR IGNORE INTO results (job_id, sop_instance_uid, path) VALUES (?, ?, ?)",
                           [(job_id, uid, str(path)) for uid, path in results])
            db.execute("UPDATE jobs SET produced = 1 WHERE id = ?", (job_id,))

    def produced(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT produced FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def results(self, job_id: str) -> list[tuple[str, str]]:
        with self._lock:
            rows = self._db.execute("SELECT sop_instance_uid, path FROM results WHERE job_id = ? "
                                    "ORDER BY sop_instance_uid", (job_id,)).fetchall()
        return [(r[0], r[1]) for r in rows]

    def delivered(self, destination: str, sop_instance_uid: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM deliveries WHERE destination = ? AND sop_instance_uid = ?",
                                    (destination, sop_instance_uid)).fetchone() is not None

    def record_delivery(self, destination: str, sop_instance_uid: str, job_id: str) -> None:
        self._write("INSERT OR IGNORE INTO deliveries (destination, sop_instance_uid, job_id, delivered) "
                    "VALUES (?, ?, ?, ?)", (destination, sop_instance_uid, job_id, time.time()))

    # -- looking --------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    def jobs(self, state: str | None = None) -> list[Job]:
        with self._lock:
            rows = (self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY created", (state,)) if state
                    else self._db.execute("SELECT * FROM jobs ORDER BY created")).fetchall()
        return [_job(r) for r in rows]

    def pending(self) -> int:
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN {PENDING}").fetchone()[0]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in STATES} | {r[0]: r[1] for r in rows}


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the queue's lock (a rollback on error)."""

    def __init__(self, queue: JobQueue):
        self.queue = queue

    def __enter__(self) -> sqlite3.Connection:
        self.queue._lock.acquire()
        self.queue._db.execute("BEGIN IMMEDIATE")
        return self.queue._db

    def __exit__(self, kind, value, trace) -> None:
        try:
            self.queue._db.execute("ROLLBACK" if kind else "COMMIT")
        finally:
            self.queue._lock.release()


def _job(row: sqlite3.Row) -> Job:
    return Job(id=row["id"], state=row["state"], payload=json.loads(row["payload"]), attempts=row["attempts"],
               reason=row["reason"], created=row["created"], started=row["started"], finished=row["finished"])
