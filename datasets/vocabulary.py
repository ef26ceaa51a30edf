"""The official names the public datasets use: NIH's 14 findings, BraTS's file suffixes, MSD's channel order.

Both the readers (``brats``, ``chestxray14``) and the synthetic writers (``synth``) spell files and labels
with these, so a synthetic dataset is named exactly as the reader expects, and neither imports the other.
"""

from __future__ import annotations

#: NIH ChestX-ray14's 14 findings, in the order of Wang et al. 2017 and CheXNet's outputs
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

#: BraTS 2018-2021 and 2023 file suffixes, and the roles they name
SUFFIX_ROLES = {
    "brats2021": {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair"},
    "brats2023": {"t1n": "t1", "t1c": "t1c", "t2w": "t2", "t2f": "flair"},
}
SEPARATOR = {"brats2021": "_", "brats2023": "-"}
#: the channels of MSD Task01's 4D images, in dataset.json's order
MSD_CHANNEL_ROLES = ("flair", "t1", "t1c", "t2")  # dataset.json: FLAIR, T1w, t1gd, T2w
