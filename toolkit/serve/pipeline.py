"""One job's work: predict with the rule's model through the Python API (``Model.predict``), write the
result files and its DICOM objects (``Result.save(..., dicom=True)``: the SEG and the task's SR, as
``medsight predict --dicom`` writes them), then hand the DICOM objects to the queue's exactly-once delivery
(``workers.run_job``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pydicom

from medsight.errors import ConfigError, unwrap
from medsight.serve.config import ServeConfig
from medsight.serve.dicom_node import DicomDestination
from medsight.serve.dicomweb import DicomWebDestination
from medsight.serve.models import Models
from medsight.serve.queue import Job, JobQueue
from medsight.serve.workers import Permanent, run_job

log = logging.getLogger("medsight.serve")


class Pipeline:
    def __init__(self, config: ServeConfig, queue: JobQueue, models: Models):
        self.config, self.queue, self.models = config, queue, models
        self.folder = Path(config.folder)

    def results_folder(self, job_id: str) -> Path:
        return self.folder / "jobs" / job_id / "results"

    def process(self, job: Job) -> None:
        run_job(self.queue, job, self.produce, self.destinations(job))

    def produce(self, job: Job) -> list[tuple[str, str]]:
        """Predict and write; the DICOM objects written, as (SOP Instance UID, file)."""
        payload = job.payload
        try:
            rule = self.config.rule(payload["rule"])
        except ConfigError as exc:
            raise Permanent(str(exc)) from None
        out = self.results_folder(job.id)
        shutil.rmtree(out, ignore_errors=True)  # a try cut off before its results were recorded
        dicom = bool(payload.get("dicom"))
        keep = self.config.results.keep_identifiers
        pictures = self.config.results.pictures
        pictures = payload.get("kind") == "http" if pictures is None else pictures
        try:
            model = self.models.get(rule.checkpoint)
            with self.models.lock(rule.checkpoint):
                predicted = model.predict(payload["inputs"], **rule.options)
                results = list(predicted) if isinstance(predicted, list) else [predicted]
                failures = list(getattr(predicted, "failures", []))
                if failures or not results:
                    raise Permanent(failures[0] if failures else "the input holds no case")
                for result in results:  # with dicom: the SEG and the task's SR (``PredictionWriter.write_case``)
                    result.save(out, dicom=dicom, keep_identifiers=keep, pictures=pictures)
        except Permanent:
            raise
        except Exception as exc:  # re-raised: the worker records it
            known = unwrap(exc)
            if known is not None:  # a bad input or config: another try would fail the same way
                raise Permanent(str(known)) from None
            raise
        written = sorted(out.glob("*.dcm"))
        return [(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID), str(p)) for p in written]

    def destinations(self, job: Job) -> list[DicomDestination | DicomWebDestination]:
        """Where this job's DICOM objects go: the rule's ``send_to`` (or ``results.send_to``); ``caller`` is the
        destination with the calling AE title of the study (none for an HTTP job)."""
        if not job.payload.get("send", True):
            return []
        try:
            rule = self.config.rule(job.payload["rule"])
        except ConfigError:
            return []
        chosen = []
        for name in rule.send_to if rule.send_to is not None else self.config.results.send_to:
            if name == "caller":
                caller = job.payload.get("caller")
                found = [d for d in self.config.destinations if d.ae_title and d.ae_title == caller]
                if not found:
                    log.warning(f"job {job.id}: the caller {caller!r} is no configured destination: results kept, "
                                "not sent back")
                chosen += found
            else:
                chosen.append(self.config.destination(name))
        timeout = self.config.results.timeout_s
        return [DicomWebDestination(d.name, d.dicomweb, d.token_env, d.basic_auth_env, timeout_s=timeout)
                if d.dicomweb else
                DicomDestination(d.name, d.ae_title, d.host, d.port, calling_ae=self.config.dicom.ae_title,
                                 timeout_s=timeout) for d in _unique(chosen)]


def _unique(destinations: list) -> list:
    seen, unique = set(), []
    for destination in destinations:
        if destination.name not in seen:
            seen.add(destination.name)
            unique.append(destination)
    return unique
