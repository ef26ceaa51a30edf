"""End to end against a real PACS: Orthanc (started here, loopback only) sends a synthetic MR study (FLAIR and
T1c series) and a CT series to medsight; medsight stores a DICOM SEG of the tumour regions, a DICOM SEG of the
nodule marks and a TID 1500 SR back into Orthanc, exactly once; highdicom reads them back and they agree with
a plain ``predict`` of the same series. dcmtk's echoscu and storescu are a second, independent client."""

from __future__ import annotations

import csv
import shutil
import sqlite3
from pathlib import Path

import highdicom as hd

import medsight
import numpy as np
import pydicom
import pytest

from tests.serve.conftest import ct_series, free_port, mr_study, serve_config, wait_for
from tests.serve.services import Orthanc, dcmtk
from tests.toolkit.test_dicom_out import NEEDLES

TOTALSEG_CT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct" / "totalsegmentator_example" / \
    "example_ct_dicom"


def rules(detector, segmenter) -> list[dict]:
    return [{"name": "brain", "checkpoint": str(segmenter), "match": {"modality": "MR"},
             "roles": {"flair": {"series_description": "flair"}, "t1c": {"series_description": r"t1.*(post|gd|c\b)"}}},
            {"name": "nodules", "checkpoint": str(detector), "match": {"modality": "CT", "min_slices": 10}}]


@pytest.fixture
def orthanc(tmp_path):
    port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", port)
    pacs.medsight_port = port
    yield pacs
    pacs.stop()


def world_of_circle(sr_group, images: dict) -> np.ndarray:
    """The LPS centre of a planar group's circle, from its source image's geometry."""
    region = sr_group.roi
    (column, row), _ = region.value - 0.5  # SCOORD: the first pixel's centre is (0.5, 0.5)
    source = images[region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
    orientation = np.asarray(source.ImageOrientationPatient, dtype=float)
    row_mm, col_mm = (float(v) for v in source.PixelSpacing)
    return np.asarray(source.ImagePositionPatient, dtype=float) + column * col_mm * orientation[:3] + \
        row * row_mm * orientation[3:]


def test_orthanc_sends_a_study_and_gets_seg_and_sr_back_exactly_once(tmp_path, orthanc, detector, segmenter,
                                                                     start_server):
    roles = mr_study(tmp_path / "mr")
    ct_uid, scan = ct_series(tmp_path / "ct")
    config = serve_config(tmp_path, rules(detector, segmenter),
                          dicom={"port": orthanc.medsight_port, "allowed_callers": ["ORTHANC"], "series_timeout": 30,
                                 "complete_on": "association"},
                          destinations=[{"name": "pacs", "ae_title": "ORTHANC", "port": orthanc.dicom_port}],
                          results={"send_to": ["caller"]})
    server = start_server(config)
    for path in sorted((tmp_path / "mr").rglob("*.dcm")) + sorted((tmp_path / "ct").iterdir()):
        assert orthanc.upload(path)["status"] == 200
    studies = orthanc.find("Study", {})
    assert len(studies) == 2
    sent = orthanc.http.post("/modalities/medsight/store", json={"Resources": studies, "Synchronous": True})
    assert sent.status_code == 200, sent.text

    def results():
        found = {m: orthanc.find("Instance", {"Modality": m}) for m in ("SEG", "SR")}
        return found if len(found["SEG"]) == 2 and len(found["SR"]) == 1 else None

    found = wait_for(results, 90, "two SEGs and one SR stored back in Orthanc")
    objects = [pydicom.dcmread(__import__("io").BytesIO(orthanc.http.get(f"/instances/{i}/file").content))
               for i in found["SEG"] + found["SR"]]
    segs = {seg.ReferencedSeriesSequence[0].SeriesInstanceUID: hd.seg.Segmentation.from_dataset(seg)
            for seg in objects if seg.Modality == "SEG"}
    assert set(segs) == {roles["flair"], ct_uid}, "the MR SEG references the FLAIR series, the marks the CT"
    assert segs[roles["flair"]].number_of_segments == 3 and segs[ct_uid].number_of_segments == 3
    assert not any(needle in seg.PatientName.encode() + seg.PatientID.encode() for seg in objects for needle in NEEDLES)

    # the SR's TID 1500 groups hold what a plain predict of the same series writes in submission.csv
    plain = medsight.load(detector, engine="torch").predict_files([tmp_path / "ct"], tmp_path / "plain", dicom=True)
    assert not plain.failures
    assert len(list((tmp_path / "plain").glob("*_marks_sr.dcm"))) == 1, "predict --dicom writes the SR serve sends"
    with open(tmp_path / "plain" / "submission.csv") as table:
        rows = list(csv.DictReader(table))[:3]
    sr = hd.sr.Comprehensive3DSR.from_dataset(next(o for o in objects if o.Modality == "SR"))
    groups = sr.content.get_planar_roi_measurement_groups()
    images = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, (tmp_path / "ct").iterdir())}
    assert len(groups) == len(rows) == 3
    for group, row in zip(groups, rows):
        diameter, probability = (m.value for m in group.get_measurements())
        assert diameter == pytest.approx(float(row["diameter_mm"]), abs=1e-3)
        assert probability == pytest.approx(float(row["probability"]), abs=1e-4)
        centre = np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")])
        assert np.linalg.norm(world_of_circle(group, images) - centre) <= np.linalg.norm(scan.spacing_mm)

    # exactly once: each result stored once, each recorded once; a study sent again makes no new job
    with sqlite3.connect(Path(server.config.folder) / "queue.sqlite") as db:
        delivered = db.execute("SELECT destination, sop_instance_uid FROM deliveries").fetchall()
    assert sorted(u for _, u in delivered) == sorted(str(o.SOPInstanceUID) for o in objects)
    jobs = len(server.queue.jobs())
    assert orthanc.http.post("/modalities/medsight/store", json={"Resources": studies, "Synchronous": True}).is_success
    assert len(server.queue.jobs()) == jobs == 2 and results() == found


