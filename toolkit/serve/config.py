"""``serve.yaml``: typed sections validated like every medsight config (OmegaConf through
``medsight.core.config``: an unknown key or a wrong type is one line naming it), and the routing rules
that map a DICOM series to a checkpoint and its task options.

A rule matches a series by Modality, BodyPartExamined, a SeriesDescription regex, a value of ImageType
and the number of slices. A rule with ``roles`` takes several series of one study (a multi-modal MR
case): each role is matched by its own rule, usually a SeriesDescription regex, and the job starts when
every role has a completed series.
"""

from __future__ import annotations

# ruff: noqa: UP045  (OmegaConf reads Optional[...] in structured configs, as medsight.core.config does)

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from medsight.core.config import resolve_structured
from medsight.errors import ConfigError


@dataclass
class Match:
    """What a series must have; an unset field matches anything. Text is compared case-insensitively."""

    modality: Optional[str] = None
    body_part: Optional[str] = None
    series_description: Optional[str] = None  # a regular expression, searched
    image_type: Optional[str] = None  # one value ImageType must hold (ORIGINAL, PRIMARY, AXIAL...)
    min_slices: int = 1
    max_slices: Optional[int] = None

    def matches(self, series: dict) -> bool:
        if self.modality and str(series.get("modality", "")).upper() != self.modality.upper():
            return False
        if self.body_part and str(series.get("body_part", "")).upper() != self.body_part.upper():
            return False
        if self.series_description and not re.search(self.series_description, series.get("description", ""),
                                                     re.IGNORECASE):
            return False
        if self.image_type and self.image_type.upper() not in [v.upper() for v in series.get("image_type", [])]:
            return False
        slices = int(series.get("slices", 0))
        return slices >= self.min_slices and (self.max_slices is None or slices <= self.max_slices)


@dataclass
class Rule:
    name: str = ""
    checkpoint: str = ""
    #: task options (keys of the task's ``infer`` section), as ``Model.predict`` takes them
    options: dict[str, Any] = field(default_factory=dict)
    match: Match = field(default_factory=Match)
    #: role -> how that role's series is recognised within the study (segmentation: flair, t1, t1c, t2)
    roles: dict[str, Match] = field(default_factory=dict)
    #: destination names to send this rule's results to (default: ``results.send_to``)
    send_to: Optional[list[str]] = None


@dataclass
class DicomSection:
    ae_title: str = "MEDSIGHT"
    host: str = "127.0.0.1"
    port: int = 11112
    #: calling AE titles allowed to associate; empty: any
    allowed_callers: list[str] = field(default_factory=list)
    #: a series is complete after this many seconds without a new instance ...
    series_timeout: float = 10.0
    #: ... ``timeout``, or when the association that brought it ends (``association``), or ``both``
    complete_on: str = "both"
    #: a multi-role study waits this long after its last series for the missing roles
    study_timeout: float = 300.0


@dataclass
class HttpSection:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    #: a file of bearer tokens, one a line (``#`` comments); and/or an environment variable holding them
    #: separated by commas
    tokens_file: Optional[str] = None
    tokens_env: str = "MEDSIGHT_SERVE_TOKENS"
    #: with no token configured every request is refused, unless this is set and it comes from loopback
    allow_loopback_without_token: bool = False
    max_upload_mb: float = 2048.0


@dataclass
class QueueSection:
    capacity: int = 100
    max_attempts: int = 5
    backoff_s: float = 2.0
    max_backoff_s: float = 300.0


@dataclass
class ModelsSection:
    #: loaded models are kept while their weights fit this budget; the least recently used go first
    memory_budget_mb: float = 4096.0
    device: Optional[str] = None
    engine: str = "auto"
    #: load every rule's model at start, with its engine ready for the rule's options (as far as the budget
    #: holds), before the node answers: the first study does not pay it (1-2 s here, more with engine auto)
    preload: bool = True


@dataclass
class Destination:
    """A C-STORE SCP (``ae_title``, ``host``, ``port``) or a DICOMweb STOW-RS endpoint (``dicomweb``: the
    DICOMweb root URL), whose credentials are read from the environment variables named."""

    name: str = ""
    ae_title: str = ""
    host: str = "127.0.0.1"
    port: int = 104
    dicomweb: Optional[str] = None
    #: STOW-RS: the environment variable holding a bearer token, or one holding ``user:password``
    token_env: Optional[str] = None
    basic_auth_env: Optional[str] = None


