"""BraTS brain-tumour MRI in every release's layout, and the label conventions that go with them.

Layouts (``naming``):
- ``brats2021`` (2018-2021): ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``
- ``brats2023`` (2023+):     ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``
- ``patterns`` (BRATS 2013/2015 and clinical folders): one folder per case, files matched to
  roles by regular expressions (``DEFAULT_PATTERNS``, or a map from the config)
- ``msd`` (Medical Segmentation Decathlon Task01): ``imagesTr/*.nii.gz`` 4D (FLAIR, T1w, T1gd,
  T2w) + ``labelsTr/`` + ``dataset.json``

Modalities are matched by *role* (``t1``, ``t1c``, ``t2``, ``flair``), so a model trained on one
naming predicts on another. Each convention maps its label values to the three nested regions
ET (enhancing tumour), TC (tumour core = ET + necrotic/non-enhancing core), WT (whole tumour =
TC + oedema). Converting MSD labels with the 2018 map would silently give ET = 0: conventions
are detected from the layout (or set in the config) and checked against the label values found.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from medsight.data.formats import DatasetFormat, Problem, SplitOptions
from medsight.datasets.conventions import CONVENTIONS, DEFAULT_CONVENTION, LabelConvention
from medsight.datasets.schemas import MRI_CASES
from medsight.data.folds import assign_folds as assign_group_folds, check_folds
from medsight.datasets.vocabulary import MSD_CHANNEL_ROLES, SEPARATOR, SUFFIX_ROLES
from medsight.errors import ConfigError, DataError
from medsight.core.registry import register_dataset

ROLES = ("t1", "t1c", "t2", "flair")
REGIONS = ("ET", "TC", "WT")
NIFTI = re.compile(r"\.nii(\.gz)?$")

NAMINGS = ("brats2021", "brats2023", "patterns", "msd")
#: the smallest synthetic case, voxels per axis
MIN_CASE_VOXELS = 8
# BRATS 2013/2015 releases name files e.g. VSD.Brain.XX.O.MR_Flair.54512.mha or Flair_subtrMeanDivStd.nii.gz.
DEFAULT_PATTERNS = {
    "flair": r"flair",
    "t1c": r"t1c|t1ce|t1gd|t1_?contrast",
    "t1": r"(?<![a-z])t1(?![a-z0-9]|c|ce|gd)",
    "t2": r"(?<![a-z])t2(?!f|_?flair)",
    "seg": r"(?:^|[._])ot(?:multiclass)?[._]|(?:^|[._-])seg(?:mentation)?[._]|label",
}


@dataclass
class Case:
    """One subject: a file per role (or one 4D file with channel roles) and an optional label map."""

    id: str
    naming: str
    images: dict[str, Path] = field(default_factory=dict)
    label: Path | None = None
    four_d: Path | None = None

    def record(self, modalities: tuple[str, ...], convention: str) -> dict:
        """The record the segmentation task loads: images in ``modalities`` order."""
        missing = [role for role in modalities if role not in self.images and self.four_d is None]
        if missing:
            folder = self.label.parent if self.label else next(iter(self.images.values()), Path(self.id)).parent
            found = [role for role in ROLES if role in self.images]
            raise DataError(f"case {self.id}: no {', '.join(missing)} image (found: {', '.join(found) or 'none'})",
                            folder)
        record: dict = {"id": self.id, "group": self.id, "convention": convention}
        if self.four_d is not None:
            record["image"] = str(self.four_d)
            record["channels"] = [MSD_CHANNEL_ROLES.index(role) for role in modalities]
        else:
            record["image"] = [str(self.images[role]) for role in modalities]
        if self.label is not None:
            record["label"] = str(self.label)
        return record


def _strip_nifti(name: str) -> str:
    return NIFTI.sub("", name)


def detect_naming(root: Path) -> str:
    root = Path(root)
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "msd"
    for path in root.rglob("*.nii*"):
        stem = _strip_nifti(path.name).lower()
        if stem.endswith(("_t1ce", "_flair")):
            return "brats2021"
        if stem.endswith(("-t1c", "-t1n", "-t2f", "-t2w")):
            return "brats2023"
    return "patterns"


def _case_folders(root: Path) -> list[Path]:
    """Case folders: ``root`` itself when it holds images (or DICOM series folders) directly, else its
    subfolders."""
    if any(NIFTI.search(p.name) or p.suffix.lower() in (".mha", ".mhd", ".nrrd") for p in root.iterdir() if p.is_file()):
        return [root]
    if any(_is_dicom_folder(p) for p in root.iterdir()):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_cases(root: Path, naming: str = "auto", patterns: dict[str, str] | None = None) -> list[Case]:
    """Every case under ``root`` (a dataset folder, or one case folder)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("not a folder", root)
    naming = detect_naming(root) if naming == "auto" else naming
    if naming == "msd":
        return _msd_cases(root)
    cases = []
    for folder in _case_folders(root):
        if naming in SUFFIX_ROLES:
            case = Case(id=folder.name, naming=naming)
            sep = SEPARATOR[naming]
            for path in sorted(folder.iterdir()):
                if not NIFTI.search(path.name):
                    continue
                stem = _strip_nifti(path.name)
                suffix = stem.rsplit(sep, 1)[-1].lower() if sep in stem else ""
                if suffix == "seg":
                    case.label = path
                elif suffix in SUFFIX_ROLES[naming]:
                    case.images[SUFFIX_ROLES[naming][suffix]] = path
            case.id = _common_prefix(case, sep) or folder.name
        elif naming == "patterns":
            case = _pattern_case(folder, patterns or DEFAULT_PATTERNS)
        else:
            raise DataError(f"unknown naming {naming!r} (expected auto, brats2021, brats2023, patterns or msd)", root)
        if case.images:
            cases.append(case)
    if not cases:
        raise DataError(f"no BraTS cases found (naming {naming})", root)
    return cases


