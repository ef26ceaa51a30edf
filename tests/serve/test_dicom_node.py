"""The DICOM node against a real pynetdicom client: C-ECHO, C-STORE written to disk before the answer, series
completion, routing to a job that writes a DICOM SEG and a TID 1500 SR, and each bad input refused in one
line with a status that says why, while the node keeps serving."""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import ComprehensiveSRStorage, Verification

from tests.serve.conftest import ct_series, serve_config, wait_for
from tests.toolkit.test_dicom_out import NEEDLES


def client(port: int, calling: str = "ORTHANC", transfer_syntax: str | None = None):
    ae = AE(ae_title=calling)
    ae.requested_contexts = AllStoragePresentationContexts[:120]
    ae.add_requested_context(Verification)
    ae.add_requested_context(ComprehensiveSRStorage)
    if transfer_syntax:  # as the files are: e.g. a real CT in JPEG 2000
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", transfer_syntax)
    return ae.associate("127.0.0.1", port, ae_title="MEDSIGHT")


def store(port: int, items, calling: str = "ORTHANC", transfer_syntax: str | None = None) -> list:
    """C-STORE each file or data set in one association; the (status, comment) of each."""
    assoc = client(port, calling, transfer_syntax)
    assert assoc.is_established
    answers = []
    for item in items:
        status = assoc.send_c_store(item)
        answers.append((int(status.Status), str(status.get("ErrorComment", ""))))
    assoc.release()
    return answers


def test_a_ct_series_stored_over_dicom_becomes_a_job_with_a_seg_and_a_tid1500_sr(tmp_path, detector, start_server,
                                                                                  caplog):
    caplog.set_level(logging.DEBUG, logger="medsight")
    uid, _ = ct_series(tmp_path / "ct")
    rules = [{"name": "nodules", "checkpoint": str(detector),
              "match": {"modality": "CT", "body_part": "chest", "image_type": "ORIGINAL", "min_slices": 10}}]
    server = start_server(serve_config(tmp_path, rules, dicom={"allowed_callers": ["ORTHANC"]}))
    assoc = client(server.dicom_port)
    assert int(assoc.send_c_echo().Status) == 0
    files = sorted((tmp_path / "ct").iterdir())
    for path in files:
        assert int(assoc.send_c_store(pydicom.dcmread(path)).Status) == 0
        # answered only once on disk and recorded
        assert server.inbox.state(uid) == "open"
    assert len(list(server.inbox.series_folder(pydicom.dcmread(files[0]).StudyInstanceUID, uid).iterdir())) == 16
    assoc.release()
    job = wait_for(lambda: next((j for j in server.queue.jobs() if j.state in ("done", "dead")), None), 60, "the job")
    assert job.state == "done", job.reason
    written = {Path(p).name: p for _, p in server.queue.results(job.id)}
    assert set(written) == {f"{uid}_marks.dcm", f"{uid}_marks_sr.dcm"}
    seg = hd.seg.segread(written[f"{uid}_marks.dcm"])
    assert seg.number_of_segments == 3 and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    sr = hd.sr.srread(written[f"{uid}_marks_sr.dcm"])
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 3 and groups[0].get_measurements()[0].value > 0
    assert not any(needle in Path(p).read_bytes() for p in written.values() for needle in NEEDLES)
    assert not any(needle.decode() in record.getMessage() for record in caplog.records for needle in NEEDLES)


def test_bad_instances_are_refused_with_a_reason_and_the_node_keeps_serving(tmp_path, detector, start_server,
                                                                            caplog):
    ct_series(tmp_path / "ct")
    server = start_server(serve_config(tmp_path, [{"name": "n", "checkpoint": str(detector),
                                                   "match": {"modality": "CT"}}],
                                       dicom={"allowed_callers": ["ORTHANC"]}, queue={"capacity": 1}))
    files = sorted((tmp_path / "ct").iterdir())
    good = pydicom.dcmread(files[0])
    malformed = tmp_path / "malformed.dcm"
    malformed.write_bytes(files[1].read_bytes()[:-3000])  # a transfer cut off: pixel data short
    no_pixels = pydicom.dcmread(files[4])
    del no_pixels.PixelData
    no_series = pydicom.dcmread(files[2])
    del no_series.SeriesInstanceUID
    report = Dataset()
    report.SOPClassUID, report.SOPInstanceUID = ComprehensiveSRStorage, generate_uid()
    report.StudyInstanceUID, report.SeriesInstanceUID, report.Modality = generate_uid(), generate_uid(), "SR"
    report.file_meta = pydicom.dataset.FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    other_series = pydicom.dcmread(files[3])
    other_series.SeriesInstanceUID = generate_uid()
    answers = store(server.dicom_port, [good, malformed, no_series, report, no_pixels, other_series])
    assert answers[0] == (0x0000, "")
    assert answers[1] == (0xC210, "medsight: pixel data truncated (1608 of 4608 bytes)")
    assert answers[2] == (0xA900, "medsight: no valid SeriesInstanceUID")
    assert answers[3] == (0x0122, "medsight: a structured report (SR) is not an image it reads")
    assert answers[4] == (0xA900, "medsight: no pixel data")
    assert answers[5] == (0xA700, "medsight: queue full, send again later"), "one series is the capacity"
    assert not client(server.dicom_port, calling="STRANGER").is_established
    assert store(server.dicom_port, [pydicom.dcmread(f) for f in files[1:]])[-1] == (0, "")  # still serving
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dicom: refused")]
    assert len(refusals) == 6, refusals[-1]
    assert all("\n" not in line for line in refusals)
    assert "calling AE title not allowed" in refusals[-1]
