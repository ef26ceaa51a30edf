"""DICOMweb STOW-RS destinations (dicomweb-client): results stored over HTTP into a PACS or archive that
speaks DICOMweb (Orthanc's DICOMweb plugin, dcm4chee, Google/Azure/AWS health-imaging stores).

``send`` raises unless the server's answer lists the instance among the stored ones (its
ReferencedSOPSequence) or the instance was already there; a failure is retried with back-off by the
queue, and the instance's SOP Instance UID is what delivery is recorded by, as for C-STORE.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom

from medsight.errors import ConfigError

#: PS3.18 Failure Reasons that mean "this instance is stored already": a repeated send after a crash
ALREADY_STORED = {0x0111}  # Duplicate SOP Instance (an archive that refuses duplicates; Orthanc overwrites)


class DicomWebDestination:
    """A STOW-RS endpoint at ``url`` (the DICOMweb root, e.g. ``http://pacs:8042/dicom-web``); a bearer
    token or ``user:password`` are read from the environment variables named, never from the config."""

    def __init__(self, name: str, url: str, token_env: str | None = None, basic_auth_env: str | None = None,
                 timeout_s: float = 30.0):
        self.name, self.url, self.timeout_s = name, url.rstrip("/"), timeout_s
        self.token_env, self.basic_auth_env = token_env, basic_auth_env

    def _client(self):
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        if self.token_env:
            token = os.environ.get(self.token_env, "").strip()
            if not token:
                raise ConfigError(f"destination {self.name}: the environment variable {self.token_env} holds no token")
            session.headers["Authorization"] = f"Bearer {token}"
        if self.basic_auth_env:
            user, sep, password = os.environ.get(self.basic_auth_env, "").partition(":")
            if not sep:
                raise ConfigError(f"destination {self.name}: the environment variable {self.basic_auth_env} does "
                                  "not hold user:password")
            session.auth = (user, password)
        return DICOMwebClient(self.url, session=session, timeout=self.timeout_s)

    def send_all(self, items, stored) -> None:
        """STOW-RS each (SOP Instance UID, file) over one session, calling ``stored(uid)`` after each success."""
        client = self._client()
        for uid, path in items:
            self.send(path, client)
            stored(uid)

    def send(self, path: Path, client=None) -> None:
        import requests

        ds = pydicom.dcmread(path)
        uid = str(ds.SOPInstanceUID)
        try:
            answer = (client or self._client()).store_instances([ds], study_instance_uid=str(ds.StudyInstanceUID))
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise ConnectionError(f"destination {self.name}: STOW-RS answered HTTP {status}") from None
        except requests.RequestException as exc:
            raise ConnectionError(f"destination {self.name} ({self.url}) is unreachable: {type(exc).__name__}") \
                from None
        for item in getattr(answer, "FailedSOPSequence", []) or []:
            if str(getattr(item, "ReferencedSOPInstanceUID", "")) == uid:
                reason = int(getattr(item, "FailureReason", 0) or 0)
                if reason in ALREADY_STORED:
                    return
                raise ConnectionError(f"destination {self.name}: STOW-RS refused the instance (failure reason "
                                      f"0x{reason:04X})")
        stored = {str(getattr(item, "ReferencedSOPInstanceUID", ""))
                  for item in getattr(answer, "ReferencedSOPSequence", []) or []}
        if uid not in stored:
            raise ConnectionError(f"destination {self.name}: the STOW-RS answer does not list the instance as stored")
