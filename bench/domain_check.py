"""Out-of-distribution flags on real data (``medsight.inference.domain``): which inputs predict calls unlike the
training data, against the summary a training run stores, and what the check costs per case.

    flock /tmp/medsight-heavy.lock .venv/bin/python bench/domain_check.py [--data ../shared/data] [--timing]

1. MRI: the summary of the 4 real BRATS 2015 cases (FLAIR + T1c, z-scored, skull-stripped, 1 mm). Each of them
   against the summary of the other three, the real BraTS 2023 case (raw intensities) and the skull-stripped MNI152
   template must not be flagged; the real chest CT, the TotalSegmentator CT and MR and perturbed BRATS cases (5 mm
   slices, a head around the brain) must be; a BRATS case x1000 must not (the model z-scores each case).
2. X-rays: the summary of the 479 NIH starter pictures (256 px, views from their labels.csv). The NIH1000 test
   pictures, the NIH sample PNGs and the SIIM DICOM must not be flagged; a 16-bit copy, the DICOM marked lateral and a
   picture whose table row says lateral must be.
3. Synthetic: summaries of synthetic BraTS, LUNA16 and ChestX-ray14 sets against held-out cases of another seed
   (must not be flagged) and their perturbations (must be).
4. ``--timing``: the check's seconds per case against predict's on this machine, for a BraTS-size case (the
   default SegResNet), the 512 x 512 x 48 chest CT (the default RetinaNet) and a 1024 px PNG (DenseNet121 at 224
   px). Untrained weights: the time is the architecture's.

Prints one table (input, expected, found, reasons) and the false-flag and missed-flag rates. Skips what is absent.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from medsight.core.config import resolve
from medsight.core.registry import DATASETS, TASKS
from medsight.data.consumers import profile_of
from medsight.inference import domain
from medsight.training.provenance import training_domain

ROWS: list[tuple[str, str, bool, list[str]]] = []  # (group, input or set of inputs, expected flagged, reasons found)


def task_of(name: str, overrides=(), profile: str | None = None):
    cls = TASKS.get(name)
    return cls(resolve(cls.config_class, profile=profile_of(cls, profile), overrides=list(overrides)))


def check(group: str, label: str, task, summary, record, expected: bool) -> None:
    ROWS.append((group, label, expected, domain.reasons(summary, task.domain_case(record))))


def summary_of(task, records) -> dict:
    found = training_domain(task, records)
    print(f"  summary of {found['cases']} of {found['of']} cases: " +
          ", ".join(f"{k} {_short(v)}" for k, v in found["facts"].items() if k != "intensity"))
    return found


def _short(entry: dict) -> str:
    if "values" in entry:
        return "/".join(entry["values"])
    low, high = entry["min"], entry["max"]
    fmt = (lambda v: "x".join(f"{x:g}" for x in v)) if isinstance(low, list) else (lambda v: f"{v:g}")
    return fmt(low) if low == high else f"{fmt(low)}..{fmt(high)}"


def save_like(path: Path, array: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(np.asarray(array), affine), path)
    return str(path)


# -- 1. MRI ----------------------------------------------------------------------------------------------------
def mri(data: Path, work: Path) -> None:
    brats15 = data / "brats" / "brats2015_deepmedic_4cases"
    if not brats15.is_dir():
        print(f"skipped MRI: {brats15} not found")
        return
    print("MRI model trained on the 4 real BRATS 2015 cases (FLAIR + T1c)")
    task = task_of("segmentation", ["data.modalities=[flair,t1c]"])
    source = task.open_data(brats15)
    task.learn_state(source)
    records = task.records(source, "all")
    summary = summary_of(task, records)
    group = "MRI (BRATS 2015)"
    for record in records:  # each case against the other three: it is not in the summary it is checked with
        others = training_domain(task, [r for r in records if r is not record])
        check(group, f"{record['id']} (left out)", task, others, record, False)
    brats23 = data / "brats" / "brats2023_gli_00001_unlabelled" / "BraTS-GLI-00001-000"
    if brats23.is_dir():
        check(group, "BraTS 2023 GLI-00001 (raw intensities)", task, summary, task.input_records(str(brats23))[0],
              False)
    mni = data / "misc" / "nilearn_mni152" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if mni.is_file():
        check(group, "MNI152 T1 template (skull-stripped, as both roles)", task, summary,
              {"image": [str(mni)] * 2, "id": "mni"}, False)
    for label, path in (("chest CT lung1 (NRRD, HU)", data / "ct" / "pyradiomics_lung1" / "lung1_image.nrrd"),
                        ("TotalSegmentator CT (3 mm)", data / "ct" / "totalsegmentator_example" / "example_ct.nii.gz"),
                        ("TotalSegmentator CT DICOM series (20 slices)",
                         data / "ct" / "totalsegmentator_example" / "example_ct_dicom"),
                        ("TotalSegmentator MR (abdomen, 3 mm)",
                         data / "ct" / "totalsegmentator_example" / "example_mr_sm.nii.gz")):
        if path.exists():
            check(group, label, task, summary, {"image": [str(path)] * 2, "id": path.name}, True)
    # perturbations of a real case (pat0003): a summary without it, as above
    case, others = records[0], training_domain(task, records[1:])
    images = [nib.load(p) for p in case["image"]]
    arrays = [np.asarray(i.dataobj, dtype=np.float32) for i in images]
    affine = images[0].affine
    thick = affine.copy()
    thick[:3, 2] *= 5
    check(group, f"{case['id']}: every 5th slice (5 mm)", task, others,
          {"image": [save_like(work / f"thick{i}.nii.gz", a[:, :, ::5], thick) for i, a in enumerate(arrays)],
           "id": "thick"}, True)
    rng = np.random.default_rng(0)
    head = [np.where(a == a[0, 0, 0], rng.normal(0.5, 0.3, a.shape), a) for a in arrays]  # signal all around
    check(group, f"{case['id']}: background filled (not skull-stripped)", task, others,
          {"image": [save_like(work / f"head{i}.nii.gz", a, affine) for i, a in enumerate(head)], "id": "head"}, True)
    check(group, f"{case['id']}: x1000 (z-scored per case: alike)", task, others,
          {"image": [save_like(work / f"x1000_{i}.nii.gz", a * 1000, affine) for i, a in enumerate(arrays)],
           "id": "x1000"}, False)


# -- 2. X-rays -------------------------------------------------------------------------------------------------
def xrays(data: Path, work: Path) -> None:
    starter = data / "chestxray14" / "nih_starter_256"
    if not starter.is_dir():
        print(f"skipped X-rays: {starter} not found")
        return
    print("X-ray model trained on the 479 NIH starter pictures (256 px)")
    task = task_of("classification")
    pictures = sorted((starter / "images").glob("*.png"))
    summary = summary_of(task, [{"image": str(p), "id": p.name} for p in pictures])
    group = "X-ray (NIH starter)"
    nih1000 = sorted((data / "chestxray14" / "nih1000_64px" / "NIH1000" / "test").glob("*/*.png"))
    for picture in nih1000:
        check(group, "NIH1000 test pictures (64 px RGB(A), views from their table)", task, summary,
              {"image": str(picture), "id": picture.name}, False)
    samples = data / "chestxray14" / "samples"
    for picture in sorted(samples.glob("*.png")):
        check(group, f"NIH sample {picture.name} (no table: view unknown)", task, summary,
              {"image": str(picture), "id": picture.name}, False)
    dicoms = sorted(samples.glob("*.dcm"))
    if dicoms:
        import pydicom

        check(group, "SIIM DICOM (CR, PA, 8-bit)", task, summary, {"image": str(dicoms[0]), "id": "siim"}, False)
        lateral = pydicom.dcmread(dicoms[0])
        lateral.ViewPosition = "LL"
        lateral.save_as(work / "lateral.dcm")
        check(group, "SIIM DICOM, ViewPosition LL", task, summary, {"image": str(work / "lateral.dcm"), "id": "ll"},
              True)
    eight = np.asarray(Image.open(pictures[0]).convert("L"))
    Image.fromarray(eight.astype(np.uint16) * 257).save(work / "sixteen.png")
    check(group, f"{pictures[0].name} as 16-bit", task, summary, {"image": str(work / "sixteen.png"), "id": "16"}, True)
    table = work / "table" / "images"
    table.mkdir(parents=True)
    shutil.copy(pictures[0], table / pictures[0].name)
    (work / "table" / "labels.csv").write_text(f"Image Index,View Position\n{pictures[0].name},LL\n")
    check(group, f"{pictures[0].name} listed LL in its table", task, summary,
          {"image": str(table / pictures[0].name), "id": "table"}, True)


# -- 3. synthetic ----------------------------------------------------------------------------------------------
def synthetic(work: Path) -> None:
    from medsight.datasets.synth.luna16 import make_scan

    print("synthetic: summaries of seed 7, held-out cases of seed 23")
    group = "synthetic BraTS"
    task = task_of("segmentation")
    trained = DATASETS.get("brats")().synth(work / "brats", cases=12, seed=7, shape=(64, 64, 48))
    source = task.open_data(trained)
    task.learn_state(source)
    summary = summary_of(task, task.records(source, "all"))
    held_out = task.input_records(str(DATASETS.get("brats")().synth(work / "brats_held", cases=12, seed=23,
                                                                     shape=(64, 64, 48))))
    for record in held_out:
        check(group, "held-out cases (seed 23)", task, summary, record, False)
    first = [nib.load(p) for p in held_out[0]["image"]]
    arrays = [np.asarray(i.dataobj, dtype=np.float32) for i in first]
    check(group, "5 mm slices", task, summary,
          {"image": [save_like(work / f"s5_{i}.nii.gz", a[:, :, ::5], np.diag([-1.0, -1.0, 5.0, 1.0]))
                     for i, a in enumerate(arrays)], "id": "s5"}, True)
    scan = make_scan(0, np.random.default_rng(3), shape=(64, 64, 48), spacing=(1.0, 1.0, 1.0))
    ct = save_like(work / "ct.nii.gz", scan.volume, np.eye(4))
    check(group, "a CT in HU", task, summary, {"image": [ct] * 4, "id": "ct"}, True)
    rng = np.random.default_rng(5)
    check(group, "not skull-stripped", task, summary,
          {"image": [save_like(work / f"head{i}.nii.gz", np.where(a == 0, rng.normal(300, 40, a.shape), a),
                               first[0].affine) for i, a in enumerate(arrays)], "id": "head"}, True)

    group = "synthetic LUNA16"
    task = task_of("detection")
    trained = DATASETS.get("luna16")().synth(work / "luna", cases=10, seed=7, shape=(96, 96, 40))
    source = task.open_data(trained)
    task.learn_state(source)
    summary = summary_of(task, task.records(source, "all"))
    held = sorted(DATASETS.get("luna16")().synth(work / "luna_held", cases=10, seed=23,
                                                 shape=(96, 96, 40)).glob("subset*/*.mhd"))
    for scan_path in held:
        check(group, "held-out scans (seed 23)", task, summary, {"image": str(scan_path), "id": "h"}, False)
    import SimpleITK as sitk

    source_image = sitk.ReadImage(str(held[0]))
    hu = sitk.GetArrayFromImage(source_image).astype(np.float32)
    for label, values, spacing in (("HU x1000", hu * 1000, None), ("no intercept (HU + 1024)", hu + 1024, None),
                                   ("6 mm slices", hu, 6.0)):
        image = sitk.GetImageFromArray(values)
        image.CopyInformation(source_image)
        if spacing:
            image.SetSpacing((*source_image.GetSpacing()[:2], spacing))
        out = work / f"{label.split()[0]}.nrrd"
        sitk.WriteImage(image, str(out))
        check(group, label, task, summary, {"image": str(out), "id": label}, True)

    group = "synthetic ChestX-ray14"
    task = task_of("classification")
    trained = DATASETS.get("chestxray14")().synth(work / "cxr", cases=120, seed=7, size=128)
    source = task.open_data(trained)
    task.learn_state(source)
    summary = summary_of(task, task.records(source, "train") + task.records(source, "val"))
    held = sorted(DATASETS.get("chestxray14")().synth(work / "cxr_held", cases=60, seed=23,
                                                      size=128).glob("images_*/images/*.png"))
    for picture in held:
        check(group, "held-out pictures (seed 23)", task, summary, {"image": str(picture), "id": picture.name}, False)
    from medsight.datasets.synth.dicom import write_xray

    eight = np.asarray(Image.open(held[0]))
    Image.fromarray(eight.astype(np.uint16) * 257).save(work / "cxr16.png")
    check(group, "16-bit", task, summary, {"image": str(work / "cxr16.png"), "id": "16"}, True)
    write_xray(work / "cxr_ll.dcm", eight.astype(np.uint16), bits_stored=8, identifiers={"ViewPosition": "LL"})
    check(group, "DICOM ViewPosition LL", task, summary, {"image": str(work / "cxr_ll.dcm"), "id": "ll"}, True)


# -- 4. timing -------------------------------------------------------------------------------------------------
def untrained(name: str, profile: str | None, overrides, learn_from: Path, summary: dict, work: Path):
    """A Model of the task's default network, untrained (predict's time is the architecture's), with ``summary``."""
    from medsight.core.config import to_dict
    from medsight.core.structure import build_model
    from medsight.inference.model import Model

    task = task_of(name, overrides, profile)
    task.learn_state(task.open_data(learn_from))
    state = {"task": name, "config": to_dict(task.config), "task_state": task.state_dict(),
             "model": build_model(task, None).state_dict(), "domain": summary}
    return Model(state, work / f"{name}.pt", engine="torch"), task


