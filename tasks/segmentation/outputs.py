"""What segmentation predicts and writes: a label map on the input's own grid (``<case>_seg.nii.gz``), with
the region probabilities, an overlay picture, a slice viewer page and a DICOM SEG when asked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsight.core.geometry import voxel_size_mm
from medsight.datasets import brats
from medsight.errors import DataError
from medsight.io.readers import is_memory_name
from medsight.io.pictures import volume_overlay_png
from medsight.io.readers import load as load_image
from medsight.io.writers import write_nifti
from medsight.reporting.viewer import slice_viewer
from medsight.task import PredictionWriter, Result


@dataclass
class TumourSegmentation(Result):
    """One case: ``labels`` (X, Y, Z) uint8 in the case's label convention, on the input's grid ``affine``
    (voxel indices to RAS mm); ``regions`` (3, X, Y, Z) bool masks of ET, TC and WT; ``probabilities``
    (3, X, Y, Z) float32 when asked for (``probabilities=True``); ``sources``: the input files by modality
    (in-memory images: their reader names)."""

    labels: np.ndarray = field(repr=False)
    affine: np.ndarray = field(repr=False)
    regions: np.ndarray = field(repr=False)
    convention: str = "brats2021"
    sources: list[str] = field(default_factory=list)
    modalities: tuple[str, ...] = ()
    probabilities: np.ndarray | None = field(default=None, repr=False)
    #: (X, Y, Z) float32: the members' (and TTA flips') standard deviation, largest over the regions
    uncertainty: np.ndarray | None = field(default=None, repr=False)

    def volumes_ml(self) -> dict[str, float]:
        """Each region's volume in millilitres."""
        voxel = float(np.prod(voxel_size_mm(self.affine))) / 1000.0
        return {name: float(mask.sum()) * voxel for name, mask in zip(brats.REGIONS, self.regions)}


class LabelMaps(PredictionWriter):
    """One predict call: per case, the label map (+ probabilities, overlay picture, DICOM SEG)."""

    def __init__(self, out: Path, overlay: bool, options=None):
        super().__init__(out, options)
        self.overlay = overlay

    def write(self, result: TumourSegmentation) -> list[Path]:
        reference = next((s for s in result.sources[:1] if s.endswith((".nii", ".nii.gz"))), None)
        written = [write_nifti(result.labels, result.affine, self.out / f"{result.id}_seg.nii.gz",
                               reference=reference, dtype=np.uint8)]
        if result.probabilities is not None:
            written.append(write_nifti(np.moveaxis(result.probabilities, 0, -1).astype(np.float32), result.affine,
                                       self.out / f"{result.id}_prob.nii.gz"))
        if result.uncertainty is not None:
            written.append(write_nifti(result.uncertainty, result.affine, self.out / f"{result.id}_uncertainty.nii.gz"))
        if self.options.dicom:
            written.append(self._dicom_seg(result))
        if self.overlay and self.options.pictures:
            image = load_image(_picture_source(result))[0].numpy()
            regions = dict(zip(brats.REGIONS, result.regions))
            written.append(volume_overlay_png(image, result.affine, self.out / f"{result.id}_overlay.png", regions,
                                              title=f"{result.id}: ET red, TC yellow, WT green"))
            if _viewer_wanted(result):
                written.append(slice_viewer(image, result.affine, self.out / f"{result.id}_viewer.html", regions=regions,
                                            title=f"{result.id}: {_picture_name(result)}, ET red, TC yellow, WT green"))
        return written

    def _dicom_seg(self, result: TumourSegmentation) -> Path:
        """A DICOM SEG of ET, TC and WT referencing the case's DICOM series (FLAIR's when it is one)."""
        from medsight.io.dicom_out import write_segmentation

        files = result.sources
        dicom = [f for f in files if not is_memory_name(f) and (Path(f).is_dir() or f.lower().endswith((".dcm", ".ima")))]
        if not dicom:
            raise DataError("--dicom writes a DICOM SEG referencing the input series: this case has no DICOM input "
                            "(its NIfTI label map was written)", files[0] if files else result.id)
        roles = list(result.modalities)
        flair = files[roles.index("flair")] if "flair" in roles and len(files) == len(roles) else None
        source = flair if flair in dicom else dicom[0]
        names = ("ET enhancing tumour", "TC tumour core", "WT whole tumour")
        return write_segmentation(dict(zip(names, result.regions)), result.affine, source,
                                  self.out / f"{result.id}_seg.dcm", description="medsight brain tumour regions",
                                  keep_identifiers=self.options.keep_identifiers)


def _viewer_wanted(result: TumourSegmentation) -> bool:
    """``infer.viewer`` of the task that made the result (on when the result comes without one)."""
    return bool(getattr(getattr(getattr(result.task, "config", None), "infer", None), "viewer", True))


def _picture_name(result: TumourSegmentation) -> str:
    """What the pictures show: the modality of ``_picture_source`` (its first channel), else its file name."""
    files, modalities = result.sources, result.modalities
    if "flair" in modalities and len(files) == len(modalities):
        return "flair"
    return modalities[0] if modalities else Path(files[0]).name


def _picture_source(result: TumourSegmentation) -> str:
    files, modalities = result.sources, result.modalities
    if "flair" in modalities and len(files) == len(modalities):
        return files[modalities.index("flair")]
    return files[0]
