"""The record schemas that dataset formats produce and tasks consume.

A format of another package produces one of these (or a schema of its own, for a task of its own)
and any task consuming it reads the format's folders with no change to the task. Every record
carries ``group``: the patient, scan or case that splits keep whole.
"""

from __future__ import annotations

from medsight.data.formats import RecordSchema

#: chest X-rays and other 2D pictures with label names; ``metadata``: the label set
LABELLED_PICTURES = RecordSchema(
    name="labelled-pictures",
    keys=("image", "id", "group", "names"),
    metadata_keys=("labels", "multi_label"),
    description="image: a picture file (PNG/JPEG/DICOM); names: tuple of the positive label names (empty: "
                "none); metadata labels: every label name in output order, multi_label: bool",
)

#: CT scans with nodule centres (world mm, LPS) and diameters
NODULE_SCANS = RecordSchema(
    name="nodule-scans",
    keys=("image", "id", "group", "seriesuid", "nodules", "excluded"),
    description="image: a CT volume file or DICOM series folder; nodules, excluded: [x, y, z, diameter_mm] rows "
                "in world mm (LPS)",
)

#: multi-modal MRI cases with an optional label map and its label convention
MRI_CASES = RecordSchema(
    name="mri-cases",
    keys=("image", "id", "group", "convention"),
    description="image: one file per modality in data.modalities order (or a 4D file with 'channels'); "
                "label: the label map (training); convention: a medsight.datasets.brats convention name",
)
