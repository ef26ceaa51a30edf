"""Transfer learning on real chest X-rays: DenseNet121 fine-tuned at 224 px on the 479 real NIH pictures of
``nih_starter_256`` (one per patient; normal = "No Finding" vs abnormal), started (a) from a CheXNet-layout
``model.pth.tar`` through ``medsight import`` and (b) from scratch, the same architecture and settings;
both tested on the nih1000 test split (200 pictures the starter set does not hold), and Grad-CAM on real
pictures.

No CheXNet weights can be downloaded here: the CheXNet-layout file holds *random* weights, so (a) shows
the import -> fine-tune path end to end (new head by label name, frozen then slowed pretrained layers),
not the gain real CheXNet weights would give. With the real ``model.pth.tar`` the same command applies.

    python bench/transfer_learning.py [--shared ../shared/data] [--epochs 6] [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import medsight  # noqa: E402
from medsight.core.progress import setup_logging  # noqa: E402
from tests.tasks import test_import as fixtures  # noqa: E402


def starter_csv(starter: Path, out: Path) -> Path:
    """labels.csv for the csv format: path, label (the nih1000 folder names), split (15 % of patients: val)."""
    rows = []
    with open(starter / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            label = "0_normal" if row["Finding Labels"] == "No Finding" else "1_abnormal"
            unit = int(hashlib.sha256(f"7:{row['Patient ID']}".encode()).hexdigest()[:8], 16) / 16**8
            rows.append({"path": str((starter / "images" / row["Image Index"]).resolve()), "label": label,
                         "split": "val" if unit < 0.15 else "train", "patient": row["Patient ID"]})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    return out / "labels.csv"


def run(table: Path, out: Path, epochs: int, extra: list[str], init_weights: Path | None = None) -> Path:
    common = ["data.image_size=224", "data.batch_size=16", "data.group_column=patient", f"trainer.max_epochs={epochs}",
              "optim.lr=3e-4", "data.intensity_percentiles=[]", "trainer.precision=auto", "trainer.channels_last=true",
              "trainer.tensorboard=false", "trainer.progress=lines", "data.cache=memory",
              "loss.pos_weight=true"]  # 70 of the 479 pictures are normal: class weights against the imbalance
    medsight.train("classification", table, out=out, init_weights=init_weights, overrides=common + extra)
    return out / "checkpoints" / "best.pt"


def evaluate(checkpoint: Path, test: Path, out: Path) -> dict:
    return medsight.load(checkpoint, precision="fp32").evaluate(test, "test", out=out).metrics


def cams(checkpoint: Path, pictures: list[Path], out: Path) -> str:
    report = medsight.load(checkpoint, precision="fp32").predict_files(pictures, out, cam=True, cam_top_k=1)
    assert not report.failures, report.failures
    from PIL import Image

    maps = sorted((out / "cam").glob("*.png"))
    # the right panel of each picture is the heatmap over the picture: count maps with visible heat
    warm = sum(int((np.asarray(Image.open(m).convert("RGB")).astype(int)[..., 0] > 150).mean() > 0.002)
               for m in maps)
    return f"{warm} of {len(maps)} Grad-CAM maps show heat ({out / 'cam'})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--work", default="/tmp/medsight-bench/transfer")
    args = parser.parse_args()
    setup_logging()  # the trainer's epoch lines, as the command line shows them
    shared, work = Path(args.shared), Path(args.work)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    starter, test = shared / "chestxray14" / "nih_starter_256", shared / "chestxray14" / "nih1000_64px" / "NIH1000"
    if not starter.is_dir() or not test.is_dir():
        print(f"skip: {starter} or {test} not found")
        return 0
    table = starter_csv(starter, work / "starter")
    torch.manual_seed(1)
    source = fixtures.save_chexnet_checkpoint(fixtures.chexnet_network(), work / "model.pth.tar")
    medsight.import_model(str(source), work / "chexnet.pt")
    results = {}
    tuned = run(table, work / "from-chexnet", args.epochs,
                ["trainer.freeze_pretrained_epochs=1", "optim.pretrained_lr_factor=0.3"], work / "chexnet.pt")
    results["from a CheXNet-layout file (random weights)"] = evaluate(tuned, test, work / "eval-chexnet")
    scratch = run(table, work / "scratch", args.epochs,
                  ["model.name=torchvision_densenet121", "data.channels=3", "data.normalize=imagenet"])
    results["from scratch"] = evaluate(scratch, test, work / "eval-scratch")
    samples = sorted((shared / "chestxray14" / "samples").glob("*.png"))[:2] + \
        sorted((test / "test" / "1_abnormal").glob("*.png"))[:3]
    print("\n| start | test AUROC (abnormal) | accuracy |\n|---|---|---|")
    for name, metrics in results.items():
        print(f"| {name} | {metrics.get('auroc_1_abnormal', float('nan')):.3f} | {metrics.get('accuracy', 0):.3f} |")
    print(cams(tuned, samples, work / "cam-chexnet"))
    print(cams(scratch, samples, work / "cam-scratch"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
