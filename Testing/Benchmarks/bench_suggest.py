"""Does *Suggest next case* help? Label the cases ``semisupseg suggest`` ranks first, or random ones, and compare
the test Dice after retraining.

A small experiment on the synthetic phantoms (``SemiSupSegTraining.phantoms``), run by hand::

    nice -n 10 python Testing/Benchmarks/bench_suggest.py --json Testing/Benchmarks/results/suggest.json

Per seed: train on 2 labeled + 10 unlabeled phantoms (round 0), then for each strategy, ``--rounds`` times:
label ``--per-round`` more cases (their labels are on disk, hidden from training until then) — the top of
``suggest_cases``'s ranking, or a random choice — and retrain from the previous model (``--init-model``,
as the module's *Retrain* does); after each round, the mean Dice over 6 held-out test phantoms. Both
strategies start from the same round-0 model and label the same number of cases.
The tiny preset and short trainings keep it near 20 CPU minutes: the numbers compare the strategies with
each other, not the method's accuracy (Testing/Benchmarks/bench_accuracy.py measures that).
"""

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (HERE, REPO):  # benchmark the working tree, not an installed copy
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

from benchlib import command_line, logger, machine_info, torch_info, write_json  # noqa: E402
from SemiSupSegTraining.config import preset_config  # noqa: E402
from SemiSupSegTraining.evaluation import evaluate_model  # noqa: E402
from SemiSupSegTraining.manifest import load_manifest, write_manifest  # noqa: E402
from SemiSupSegTraining.phantoms import write_phantom_dataset  # noqa: E402
from SemiSupSegTraining.suggest import suggest_cases  # noqa: E402
from SemiSupSegTraining.train import train  # noqa: E402

log = logger("suggest")
SHAPE = (32, 48, 48)
LABELED, UNLABELED, TEST = 2, 10, 6


def _mean_dice(model: str, test_manifest: str) -> float:
    report = evaluate_model(model, test_manifest, device="cpu")
    return round(float(np.mean([m["dice"]["mean"] for m in report["mean"].values()])), 4)


def _with_labels(manifest_path: str, labeled_ids: List[str], out_path: str) -> str:
    manifest = load_manifest(manifest_path)
    for case in manifest.cases:
        case.labeled = case.id in labeled_ids
    return write_manifest(manifest, out_path)


def _train(manifest: str, folder: str, iterations: int, seed: int, init_model=None) -> str:
    config = preset_config("tiny", {"iterations": iterations, "seed": seed, "device": "cpu", "lr": 0.03,
                                    "checkpoint_every": 100000, "batch_labeled": 2, "batch_unlabeled": 2})
    return train(manifest, folder, config, progress="none", init_model=init_model)


def run_seed(work: str, train_manifest: str, test_manifest: str, seed: int, args) -> Dict[str, object]:
    start_labeled = [c.id for c in load_manifest(train_manifest).labeled_cases]
    started = time.perf_counter()
    model0 = _train(train_manifest, os.path.join(work, f"s{seed}-round0"), args.iterations, seed)
    result = {"seed": seed, "round0_dice": _mean_dice(model0, test_manifest), "strategies": {}}
    log(f"seed {seed}: round 0 Dice {result['round0_dice']:.4f}")
    for strategy in ("suggest", "random"):
        rng = np.random.default_rng(1000 + seed)
        labeled, model, rounds = list(start_labeled), model0, []
        manifest = train_manifest
        for r in range(1, args.rounds + 1):
            unlabeled = [c.id for c in load_manifest(manifest).unlabeled_cases]
            if strategy == "suggest":
                ranking = suggest_cases(model, manifest, device="cpu")
                picked = [s.id for s in ranking[: args.per_round]]
                scores = {s.id: round(s.score, 4) for s in ranking}
            else:
                picked = [str(i) for i in rng.choice(unlabeled, args.per_round, replace=False)]
                scores = {}
            labeled += picked
            manifest = _with_labels(train_manifest, labeled, os.path.join(work, f"s{seed}-{strategy}-r{r}.json"))
            model = _train(manifest, os.path.join(work, f"s{seed}-{strategy}-r{r}"), args.iterations, seed,
                           init_model=model)
            dice = _mean_dice(model, test_manifest)
            rounds.append({"round": r, "picked": picked, "scores": scores, "dice": dice})
            log(f"seed {seed} {strategy} round {r}: picked {picked}, Dice {dice:.4f}")
        result["strategies"][strategy] = rounds
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1", help="network seeds (comma separated; default 0,1)")
    parser.add_argument("--rounds", type=int, default=2, help="labeling rounds (default 2)")
    parser.add_argument("--per-round", type=int, default=2, help="cases labeled per round (default 2)")
    parser.add_argument("--iterations", type=int, default=150, help="iterations per training (default 150)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-suggest-") as work:
        train_manifest, test_manifest = write_phantom_dataset(os.path.join(work, "data"), LABELED, UNLABELED, TEST,
                                                              seed=0, shape_zyx=SHAPE)
        runs = [run_seed(work, train_manifest, test_manifest, seed, args) for seed in seeds]
    summary = {}
    for strategy in ("suggest", "random"):
        summary[strategy] = [round(float(np.mean([run["strategies"][strategy][r]["dice"] for run in runs])), 4)
                             for r in range(args.rounds)]
    summary["round0"] = round(float(np.mean([run["round0_dice"] for run in runs])), 4)
    report = {"command": command_line(), "machine": machine_info(), "torch": torch_info("cpu"),
              "settings": {"preset": "tiny", "iterations": args.iterations, "rounds": args.rounds,
                           "per_round": args.per_round, "seeds": seeds, "shape_zyx": SHAPE,
                           "labeled": LABELED, "unlabeled": UNLABELED, "test": TEST, "threads": args.threads},
              "runs": runs, "mean_dice": summary, "total_seconds": round(time.perf_counter() - started, 1),
              "cpu_seconds": round(time.process_time(), 1)}
    print(f"mean test Dice over seeds {seeds}: round 0 {summary['round0']:.4f}")
    for r in range(args.rounds):
        print(f"  round {r + 1} (+{args.per_round * (r + 1)} labels): suggest {summary['suggest'][r]:.4f}  "
              f"random {summary['random'][r]:.4f}")
    print(f"total {report['total_seconds']:.0f} s wall, {report['cpu_seconds']:.0f} s CPU")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