@dataclass
class ResultsSection:
    #: copy patient identifiers into results (they are removed, as ``predict --dicom`` does, by default)
    keep_identifiers: bool = False
    #: destination names; ``caller``: the destination whose AE title called (the sender of the study)
    send_to: list[str] = field(default_factory=lambda: ["caller"])
    #: the calling AE's own C-STORE timeout for results, seconds
    timeout_s: float = 30.0
    #: also draw the pictures ``medsight predict`` draws for a person (overlay PNGs, slice viewers) into the
    #: job's folder; null: for HTTP jobs (``GET /v1/jobs/{id}/files``), not for DICOM ones, whose viewer is the
    #: PACS (0.4 s less per CT job here)
    pictures: Optional[bool] = None


@dataclass
class ServeConfig:
    #: the serve folder: queue database, received instances, uploads, results
    folder: str = "serve"
    workers: int = 1
    dicom: DicomSection = field(default_factory=DicomSection)
    http: HttpSection = field(default_factory=HttpSection)
    queue: QueueSection = field(default_factory=QueueSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    results: ResultsSection = field(default_factory=ResultsSection)
    destinations: list[Destination] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise ConfigError(f"no rule named {name!r} (rules: {', '.join(r.name for r in self.rules) or 'none'})")

    def destination(self, name: str) -> Destination:
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise ConfigError(f"no destination named {name!r}")


def load_config(source: str | Path | dict, base: Path | None = None) -> ServeConfig:
    """A validated ``ServeConfig`` from a YAML file or a dict; relative paths are taken from the file's folder
    (or ``base``)."""
    if isinstance(source, dict):
        values, where, base = source, "serve config", Path(base or ".")
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError("serve config not found", path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
        where, base = str(path), Path(base or path.parent)
    if not isinstance(values, dict):
        raise ConfigError("a serve config is a mapping of sections", where)
    config = resolve_structured(ServeConfig, values, where)
    _check(config, where)
    config.folder = str((base / config.folder).resolve())
    for rule in config.rules:
        rule.checkpoint = str((base / rule.checkpoint).resolve())
    if config.http.tokens_file:
        config.http.tokens_file = str((base / config.http.tokens_file).resolve())
    return config


def _check(config: ServeConfig, where: str) -> None:
    if config.dicom.complete_on not in ("timeout", "association", "both"):
        raise ConfigError(f"dicom.complete_on must be timeout, association or both, not {config.dicom.complete_on!r}",
                          where)
    if config.dicom.series_timeout <= 0 or config.queue.capacity < 1 or config.queue.max_attempts < 1:
        raise ConfigError("dicom.series_timeout, queue.capacity and queue.max_attempts must be positive", where)
    names = [d.name for d in config.destinations]
    for index, destination in enumerate(config.destinations):
        label = f"destinations[{index}]" + (f" ({destination.name})" if destination.name else "")
        if not destination.name:
            raise ConfigError(f"{label}: a destination needs a name", where)
        if bool(destination.ae_title) == bool(destination.dicomweb):
            raise ConfigError(f"{label}: give either ae_title (C-STORE) or dicomweb (a STOW-RS URL)", where)
        if destination.dicomweb and not re.match(r"https?://", destination.dicomweb):
            raise ConfigError(f"{label}: dicomweb must be an http:// or https:// URL, not {destination.dicomweb!r}",
                              where)
    for index, rule in enumerate(config.rules):
        label = f"rules[{index}]" + (f" ({rule.name})" if rule.name else "")
        if not rule.name or not rule.checkpoint:
            raise ConfigError(f"{label}: a rule needs a name and a checkpoint", where)
        for match in [rule.match, *rule.roles.values()]:
            if match.series_description:
                try:
                    re.compile(match.series_description)
                except re.error as exc:
                    raise ConfigError(f"{label}: series_description {match.series_description!r} is not a "
                                      f"regular expression ({exc})", where) from None
        for target in rule.send_to or []:
            if target != "caller" and target not in names:
                raise ConfigError(f"{label}: send_to names {target!r}, which is not among destinations "
                                  f"({', '.join(names) or 'none'})", where)
    if len({r.name for r in config.rules}) != len(config.rules):
        raise ConfigError("rule names must be unique", where)
    for target in config.results.send_to:
        if target != "caller" and target not in names:
            raise ConfigError(f"results.send_to names {target!r}, which is not among destinations "
                              f"({', '.join(names) or 'none'})", where)


def route(rules: list[Rule], series: dict) -> tuple[Rule, str | None] | None:
    """The first rule (and its role, for a multi-role rule) that takes ``series`` (modality, body_part,
    description, image_type, slices); None when no rule does."""
    for rule in rules:
        if not rule.match.matches(series):
            continue
        if not rule.roles:
            return rule, None
        for role, match in rule.roles.items():
            if match.matches(series):
                return rule, role
    return None
