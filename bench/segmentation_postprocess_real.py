"""Post-processing chosen on validation, on real MRI: a segmentation checkpoint trained on some BRATS 2015
cases chooses its per-region post-processing on its training cases (what validation does while training:
``task.validation_metrics`` with ``learning`` on), then the held-out case is evaluated without and with it.

    flock /tmp/medsight-heavy.lock .venv/bin/python bench/segmentation_postprocess_real.py \
        --checkpoint CKPT --data ../shared/data/brats/brats2015_deepmedic_4cases [key=value ...]

The checkpoint's own split decides which cases are "train" and which are held out ("val"; e.g. a model
trained with ``data.val_groups=[brats_2013_pat0004_1]``, as ``bench/segmentation_real.py`` and the README's
fine-tuned model are). With only a few training cases, the choice is made on cases the model has seen:
a real run chooses on validation cases it has not. Skips cleanly when the data folder is absent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import medsight
from medsight.inference.evaluate import evaluate

SHOWN = ("dice_ET", "dice_TC", "dice_WT", "hd95_ET", "hd95_TC", "hd95_WT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("overrides", nargs="*", help="e.g. infer.roi_size=[96,96,96] infer.overlap=0.25")
    args = parser.parse_args()
    if not Path(args.data).exists():
        print(f"skipped: {args.data} not found")
        return
    model = medsight.load(args.checkpoint)
    # one task throughout: the plan chosen on the training cases (its state) is the one applied on the held-out
    # case; Model.evaluate would start each call from the checkpoint's own state
    task = model.configured(overrides=args.overrides)
    source = task.open_data(args.data)
    train, held_out = task.records(source, "train"), task.records(source, "val")
    if not train or not held_out:
        sys.exit("the checkpoint's split leaves no training or no held-out case in this folder")
    execution = model.execution(task, "evaluate")
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        task.learning = True  # as validation while training: every candidate scored, the plan chosen
        evaluate(task, execution, Path(args.data), "train", Path(out) / "choose", model.path)
        plan = task.state["postprocessing"]
        print(f"chosen on {len(train)} training case(s): {plan}")
        task.learning = False
        for applied in (False, True):
            task.config.infer.postprocess = applied
            rows[applied] = evaluate(task, execution, Path(args.data), "val", Path(out) / str(applied),
                                     model.path).metrics
    print(f"\nheld-out case(s): {', '.join(r['id'] for r in held_out)}")
    print(f"{'':22s}" + "".join(f"{name:>10s}" for name in SHOWN))
    for applied, label in ((False, "raw"), (True, "post-processed")):
        print(f"{label:22s}" + "".join(f"{rows[applied][name]:10.3f}" for name in SHOWN))


if __name__ == "__main__":
    main()
