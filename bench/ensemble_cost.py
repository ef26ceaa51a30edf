"""What an ensemble costs: K members predict one BraTS-size case in at most K x 1.1 times one member's network
time (the case is read, preprocessed, inverted and written once; members run one after another).

    python bench/ensemble_cost.py [--case CASE_DIR ...] [--members 3]

Without ``--case`` (or when none is present) a synthetic 240 x 240 x 155 case is used. With several cases
(e.g. the four BRATS 2015 cases of ../shared/data), the batch is also predicted as ``medsight predict`` does a
test set, reading ahead and writing behind the networks: there the case's fixed cost (reading, preprocessing,
writing) is hidden behind the members, and the ratio is the whole batch's time over K x one member's network
time on the same cases. The members are one
briefly trained cpu-small SegResNet and copies of it with perturbed weights (real, different networks: the
cost does not depend on what they learnt). Network time is measured by forward hooks on each member's
network, inside the same predict calls. Outputs are compared too: the ensemble's probabilities against the
mean of the members' own, predicted one by one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import medsight
import numpy as np
import torch
from medsight.core.runtime import cpu_capability
from medsight.io import checkpoint

QUIET = {"trainer.progress": "never", "trainer.tensorboard": False}


def members(work: Path, count: int) -> list[Path]:
    data = medsight.synthesize("brats", work / "train", cases=3, seed=1, shape="64,64,48")
    run = medsight.train("segmentation", data, out=work / "run", profile="cpu-small", overrides={
        **QUIET, "trainer.max_epochs": 1, "data.modalities": ["flair", "t1c"], "data.patch_size": [48, 48, 48],
        "data.folds": 3})
    paths = [run.last]
    for k in range(1, count):
        state = checkpoint.load(run.last)
        generator = torch.Generator().manual_seed(k)
        weights = checkpoint.model_weights(state)
        state["model"] = {n: (v + 0.05 * v.std().nan_to_num() * torch.randn(v.shape, generator=generator)
                              if v.is_floating_point() and v.numel() > 1 else v) for n, v in weights.items()}
        state.pop("ema", None)
        paths.append(checkpoint.save(state, work / f"member{k}.pt"))
    return paths


def case_folders(paths: list[str] | None, work: Path) -> list[Path]:
    found = [Path(p) for p in paths or [] if Path(p).is_dir()]
    if found:
        return found
    data = medsight.synthesize("brats", work / "case", cases=1, seed=9, shape="240,240,155")
    return [next(p.parent for p in sorted(data.rglob("*flair*.nii.gz")))]


class NetworkClock:
    """Seconds spent inside the forward calls of the given networks (hooks; removed on exit)."""

    def __init__(self, networks):
        self.networks, self.seconds, self.handles, self._start = list(networks), 0.0, [], 0.0

    def __enter__(self):
        for net in self.networks:
            self.handles.append(net.register_forward_pre_hook(self._begin))
            self.handles.append(net.register_forward_hook(self._end))
        return self

    def _begin(self, *_):
        self._start = time.perf_counter()

    def _end(self, *_):
        self.seconds += time.perf_counter() - self._start

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def timed(model, folders: list[Path], out: Path) -> tuple[float, float, object]:
    """``predict_files`` of the cases as ``medsight predict`` runs it (label map, overlay; an ensemble also
    its uncertainty map), after a warm-up call; seconds in all and inside the networks."""
    execution = model.execution(model.configured(), "predict")
    networks = list(getattr(execution.network, "networks", [execution.network]))
    model.predict_files(folders[:1], out / "warm")  # engines built, kernels chosen
    with NetworkClock(networks) as clock:
        started = time.perf_counter()
        report = model.predict_files(folders, out / "timed")
        total = time.perf_counter() - started
    assert not report.failures, report.failures
    return total, clock.seconds, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="*", help="BraTS case folders (FLAIR and T1c); default: a synthetic one")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--engine", default="torch")
    args = parser.parse_args()
    print(f"CPU: {cpu_capability()}")
    with tempfile.TemporaryDirectory(prefix="medsight-ensemble-") as folder:
        work = Path(folder)
        paths = members(work, args.members)
        cases = case_folders(args.case, work)
        case = cases[0]
        ensemble = medsight.ensemble(paths, work / "ensemble.pt")
        rows = []
        for what, batch in [("one case", cases[:1])] + ([(f"{len(cases)} cases", cases)] if len(cases) > 1 else []):
            single_total, single_net, _ = timed(medsight.load(paths[0], engine=args.engine), batch, work / "one")
            total, net, _ = timed(medsight.load(ensemble, engine=args.engine), batch, work / "all")
            rows.append((what, single_total, single_net, total, net))
        probabilities = [medsight.load(p, engine=args.engine).predict(case, probabilities=True)[0].probabilities
                         for p in paths]
        together = medsight.load(ensemble, engine=args.engine).predict(case, probabilities=True)[0]
    mean = np.mean(probabilities, axis=0)
    gap = float(np.abs(together.probabilities - mean).max())
    agree = float(((together.probabilities > 0.5) == (mean > 0.5)).mean())
    k = args.members
    print(f"cases: {', '.join(str(c) for c in cases)} (first: {'x'.join(map(str, together.labels.shape))}), "
          f"engine {args.engine}")
    print("| cases | model | predict s | network s | other s |\n|---|---|---|---|---|")
    for what, single_total, single_net, total, net in rows:
        print(f"| {what} | one member | {single_total:.2f} | {single_net:.2f} | {single_total - single_net:.2f} |")
        print(f"| {what} | ensemble of {k} | {total:.2f} | {net:.2f} | {total - net:.2f} |")
    for what, single_total, single_net, total, net in rows:
        print(f"{what}: ensemble predict / ({k} x one member's network time): {total / (k * single_net):.3f} "
              f"(target <= 1.10); each further member costs {(total - single_total) / ((k - 1) * single_net):.3f} "
              "x one member's network time")
    print(f"outputs: max |ensemble - mean of members| = {gap:.2e}; voxels decided alike: {agree:.6f}")


if __name__ == "__main__":
    main()
