"""The HTTP API of ``medsight serve`` (FastAPI, run by uvicorn in a thread of the server's process).

``POST /v1/jobs`` (a NIfTI, MHD+RAW, PNG or a zip of a DICOM series; ``model``: a rule's name),
``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/files/{name}``, ``GET /v1/models``, ``GET /healthz``,
``GET /metrics`` and the OpenAPI page at ``/docs``. Every route but ``/healthz`` needs a bearer token
(``http.tokens_file`` / ``http.tokens_env``); with none configured every request is refused, except from
loopback when ``http.allow_loopback_without_token`` says so. A body larger than ``http.max_upload_mb`` is
refused from its Content-Length before a byte is read (413), and counted while read when it has none.
A full queue answers 503 with Retry-After. No log line holds a file name or an identifier from a request.
"""

from __future__ import annotations

import hmac
import logging
import os
import shutil
import socket
import threading
import zipfile
from pathlib import Path

from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response

from medsight.errors import ConfigError

log = logging.getLogger("medsight.serve")

SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".png", ".jpg", ".jpeg", ".dcm", ".zip")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def read_tokens(http) -> set[str]:
    """The bearer tokens allowed: lines of ``tokens_file`` (``#`` comments) and the comma-separated
    ``tokens_env`` variable."""
    tokens = set()
    if http.tokens_file and Path(http.tokens_file).is_file():
        tokens |= {line.strip() for line in Path(http.tokens_file).read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith("#")}
    tokens |= {t.strip() for t in os.environ.get(http.tokens_env, "").split(",") if t.strip()}
    return tokens


