"""``tsv-pictures``: a folder with ``findings.tsv`` (``file<TAB>findings<TAB>patient<TAB>set``) and the pictures
it names. Findings are separated by ``options.separator`` (``+`` by default); an empty cell is no finding.

Written against medsight's public contract only: ``DatasetFormat``, ``SplitOptions``, the
``labelled-pictures`` schema and the split helpers.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medsight.data.formats import DatasetFormat, Problem, SplitOptions
from medsight.datasets.schemas import LABELLED_PICTURES
from medsight.datasets.splits import split_by_group
from medsight.errors import DataError

TABLE = "findings.tsv"
FINDINGS = ("Mass", "Effusion")


@dataclass
class TsvOptions(SplitOptions):
    #: between the findings of one picture
    separator: str = "+"


class TsvPictures(DatasetFormat):
    description = "findings.tsv (file, findings, patient, set) beside the pictures: a plug-in format"
    schema = LABELLED_PICTURES
    options_class = TsvOptions
    synth_options = {"size": "picture size in pixels (default 48)"}

    @classmethod
    def detect(cls, root: Path) -> float:
        return 1.0 if (Path(root) / TABLE).is_file() else 0.0

    def _rows(self, root: Path) -> list[dict]:
        path = Path(root) / TABLE
        if not path.is_file():
            raise DataError(f"no {TABLE} here", root)
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        for number, row in enumerate(rows, start=2):
            if not row.get("file"):
                raise DataError("row without a file", f"{path}:{number}")
        return rows

    def records(self, root: Path, split: str) -> list[dict]:
        records = [{"image": str(Path(root) / row["file"]), "id": row["file"], "group": row["patient"],
                    "names": tuple(n for n in (row["findings"] or "").split(self.options.separator) if n),
                    "set": row["set"]} for row in self._rows(root)]
        if split == "all":
            return records
        if split == "test":
            return [r for r in records if r["set"] == "test"]
        train, val = split_by_group([r for r in records if r["set"] != "test"], lambda r: r["group"],
                                    self.options.val_fraction, self.options.split_seed)
        return train if split == "train" else val

    def metadata(self, root: Path) -> dict:
        return {"labels": list(FINDINGS), "multi_label": True}

    def check(self, root: Path) -> list[Problem]:
        try:
            rows = self._rows(root)
        except DataError as exc:
            return [Problem(exc.where or str(root), exc.message)]
        return [Problem(str(Path(root) / TABLE), f"{row['file']}: picture not found") for row in rows
                if not (Path(root) / row["file"]).is_file()]

    def synth(self, out: Path, cases: int | None = None, seed: int = 0, size: int = 48, **options) -> Path:
        """A bright blob in the upper left for Mass, a bright band at the bottom for Effusion."""
        out, size = Path(out), int(size)
        rng = np.random.default_rng(seed)
        lines = ["file\tfindings\tpatient\tset"]
        for index in range(30 if cases is None else int(cases)):
            findings = [name for name in FINDINGS if rng.random() < 0.5]
            picture = rng.normal(80, 10, (size, size))
            if "Mass" in findings:
                picture[size // 5: size // 5 + size // 6, size // 5: size // 5 + size // 6] += 120
            if "Effusion" in findings:
                picture[-size // 5:, :] += 120
            name = f"pics/{index:04d}.png"
            (out / "pics").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(out / name)
            lines.append(f"{name}\t{'+'.join(findings)}\tp{index // 2}\t{'test' if index % 5 == 4 else 'train'}")
        (out / TABLE).write_text("\n".join(lines) + "\n")
        return out
