"""DICOM objects for viewers (OHIF, 3D Slicer, PACS): a DICOM Segmentation (highdicom) referencing the series a
prediction was made on, on that series' own frames, and de-identification of what medsight writes.

Patient identifiers never leave in an output unless the user asks (``--keep-identifiers``): the attributes
of the DICOM basic de-identification profile that name or locate a person are removed or replaced, the
patient ID by a pseudonym (a hash), so that objects of one patient still group together.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom

from medsight.errors import DataError
from medsight.core.geometry import world_to_voxel
from medsight.io.writers import atomic_path

#: removed from every object medsight writes (DICOM PS3.15 basic profile: names, dates of birth, addresses,
#: accession and study numbers, institutions, physicians, devices, free text about the patient)
IDENTIFYING = (
    "PatientName", "PatientBirthDate", "PatientBirthTime", "PatientAddress", "PatientTelephoneNumbers",
    "PatientMotherBirthName", "OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence", "PatientAge",
    "PatientSize", "PatientWeight", "EthnicGroup", "PatientComments", "MilitaryRank", "MedicalRecordLocator",
    "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "OperatorsName",
    "RequestingPhysician", "StationName", "ContentCreatorName", "IssuerOfPatientID",
    "AdmittingDiagnosesDescription", "AdditionalPatientHistory", "Occupation", "ResponsiblePerson",
    "RequestAttributesSequence", "ReferencedPatientSequence",
)


def pseudonym(patient_id: str) -> str:
    return "medsight-" + hashlib.sha256(patient_id.encode()).hexdigest()[:12]


def deidentify(dataset: pydicom.Dataset) -> pydicom.Dataset:
    """Remove the identifying attributes at every level; the patient ID becomes a pseudonym."""
    patient_id = str(dataset.get("PatientID", ""))

    def scrub(ds: pydicom.Dataset) -> None:
        for keyword in IDENTIFYING:
            if keyword in ds:
                delattr(ds, keyword)
        for element in list(ds):
            if element.VR == "SQ":
                for item in element.value:
                    scrub(item)

    scrub(dataset)
    dataset.PatientName = "Anonymous"
    dataset.PatientID = pseudonym(patient_id) if patient_id else "medsight-anonymous"
    dataset.PatientIdentityRemoved = "YES"
    return dataset


def series_datasets(source: str | Path) -> list[pydicom.Dataset]:
    """Every image of the DICOM series at ``source`` (a folder, or one file of it): the one series medsight's
    reader takes (the one with most slices)."""
    source = Path(source)
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # not DICOM: skipped, as the series reader skips it
            continue
        if "PixelData" in ds and "ImagePositionPatient" in ds:
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    if not by_series:
        raise DataError("no DICOM image series here to reference", source)
    return max(by_series.values(), key=len)


def write_segmentation(masks: Mapping[str, np.ndarray], affine_ras: np.ndarray, source: str | Path, path: Path,
                       description: str, keep_identifiers: bool = False, series_number: int = 901) -> Path:
    """A DICOM SEG (binary, one segment per mask) of ``masks`` (name -> (X, Y, Z) bool on the grid ``affine_ras``,
    the series' own grid as medsight read it), referencing the series at ``source`` frame by frame."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medsight.core.version import __version__

    images = series_datasets(source)
    for ds in images:
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID  # some exporters leave it to the file meta only
        if not ds.get("SOPInstanceUID") and meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        # type-2 attributes highdicom copies: present, if empty, whatever the scanner wrote
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            if keyword not in ds:
                setattr(ds, keyword, "")
    if not images[0].get("SeriesInstanceUID") or not images[0].get("StudyInstanceUID"):
        logging.getLogger(__name__).warning(
            f"warning: {source}: the series carries no SeriesInstanceUID/StudyInstanceUID (a broken de-identification?):"
            " the DICOM SEG references its images by their SOP Instance UIDs only")
    shape = next(iter(masks.values())).shape
    frames = np.zeros((len(images), int(images[0].Rows), int(images[0].Columns), len(masks)), dtype=bool)
    for row, ds in enumerate(images):
        k = int(round(world_to_voxel(np.asarray(ds.ImagePositionPatient, dtype=float), affine_ras, space="LPS")[0][2]))
        if not 0 <= k < shape[2]:
            raise DataError(f"slice {ds.get('InstanceNumber', row)} lies outside the predicted grid", source)
        for index, mask in enumerate(masks.values()):
            frames[row, :, :, index] = np.asarray(mask)[:, :, k].T  # [x, y] -> rows (y), columns (x)
    algorithm = hd.AlgorithmIdentificationSequence(name="medsight", version=str(__version__),
                                                   family=codes.cid7162.ArtificialIntelligence)
    segments = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:64], algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm) for number, name in enumerate(masks, start=1)]
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medsight", manufacturer_model_name="medsight",
        software_versions=str(__version__), device_serial_number="0", series_description=description[:64])
    if not keep_identifiers:
        deidentify(seg)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


def heatmap_rgb(picture: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An 8-bit RGB picture (H, W, 3): ``picture`` (H, W, any scale) in grey with ``heatmap`` (H, W, 0..1) over
    it in the jet colour map, as the Grad-CAM PNGs show it."""
    from matplotlib import colormaps

    picture = np.asarray(picture, dtype=np.float32)
    low, high = float(picture.min()), float(picture.max())
    grey = (picture - low) / (high - low) if high > low else np.zeros_like(picture)
    colour = colormaps["jet"](np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0))[..., :3]
    rgb = (1.0 - alpha) * grey[..., None] + alpha * colour
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def write_secondary_capture(rgb: np.ndarray, source: pydicom.Dataset, path: Path, description: str,
                            series_uid: str | None = None, instance_number: int = 1, series_number: int = 903,
                            keep_identifiers: bool = False) -> Path:
    """A DICOM Secondary Capture (highdicom) of an 8-bit RGB picture (H, W, 3) made from the image ``source``:
    in its study, referencing it (Source Image Sequence), de-identified unless asked otherwise."""
    import highdicom as hd

    orientation = tuple(source.get("PatientOrientation") or ()) or ("L", "F")  # a frontal chest film's, if absent
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(rgb, dtype=np.uint8), photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=series_uid or hd.UID(),
        series_number=series_number, sop_instance_uid=hd.UID(), instance_number=instance_number,
        manufacturer="medsight", patient_orientation=orientation[:2], series_description=description[:64])
    reference = pydicom.Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    capture.SourceImageSequence = [reference]
    capture.DerivationDescription = description[:1024]
    capture.BurnedInAnnotation = "NO"
    if not keep_identifiers:
        deidentify(capture)
    with atomic_path(path) as tmp:
        capture.save_as(tmp)
    return path
