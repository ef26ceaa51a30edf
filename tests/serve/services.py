"""The real services the serve tests start themselves: Orthanc (the Debian package) as the PACS, run from a
temporary folder on free loopback ports, and dcmtk's command-line clients. Missing, a test fails and says
how to install them (CI installs them in .ci/run); ``MEDSIGHT_NO_SERVICES=1`` skips such tests instead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import free_port


def need(tool: str, package: str) -> str:
    """The path of ``tool`` (a command, or an absolute path of a file that a package installs)."""
    places = [tool] if os.path.isabs(tool) else [shutil.which(tool), f"/usr/sbin/{tool}", f"/usr/bin/{tool}"]
    found = next((p for p in places if p and os.path.exists(p)), None)
    if found:
        return found
    if os.environ.get("MEDSIGHT_NO_SERVICES") == "1":
        pytest.skip(f"{tool} is not installed (MEDSIGHT_NO_SERVICES=1)")
    pytest.fail(f"{tool} is not installed: apt-get install {package} (.ci/run does), or set MEDSIGHT_NO_SERVICES=1 "
                "to skip the tests that need it")


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    """An Orthanc, loopback only, whose modality ``medsight`` is the serve node under test; with
    ``dicomweb``, its DICOMweb plugin (the Debian package ``orthanc-dicomweb``) serves ``/dicom-web``; with
    ``users`` (name -> password), every HTTP request needs basic authentication."""

    def __init__(self, folder: Path, medsight_port: int, aet: str = "ORTHANC", http_port: int | None = None,
                 dicom_port: int | None = None, dicomweb: bool = False, users: dict[str, str] | None = None):
        binary = need("Orthanc", "orthanc")
        plugins = []
        if dicomweb:
            plugins = [need(str(DICOMWEB_PLUGIN), "orthanc-dicomweb")]
        self.folder, self.aet = folder, aet
        self.http_port, self.dicom_port = http_port or free_port(), dicom_port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {"Name": "medsight-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
                  "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": aet,
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users),
                  "RegisteredUsers": users or {}, "Plugins": plugins, "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                  "DicomModalities": {"medsight": ["MEDSIGHT", "127.0.0.1", medsight_port]},
                  "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False, "StableAge": 1,
                  "DicomScuTimeout": 30, "HttpTimeout": 60, "ConcurrentJobs": 1}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "w")  # noqa: SIM115  (open while Orthanc runs)
        self.process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=self.log,
                                        stderr=subprocess.STDOUT, cwd=folder)
        self.url = f"http://127.0.0.1:{self.http_port}"
        auth = httpx.BasicAuth(*next(iter(users.items()))) if users else None
        self.http = httpx.Client(base_url=self.url, timeout=60, auth=auth)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"Orthanc exited: {(folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if self.http.get("/system").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        pytest.fail("Orthanc did not answer on its HTTP port within 30 s")

    def upload(self, path: Path) -> dict:
        answer = self.http.post("/instances", content=Path(path).read_bytes())
        return {"status": answer.status_code, **(answer.json() if answer.headers.get("content-type", "").startswith(
            "application/json") else {"text": answer.text})}

    def find(self, level: str, query: dict) -> list[str]:
        return self.http.post("/tools/find", json={"Level": level, "Query": query}).json()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([need(tool, "dcmtk"), *args], capture_output=True, text=True, timeout=timeout, check=False)
