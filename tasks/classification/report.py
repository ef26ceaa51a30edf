"""The DICOM SR of an X-ray's findings (``medsight serve``): a TID 1500 measurement report with one group
per label: the model's probability, the operating point it is called at (the threshold chosen on
validation) and whether it is called present; with Grad-CAM asked (``cam``), one Secondary Capture per
heatmap, in one series, so that a viewer shows them beside the film."""

from __future__ import annotations

from pathlib import Path

import pydicom

from medsight.io.dicom_out import heatmap_rgb, write_secondary_capture
from medsight.io.dicom_sr import PROBABILITY, Group, write_measurement_report

OPERATING_POINT = ("111071", "DCM", "CAD Operating Point")
CHEST_XRAY = ("36643-5", "LN", "XR Chest 2 Views")


def findings_report(result, out: Path, name: str, keep_identifiers: bool) -> list[Path]:
    """``<name>_findings_sr.dcm`` for a DICOM X-ray ``result.source`` (nothing for another format), and
    ``<name>_cam_<k>.dcm`` for each Grad-CAM heatmap the result holds."""
    source = Path(result.source)
    if not (source.is_file() and source.suffix.lower() in (".dcm", ".ima", "")):
        return []
    try:
        image = pydicom.dcmread(source, stop_before_pixels=True)
    except Exception:  # noqa: BLE001  (not DICOM after all: nothing to reference)
        return []
    thresholds = result.thresholds or [0.5] * len(result.labels)
    groups = [Group(label=label, measurements=[(PROBABILITY, float(p), "1"), (OPERATING_POINT, float(t), "1")],
                    findings=[(label, label in result.positive)])
              for label, p, t in zip(result.labels, result.probabilities, thresholds)]
    written = [write_measurement_report(groups, [image], out / f"{name}_findings_sr.dcm",
                                        "medsight chest X-ray findings", keep_identifiers=keep_identifiers,
                                        procedure=CHEST_XRAY)]
    if result.cams:
        import highdicom as hd

        series = hd.UID()
        for number, (label, cam) in enumerate(result.cams.items(), start=1):
            probability = float(result.probabilities[list(result.labels).index(label)])
            written.append(write_secondary_capture(
                heatmap_rgb(result.picture, cam), image, out / f"{name}_cam_{number}.dcm",
                f"medsight Grad-CAM {label} p={probability:.2f}", series_uid=series, instance_number=number,
                keep_identifiers=keep_identifiers))
    return written