def _common_prefix(case: Case, sep: str) -> str:
    stems = [_strip_nifti(p.name).rsplit(sep, 1)[0] for p in case.images.values()]
    return stems[0] if stems and len(set(stems)) == 1 else ""


def _is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() and (p.suffix.lower() in (".dcm", ".ima") or not p.suffix)
                                 for p in path.iterdir())


def _pattern_case(folder: Path, patterns: dict[str, str]) -> Case:
    """Files (NIfTI, MHA/MHD, NRRD) or DICOM series sub-folders matched to roles by name."""
    case = Case(id=folder.name, naming="patterns")
    compiled = {role: re.compile(pattern, re.IGNORECASE) for role, pattern in patterns.items()}
    for path in sorted(folder.rglob("*")):
        is_image_file = path.is_file() and (NIFTI.search(path.name) or path.suffix.lower() in (".mha", ".mhd", ".nrrd"))
        if not is_image_file and not _is_dicom_folder(path):
            continue
        hits = [role for role, regex in compiled.items() if regex.search(path.name)]
        if len(hits) > 1:
            raise DataError(f"file matches several roles ({', '.join(hits)}); make the role patterns stricter", path)
        if not hits:
            continue
        role = hits[0]
        existing = case.label if role == "seg" else case.images.get(role)
        if existing is not None:
            raise DataError(f"two files match role {role}: {existing.name} and {path.name}", folder)
        if role == "seg":
            case.label = path
        else:
            case.images[role] = path
    return case


def _msd_cases(root: Path) -> list[Case]:
    cases = []
    for path in sorted((root / "imagesTr").glob("*.nii*")):
        if path.name.startswith("._"):
            continue  # macOS resource forks ship inside the official Task01 tarball
        label = root / "labelsTr" / path.name
        case = Case(id=_strip_nifti(path.name), naming="msd", four_d=path, label=label if label.is_file() else None)
        case.images = {role: path for role in MSD_CHANNEL_ROLES}
        cases.append(case)
    if not cases:
        raise DataError("no imagesTr/*.nii.gz cases", root)
    return cases