def test_dcmtk_clients_and_the_bad_inputs_a_sender_sees(tmp_path, orthanc, detector, segmenter, start_server):
    config = serve_config(tmp_path, rules(detector, segmenter),
                          dicom={"port": orthanc.medsight_port, "allowed_callers": ["STORESCU", "ORTHANC"],
                                 "series_timeout": 1.0},
                          destinations=[{"name": "pacs", "ae_title": "ORTHANC", "port": orthanc.dicom_port},
                                        {"name": "down", "ae_title": "NOWHERE", "port": free_port()}],
                          results={"send_to": ["down"]})
    server = start_server(config)
    node = ["127.0.0.1", str(server.dicom_port)]
    echo = dcmtk("echoscu", "-aet", "STORESCU", "-aec", "MEDSIGHT", *node)
    assert echo.returncode == 0, echo.stderr
    stranger = dcmtk("echoscu", "-aet", "NOBODY", "-aec", "MEDSIGHT", *node)
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stderr
    # a series with a missing slice is accepted instance by instance, then its job is dead-lettered with why
    gap = tmp_path / "gap"
    ct_series(gap, slices=[k for k in range(16) if k != 7])
    stored = dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDSIGHT", *node, *map(str, sorted(gap.iterdir())))
    assert stored.returncode == 0, stored.stderr
    job = wait_for(lambda: next((j for j in server.queue.jobs() if j.state in ("done", "dead")), None), 60, "the job")
    assert job.state == "dead" and "1 missing slice(s)" in job.reason and job.attempts == 1, "not worth a retry"
    sizes = tmp_path / "sizes"
    ct_series(sizes)
    odd = pydicom.dcmread(min(sizes.iterdir()))
    odd.Rows = odd.Columns = 24
    odd.PixelData = odd.pixel_array[:24, :24].tobytes()
    odd.save_as(min(sizes.iterdir()))
    assert dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDSIGHT", *node, str(sizes), "+sd").returncode == 0
    two = wait_for(lambda: next((j for j in server.queue.jobs("dead") if j.id != job.id), None), 60, "the job")
    assert "1 slice(s) of another size" in two.reason and two.attempts == 1
    # a destination that is down: tried with back-off (0.2 s, 0.4 s), then dead-lettered with the reason
    ct_series(tmp_path / "good")
    assert dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDSIGHT", *node, str(tmp_path / "good"), "+sd").returncode == 0
    down = wait_for(lambda: next((j for j in server.queue.jobs("dead") if j.id not in (job.id, two.id)), None), 60,
                    "the third job")
    assert down.attempts == 3 and down.reason == (f"ConnectionError: destination down (NOWHERE@127.0.0.1:"
                                                  f"{server.config.destination('down').port}) did not accept an "
                                                  "association (after 3 tries)")
    assert len(server.queue.results(down.id)) == 2, "its results were made once and kept for the next try"
    # the real CT whose data sets hold empty SOP Class, SOP Instance, Study and Series UIDs (only its file meta
    # has the first two): Orthanc refuses it; storescu finds no presentation context ("unknown SOP class"); a
    # client that takes the UIDs from the file meta gets 0xA900 from medsight, with the reason
    # (shared data: checked where ../shared is present, as in CI; a test never needs it)
    if TOTALSEG_CT.is_dir():
        first = min(TOTALSEG_CT.iterdir())
        assert orthanc.upload(first)["status"] != 200
        plain = dcmtk("storescu", "-xv", "-aet", "STORESCU", "-aec", "MEDSIGHT", *node, str(first))
        assert "no presentation context for: (unknown sop class)" in plain.stderr.lower(), plain.stderr
        ds = pydicom.dcmread(first)
        ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
        from tests.serve.test_dicom_node import store

        assert store(server.dicom_port, [ds], "STORESCU", str(ds.file_meta.TransferSyntaxUID)) == [(0xA900, "medsight: no valid StudyInstanceUID")]
        assert server.node.refused == {"no valid StudyInstanceUID, SeriesInstanceUID": 1,
                                       "calling AE title not allowed": 1}
    else:
        assert server.node.refused == {"calling AE title not allowed": 1}
    assert dcmtk("echoscu", "-aet", "STORESCU", "-aec", "MEDSIGHT", *node).returncode == 0, "still serving"
    shutil.rmtree(tmp_path / "gap")


