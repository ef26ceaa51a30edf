"""Bad inputs, tried as a new user would, across the commands: every one must be handled by the contract in
DESIGN.md: one line naming the file, exit 2, no traceback; a batch predict exits 1 with the good cases
written; degenerate but readable inputs are refused or warned about, never silently scored.

    python scripts/bad_inputs.py [--work DIR]     # prints a markdown table; exit 1 if any row breaks the contract

Each row: the kind of bad input, the command, the exit status, the message (first line), and whether the
contract holds (status as expected, no traceback, the offending file named where there is one).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import medsight  # noqa: E402
from medsight.core.registry import DATASETS  # noqa: E402


@dataclass
class Case:
    kind: str
    args: list[str]
    status: int = 2  # expected exit status
    names: str = ""  # text the message must contain (usually the offending file)


def command_line(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`medsight ARGS` in its own process, as a user runs it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "medsight", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def nifti(path: Path, array: np.ndarray, affine=None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return path


@dataclass
class Setting:
    """The good data and the models every row starts from, and ``bad``: the folder the bad inputs are made in."""

    work: Path
    bad: Path
    quick: list[str]
    brats: Path
    cxr: Path
    luna: Path
    seg: str
    cls: str
    det: str
    case: Path
    flair: Path
    t1c: Path
    scan: Path


def setting(work: Path) -> Setting:
    quick = ["trainer.max_epochs=1", "trainer.progress=never", "trainer.tensorboard=false"]
    brats = DATASETS.get("brats")().synth(work / "brats", cases=3, seed=1, shape=(32, 32, 24))
    # the models the rows use, trained through the Python API (the rows themselves run the command line)
    medsight.train("segmentation", brats, profile="cpu-small", out=work / "seg", overrides=[
        *quick, "data.patch_size=[32,32,24]", "infer.roi_size=[32,32,24]", "data.folds=1", "data.modalities=[flair,t1c]"])
    seg = str(work / "seg" / "checkpoints" / "last.pt")
    cxr = DATASETS.get("chestxray14")().synth(work / "cxr", cases=20, seed=1, size=32)
    medsight.train("classification", cxr, out=work / "cls", overrides=[*quick, "model.name=simple_cnn",
                                                                      "data.image_size=32"])
    cls = str(work / "cls" / "checkpoints" / "last.pt")
    luna = DATASETS.get("luna16")().synth(work / "luna", cases=2, seed=1, shape=(48, 48, 16), spacing=(1.8, 1.8, 3.0))
    medsight.train("detection", luna, profile="cpu-small", out=work / "det", overrides=[
        *quick, "data.patch_size=[32,32,16]", "data.batch_size=1", "infer.roi_size=[64,64,32]",
        "data.patches_per_scan=1"])
    det = str(work / "det" / "checkpoints" / "last.pt")
    case = sorted(p for p in brats.iterdir() if p.is_dir())[0]
    flair = next(case.glob("*_flair.nii.gz"))
    t1c = next(case.glob("*_t1ce.nii.gz"))
    scan = sorted(luna.glob("subset*/*.mhd"))[0]
    bad = work / "bad"
    bad.mkdir()
    return Setting(work, bad, quick, brats, cxr, luna, seg, cls, det, case, flair, t1c, scan)


def output_path_cases(setting: Setting) -> list[Case]:
    """--out at an existing file and in a read-only folder, for every command that writes."""
    bad, quick, cxr, cls = setting.bad, setting.quick, setting.cxr, setting.cls
    cases: list[Case] = []
    (bad / "a-file").write_text("x")
    # /proc takes no new folders, even for root (a chmod'ed folder would not stop root)
    readonly = Path("/proc/medsight-read-only")
    for out, label in ((bad / "a-file", "--out is an existing file"), (readonly / "sub", "--out in a read-only folder")):
        cases += [
            Case(f"{label}: predict", ["predict", "--checkpoint", cls, str(next(cxr.glob("images_*/images/*.png"))),
                                       "--out", str(out)], names=str(out.parent if "read-only" in label else out)),
            Case(f"{label}: train", ["train", "classification", "--data", str(cxr), "--out", str(out), *quick,
                                     "model.name=simple_cnn", "data.image_size=32"], names=str(out)),
            Case(f"{label}: evaluate", ["evaluate", "--checkpoint", cls, "--data", str(cxr), "--out", str(out)],
                 names=str(out)),
            Case(f"{label}: export", ["export", "--checkpoint", cls, "--format", "torchscript", "--out",
                                      str(out / "m.ts") if "read-only" in label else str(out / "m.ts")], names=str(out)),
            Case(f"{label}: data synth", ["data", "synth", "csv", str(out), "--cases", "2"], names=str(out)),
        ]
    return cases


def degenerate_cases(setting: Setting) -> list[Case]:
    """Degenerate but readable volumes and pictures, and a negative count."""
    import nibabel as nib
    from PIL import Image

    work, bad, seg, cls, t1c = setting.work, setting.bad, setting.seg, setting.cls, setting.t1c
    cases: list[Case] = []
    reference = nib.load(str(t1c))
    nan = np.asarray(reference.dataobj, dtype=np.float32).copy()
    nan[5:9, 5:9, 5:9] = np.nan
    for name, array, affine in (("nan", nan, reference.affine),
                                ("zeros", np.zeros(reference.shape, np.float32), reference.affine),
                                ("one-voxel", np.ones((1, 1, 1), np.float32), reference.affine)):
        path = nifti(bad / f"{name}_flair.nii.gz", array, affine)
        cases.append(Case(f"{name} volume as a modality", ["predict", "--checkpoint", seg, "--image", f"flair={path}",
                                                           "--image", f"t1c={t1c}", "--out", str(work / "o")],
                          status=1, names=path.name))
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(bad / "tiny.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(bad / "black.png")
    for name in ("tiny.png", "black.png"):
        cases.append(Case(f"picture {name}", ["predict", "--checkpoint", cls, str(bad / name), "--out", str(work / "o")],
                          status=1, names=name))
    cases.append(Case("negative --cases", ["data", "synth", "csv", str(bad / "neg"), "--cases", "-3"], names="cases"))
    return cases


def wrong_file_cases(setting: Setting) -> list[Case]:
    """Files that name the wrong thing: a missing or short .raw, a 4D NIfTI, a singular affine, a PNG as a modality, a truncated volume."""
    import nibabel as nib
    from PIL import Image

    work, bad, seg, det, scan = setting.work, setting.bad, setting.seg, setting.det, setting.scan
    case, flair, t1c = setting.case, setting.flair, setting.t1c
    reference = nib.load(str(t1c))
    cases: list[Case] = []
    mhd = bad / "noraw.mhd"
    mhd.write_text(scan.read_text())  # its ElementDataFile names a .raw not copied here
    cases.append(Case(".mhd whose .raw is missing", ["predict", "--checkpoint", det, str(mhd), "--out", str(work / "o")],
                      status=1, names=str(bad / scan.with_suffix(".raw").name)))
    shutil.copy(scan, bad / "short.mhd")
    raw = scan.with_suffix(".raw").read_bytes()
    (bad / "short.raw").write_bytes(raw[: len(raw) // 3])
    (bad / "short.mhd").write_text(scan.read_text().replace(scan.with_suffix(".raw").name, "short.raw"))
    cases.append(Case(".mhd whose .raw is short", ["predict", "--checkpoint", det, str(bad / "short.mhd"), "--out",
                                                   str(work / "o")], status=1, names="short.raw"))
    four_d = nifti(bad / "four_d.nii.gz", np.zeros((16, 16, 8, 2), np.float32))
    cases.append(Case("4D NIfTI among good scans", ["predict", "--checkpoint", det, str(four_d), str(scan), "--out",
                                                    str(work / "o4")], status=1, names="four_d"))
    singular = bad / "singular_flair.nii.gz"
    broken = nib.Nifti1Image(np.asarray(reference.dataobj, dtype=np.float32), reference.affine)
    broken.set_qform(None, code=0)
    singular_affine = reference.affine.copy()
    singular_affine[:, 2] = 0.0  # a zero voxel size along z: a singular affine
    singular_affine[3, 3] = 1.0
    broken.set_sform(singular_affine, code=1)
    nib.save(broken, str(singular))
    cases.append(Case("singular affine", ["predict", "--checkpoint", seg, "--image", f"flair={singular}", "--image",
                                          f"t1c={t1c}", "--out", str(work / "o")], status=1, names="singular"))
    png = bad / "slice.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png)
    cases.append(Case("a PNG as a modality", ["predict", "--checkpoint", seg, "--image", f"flair={png}", "--image",
                                              f"t1c={t1c}", "--out", str(work / "o")], status=1, names="slice.png"))
    truncated = bad / "truncated"
    shutil.copytree(case, truncated / case.name)
    cut = truncated / case.name / flair.name
    cut.write_bytes(flair.read_bytes()[:3000])
    cases.append(Case("truncated FLAIR: data check", ["data", "check", "brats", str(truncated)], names=flair.name))
    return cases


def checkpoint_cases(setting: Setting) -> list[Case]:
    """Files given as checkpoints that are none."""
    work, bad, flair = setting.work, setting.bad, setting.flair
    cases: list[Case] = []
    (bad / "notes.txt").write_text("not a checkpoint\n")
    (bad / "random.pt").write_bytes(os.urandom(4096))
    for name in ("notes.txt", "random.pt"):
        cases.append(Case(f"checkpoint: {name}", ["predict", "--checkpoint", str(bad / name), str(flair), "--out",
                                                  str(work / "o")], names=name))
    return cases


def table_cases(setting: Setting) -> list[Case]:
    """Tables and datasets that point at the wrong things."""
    import nibabel as nib

    work, bad, quick, cls, scan = setting.work, setting.bad, setting.quick, setting.cls, setting.scan
    brats, cxr, luna, seg, t1c = setting.brats, setting.cxr, setting.luna, setting.seg, setting.t1c
    cases: list[Case] = []
    table = bad / "escape"
    table.mkdir()
    (table / "labels.csv").write_text("path,label\n../../../../../../etc/passwd,Mass\n")
    cases.append(Case("CSV path outside the dataset", ["data", "check", "csv", str(table)], names="passwd"))
    nan_rows = bad / "nan_luna"
    shutil.copytree(luna, nan_rows)
    annotations = nan_rows / "annotations.csv"
    uid = scan.stem
    annotations.write_text(annotations.read_text() + f"{uid},nan,0,0,5\n")
    cases.append(Case("annotation row with NaN coordinates", ["data", "check", "luna16", str(nan_rows)],
                      names="annotations.csv"))
    missing = bad / "cxr_missing"
    shutil.copytree(cxr, missing)
    test_name = (missing / "test_list.txt").read_text().split()[0]
    next(missing.glob(f"images_*/images/{test_name}")).unlink()
    cases.append(Case("Data_Entry row whose picture is missing: evaluate", ["evaluate", "--checkpoint", cls, "--data",
                                                                           str(missing), "--out", str(work / "e")],
                      names=test_name))
    grid = bad / "grid"
    shutil.copytree(brats, grid)
    seg_file = next(sorted(p for p in grid.iterdir() if p.is_dir())[0].glob("*_seg.nii.gz"))

    label = nib.load(str(seg_file))
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:-2], label.affine), str(seg_file))
    cases.append(Case("label map on another grid: train", ["train", "segmentation", "--data", str(grid), "--profile",
                                                           "cpu-small", "--out", str(work / "g"), *quick,
                                                           "data.patch_size=[32,32,24]", "data.folds=1",
                                                           "data.modalities=[flair,t1c]"], names=seg_file.name))
    shape = bad / "shape"
    shutil.copytree(brats, shape)
    t2 = next(sorted(p for p in shape.iterdir() if p.is_dir())[0].glob("*_t1ce.nii.gz"))
    image = nib.load(str(t2))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:-3], image.affine), str(t2))
    cases.append(Case("one modality of another shape: train", ["train", "segmentation", "--data", str(shape),
                                                               "--profile", "cpu-small", "--out", str(work / "s"),
                                                               *quick, "data.patch_size=[32,32,24]", "data.folds=1",
                                                               "data.modalities=[flair,t1c]"], names=t2.name))
    gz = bad / "plain.nii.gz"
    with gzip.open(gz, "wb") as handle:
        handle.write(b"this is not a NIfTI")
    cases.append(Case("gzip that is not NIfTI", ["predict", "--checkpoint", seg, "--image", f"flair={gz}", "--image",
                                                 f"t1c={t1c}", "--out", str(work / "o")], status=1, names="plain.nii.gz"))
    return cases


def build(work: Path) -> list[Case]:
    """Every bad input, made in ``work`` next to the good data and models it is tried against."""
    made = setting(work)
    return [*output_path_cases(made), *degenerate_cases(made), *wrong_file_cases(made), *checkpoint_cases(made),
            *table_cases(made)]


def run(cases: list[Case]) -> int:
    broken = 0
    print("| kind | exit | message | contract |\n|---|---|---|---|")
    for case in cases:
        result = command_line(*case.args)
        lines = [line for line in (result.stderr + result.stdout).splitlines()
                 if line.startswith(("error:", "failed:", "problem:", "warning:"))]
        message = lines[0] if lines else (result.stderr.strip().splitlines() or [""])[-1]
        ok = (result.returncode == case.status and "Traceback" not in result.stderr
              and (not case.names or case.names in (result.stderr + result.stdout)))
        broken += not ok
        shown = message.replace("|", "\\|")[:220]
        print(f"| {case.kind} | {result.returncode} (expected {case.status}) | `{shown}` | {'ok' if ok else 'BROKEN'} |",
              flush=True)
    print(f"\n{len(cases) - broken} of {len(cases)} bad inputs handled by the contract")
    return 1 if broken else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="medsight-bad-"))
    if work.exists() and args.work:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    cases = build(work)
    small = work / "full-disk"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode == 0:  # a disk that fills up: the outputs do not fit in 64 KB
        (small / "filler").write_bytes(b"x" * 40_000)
        cls = str(work / "cls" / "checkpoints" / "last.pt")
        cases.append(Case("--out on a full disk: export", ["export", "--checkpoint", cls, "--format", "torchscript",
                                                           "--out", str(small / "model.ts")], names=str(small)))
    try:
        return run(cases)
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(small)], capture_output=True)


if __name__ == "__main__":
    raise SystemExit(main())