def detect_convention(cases: list[Case], naming: str, configured: str = "auto") -> LabelConvention:
    """The configured convention, or the naming's default (2023 naming with label 4 present -> 2024)."""
    if configured != "auto":
        if configured not in CONVENTIONS:
            raise DataError(f"unknown label convention {configured!r} (known: {', '.join(sorted(CONVENTIONS))})",
                            "config")
        return CONVENTIONS[configured]
    name = DEFAULT_CONVENTION.get(naming, "brats2021")
    if name == "brats2023":
        labelled = [c.label for c in cases if c.label is not None][:3]
        if any(4 in np.unique(np.asarray(nib.load(str(p)).dataobj)) for p in labelled):
            name = "brats2024"
    return CONVENTIONS[name]


def assign_folds(case_ids: list[str], folds: int, seed: int = 0) -> dict[str, int]:
    """Each case's fold (``medsight.data.folds.assign_folds``): every fold holds floor(N/K) or
    ceil(N/K) of the N cases, and adding cases moves few others. With fewer cases than folds, some
    folds are empty (a fingerprint or a look at a small folder still works)."""
    return assign_group_folds(case_ids, folds, seed, allow_empty=True)


@dataclass
class BratsOptions(SplitOptions):
    #: auto, brats2021, brats2023, patterns, msd
    naming: str = "auto"
    #: auto or one of CONVENTIONS
    label_convention: str = "auto"
    #: the roles each case must have, in the model's channel order
    modalities: list[str] = field(default_factory=lambda: list(ROLES))
    #: role -> regular expression on file names, for naming=patterns (default: BRATS 2013/2015 names)
    patterns: Optional[dict[str, str]] = None

    def __post_init__(self):
        super().__post_init__()
        if self.naming not in ("auto", *NAMINGS):
            raise ConfigError(f"data.naming={self.naming!r} is not one of auto, {', '.join(NAMINGS)}")
        if self.label_convention not in ("auto", *CONVENTIONS):
            raise ConfigError(f"data.label_convention={self.label_convention!r} is not one of auto, "
                              f"{', '.join(sorted(CONVENTIONS))}")
        unknown = [role for role in self.modalities if role not in ROLES]
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"data.modalities must list distinct roles of {', '.join(ROLES)}, got {self.modalities}")


def check_case(case: Case, convention: LabelConvention, expected_roles=ROLES) -> list[Problem]:
    problems: list[Problem] = []
    folder = next(iter(case.images.values())).parent
    if case.four_d is None:
        for role in expected_roles:
            if role not in case.images:
                problems.append(Problem(str(folder), f"case {case.id}: {role} image missing"))
    # the roles a model reads (an extra modality on another grid does not stop training)
    files = {role: p for role, p in case.images.items() if role in expected_roles} if case.four_d is None \
        else {"4D": case.four_d}
    if case.label is not None:
        files["seg"] = case.label
    grids = {}
    for role, path in files.items():
        try:
            image = nib.load(str(path))
        except Exception as exc:
            problems.append(Problem(str(path), f"unreadable NIfTI ({exc})"))
            continue
        grids[path] = (tuple(image.shape[:3]), np.round(image.affine, 3).tobytes())
    if grids:
        # The grid most files share is the case's grid; each file off it is reported.
        values = list(grids.values())
        shape, affine = max(values, key=values.count)
        example = next(p for p, g in grids.items() if g == (shape, affine))
        for path, (other_shape, other_affine) in grids.items():
            if other_shape != shape:
                problems.append(Problem(str(path), f"shape {other_shape} differs from {example.name} {shape}"))
            elif other_affine != affine:
                problems.append(Problem(str(path), f"affine differs from {example.name}'s"))
    if case.label is not None and case.label.exists():
        try:
            values = np.unique(np.asarray(nib.load(str(case.label)).dataobj))
            convention.check_values(values, case.label)
        except DataError as exc:
            problems.append(Problem(str(case.label), exc.message))
        except Exception as exc:
            problems.append(Problem(str(case.label), f"unreadable label map ({exc})"))
    return problems


