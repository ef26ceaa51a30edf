"""``medsight serve`` under load, against a real Orthanc on loopback: throughput against a plain predict loop,
latency, peak memory, and a chaos run.

    python bench/serve_load.py --studies 12 --senders 4 --out runs/bench/serve [--chaos]

- **Throughput:** ``--studies`` synthetic CT series (detection) and X-rays (classification) sent by ``--senders``
  concurrent C-STORE clients straight to medsight, results C-STOREd into Orthanc; studies per minute against
  ``Model.predict_files`` over the same series folders, one after another (the plain ``medsight predict``
  loop, same options, same DICOM outputs).
- **Latency:** p50 / p95 from the answer to a series' last C-STORE to its last result stored in Orthanc (the
  delivery recorded after Orthanc's C-STORE success).
- **Memory:** the server's peak RSS (it runs as ``medsight serve`` in its own process).
- **Chaos** (``--chaos``): the server is SIGKILLed 3 times during the run and restarted, and Orthanc is stopped
  for 30 s; every series' results must be in Orthanc exactly once. The counts are printed and written to
  ``serve_load.json``.

The models are random-weight tiny checkpoints on tiny studies by default (this measures the service, not the
networks); ``--mr`` adds MR studies. ``--full`` makes the studies and networks a clinic's (``FULL``: BraTS-size MR
of two series, 240 x 240 x 155 at 1 mm; 320 x 320 x 120 CT; 1024-px X-rays; DenseNet121, the BraTS bundle's
SegResNet, the cpu-small detector), which is where the issue's throughput target is measured:

    flock /tmp/medsight-heavy.lock .venv/bin/python bench/serve_load.py --studies 12 --senders 4 --mr --full
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pydicom
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.serve.conftest import ct_series, free_port, mr_study
from tests.serve.services import Orthanc
from tests.serve.test_dicom_node import store
from tests.toolkit.test_dicom_out import random_checkpoint


#: --full: the studies' sizes and the models' settings of a clinic (the default is tiny, to measure the service)
FULL = {"mr_shape": (240, 240, 155), "mr_slice_mm": 1.0, "ct_shape": (320, 320, 120), "ct_spacing": (0.75, 0.75, 2.5),
        "xray_px": 1024}
TINY = {"mr_shape": (32, 32, 20), "mr_slice_mm": 1.5, "ct_shape": (48, 48, 16), "ct_spacing": (1.8, 1.8, 3.0),
        "xray_px": 64}


def make_inputs(out: Path, studies: int, mr: bool, sizes: dict = TINY) -> list[Path]:
    """Series folders: CT series and X-rays alternating (and MR studies with --mr)."""
    from medsight.datasets.synth.chestxray14 import Anatomy, render
    from medsight.datasets.synth.dicom import write_xray

    folders, rng = [], np.random.default_rng(0)
    for index in range(studies):
        folder = out / "inputs" / f"study{index:03d}"
        if mr and index % 3 == 2:
            mr_study(folder, sizes["mr_shape"], sizes["mr_slice_mm"])
            folders += [folder / "flair", folder / "t1c"]
        elif index % 2 == 0:
            ct_series(folder, sizes["ct_shape"], sizes["ct_spacing"])
            folders.append(folder)
        else:
            picture = render({"Mass"}, Anatomy.draw(rng), sizes["xray_px"], rng).astype(np.uint16) * 16
            write_xray(folder / "IM0.dcm", picture)
            folders.append(folder)
    return folders


def checkpoints(out: Path, full: bool = False) -> list[dict]:
    """Random-weight models: tiny ones, or with ``full`` the networks a clinic runs (the cpu-small detector with
    its own window, DenseNet121 at 224 px, the MONAI BraTS bundle's SegResNet with its 96^3 window)."""
    det = random_checkpoint("detection", out / "det.pt", *([] if full else ["infer.roi_size=[64,64,32]"]),
                            "infer.dicom_min_probability=0.0", "infer.dicom_max_marks=3", "infer.score_threshold=0.0")
    cxr = random_checkpoint("classification", out / "cxr.pt",
                            *(["model.name=densenet121", "data.image_size=224"] if full else
                              ["model.name=simple_cnn", "data.image_size=48"]),
                            state={"labels": ["Mass", "Nodule"], "multi_label": True, "negative_label": "No Finding",
                                   "thresholds": [0.5, 0.5]})
    seg = random_checkpoint("segmentation", out / "seg.pt", "data.modalities=[flair,t1c]",
                            *(["model.init_filters=16", "model.blocks_up=[1,1,1]", "infer.roi_size=[96,96,96]",
                               "infer.blend=gaussian"] if full else ["infer.roi_size=[32,32,16]", "model.init_filters=8"]),
                            state={"convention": "brats2021", "modalities": ["flair", "t1c"]})
    return [{"name": "nodules", "checkpoint": str(det), "match": {"modality": "CT"}},
            {"name": "cxr", "checkpoint": str(cxr), "match": {"modality": "DX"}},
            {"name": "brain", "checkpoint": str(seg), "match": {"modality": "MR"},
             "roles": {"flair": {"series_description": "flair"}, "t1c": {"series_description": "t1"}}}]


def plain_loop(folders: list[Path], rules: list[dict], out: Path) -> float:
    """Seconds of Model.predict_files over every input, one after another (models loaded once, as serve does)."""
    import medsight

    models = {r["name"]: medsight.load(r["checkpoint"], engine="torch") for r in rules}
    started = time.perf_counter()
    for folder in folders:
        if folder.name in ("flair", "t1c"):
            if folder.name == "flair":
                models["brain"].predict_files([], out / folder.parent.name, images={
                    "flair": str(folder), "t1c": str(folder.parent / "t1c")}, dicom=True)
            continue
        name = "cxr" if (folder / "IM0.dcm").exists() else "nodules"
        models[name].predict_files([folder], out / folder.name, dicom=True)
    return time.perf_counter() - started


def start_server(config: Path) -> subprocess.Popen:
    """``medsight serve`` in its own process, its log appended to ``server.log`` beside the config."""
    log = open(config.parent / "server.log", "a")  # noqa: SIM115  (the server's own log, for as long as it runs)
    return subprocess.Popen([sys.executable, "-m", "medsight", "--verbose", "serve", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)


def send_all(folders: list[Path], port: int, senders: int, sent_at: dict) -> None:
    """``senders`` threads, each C-STOREing its share of the series; a refusal (restart, full queue) is retried."""
    def send(share):
        for folder in share:
            files = sorted(folder.iterdir())
            while True:
                try:
                    answers = store(port, [pydicom.dcmread(f) for f in files])
                    if all(code == 0 for code, _ in answers):
                        break
                except Exception:  # noqa: BLE001  (the server is being killed: send the series again)
                    pass
                time.sleep(1)
            sent_at[str(pydicom.dcmread(files[0]).SeriesInstanceUID)] = time.time()

    threads = [threading.Thread(target=send, args=(folders[k::senders],)) for k in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/serve"))
    parser.add_argument("--chaos", action="store_true")
    parser.add_argument("--mr", action="store_true")
    parser.add_argument("--full", action="store_true", help="BraTS-size MR (240 x 240 x 155, 1 mm), 320 x 320 x 120 CT, "
                                                            "1024-px X-rays, and clinic-size networks")
    parser.add_argument("--workers", type=int, default=1, help="the server's model workers")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    folders = make_inputs(out, args.studies, args.mr, FULL if args.full else TINY)
    rules = checkpoints(out, args.full)
    plain_s = plain_loop(folders, rules, out / "plain")
    port = free_port()
    pacs = Orthanc(out / "orthanc", port)
    config = {"folder": str(out / "serve"), "workers": args.workers,
              "dicom": {"port": port, "allowed_callers": [], "series_timeout": 2.0, "complete_on": "both"},
              "http": {"enabled": False}, "models": {"engine": "torch"},
              "queue": {"capacity": 1000, "max_attempts": 20, "backoff_s": 1.0, "max_backoff_s": 8.0},
              "destinations": [{"name": "pacs", "ae_title": "ORTHANC", "port": pacs.dicom_port}],
              "results": {"send_to": ["pacs"]}, "rules": rules}
    (out / "serve.yaml").write_text(yaml.safe_dump(config))
    server = start_server(out / "serve.yaml")
    from tests.serve.test_restart import answers_echo

    while not answers_echo(port):  # the clock starts when the server serves (imports and start-up excluded)
        time.sleep(0.2)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))  # a timeout's SIGTERM still stops what this started
    try:
        peak_rss, kills, sent_at = 0, 0, {}
        started = time.time()
        sender = threading.Thread(target=send_all, args=(folders, port, args.senders, sent_at))
        sender.start()
        db_path = out / "serve" / "queue.sqlite"
        expected = len([f for f in folders if f.name != "t1c"])
        # per study the objects that must reach Orthanc once: CT a SEG of marks and an SR, an X-ray an SR, MR a SEG
        expected_results = sum(1 if f.name == "flair" or (f / "IM0.dcm").exists() else 2
                               for f in folders if f.name != "t1c")
        chaos_times = [started + d for d in (5, 15, 25)] if args.chaos else []
        pacs_down_at = started + 10 if args.chaos else None
        while True:
            time.sleep(0.2)
            try:
                peak_rss = max(peak_rss, psutil.Process(server.pid).memory_info().rss)
            except psutil.Error:
                pass
            if chaos_times and time.time() >= chaos_times[0]:
                chaos_times.pop(0)
                server.send_signal(signal.SIGKILL)
                server.wait()
                kills += 1
                server = start_server(out / "serve.yaml")
            if pacs_down_at and time.time() >= pacs_down_at:
                pacs.stop()
                time.sleep(30)
                pacs = Orthanc(out / "orthanc", port, http_port=pacs.http_port,  # same ports, same storage
                               dicom_port=pacs.dicom_port)
                pacs_down_at = None
            done = 0
            if db_path.exists():
                with sqlite3.connect(db_path) as db:
                    done = db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'dead')").fetchone()[0]
            if done >= expected and not sender.is_alive():
                break
            if time.time() - started > 1800:
                print("gave up after 30 minutes", file=sys.stderr)
                break
        served_s = time.time() - started
        with sqlite3.connect(db_path) as db:
            delivered = db.execute("SELECT sop_instance_uid, delivered FROM deliveries").fetchall()
            states = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
            finished = dict(db.execute("SELECT job_id, MAX(delivered) FROM deliveries GROUP BY job_id").fetchall())
            single = db.execute("SELECT uid, rule FROM series WHERE state = 'routed' AND role IS NULL").fetchall()
        in_pacs = [pacs.http.get(f"/instances/{i}/simplified-tags").json().get("SOPInstanceUID")
                   for m in ("SEG", "SR") for i in pacs.find("Instance", {"Modality": m})]
        from medsight.serve.server import job_id_for  # a job's id: a hash of its series UIDs and rule

        # single-series jobs (CT, X-ray): from the answer to the series' last C-STORE to its last result in Orthanc
        latencies = sorted(finished[job_id_for(uid, rule)] - sent_at[uid] for uid, rule in single
                           if job_id_for(uid, rule) in finished and uid in sent_at)

        report = {"studies": args.studies, "series": len(folders), "senders": args.senders, "workers": args.workers,
                  "plain_predict_s": round(plain_s, 1), "serve_s": round(served_s, 1),
                  "studies_per_min_plain": round(60 * expected / plain_s, 2),
                  "studies_per_min_serve": round(60 * expected / served_s, 2),
                  "latency_p50_s": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
                  "latency_p95_s": round(float(np.percentile(latencies, 95)), 2) if latencies else None,
                  "peak_rss_mb": round(peak_rss / 2**20), "kills": kills, "pacs_down_s": 30 if args.chaos else 0,
                  "jobs": states, "results_expected": expected_results, "results_delivered": len(delivered),
                  "results_in_orthanc": len(in_pacs), "distinct_in_orthanc": len(set(in_pacs)),
                  "exactly_once": len(in_pacs) == len(set(in_pacs)) == len(delivered) == expected_results}
        print(json.dumps(report, indent=2))
        (out / "serve_load.json").write_text(json.dumps(report, indent=2))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        pacs.stop()
    return 0 if report["exactly_once"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
