"""``medsight.serve(config)`` / ``Server``: one process holding the DICOM node, the HTTP API, the queue, the
series assembler and the model workers.

Series completion: a series is complete when it has been quiet for ``dicom.series_timeout`` seconds, or
when the association that brought it ends (``dicom.complete_on``: timeout, association or both). A
complete series is routed at once: to a job, to a multi-series study waiting for its other roles, or
ignored (recorded, with the reason). Every step is a committed row, so a restart picks up where a
killed server stopped: open series complete by timeout, complete ones are routed, running jobs run again.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from pathlib import Path

from medsight.errors import unwrap
from medsight.serve.config import Rule, ServeConfig, load_config, route
from medsight.serve.inbox import Inbox, tag
from medsight.serve.queue import JobQueue, Retry

log = logging.getLogger("medsight.serve")


def job_id_for(*parts: str) -> str:
    """A job's id from what it is made of (series UIDs, the rule): routing twice makes the same job once."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


class Server:
    """``Server(config).start()`` ... ``.stop()``, or ``.run()`` until SIGINT/SIGTERM. ``config``: a
    ``serve.yaml`` path, a dict or a ``ServeConfig``; ``workers`` overrides ``config.workers``."""

    def __init__(self, config, workers: int | None = None):
        self.config: ServeConfig = config if isinstance(config, ServeConfig) else load_config(config)
        if workers is not None:
            self.config.workers = workers
        q = self.config.queue
        self.folder = Path(self.config.folder)
        self.queue = JobQueue(self.folder, Retry(q.max_attempts, q.backoff_s, q.max_backoff_s), q.capacity)
        self.inbox = Inbox(self.folder)
        self._stop = threading.Event()
        self._route_lock = threading.RLock()
        self.node = self.http = self.workers = self.metrics = None
        self._assembler = threading.Thread(target=self._assemble_loop, name="medsight-assembler", daemon=True)

    # -- life ---------------------------------------------------------------------------------------
    def start(self) -> Server:
        from medsight.serve.dicom_node import DicomNode
        from medsight.serve.metrics import Metrics
        from medsight.serve.models import Models
        from medsight.serve.pipeline import Pipeline
        from medsight.serve.workers import Workers

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines echo DICOM attributes
        taken_back = self.queue.recover()
        if taken_back:
            log.info(f"serve: {taken_back} job(s) cut off by a stop run again")
        for uid in self.inbox.in_state("complete"):
            self._route(uid)
        self.metrics = Metrics(self)
        budget = int(self.config.models.memory_budget_mb * 2**20)
        self.models = Models(budget, load=self._loader())
        if self.config.models.preload:
            self._preload()
        self.pipeline = Pipeline(self.config, self.queue, self.models)
        self.workers = Workers(self.queue, self.pipeline.process, self.config.workers,
                               on_done=self.metrics.job_done).start()
        d = self.config.dicom
        self.node = DicomNode(self.inbox, d.ae_title, d.host, d.port, d.allowed_callers, self._has_room,
                              self._association_ended).start()
        self._assembler.start()
        if self.config.http.enabled:
            from medsight.serve.http_api import HttpServer

            self.http = HttpServer(self).start()
        log.info(f"serve: DICOM {d.ae_title}@{d.host}:{self.dicom_port}"
                 + (f", HTTP http://{self.config.http.host}:{self.http.port}" if self.http else "")
                 + f", {self.config.workers} worker(s), folder {self.folder}")
        return self

    def _preload(self) -> None:
        """Every rule's model loaded and its engine built for the rule's options; a model that cannot be loaded
        is one line here, and its jobs fail with the reason (the server still serves the others). The DICOM
        writers' library is imported too (0.4 s that the first job would pay)."""
        import highdicom.seg
        import highdicom.sr  # noqa: F401

        for rule in self.config.rules:
            try:
                model = self.models.get(rule.checkpoint)
                with self.models.lock(rule.checkpoint):
                    model.execution(model.configured(rule.options), "predict")
            except Exception as exc:  # noqa: BLE001  (reported; its jobs are dead-lettered with the reason)
                known = unwrap(exc)
                log.warning(f"serve: rule {rule.name}: its model was not loaded at start "
                            f"({known or type(exc).__name__}); its jobs will say why")

    def stop(self) -> None:
        self._stop.set()
        for part in (self.http, self.node):
            if part is not None:
                part.stop()
        if self.workers is not None:
            self.workers.stop()
        if self._assembler.is_alive():
            self._assembler.join(5)

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (a job in progress finishes its step; an unfinished one runs again
        at the next start)."""
        self.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()

    @property
    def dicom_port(self) -> int:
        return self.node.port if self.node else self.config.dicom.port

    def _loader(self):
        from medsight.inference.model import load

        m = self.config.models
        return lambda checkpoint: load(checkpoint, device=m.device, engine=m.engine)

    # -- receiving ----------------------------------------------------------------------------------
    def pending(self) -> int:
        return self.queue.pending() + self.inbox.open_count() + len(self.inbox.in_state("waiting"))

    def _has_room(self, series_uid: str) -> bool:
        return self.pending() < self.config.queue.capacity

    def _association_ended(self, association: str) -> None:
        if self.config.dicom.complete_on in ("association", "both"):
            for uid in self.inbox.of_association(association):
                self._complete(uid)

    def _assemble_loop(self) -> None:
        d = self.config.dicom
        while not self._stop.wait(min(0.2, d.series_timeout / 4)):
            try:
                # after a restart the association of an open series is gone: the timeout completes it
                for uid in self.inbox.quiet(d.series_timeout if d.complete_on != "association"
                                            else max(d.series_timeout, 60.0)):
                    self._complete(uid)
                self._expire_studies()
            except Exception as exc:  # noqa: BLE001  (the assembler must outlive one bad series)
                log.error(f"serve: assembling series failed: {type(exc).__name__}: {exc}")

    def _complete(self, uid: str) -> None:
        with self._route_lock:
            if self.inbox.state(uid) != "open":
                return
            self.inbox.set_state(uid, "complete")
            self._route(uid)

    # -- routing ------------------------------------------------------------------------------------
    def _route(self, uid: str) -> None:
        with self._route_lock:
            info = self.inbox.series(uid)
            found = route(self.config.rules, info)
            what = f"series {tag(uid)} ({info['modality'] or 'no modality'}, {info['slices']} instance(s))"
            if found is None:
                self.inbox.set_state(uid, "ignored", reason="no routing rule matches")
                log.info(f"serve: {what}: no routing rule matches: recorded and ignored")
                return
            rule, role = found
            if role is None:
                job = self.queue.submit(self._payload(rule, info["folder"], info), job_id_for(uid, rule.name))
                self.inbox.set_state(uid, "routed", rule.name)
                log.info(f"serve: {what} -> rule {rule.name}: job {job}")
                return
            self.inbox.set_state(uid, "waiting", rule.name, role)
            log.info(f"serve: {what} -> rule {rule.name}, role {role}")
            self._study_ready(info["study_uid"], rule)

    def _study_ready(self, study_uid: str, rule: Rule) -> None:
        by_role = {s["role"]: s for s in self.inbox.waiting_in_study(study_uid, rule.name)}  # the latest per role
        if not set(rule.roles) <= set(by_role):
            return
        chosen = [by_role[role] for role in rule.roles]
        inputs = {role: by_role[role]["folder"] for role in rule.roles}
        job = self.queue.submit(self._payload(rule, inputs, chosen[0]),
                                job_id_for(*sorted(s["uid"] for s in chosen), rule.name))
        for series in self.inbox.waiting_in_study(study_uid, rule.name):
            self.inbox.set_state(series["uid"], "routed", rule.name, series["role"])
        log.info(f"serve: study {tag(study_uid)}: roles {', '.join(rule.roles)} complete -> job {job}")

    def _expire_studies(self) -> None:
        limit = time.time() - self.config.dicom.study_timeout
        for uid in self.inbox.in_state("waiting"):
            info = self.inbox.series(uid)
            if info["last"] < limit:
                rule = self.config.rule(info["rule"])
                present = {s["role"] for s in self.inbox.waiting_in_study(info["study_uid"], rule.name)}
                missing = ", ".join(r for r in rule.roles if r not in present)
                self.inbox.set_state(uid, "ignored", info["rule"], info["role"],
                                     reason=f"its study never brought role(s) {missing}")
                log.warning(f"serve: series {tag(uid)} (role {info['role']}): its study never brought role(s) "
                            f"{missing} for rule {rule.name}: recorded and ignored")

    def _payload(self, rule: Rule, inputs, info: dict) -> dict:
        return {"kind": "dicom", "rule": rule.name, "model": rule.name, "inputs": inputs, "dicom": True,
                "caller": info.get("calling_ae", ""), "send": True}

    # -- administration -----------------------------------------------------------------------------
    def retry_failed(self) -> int:
        return self.queue.retry_failed()


def serve(config, workers: int | None = None, retry_failed: bool = False) -> None:
    """Run ``medsight serve`` with ``config`` (a serve.yaml path, dict or ``ServeConfig``) until stopped;
    ``retry_failed``: first re-queue the dead-lettered jobs."""
    server = Server(config, workers)
    if retry_failed:
        log.info(f"serve: {server.retry_failed()} dead-lettered job(s) queued again")
    server.run()