@register_dataset("brats")
class BraTS(DatasetFormat):
    description = "BraTS brain-tumour MRI (2018-2021, 2023+, 2013/2015 folders, MSD Task01), labels -> ET/TC/WT"
    schema = MRI_CASES
    options_class = BratsOptions
    synth_options = {
        "naming": "2021 (default: BraTS2021_xxxxx/..._t1ce.nii.gz), 2023 (BraTS-GLI-xxxxx-000/...-t1c.nii.gz), "
                  "2015 (brats_2013_patNNNN_1/Flair_...nii.gz, OTMultiClass.nii.gz) or msd (Task01 4D)",
        "shape": "volume size x,y,z in voxels (default 96,96,64)",
        "spacing": "voxel size x,y,z in mm (default 1,1,1, BraTS's grid)",
    }

    def synth(self, out: Path, cases: int | None = None, seed: int = 0, naming: str = "2021",
              shape: str | tuple = (96, 96, 64), spacing: str | tuple = (1.0, 1.0, 1.0), **options) -> Path:
        from medsight.datasets.synth import triple, whole
        from medsight.datasets.synth.brats import write_dataset

        if options:
            raise DataError(f"unknown option(s) {', '.join(options)} for brats", "synth")
        layouts = {"2021": "brats2021", "2023": "brats2023", "2015": "brats2015", "msd": "msd"}
        if str(naming) not in layouts:
            raise DataError(f"naming must be 2021, 2023, 2015 or msd, not {naming!r}", "synth")
        size = triple("shape", shape, int, MIN_CASE_VOXELS)
        voxel = triple("spacing", spacing, float, 0)
        count = 8 if cases is None else whole("cases", cases)
        return write_dataset(Path(out), count, seed, layouts[str(naming)], size, voxel)

    @classmethod
    def detect(cls, root: Path) -> float:
        """MSD and BraTS 2018+ names are sure signs; BRATS 2013/2015-style case folders are matched by role
        patterns, weakly."""
        root = Path(root)
        if not root.is_dir():
            return 0.0
        naming = detect_naming(root)
        if naming != "patterns":
            return 1.0
        try:
            return 0.3 if find_cases(root, "patterns") else 0.0
        except DataError:
            return 0.0

    def records(self, root: Path, split: str) -> list[dict]:
        return records(root, split, self.options)

    def check(self, root: Path) -> list[Problem]:
        """Every case: its modalities (``data.modalities``) present, on one grid, labels in the convention."""
        root = Path(root)
        options = self.options
        try:
            naming = detect_naming(root) if options.naming == "auto" else options.naming
            cases = find_cases(root, naming, options.patterns)
            convention = detect_convention(cases, naming, options.label_convention)
        except DataError as exc:
            return [Problem(exc.where or str(root), exc.message)]
        problems: list[Problem] = []
        for case in cases:
            problems.extend(check_case(case, convention, tuple(options.modalities)))
        if naming == "msd":
            try:
                json.loads((root / "dataset.json").read_text())
            except ValueError as exc:
                problems.append(Problem(str(root / "dataset.json"), f"not valid JSON ({exc})"))
        return problems


def records(root: Path, split: str, options: BratsOptions | None = None) -> list[dict]:
    """Records ``{"image": [one path per modality] | 4D path, "label", "id", "group", "convention"}`` of a split.

    Cases are dealt into ``folds`` balanced folds (``assign_folds``): ``val`` is fold ``fold`` (or the cases
    named in ``val_groups``), ``train`` the others; ``test`` and ``all`` are every case (point ``--data`` at a held-out folder to test).
    Only labelled cases are used for train/val.
    """
    options = options or BratsOptions()
    root = Path(root)
    naming = detect_naming(root) if options.naming == "auto" else options.naming
    cases = find_cases(root, naming, options.patterns)
    convention = detect_convention(cases, naming, options.label_convention)
    if split in ("train", "val"):
        cases = [c for c in cases if c.label is not None]
        if options.val_groups:
            named = set(options.val_groups)
            cases = [c for c in cases if (c.id in named) == (split == "val")]
        elif options.folds > 1:
            check_folds(options.folds, options.fold)
            assigned = assign_folds([c.id for c in cases], options.folds, options.split_seed)
            cases = [c for c in cases if (assigned[c.id] == options.fold) == (split == "val")]
        elif split == "val":
            cases = []
    elif split not in ("test", "all"):
        raise DataError(f"unknown split {split!r} (expected train, val, test or all)", root)
    return [case.record(tuple(options.modalities), convention.name) for case in cases]
