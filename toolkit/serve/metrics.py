"""Prometheus metrics of one server (its own registry, so that several servers in one process never mix):
queue length by state, job durations, jobs failed and dead-lettered, instances refused by reason."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    def __init__(self, server):
        self.registry = CollectorRegistry()
        self.pending = Gauge("medsight_queue_length", "jobs and open series waiting or working",
                             registry=self.registry)
        self.pending.set_function(server.pending)
        self.by_state = Gauge("medsight_jobs", "jobs by state", ["state"], registry=self.registry)
        self._server = server
        self.durations = Histogram("medsight_job_seconds", "time of one try of a job", ["outcome"],
                                   buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600), registry=self.registry)
        self.failures = Counter("medsight_job_failures", "tries that failed (failed: retried; dead: given up)",
                                ["state"], registry=self.registry)
        self.refused = Gauge("medsight_refused", "DICOM instances and associations refused since start",
                             ["reason"], registry=self.registry)

    def job_done(self, job, state: str, seconds: float) -> None:
        self.durations.labels(outcome=state).observe(seconds)
        if state != "done":
            self.failures.labels(state=state).inc()

    def text(self) -> bytes:
        for state, count in self._server.queue.counts().items():
            self.by_state.labels(state=state).set(count)
        for reason, count in (self._server.node.refused.items() if self._server.node else ()):
            self.refused.labels(reason=reason).set(count)
        return generate_latest(self.registry)
