"""``medsight serve`` as its command line runs it, killed with SIGKILL twice: once just after it answered the
last C-STORE of a series (accepted, not yet a job), once while a job runs. Restarted, it finishes both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pydicom
import yaml
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from medsight.serve.queue import JobQueue
from tests.serve.conftest import ct_series, free_port, wait_for
from tests.serve.test_dicom_node import store
from tests.toolkit.test_dicom_out import NEEDLES


def start(config_path):
    """The server's log goes to serve.log beside its config (a pipe nobody reads could fill and block it)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(config_path.parent / "serve.log", "a") as log:
        return subprocess.Popen([sys.executable, "-m", "medsight", "serve", "--config", str(config_path)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def answers_echo(port: int) -> bool:
    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSIGHT")
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def test_sigkill_after_the_last_c_store_and_during_a_job_loses_nothing(tmp_path, detector):
    port = free_port()
    config = {"folder": "serve", "dicom": {"port": port, "series_timeout": 1.0, "complete_on": "timeout"},
              "http": {"enabled": False}, "models": {"engine": "torch", "device": "cpu"},
              "results": {"send_to": []},
              "rules": [{"name": "nodules", "checkpoint": str(detector), "match": {"modality": "CT"}}]}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    first_uid, _ = ct_series(tmp_path / "first")
    second_uid, _ = ct_series(tmp_path / "second")
    server = start(tmp_path / "serve.yaml")
    try:
        wait_for(lambda: server.poll() is not None or answers_echo(port), 60, "the server's DICOM port")
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        answers = store(port, [pydicom.dcmread(p) for p in sorted((tmp_path / "first").iterdir())])
        assert {code for code, _ in answers} == {0}
        server.send_signal(signal.SIGKILL)  # accepted, but the series is not complete yet
        server.wait(10)
        server = start(tmp_path / "serve.yaml")
        queue = JobQueue(tmp_path / "serve")
        wait_for(lambda: answers_echo(port), 60, "the restarted server")
        store(port, [pydicom.dcmread(p) for p in sorted((tmp_path / "second").iterdir())])
        running = wait_for(lambda: next((j for j in queue.jobs("running")), None), 60, "a running job")
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        server = start(tmp_path / "serve.yaml")
        wait_for(lambda: len(queue.jobs("done")) == 2, 90, "both jobs done after the restarts")
        assert queue.get(running.id).attempts == 2, "the job cut off ran again"
        names = {p.split("/")[-1] for job in queue.jobs() for _, p in queue.results(job.id)}
        assert names == {f"{uid}_{kind}.dcm" for uid in (first_uid, second_uid) for kind in ("marks", "marks_sr")}
        log = (tmp_path / "serve.log").read_text()
        assert "job" in log and not [n for n in NEEDLES if n.decode() in log], "no identifier in a log line"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