def seconds(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def timing(data: Path, work: Path) -> None:
    """Per case: the check alone (``Task.domain_case``: read + measure, what it would cost on its own), and predict
    without and with a summary to compare with: a volume's facts are measured where predict reads it (not read
    again), so the difference is what the check adds to predict."""
    from medsight.inference import domain as domain_module

    rows = []
    compared = {"version": domain_module.VERSION, "facts": {}}  # compared (nothing to flag): the check runs

    def both(model_of, run, repeat):
        model_of.state["domain"] = {"facts": {}}  # no summary this medsight reads: not compared
        without = seconds(run, repeat)
        model_of.state["domain"] = compared
        return without, seconds(run, repeat)

    brats23 = data / "brats" / "brats2023_gli_00001_unlabelled" / "BraTS-GLI-00001-000"
    if brats23.is_dir():
        synth = DATASETS.get("brats")().synth(work / "t_brats", cases=2, seed=1, shape=(40, 40, 24))
        model, task = untrained("segmentation", "gpu", ["trainer.progress=never", "data.num_workers=0"], synth,
                                {"facts": {}}, work)
        record = task.input_records(str(brats23))[0]
        model.predict(str(brats23))  # warm-up
        rows.append(("BraTS case, 4 x 240x240x155 (SegResNet 16, gpu profile)",
                     seconds(lambda: task.domain_case(record), 3), *both(model, lambda: model.predict(str(brats23)), 1)))
        print(rows[-1], flush=True)
    lung = data / "ct" / "pyradiomics_lung1" / "lung1_image.nrrd"
    if lung.is_file():
        synth = DATASETS.get("luna16")().synth(work / "t_luna", cases=2, seed=1, shape=(64, 64, 24))
        model, task = untrained("detection", None, ["trainer.progress=never"], synth, {"facts": {}}, work)
        record = {"image": str(lung), "id": "lung1"}
        model.predict(str(lung))  # warm-up
        rows.append(("chest CT, 512x512x48 (RetinaNet, default)",
                     seconds(lambda: task.domain_case(record), 3), *both(model, lambda: model.predict(str(lung)), 1)))
        print(rows[-1], flush=True)
    samples = sorted((data / "chestxray14" / "samples").glob("*.png"))
    if samples:
        big = work / "big"
        big.mkdir()
        for i in range(16):  # predict runs pictures in batches: the time per picture of a batch of 16
            Image.open(samples[0]).convert("L").resize((1024, 1024)).save(big / f"{i:03d}.png")
        pictures = sorted(big.glob("*.png"))
        synth = DATASETS.get("chestxray14")().synth(work / "t_cxr", cases=12, seed=1, size=64)
        model, task = untrained("classification", None, ["trainer.progress=never"], synth, {"facts": {}}, work)
        record = {"image": str(pictures[0]), "id": "p"}
        per = [t / len(pictures) for t in both(model, lambda: model.predict([str(p) for p in pictures]), 2)]
        rows.append(("1024 px PNG (DenseNet121 at 224 px, batch of 16)", seconds(lambda: task.domain_case(record), 20),
                     *per))
    print(f"\n{'time per case (CPU, this machine)':58s} {'check alone s':>13s} {'predict s':>10s} "
          f"{'with check s':>12s} {'added':>7s}")
    for label, check_s, without_s, with_s in rows:
        print(f"{label:58s} {check_s:13.3f} {without_s:10.3f} {with_s:12.3f} {(with_s - without_s) / without_s:7.1%}")


# -- the table -------------------------------------------------------------------------------------------------
def report() -> None:
    print(f"\n{'group':22s} {'input':62s} {'expected':8s} {'found':10s} reasons")
    sets: dict[tuple[str, str, bool], list[list[str]]] = {}
    for group, label, expected, found in ROWS:
        sets.setdefault((group, label, expected), []).append(found)
    for (group, label, expected), found in sets.items():
        flagged = [f for f in found if f]
        shown = ("flag" if flagged else "alike") if len(found) == 1 else f"{len(flagged)}/{len(found)} flag"
        label = label if len(found) == 1 else f"{label}: {len(found)}"
        print(f"{group:22s} {label[:62]:62s} {'flag' if expected else 'alike':8s} {shown:10s} "
              f"{'; '.join(flagged[0]) if flagged else ''}")
    for group in dict.fromkeys(row[0] for row in ROWS):
        alike = [row for row in ROWS if row[0] == group and not row[2]]
        unlike = [row for row in ROWS if row[0] == group and row[2]]
        false = sum(1 for row in alike if row[3])
        missed = sum(1 for row in unlike if not row[3])
        print(f"{group:22s} false flags {false}/{len(alike)} in-domain ({false / max(len(alike), 1):.0%}); "
              f"missed {missed}/{len(unlike)} wrong-domain")
    wrong = [row for row in ROWS if bool(row[3]) != row[2]]
    print(f"\n{'every input as expected' if not wrong else f'{len(wrong)} input(s) NOT as expected'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                        help="the shared real-data folder (default ../shared/data)")
    parser.add_argument("--timing", action="store_true", help="also time the check against predict")
    parser.add_argument("--timing-only", action="store_true", help="only time the check against predict")
    args = parser.parse_args()
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if args.timing_only:
            if data.is_dir():
                (work / "timing").mkdir()
                timing(data, work / "timing")
            return
        if data.is_dir():
            for part, name in ((mri, "mri"), (xrays, "xrays")):
                (work / name).mkdir()
                part(data, work / name)
        else:
            print(f"skipped the real data: {data} not found")
        (work / "synth").mkdir()
        synthetic(work / "synth")
        report()
        if args.timing and data.is_dir():
            (work / "timing").mkdir()
            timing(data, work / "timing")


if __name__ == "__main__":
    main()
