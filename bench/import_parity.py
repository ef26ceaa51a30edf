"""Parity of imported published models with their sources' own inference, in one run (random weights in
each source's exact file layout: real weights cannot be downloaded here).

- ``monai-brats``: the brats_mri_segmentation bundle's own transforms, network, inferer and
  post-processing (MONAI ConfigParser) vs ``medsight import`` + ``predict``: max |delta probability|,
  label-map agreement;
- ``chexnet`` / ``torchvision-densenet121``: CheXNet's preprocessing (PIL RGB, Resize(224), ToTensor,
  ImageNet Normalize) and network vs medsight: max |delta probability| on 224-px pictures;
- the one step that legitimately differs, the resize: on real NIH pictures (``--pictures``, e.g.
  ../shared/data/chestxray14/nih_starter_256/images, 256 px), torchvision's PIL bilinear resize against
  medsight's area resize to 224 px: the probability differences this makes.

    python bench/import_parity.py [--pictures DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import medsight  # noqa: E402
from tests.tasks import test_import as fixtures  # noqa: E402


def predict_fp32(checkpoint: Path, inputs: list[Path], out: Path, **options) -> None:
    """``medsight predict --precision fp32 --engine torch``: the sources' own engine and precision."""
    model = medsight.load(checkpoint, engine="torch", precision="fp32")
    report = model.predict_files(inputs, out, **options)
    assert not report.failures, report.failures


def brats(work: Path) -> str:
    import nibabel as nib

    root = fixtures.make_brats_bundle(work / "bundle")
    case = fixtures.brats_case(work / "case")
    probabilities, labels = fixtures.run_bundle(root, case, work / "bundle-out")
    medsight.import_model(str(root), work / "brats.pt")
    predict_fp32(work / "brats.pt", [], work / "out", images=case, probabilities=True, overlay=False,
                 roi_size=list(fixtures.ROI))
    ours = np.asarray(nib.load(str(work / "out" / "case_t1c_seg.nii.gz")).dataobj)
    prob = np.moveaxis(np.asarray(nib.load(str(work / "out" / "case_t1c_prob.nii.gz")).dataobj), -1, 0)
    delta = np.abs(prob - probabilities[[2, 0, 1]]).max()
    agree = float((ours == labels).mean())
    return f"| monai-brats (brats_mri_segmentation) | {delta:.2e} | label maps: {agree:.4%} of voxels equal |"


def lung(work: Path) -> str:
    work.mkdir(parents=True, exist_ok=True)
    ours, reference = fixtures.lung_nodules_both_ways(work)
    same = len(ours) == len(reference)
    centre = np.abs(ours[:, :3] - reference[:, :3]).max() if same else float("nan")
    score = np.abs(ours[:, 3] - reference[:, 3]).max() if same else float("nan")
    return (f"| monai-lung-nodules (lung_nodule_ct_detection) | {score:.2e} | {len(ours)} vs {len(reference)} marks; "
            f"centres within {centre:.1e} mm |")


def chexnet(work: Path) -> tuple[str, torch.nn.Module, Path]:
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    net = fixtures.chexnet_network()
    source = fixtures.save_chexnet_checkpoint(net, work / "model.pth.tar")
    medsight.import_model(str(source), work / "chexnet.pt")
    from medsight.core.registry import DATASETS

    data = DATASETS.get("chestxray14")().synth(work / "cxr", cases=8, seed=2, size=224)
    pictures = sorted(data.glob("images_*/images/*.png"))
    predict_fp32(work / "chexnet.pt", pictures, work / "out")
    ours = fixtures.predicted(work / "out")
    delta = max(np.abs(ours[p.name] - fixtures.chexnet_reference(net, p)).max() for p in pictures)
    return f"| chexnet (model.pth.tar), 8 pictures at 224 px | {delta:.2e} | - |", net, work / "chexnet.pt"


def txrv(work: Path) -> str:
    try:
        import torchxrayvision as xrv
    except ImportError:
        return "| txrv | (skipped: torchxrayvision not installed) | |"
    import skimage.io
    import torchvision

    work.mkdir(parents=True, exist_ok=True)
    weights = "densenet121-res224-nih"
    name = Path(xrv.models.model_urls[weights]["weights_url"]).name
    torch.manual_seed(4)
    torch.save(xrv.models.DenseNet(weights=None), work / name)
    medsight.import_model(str(work / name), work / "xrv.pt", requested="txrv")
    from medsight.core.registry import DATASETS

    pictures = sorted(DATASETS.get("chestxray14")().synth(work / "cxr", cases=8, seed=2, size=224)
                      .glob("images_*/images/*.png"))
    predict_fp32(work / "xrv.pt", pictures, work / "out")
    reference_model = xrv.models.DenseNet(weights=weights, cache_dir=str(work))
    transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])
    with open(work / "out" / "predictions.csv", newline="") as handle:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(handle)}
    names = [n for n in rows[pictures[0].name] if n in reference_model.targets]
    worst = 0.0
    for picture in pictures:
        image = transform(xrv.datasets.normalize(skimage.io.imread(picture), 255)[None])
        with torch.no_grad():
            reference = reference_model(torch.from_numpy(image)[None])[0].numpy()
        ours = np.array([float(rows[picture.name][n]) for n in names])
        worst = max(worst, float(np.abs(ours - reference[[reference_model.targets.index(n) for n in names]]).max()))
    return f"| txrv ({weights}), 8 pictures at 224 px, {len(names)} findings | {worst:.2e} | - |"


def resize_effect(net, checkpoint: Path, pictures: Path, work: Path) -> str:
    files = sorted(p for p in pictures.iterdir() if p.suffix.lower() == ".png")[:40]
    predict_fp32(checkpoint, files, work / "real")
    ours = fixtures.predicted(work / "real")
    deltas = np.array([np.abs(ours[p.name] - fixtures.chexnet_reference(net, p)).max() for p in files])
    return (f"| chexnet on {len(files)} real NIH pictures at 256 px (resized to 224: PIL bilinear vs MONAI area) | "
            f"median {np.median(deltas):.2e}, max {deltas.max():.2e} | - |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                                                  "chestxray14" / "nih_starter_256" / "images"))
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="medsight-parity-"))
    rows = ["| source | max abs delta probability (fp32) | outputs |", "|---|---|---|", brats(work / "brats"),
            lung(work / "lung")]
    row, net, checkpoint = chexnet(work / "chexnet")
    rows.append(row)
    rows.append(txrv(work / "txrv"))
    if Path(args.pictures).is_dir():
        rows.append(resize_effect(net, checkpoint, Path(args.pictures), work / "chexnet"))
    else:
        rows.append(f"| (skipped: no real pictures at {args.pictures}) | | |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
