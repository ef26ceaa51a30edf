"""A dataset format from a separate package (tests/plugins/medsight-tsv-pictures), installed with pip into a
temporary folder and found through the entry-point group ``medsight.datasets`` alone, feeds the existing
classification task: ``medsight tasks`` lists it, ``data synth``/``data check`` use it, ``train`` detects
it with ``data.format=auto`` and ``evaluate`` reads it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "medsight-tsv-pictures"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("plugin") / PLUGIN.name  # pip builds in the source tree: not in the repo's
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                                "--no-build-isolation", "--target", str(target), str(source)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert list(target.glob("medsight_tsv_pictures-*.dist-info"))
    return dict(os.environ, PYTHONPATH=str(target), PYTHONUNBUFFERED="1")


#: runs several medsight command lines in one fresh interpreter (each start-up costs seconds: torch, MONAI),
#: printing each one's status and output as a JSON line as soon as it ends
DRIVER = """
import contextlib, io, json, sys
from medsight.cli.main import main
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    print(json.dumps({"returncode": status, "stdout": out.getvalue(), "stderr": err.getvalue()}), flush=True)
"""


def medsight(env, *commands: list[str], timeout=600) -> list[SimpleNamespace]:
    """``medsight ARGS`` for each of ``commands``, one after another in one new process with the plugin on its
    path (found through its entry point there, as in any user's interpreter)."""
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([list(map(str, c)) for c in commands])],
                          capture_output=True, text=True, env=env, timeout=timeout)
    results = [SimpleNamespace(**json.loads(line)) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(commands), done.stdout[-2000:] + done.stderr[-3000:]
    return results


def test_a_format_from_another_package_is_listed_and_feeds_the_classification_task(plugin_env, tmp_path):
    data, run = tmp_path / "pictures", tmp_path / "run"
    listed, made, checked, refused, trained, evaluated = medsight(
        plugin_env, ["tasks"], ["data", "synth", "tsv-pictures", data, "--cases", "40"],
        ["data", "check", "auto", data], ["data", "check", "tsv-pictures", data, "data.seprator=;"],
        ["train", "classification", "--data", data, "--out", run, "model.name=simple_cnn", "data.image_size=48",
         "trainer.max_epochs=2", "data.val_fraction=0.3", "data.format_options.separator=+",
         "trainer.tensorboard=false"],
        ["evaluate", "--checkpoint", run / "checkpoints" / "last.pt", "--data", data, "--out", tmp_path / "eval"])
    assert listed.returncode == 0, listed.stderr
    classification = listed.stdout.split("classification", 1)[1].split("\n")[1]
    assert classification.strip() == "datasets: chestxray14, csv, folders, tsv-pictures"
    assert "tsv-pictures     findings.tsv (file, findings, patient, set)" in listed.stdout

    assert made.returncode == 0, made.stderr
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"tsv-pictures: {data} is clean: " in checked.stdout and "40 files in 40 cases read in full" in checked.stdout
    assert refused.returncode == 2 and "unknown key data.seprator (did you mean data.separator?)" in refused.stderr

    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert "(tsv-pictures data)" in trained.stdout
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    per_image = (tmp_path / "eval" / "per_image.csv").read_text().splitlines()
    assert per_image[0].startswith("image,truth,Mass,Effusion") and len(per_image) - 1 == 8  # every 5th is test

    (data / "pics" / "0003.png").unlink()
    damaged, = medsight(plugin_env, ["data", "check", "tsv-pictures", data])
    assert damaged.returncode == 2
    assert f"problem: {data / 'findings.tsv'}: pics/0003.png: picture not found" in damaged.stdout
