"""BraTS label conventions: each release's label values and the nested regions they make up.

ET (enhancing tumour), TC (tumour core = ET + necrotic/non-enhancing core), WT (whole tumour =
TC + oedema). Converting MSD labels with the 2018 map would silently give ET = 0: the convention is
detected from the layout (or set in the config) and checked against the label values found.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsight.errors import DataError


@dataclass(frozen=True)
class LabelConvention:
    """Label values of one release and the regions they make up."""

    name: str
    labels: dict[int, str]
    et: tuple[int, ...]
    tc: tuple[int, ...]
    wt: tuple[int, ...]
    #: label written back for ET, for TC outside ET, for WT outside TC
    write: tuple[int, int, int]

    def to_regions(self, label: np.ndarray) -> np.ndarray:
        """(..., ) integer label map -> (3, ...) bool, channels ET, TC, WT."""
        label = np.asarray(label)
        return np.stack([np.isin(label, values) for values in (self.et, self.tc, self.wt)])

    def from_regions(self, regions: np.ndarray) -> np.ndarray:
        """(3, ...) ET, TC, WT masks -> label map; the regions are made nested first (ET in TC in WT)."""
        regions = np.asarray(regions).astype(bool)
        wt = regions[2] | regions[1] | regions[0]
        tc = (regions[1] | regions[0]) & wt
        et = regions[0] & tc
        label = np.zeros(regions.shape[1:], dtype=np.uint8)
        label[wt] = self.write[2]
        label[tc] = self.write[1]
        label[et] = self.write[0]
        return label

    def check_values(self, values, where) -> None:
        unknown = sorted(set(int(v) for v in values) - set(self.labels) - {0})
        if unknown:
            raise DataError(
                f"label value(s) {unknown} are not in the {self.name} convention "
                f"({', '.join(f'{k} {v}' for k, v in self.labels.items())}); set data.label_convention",
                where,
            )


CONVENTIONS = {
    "brats2021": LabelConvention("brats2021", {1: "NCR/NET", 2: "ED", 4: "ET"}, (4,), (1, 4), (1, 2, 4), (4, 1, 2)),
    "brats2023": LabelConvention("brats2023", {1: "NETC", 2: "SNFH", 3: "ET"}, (3,), (1, 3), (1, 2, 3), (3, 1, 2)),
    "brats2024": LabelConvention(
        "brats2024", {1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"}, (3,), (1, 3), (1, 2, 3), (3, 1, 2)
    ),
    "brats2015": LabelConvention(
        "brats2015", {1: "necrosis", 2: "oedema", 3: "non-enhancing", 4: "enhancing"}, (4,), (1, 3, 4), (1, 2, 3, 4),
        (4, 1, 2),
    ),
    "msd": LabelConvention("msd", {1: "oedema", 2: "non-enhancing", 3: "enhancing"}, (3,), (2, 3), (1, 2, 3), (3, 2, 1)),
}
# 2018-2020 share the 2021 labels.
CONVENTIONS["brats2018"] = CONVENTIONS["brats2021"]
DEFAULT_CONVENTION = {"brats2021": "brats2021", "brats2023": "brats2023", "patterns": "brats2015", "msd": "msd"}