def test_results_stored_over_dicomweb_stow_rs_with_credentials_from_the_environment(tmp_path, detector, segmenter,
                                                                                     start_server, monkeypatch):
    """STOW-RS into Orthanc's DICOMweb plugin behind basic authentication: a wrong password is HTTP 401, the job
    is dead-lettered with that reason (and no password in it); re-queued with the right one, the SEG and SR
    arrive once each."""
    port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", port, dicomweb=True, users={"medsight": "s3cret"})
    try:
        ct_uid, _ = ct_series(tmp_path / "ct")
        monkeypatch.setenv("MEDSIGHT_TEST_STOW", "medsight:wrong")
        config = serve_config(tmp_path, rules(detector, segmenter),
                              dicom={"port": port, "allowed_callers": ["ORTHANC"], "complete_on": "association"},
                              queue={"max_attempts": 2, "backoff_s": 0.1},
                              destinations=[{"name": "archive", "dicomweb": f"{pacs.url}/dicom-web",
                                             "basic_auth_env": "MEDSIGHT_TEST_STOW"}],
                              results={"send_to": ["archive"]})
        server = start_server(config)
        for path in sorted((tmp_path / "ct").iterdir()):
            assert pacs.upload(path)["status"] == 200
        sent = pacs.http.post("/modalities/medsight/store", json={"Resources": pacs.find("Study", {}),
                                                                  "Synchronous": True})
        assert sent.status_code == 200, sent.text
        dead = wait_for(lambda: server.queue.jobs("dead"), 90, "the job dead-lettered by the wrong password")
        assert "HTTP 401" in dead[0].reason and "wrong" not in dead[0].reason
        assert not pacs.find("Instance", {"Modality": "SEG"})

        monkeypatch.setenv("MEDSIGHT_TEST_STOW", "medsight:s3cret")
        assert server.retry_failed() == 1
        found = wait_for(lambda: (lambda f: f if len(f["SEG"]) == 1 and len(f["SR"]) == 1 else None)(
            {m: pacs.find("Instance", {"Modality": m}) for m in ("SEG", "SR")}), 60, "a SEG and an SR over STOW-RS")
        seg = pydicom.dcmread(__import__("io").BytesIO(pacs.http.get(f"/instances/{found['SEG'][0]}/file").content))
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_uid
        wait_for(lambda: server.queue.jobs("done"), 30, "the job done")
        with sqlite3.connect(Path(server.config.folder) / "queue.sqlite") as db:
            delivered = db.execute("SELECT destination, sop_instance_uid FROM deliveries").fetchall()
        stored = [pacs.http.get(f"/instances/{i}").json()["MainDicomTags"]["SOPInstanceUID"]
                  for i in found["SEG"] + found["SR"]]
        assert sorted(delivered) == sorted(("archive", uid) for uid in stored)
    finally:
        pacs.stop()
