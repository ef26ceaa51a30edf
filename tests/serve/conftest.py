"""Fixtures of the serve tests: tiny random-weight checkpoints (made in a second, no training: the tests
check plumbing and geometry, not accuracy), synthetic DICOM series, free loopback ports, and a server
started in this process and stopped after the test."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsight.core.geometry import itk_from_affine
from medsight.datasets.synth.dicom import write_series
from pydicom.uid import MRImageStorage

from tests.toolkit.test_dicom_out import MARKERS, random_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    """Poll ``condition()`` until it is truthy (returned) or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def detector(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve-models")
    return random_checkpoint("detection", folder / "det.pt", "infer.roi_size=[64,64,32]",
                             "infer.dicom_min_probability=0.0", "infer.dicom_max_marks=3", "infer.score_threshold=0.0")


@pytest.fixture(scope="session")
def segmenter(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve-models")
    return random_checkpoint("segmentation", folder / "seg.pt", "data.modalities=[flair,t1c]",
                             "infer.roi_size=[32,32,16]", "infer.threshold=0.4", "model.init_filters=8",
                             state={"convention": "brats2021", "modalities": ["flair", "t1c"]})


def ct_series(folder: Path, shape=(48, 48, 16), spacing=(1.8, 1.8, 3.0), **kwargs) -> tuple[str, object]:
    """A synthetic chest CT (small by default) as a DICOM series (identifier markers inside); returns (series UID,
    scan)."""
    from medsight.datasets.synth.luna16 import make_scan

    scan = make_scan(0, np.random.default_rng(2), shape=tuple(shape), spacing=tuple(spacing))
    uid = write_series(scan.volume.astype(np.float32), scan.origin_lps, scan.spacing_mm, scan.direction, folder,
                       identifiers=MARKERS, description="CHEST 3mm", **kwargs)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined, ds.ImageType = "CHEST", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.save_as(path)
    return uid, scan


def mr_study(folder: Path, shape=(32, 32, 20), slice_mm: float = 1.5) -> dict[str, str]:
    """FLAIR and T1c of one synthetic case (small by default) as two MR series of one study; returns role -> series
    UID."""
    from medsight.datasets.synth.brats import make_case

    images, _ = make_case(np.random.default_rng(6), tuple(shape))
    affine = np.diag([-1.0, -1.0, slice_mm, 1.0])
    affine[:3, 3] = [15.0, 20.0, -12.0]
    origin, spacing, direction = itk_from_affine(affine)
    study = pydicom.uid.generate_uid()
    uids = {}
    for role, description in (("flair", "AX FLAIR"), ("t1c", "AX T1 POST GD")):
        volume = np.clip(np.asarray(images[role], dtype=np.float32) * 100 + 2000, 0, 60000)
        uids[role] = write_series(volume, origin, spacing, direction, folder / role, rescale_intercept=0.0,
                                  identifiers=MARKERS, description=description)
        for path in (folder / role).iterdir():
            ds = pydicom.dcmread(path)
            ds.Modality, ds.StudyInstanceUID, ds.SOPClassUID = "MR", study, MRImageStorage
            ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            del ds.RescaleType
            ds.save_as(path)
    return uids


def serve_config(folder: Path, rules: list[dict], **sections) -> dict:
    config = {"folder": str(folder / "serve"), "workers": 1,
              "dicom": {"ae_title": "MEDSIGHT", "port": free_port(), "series_timeout": 1.0, "complete_on": "both"},
              "http": {"enabled": False}, "models": {"engine": "torch", "device": "cpu"},
              "queue": {"backoff_s": 0.2, "max_attempts": 3}, "results": {"send_to": []}, "rules": rules}
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


@pytest.fixture
def start_server():
    """``start_server(config) -> Server`` started here, stopped when the test ends."""
    from medsight.serve import Server

    servers = []

    def start(config) -> Server:
        server = Server(config).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
