"""DICOM Structured Reports (highdicom): a TID 1500 measurement report referencing the images a prediction
was made on, de-identified as every DICOM object medsight writes. Generic: a task says what its groups
hold (regions on source images, measurements, present/absent findings); this module writes them.

Codes: SNOMED CT and DCM where they exist (Diameter, Nodule, Present/Absent, CAD operating point); a
model's probability has no standard code, so it is a private ``99MEDSIGHT`` code, as PS3.16 allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from medsight.io.dicom_out import deidentify
from medsight.io.writers import atomic_path

PROBABILITY = ("PROB", "99MEDSIGHT", "Model probability")


@dataclass
class Group:
    """One measurement group: ``label`` (its tracking identifier), ``measurements``: (name, value, unit)
    with names as ``(value, scheme, meaning)`` or a highdicom/pydicom code and units as UCUM strings;
    ``findings``: (name, present); ``region``: a circle ``(column, row, radius)`` in pixels on the source
    image ``image`` (a planar group), or None (a group about the whole image)."""

    label: str
    measurements: list[tuple] = field(default_factory=list)
    findings: list[tuple[str, bool]] = field(default_factory=list)
    finding_type: tuple | None = None
    image: pydicom.Dataset | None = None
    region: tuple[float, float, float] | None = None


def _code(code):
    import highdicom as hd

    return hd.sr.CodedConcept(*code) if isinstance(code, tuple) else code


def _unit(unit: str):
    import highdicom as hd

    meaning = {"mm": "millimeter", "1": "no units", "ml": "milliliter"}.get(unit, unit)
    return hd.sr.CodedConcept(unit, "UCUM", meaning)


def _group(group: Group, algorithm):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=group.label[:64])
    measurements = [hd.sr.Measurement(name=_code(name), value=float(value), unit=_unit(unit), algorithm_id=algorithm)
                    for name, value, unit in group.measurements]
    evaluations = [hd.sr.QualitativeEvaluation(name=hd.sr.CodedConcept(name[:16], "99MEDSIGHT", name[:64]),
                                               value=codes.SCT.Present if present else codes.SCT.Absent)
                   for name, present in group.findings]
    finding = _code(group.finding_type) if group.finding_type else None
    if group.region is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=finding, algorithm_id=algorithm, measurements=measurements,
            qualitative_evaluations=evaluations or None)
    column, row, radius = group.region
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
        graphic_data=np.array([[column, row], [column + max(radius, 1.0), row]], dtype=np.float32),
        source_image=hd.sr.SourceImageForRegion(str(group.image.SOPClassUID), str(group.image.SOPInstanceUID)))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=region, finding_type=finding, algorithm_id=algorithm,
        measurements=measurements, qualitative_evaluations=evaluations or None)


def write_measurement_report(groups: list[Group], evidence: list[pydicom.Dataset], path: Path, title: str,
                             keep_identifiers: bool = False, series_number: int = 902,
                             procedure: tuple = ("IMGPROC", "99MEDSIGHT", "Imaging procedure")) -> Path:
    """A Comprehensive 3D SR holding a TID 1500 measurement report of ``groups`` about the images
    ``evidence`` (the study's source images, listed as evidence)."""
    import highdicom as hd
    from medsight.core.version import __version__
    from pydicom.sr.codedict import codes

    algorithm = hd.sr.AlgorithmIdentification(name="medsight", version=str(__version__))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="medsight", manufacturer_name="medsight", model_name=title[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_code(procedure),
        imaging_measurements=[_group(g, algorithm) for g in groups] or None,
        title=codes.DCM.ImagingMeasurementReport)
    _fill_type2(evidence)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medsight", is_complete=True,
        series_description=title[:64])
    if not keep_identifiers:
        deidentify(sr)
    with atomic_path(path) as tmp:
        sr.save_as(tmp)
    return path


def _fill_type2(images: list[pydicom.Dataset]) -> None:
    """Patient and study attributes highdicom copies from the evidence: present, if empty."""
    for ds in images:
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            if keyword not in ds:
                setattr(ds, keyword, "")
