"""Parse NIH's real ``Data_Entry_2017_v2020.csv.gz`` with medsight's ChestX-ray14 reader and print
what it holds: rows, patients, views, 'No Finding' and multi-label rows, each finding's count, and
the rows whose file-name follow-up number differs from the ``Follow-up #`` column (the join trap).
Exits 1 if the file does not parse; skips cleanly (exit 0) when it is absent.

    python scripts/check_chestxray14_labels.py [--data ../shared/data/chestxray14/official_labels]
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import medsight  # noqa: F401
from medsight.datasets.chestxray14 import FINDINGS, IMAGE_NAME, read_data_entry
from medsight.datasets.splits import split_by_group
from medsight.errors import MedsightError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/chestxray14/official_labels")
    args = parser.parse_args()
    path = Path(args.data) / "Data_Entry_2017_v2020.csv.gz"
    if not path.is_file():
        print(f"skipped: {path} not found")
        return 0
    try:
        entries = read_data_entry(path)
    except MedsightError as exc:
        print(f"error: {exc}")
        return 1
    patients = {e.patient_id for e in entries}
    no_finding = sum(1 for e in entries if not e.findings)
    multi = sum(1 for e in entries if len(e.findings) > 1)
    renamed = sum(1 for e in entries if int(IMAGE_NAME.match(e.image).group(2)) != e.follow_up)
    views = collections.Counter(e.view for e in entries)
    counts = collections.Counter(f for e in entries for f in e.findings)
    print(f"{path}: {len(entries)} rows, {len(patients)} patients, views {dict(views)}")
    print(f"'No Finding' rows {no_finding}; multi-label rows {multi}; file-name follow-up differs from the "
          f"column in {renamed} rows")
    print(f"{'finding':20s} {'rows':>6s}")
    for finding in FINDINGS:
        print(f"{finding:20s} {counts[finding]:6d}")
    train, val = split_by_group(entries, lambda e: e.patient_id, 0.1, seed=0)
    shared = {e.patient_id for e in train} & {e.patient_id for e in val}
    print(f"patient-level 10 % split: {len(train)} / {len(val)} rows, patients in both: {len(shared)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