class UploadLimit:
    """ASGI middleware: a body over ``limit`` bytes is answered 413, from its Content-Length before reading,
    or as soon as the bytes read pass the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _too_large(self.limit)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _too_large(self.limit)(scope, receive, send)


class _TooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"upload larger than the limit of {limit / 2**20:.0f} MB (http.max_upload_mb)"},
                        status_code=413)


def make_app(server) -> FastAPI:
    config = server.config
    app = FastAPI(title="medsight serve", version="1", description="Predictions of medsight models as jobs.")
    tokens = read_tokens(config.http)

    def authorised(request: Request) -> None:
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if tokens:
            if not given or not any(hmac.compare_digest(given, t) for t in tokens):
                raise HTTPException(401, "a valid bearer token is needed (Authorization: Bearer ...)",
                                    headers={"WWW-Authenticate": "Bearer"})
            return
        client = request.client.host if request.client else ""
        if not (config.http.allow_loopback_without_token and client in _LOOPBACK):
            raise HTTPException(401, "no API tokens are configured (http.tokens_file or the "
                                     f"{config.http.tokens_env} variable): every request is refused",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "queue": server.pending(), "capacity": config.queue.capacity}

    @app.get("/metrics", dependencies=[Depends(authorised)])
    def metrics() -> Response:
        return Response(server.metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    def models() -> list[dict]:
        loaded = set(server.models.loaded())
        return [{"name": r.name, "checkpoint": Path(r.checkpoint).name, "roles": list(r.roles),
                 "options": r.options, "loaded": r.checkpoint in loaded} for r in config.rules]

    @app.post("/v1/jobs", status_code=202, dependencies=[Depends(authorised)])
    def submit(model: Annotated[str, Form(description="a rule's name (GET /v1/models)")],
               files: Annotated[list[UploadFile], File(description="the case's files")],
               roles: Annotated[str, Form(description="comma-separated role of each file (multi-modal)")] = "",
               ) -> dict:
        try:
            rule = config.rule(model)
        except ConfigError:
            raise HTTPException(404, f"no model {model!r}: GET /v1/models lists them") from None
        if not server.queue.has_room() or server.pending() >= config.queue.capacity:
            raise HTTPException(503, "the queue is full: send again later", headers={"Retry-After": "30"})
        names = [r.strip() for r in roles.split(",") if r.strip()]
        if names and len(names) != len(files):
            raise HTTPException(422, f"{len(names)} roles for {len(files)} files")
        job_id = server.queue.receive({"kind": "http", "rule": rule.name, "model": rule.name})
        folder = server.folder / "jobs" / job_id / "inputs"
        try:
            inputs, dicom = _store_uploads(files, folder)
        except ValueError as exc:
            server.queue.fail(job_id, str(exc), retry=False)
            raise HTTPException(422, str(exc)) from None
        if names:
            inputs = dict(zip(names, inputs))
        elif rule.roles and dicom:  # one zip (or several) of a multi-series study: each series to its role
            try:
                inputs = roles_of_series(inputs, rule)
            except ValueError as exc:
                server.queue.fail(job_id, str(exc), retry=False)
                raise HTTPException(422, str(exc)) from None
        elif len(inputs) == 1:
            inputs = inputs[0]
        server.queue.enqueue(job_id, {"kind": "http", "rule": rule.name, "model": rule.name, "inputs": inputs,
                                      "dicom": dicom, "send": False})
        log.info(f"http: job {job_id} for model {rule.name} ({len(files)} file(s))")
        return {"id": job_id, "state": "queued", "status": f"/v1/jobs/{job_id}"}

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(authorised)])
    def job(job_id: str) -> dict:
        found = server.queue.get(job_id)
        if found is None:
            raise HTTPException(404, "no such job")
        results = server.pipeline.results_folder(job_id)
        files = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()) \
            if found.state == "done" and results.is_dir() else []
        return found.as_dict() | {"files": [f"/v1/jobs/{job_id}/files/{f}" for f in files]}

    @app.get("/v1/jobs/{job_id}/files/{name:path}", dependencies=[Depends(authorised)])
    def job_file(job_id: str, name: str):
        results = server.pipeline.results_folder(job_id).resolve()
        path = (results / name).resolve()
        if not path.is_relative_to(results) or not path.is_file():
            raise HTTPException(404, "no such file")
        return FileResponse(path)

    return UploadLimit(app, int(config.http.max_upload_mb * 2**20))


def _store_uploads(files: list[UploadFile], folder: Path) -> tuple[list[str], bool]:
    """Write each upload under ``folder`` (our own names: a client's file name may name the patient),
    synced; a zip becomes the folder of its DICOM files. Returns (inputs, whether they are DICOM)."""
    from medsight.io.writers import atomic_path

    inputs, dicom = [], False
    for index, upload in enumerate(files):
        original = (upload.filename or "").lower()
        suffix = next((s for s in SUFFIXES if original.endswith(s)), None)
        if suffix is None:
            raise ValueError(f"file {index + 1}: not a NIfTI, MHD, NRRD, PNG, JPEG, DICOM file or zip of DICOM files")
        path = folder / f"input_{index}{suffix}"
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            shutil.copyfileobj(upload.file, handle, 2**20)
        if suffix == ".zip":
            inputs.append(str(_unzip(path, folder / f"input_{index}")))
            dicom = True
        else:
            inputs.append(str(path))
            dicom = dicom or suffix == ".dcm"
    return inputs, dicom


def roles_of_series(folders: list[str], rule) -> dict[str, str]:
    """Role -> folder of its series, for DICOM uploads holding the series of a multi-role study: the files are
    sorted into one folder per Series Instance UID, and each series is given the role whose rule matches it
    (as series arriving over DICOM are); a series that no role takes is left out. Raises ValueError naming
    the roles not found, or a role two series match."""
    import pydicom

    from medsight.serve.inbox import series_attributes

    by_series: dict[str, list[Path]] = {}
    first: dict[str, pydicom.Dataset] = {}
    for folder in map(Path, folders):
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001  (not DICOM: not part of any series)
                continue
            uid = str(ds.get("SeriesInstanceUID", "")) or "no-series-uid"
            by_series.setdefault(uid, []).append(path)
            first.setdefault(uid, ds)
    chosen: dict[str, str] = {}
    for number, (uid, paths) in enumerate(sorted(by_series.items())):
        attributes = series_attributes(first[uid]) | {"slices": len(paths)}
        roles = [role for role, match in rule.roles.items()
                 if rule.match.matches(attributes) and match.matches(attributes)]
        if not roles:
            continue
        if roles[0] in chosen:
            raise ValueError(f"two series of the upload match role {roles[0]} of model {rule.name}")
        target = Path(folders[0]).parent / f"series_{number}"
        target.mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(paths):
            path.rename(target / f"{index:05d}.dcm")
        chosen[roles[0]] = str(target)
    missing = [role for role in rule.roles if role not in chosen]
    if missing:
        raise ValueError(f"no series of the upload matches role(s) {', '.join(missing)} of model {rule.name} "
                         f"({len(by_series)} series found)")
    return {role: chosen[role] for role in rule.roles}


def _unzip(path: Path, folder: Path, limit_bytes: int = 8 * 2**30) -> Path:
    """The DICOM files of a zip, flat in ``folder`` (no path of the archive is trusted)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError("the upload is not a valid zip file") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > limit_bytes:
            raise ValueError("the zip unpacks to more than 8 GB")
        folder.mkdir(parents=True, exist_ok=True)
        for number, member in enumerate(members):
            with archive.open(member) as source, open(folder / f"{number:05d}.dcm", "wb") as target:
                shutil.copyfileobj(source, target, 2**20)
    if not members:
        raise ValueError("the zip holds no files")
    return folder


class HttpServer:
    """uvicorn serving the app on ``http.host:http.port`` (0: a free port) in a thread of this process."""

    def __init__(self, server):
        import uvicorn

        http = server.config.http
        self.socket = socket.socket(socket.AF_INET6 if ":" in http.host else socket.AF_INET)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((http.host, http.port))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(make_app(server), log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="medsight-http", daemon=True)

    def start(self) -> HttpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()
