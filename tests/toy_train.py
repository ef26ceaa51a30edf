"""``python tests/toy_train.py ARGS`` = ``medsight ARGS`` with the toy task registered (also for torchrun)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.toy_task  # noqa: E402,F401
from medsight.cli.main import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
