"""The HTTP API on a real uvicorn socket: bearer tokens (none configured = refuse, loopback only when allowed), a
4 GB Content-Length claim refused before the body is read, a NIfTI case uploaded as a job and its files fetched,
503 with Retry-After on a full queue, the models, metrics and OpenAPI pages, and no identifier in a log line."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest

from tests.serve.conftest import serve_config, wait_for


def _nifti_case(folder):
    from medsight.datasets.synth.brats import make_case

    images, _ = make_case(np.random.default_rng(4), (32, 32, 20))
    paths = {}
    for role in ("flair", "t1c"):
        paths[role] = folder / f"Zqxmarker_{role}.nii.gz"  # a client's file name may name the patient
        nib.save(nib.Nifti1Image(np.asarray(images[role], dtype=np.float32), np.diag([1.0, 1.0, 1.5, 1.0])),
                 paths[role])
    return paths


@pytest.fixture
def api(tmp_path, segmenter, detector, start_server, monkeypatch):
    monkeypatch.setenv("MEDSIGHT_TEST_TOKENS", "s3cret,other")
    config = serve_config(tmp_path, [{"name": "brain", "checkpoint": str(segmenter),
                                      "roles": {"flair": {}, "t1c": {}}},
                                     {"name": "nodules", "checkpoint": str(detector)}],
                          http={"enabled": True, "port": 0, "tokens_env": "MEDSIGHT_TEST_TOKENS",
                                "max_upload_mb": 50}, queue={"capacity": 2})
    server = start_server(config)
    return server, httpx.Client(base_url=f"http://127.0.0.1:{server.http.port}", timeout=30)


def test_a_nifti_case_uploaded_with_a_token_becomes_a_job_whose_files_can_be_fetched(api, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medsight")
    _, http = api
    paths = _nifti_case(tmp_path)
    files = [("files", (p.name, p.read_bytes(), "application/gzip")) for p in paths.values()]
    good = {"Authorization": "Bearer s3cret"}
    assert http.post("/v1/jobs", data={"model": "brain", "roles": "flair,t1c"}, files=files).status_code == 401
    wrong = http.post("/v1/jobs", data={"model": "brain"}, files=files, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    unknown = http.post("/v1/jobs", data={"model": "lungs"}, files=files, headers=good)
    assert unknown.status_code == 404 and "GET /v1/models" in unknown.json()["detail"]
    answer = http.post("/v1/jobs", data={"model": "brain", "roles": "flair,t1c"}, files=files, headers=good)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    state = wait_for(lambda: (s := http.get(f"/v1/jobs/{job_id}", headers=good).json())["state"] in ("done", "dead")
                     and s, 60, "the job")
    assert state["state"] == "done", state["reason"]
    assert f"/v1/jobs/{job_id}/files/input_0_seg.nii.gz" in state["files"]
    label_map = http.get(f"/v1/jobs/{job_id}/files/input_0_seg.nii.gz", headers=good)
    assert label_map.status_code == 200 and label_map.content[:2] == b"\x1f\x8b"
    assert http.get(f"/v1/jobs/{job_id}/files/../inputs/input_0.nii.gz", headers=good).status_code == 404
    assert [m["name"] for m in http.get("/v1/models", headers=good).json()] == ["brain", "nodules"]
    metrics = http.get("/metrics", headers=good).text
    assert 'medsight_jobs{state="done"} 1.0' in metrics and "medsight_job_seconds_bucket" in metrics
    assert http.get("/healthz").json()["status"] == "ok"
    assert "/v1/jobs" in http.get("/openapi.json").text and http.get("/docs").status_code == 200
    assert not [r.getMessage() for r in caplog.records if "Zqxmarker" in r.getMessage()]


def test_a_4gb_claim_is_refused_before_reading_and_a_full_queue_answers_503(api):
    server, http = api
    with socket.create_connection(("127.0.0.1", server.http.port), timeout=10) as raw:
        raw.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 4294967296\r\n\r\n")
        head = raw.recv(4096)  # answered without a byte of the body sent
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(head.split(b"\r\n\r\n", 1)[1]) < length:
            head += raw.recv(4096)
        head = head.decode()
    assert head.startswith("HTTP/1.1 413") and "larger than the limit of 50 MB" in head
    server.workers.stop()  # nothing drains the queue while it is filled: full is full, however fast a job is
    server.queue.submit({"rule": "brain", "inputs": "/nowhere"}, "a" * 24)
    server.queue.receive({"rule": "brain"})  # capacity 2: now full
    full = http.post("/v1/jobs", data={"model": "brain"}, files=[("files", ("a.nii.gz", b"x"))],
                     headers={"Authorization": "Bearer other"})
    assert full.status_code == 503 and full.headers["retry-after"] == "30"


def test_without_tokens_every_request_is_refused_unless_loopback_is_allowed(tmp_path, segmenter, start_server):
    rules = [{"name": "brain", "checkpoint": str(segmenter)}]
    closed = start_server(serve_config(tmp_path / "a", rules, http={"enabled": True, "port": 0,
                                                                     "tokens_env": "MEDSIGHT_NO_SUCH_VAR"}))
    answer = httpx.get(f"http://127.0.0.1:{closed.http.port}/v1/models")
    assert answer.status_code == 401 and "no API tokens are configured" in answer.json()["detail"]
    open_ = start_server(serve_config(tmp_path / "b", rules, http={
        "enabled": True, "port": 0, "tokens_env": "MEDSIGHT_NO_SUCH_VAR", "allow_loopback_without_token": True}))
    assert httpx.get(f"http://127.0.0.1:{open_.http.port}/v1/models").status_code == 200


def test_a_zip_of_a_dicom_series_is_answered_with_its_seg_and_sr_files(api, tmp_path):
    import zipfile

    from tests.serve.conftest import ct_series

    _, http = api
    uid, _ = ct_series(tmp_path / "ct")
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as archive:
        for path in sorted((tmp_path / "ct").iterdir()):
            archive.write(path, f"Zqxmarker^Pat/{path.name}")  # folder names in a zip are not trusted
    good = {"Authorization": "Bearer other"}
    answer = http.post("/v1/jobs", data={"model": "nodules"}, headers=good,
                       files=[("files", ("series.zip", (tmp_path / "series.zip").read_bytes(), "application/zip"))])
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    state = wait_for(lambda: (s := http.get(f"/v1/jobs/{job_id}", headers=good).json())["state"] in ("done", "dead")
                     and s, 60, "the job")
    assert state["state"] == "done", state["reason"]
    names = {f.rsplit("/", 1)[-1] for f in state["files"]}
    assert {f"{uid}_marks.dcm", f"{uid}_marks_sr.dcm", "submission.csv"} <= names


def test_a_zip_of_a_multi_series_mr_study_is_sorted_into_the_rules_roles(tmp_path, segmenter, detector, start_server,
                                                                         monkeypatch):
    """One zip holding a study's FLAIR, T1c and a localiser: each series goes to the role whose rule matches its
    SeriesDescription (as over DICOM), the localiser to none; a zip that lacks a role is 422 naming it."""
    import zipfile

    import pydicom

    from tests.serve.conftest import mr_study
    from tests.serve.test_orthanc import rules

    monkeypatch.setenv("MEDSIGHT_TEST_TOKENS", "s3cret")
    server = start_server(serve_config(tmp_path, rules(detector, segmenter), http={
        "enabled": True, "port": 0, "tokens_env": "MEDSIGHT_TEST_TOKENS"}))
    http = httpx.Client(base_url=f"http://127.0.0.1:{server.http.port}", timeout=30,
                        headers={"Authorization": "Bearer s3cret"})
    roles = mr_study(tmp_path / "mr")
    localiser = tmp_path / "mr" / "localiser.dcm"
    ds = pydicom.dcmread(next((tmp_path / "mr" / "flair").iterdir()))
    ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesDescription = (pydicom.uid.generate_uid(),
                                                                     pydicom.uid.generate_uid(), "3-PLANE LOC")
    ds.save_as(localiser)

    def upload(paths, name):
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            for number, path in enumerate(paths):
                archive.write(path, f"study/{number:03d}.dcm")
        return http.post("/v1/jobs", data={"model": "brain"},
                         files=[("files", (name, (tmp_path / name).read_bytes(), "application/zip"))])

    every = sorted((tmp_path / "mr").rglob("*.dcm"))
    answer = upload(every[::-1], "study.zip")  # the order in a zip says nothing
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    state = wait_for(lambda: (s := http.get(f"/v1/jobs/{job_id}").json())["state"] in ("done", "dead") and s, 60,
                     "the job")
    assert state["state"] == "done", state["reason"]
    inputs = server.queue.get(job_id).payload["inputs"]
    assert set(inputs) == {"flair", "t1c"}
    for role, folder in inputs.items():
        assert {str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID)
                for p in Path(folder).iterdir()} == {roles[role]}
    seg = next(f for f in state["files"] if f.endswith(".dcm"))
    answer_seg = pydicom.dcmread(__import__("io").BytesIO(http.get(seg).content))
    assert answer_seg.Modality == "SEG" and answer_seg.ReferencedSeriesSequence[0].SeriesInstanceUID == roles["flair"]

    lacking = upload([p for p in every if "t1c" not in p.parts], "flair_only.zip")
    assert lacking.status_code == 422
    assert "no series of the upload matches role(s) t1c of model brain (2 series found)" in lacking.json()["detail"]
