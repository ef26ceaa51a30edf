"""The DICOM side of ``medsight serve`` (pynetdicom): a C-ECHO and C-STORE SCP that writes each instance
to disk before it answers, and a C-STORE SCU that sends results to a destination.

What a sender sees for each refusal (C-STORE status, with an ErrorComment):

- 0xA700 out of resources: the queue is full (a new series only; a series already open is taken whole);
- 0x0122 SOP class not supported: not an image (SR, presentation state, SEG, key objects...);
- 0xA900 data set does not match SOP class: no Study, Series or SOP Instance UID, or no pixel data;
- 0xC210 cannot understand: the data set cannot be decoded, or its pixel data is cut short;
- an association rejected (calling AE title not recognised) for a caller not on the allow-list.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pydicom

from medsight.serve.inbox import Inbox, series_attributes, tag, valid_uid
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

log = logging.getLogger("medsight.serve")

OUT_OF_RESOURCES, NOT_SUPPORTED, DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0xA700, 0x0122, 0xA900, 0xC210
#: SOP classes that carry pixel data but are not images a model reads
_NOT_IMAGES = {"1.2.840.10008.5.1.4.1.1.66.4": "a segmentation (SEG)", "1.2.840.10008.5.1.4.1.1.66": "raw data",
               "1.2.840.10008.5.1.4.1.1.104.1": "an encapsulated PDF"}
_NOT_IMAGE_PREFIXES = {"1.2.840.10008.5.1.4.1.1.88.": "a structured report (SR)",
                       "1.2.840.10008.5.1.4.1.1.11.": "a presentation state",
                       "1.2.840.10008.5.1.4.1.1.481.": "a radiotherapy object"}


def not_an_image(sop_class: str, ds: Dataset) -> str | None:
    """Why an instance of ``sop_class`` is no image for a model, or None."""
    if sop_class in _NOT_IMAGES:
        return _NOT_IMAGES[sop_class]
    for prefix, what in _NOT_IMAGE_PREFIXES.items():
        if sop_class.startswith(prefix):
            return what
    return None


def pixel_problem(ds: Dataset) -> str | None:
    """Why the pixel data cannot be an image (missing, or shorter than its attributes say), or None."""
    if "PixelData" not in ds:
        return "no pixel data"
    if ds.file_meta.get("TransferSyntaxUID") in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"):
        try:
            needed = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                      * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) // 8)
        except (AttributeError, TypeError, ValueError):
            return "no valid Rows, Columns or BitsAllocated"
        if len(ds.PixelData) < needed:
            return f"pixel data truncated ({len(ds.PixelData)} of {needed} bytes)"
    return None


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


class DicomNode:
    """The SCP. ``has_room(series_uid)``: whether a new series may start; ``on_association_end(id)``: the
    association ``id`` ended (released, aborted or dropped)."""

    def __init__(self, inbox: Inbox, ae_title: str, host: str, port: int, allowed_callers: list[str],
                 has_room: Callable[[str], bool], on_association_end: Callable[[str], None]):
        self.inbox, self.has_room, self.on_association_end = inbox, has_room, on_association_end
        self.ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self.ae.maximum_pdu_size = 0  # no limit
        if allowed_callers:
            self.ae.require_calling_aet = list(allowed_callers)
        self.address = (host, port)
        self.server = None
        self.refused: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.address[1]

    def start(self) -> DicomNode:
        handlers = [(evt.EVT_C_ECHO, lambda event: 0x0000), (evt.EVT_C_STORE, self.on_store),
                    (evt.EVT_CONN_CLOSE, self._closed), (evt.EVT_REJECTED, self._rejected)]
        self.server = self.ae.start_server(self.address, block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()

    def _rejected(self, event) -> None:
        self._refuse(event, "calling AE title not allowed", "association rejected")

    def _closed(self, event) -> None:
        self.on_association_end(str(id(event.assoc)))

    def _refuse(self, event, why: str, answer: str) -> None:
        with self._lock:
            self.refused[why] = self.refused.get(why, 0) + 1
        caller = event.assoc.requestor.ae_title
        log.warning(f"dicom: refused an instance from {caller!r}: {why} ({answer})")

    def on_store(self, event) -> Dataset | int:
        """Check, write, record, then answer; any refusal is one log line and a status with a comment."""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            sop_class = str(event.request.AffectedSOPClassUID)
            study, series, sop = (ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"),
                                  ds.get("SOPInstanceUID"))
            attrs = series_attributes(ds)
        except Exception as exc:  # noqa: BLE001  (pydicom raises many kinds on damaged bytes)
            self._refuse(event, f"malformed data set ({type(exc).__name__})", "0xC210")
            return _status(CANNOT_UNDERSTAND, "medsight: the data set cannot be decoded")
        what = not_an_image(sop_class, ds)
        if what is not None:
            self._refuse(event, f"not an image: {what}", "0x0122")
            return _status(NOT_SUPPORTED, f"medsight: {what} is not an image it reads")
        problem = pixel_problem(ds)
        if problem is not None and problem.startswith("pixel data truncated"):
            self._refuse(event, f"malformed data set: {problem}", "0xC210")
            return _status(CANNOT_UNDERSTAND, f"medsight: {problem}")
        missing = [name for name, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series),
                                          ("SOPInstanceUID", sop)) if not valid_uid(uid)]
        if missing:
            self._refuse(event, f"no valid {', '.join(missing)}", "0xA900")
            return _status(DOES_NOT_MATCH, f"medsight: no valid {missing[0]}")
        if problem is not None:
            self._refuse(event, problem, "0xA900")
            return _status(DOES_NOT_MATCH, f"medsight: {problem}")
        state = self.inbox.state(str(series))
        if state not in (None, "open"):  # a study sent again, or a series that paused past series_timeout
            log.info(f"dicom: an instance of series {tag(series)}, already {state}: stored, not processed again")
        if state is None and not self.has_room(str(series)):
            self._refuse(event, "queue full", "0xA700")
            return _status(OUT_OF_RESOURCES, "medsight: queue full, send again later")
        self.inbox.store(event.encoded_dataset(), str(sop), str(study), str(series), attrs,
                         event.assoc.requestor.ae_title, str(id(event.assoc)))
        log.debug(f"dicom: stored an instance of series {tag(series)}")
        return 0x0000


class DicomDestination:
    """A C-STORE SCP that results are sent to; ``send`` raises when the instance was not stored."""

    def __init__(self, name: str, ae_title: str, host: str, port: int, calling_ae: str = "MEDSIGHT",
                 timeout_s: float = 30.0):
        self.name, self.ae_title, self.host, self.port = name, ae_title, host, port
        self.calling_ae, self.timeout_s = calling_ae, timeout_s

    def send(self, path: Path) -> None:
        self.send_all([("", Path(path))], lambda uid: None)

    def send_all(self, items, stored) -> None:
        """C-STORE each (SOP Instance UID, file) over one association (a job's SEG, SR and captures), calling
        ``stored(uid)`` after each success; raises at the first failure."""
        datasets = [(uid, pydicom.dcmread(path)) for uid, path in items]
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = min(self.timeout_s, 10)
        for sop_class in dict.fromkeys(str(ds.SOPClassUID) for _, ds in datasets):
            syntaxes = list(dict.fromkeys([*(str(ds.file_meta.TransferSyntaxUID) for _, ds in datasets
                                             if str(ds.SOPClassUID) == sop_class),
                                           "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]))
            ae.add_requested_context(sop_class, syntaxes)
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            raise ConnectionError(f"destination {self.name} ({self.ae_title}@{self.host}:{self.port}) did not "
                                  "accept an association")
        try:
            for uid, ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status and "Status" in status else None
                if code is None:
                    raise ConnectionError(f"destination {self.name}: no answer to C-STORE")
                if code != 0 and not 0xB000 <= code <= 0xBFFF:  # warnings (coerced, discarded) are stored
                    raise ConnectionError(f"destination {self.name}: C-STORE status 0x{code:04X}")
                stored(uid)
        finally:
            if assoc.is_established:
                assoc.release()
