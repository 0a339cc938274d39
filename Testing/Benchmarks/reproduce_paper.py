"""Reproduce the paper's table: train every fold × seed of a prepared dataset, segment each fold's test cases
with the paper's window stride, and report Dice, Jaccard, 95HD and ASD as the paper does (%, %, voxels,
voxels; mean ± std over the runs), beside the paper's row. docs/reproduce-paper.md is the guide.

    semisupseg prepare la --input LA_DIR --output la-prepared --crop-to-label --labeled 8 16
    python Testing/Benchmarks/reproduce_paper.py --prepared la-prepared --labeled 8 --seeds 0 1 2 \\
        --output la-reproduction --device cuda

Each run lives in ``OUTPUT/fold{k}-seed{s}/`` (the training's own folder) with its scores in
``scores.json``; a re-run skips finished runs and resumes a stopped training from its checkpoint, so the
command can be repeated after any interruption. ``OUTPUT/results.json`` and ``OUTPUT/table.md`` hold the
aggregate.
"""

import argparse
import json
import os
import statistics
import sys
from typing import Dict, List, Optional, Sequence

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: The paper's rows (its Tables 1 and 2): Dice %, Jaccard %, 95HD voxels, ASD voxels; std as printed.
PAPER_ROWS = {
    "left atrium": {"dice": (89.10, 0.012), "jaccard": (81.62, 0.024), "hd95_vox": (6.30, 0.850),
                    "asd_vox": (1.80, 0.020)},
    "pancreas": {"dice": (76.40, 0.018), "jaccard": (62.96, 0.027), "hd95_vox": (10.69, 1.603),
                 "asd_vox": (2.79, 0.0954)},
}
#: The paper's inference strides (Sec. 3.2), x y z voxels.
PAPER_STRIDES = {"left atrium": (18, 18, 4), "pancreas": (16, 16, 16)}
COLUMNS = (("dice", "Dice %", 100.0), ("jaccard", "Jaccard %", 100.0), ("hd95_vox", "95HD vox", 1.0),
           ("asd_vox", "ASD vox", 1.0), ("hd95_mm", "95HD mm", 1.0), ("asd_mm", "ASD mm", 1.0))


def write_json(path: str, data: dict) -> None:
    with open(path + ".part", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(path + ".part", path)


def read_folds(prepared: str) -> dict:
    from SemiSupSegTraining.errors import InputError

    path = os.path.join(prepared, "folds.json")
    if not os.path.isfile(path):
        raise InputError(f"{prepared} has no folds.json; give the folder 'semisupseg prepare' wrote.")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_mean(report: dict) -> Dict[str, Optional[float]]:
    """One run's score: each metric averaged over the test cases (and classes); undefined distances (an
    empty prediction) are left out, as the metrics module does."""
    means = {}
    for key, _, _ in COLUMNS:
        values = [m[key] for case in report["cases"] for m in case["classes"].values() if m[key] is not None]
        means[key] = sum(values) / len(values) if values else None
    means["empty_predictions"] = sum(1 for case in report["cases"] for m in case["classes"].values()
                                     if m["hd95_vox"] is None)
    return means


def one_run(prepared: str, manifests: dict, labeled: int, seed: int, folder: str, preset: str,
            overrides: Dict[str, object], stride: Sequence[int], device: str) -> dict:
    """Trains (or resumes, or reuses) one fold × seed and scores it; returns the run's scores."""
    from SemiSupSegTraining.config import preset_config
    from SemiSupSegTraining.evaluation import evaluate_model
    from SemiSupSegTraining.infer import overlap_for_stride
    from SemiSupSegTraining.modelfile import read_metadata
    from SemiSupSegTraining.runfolder import CHECKPOINT_NAME
    from SemiSupSegTraining.train import train

    scores_path = os.path.join(folder, "scores.json")
    if os.path.isfile(scores_path):
        with open(scores_path, encoding="utf-8") as f:
            return json.load(f)
    model = os.path.join(folder, "model.pt")
    if not os.path.isfile(model):
        config = preset_config(preset, dict(overrides, seed=seed, device=device))
        resume = os.path.isfile(os.path.join(folder, CHECKPOINT_NAME))
        manifest = None if resume else os.path.join(prepared, manifests["train"][str(labeled)])
        train(manifest, folder, None if resume else config, progress="none", resume=resume)
    overlap = overlap_for_stride(read_metadata(model)["patch_size"], stride)
    report = evaluate_model(model, os.path.join(prepared, manifests["test"]), device=device, overlap=overlap)
    scores = {"model": model, "stride_xyz": list(stride), "cases": report["cases"], "mean": run_mean(report)}
    write_json(scores_path, scores)
    return scores


def aggregate(runs: List[dict]) -> Dict[str, Dict[str, Optional[float]]]:
    """Mean and std over the runs of each run's mean (the paper reports the spread over its runs)."""
    table = {}
    for key, _, scale in COLUMNS:
        values = [r["scores"]["mean"][key] * scale for r in runs if r["scores"]["mean"][key] is not None]
        table[key] = {"mean": statistics.fmean(values) if values else None,
                      "std": statistics.pstdev(values) if len(values) > 1 else 0.0 if values else None}
    return table


def format_table(dataset: str, table: dict, runs: int, label: str) -> str:
    def cell(entry):
        return "–" if entry["mean"] is None else f"{entry['mean']:.2f} ± {entry['std']:.2f}"

    lines = ["| | " + " | ".join(name for _, name, _ in COLUMNS) + " | runs |",
             "|---|" + "---|" * (len(COLUMNS) + 1)]
    paper = PAPER_ROWS.get(dataset)
    if paper:
        lines.append("| the paper | " + " | ".join(f"{paper[k][0]:.2f} ± {paper[k][1]}" if k in paper else "–"
                                                    for k, _, _ in COLUMNS) + " | |")
    lines.append(f"| {label} | " + " | ".join(cell(table[k]) for k, _, _ in COLUMNS) + f" | {runs} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from SemiSupSegTraining.config import parse_override
    from SemiSupSegTraining.errors import InputError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", required=True, help="the folder 'semisupseg prepare' wrote (folds.json)")
    parser.add_argument("--output", required=True, help="the folder for every run and the table")
    parser.add_argument("--labeled", type=int, default=8, help="labeled cases per fold (default 8, the LA row)")
    parser.add_argument("--folds", type=int, nargs="+", help="the folds to run (default: every fold)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="the seeds per fold (default 0)")
    parser.add_argument("--preset", default="paper-as-printed", help="the training preset (default %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a training setting")
    parser.add_argument("--stride", type=int, nargs=3, metavar=("SX", "SY", "SZ"),
                        help="the window stride at test time (default: the paper's for the dataset, 18 18 4 for "
                             "the left atrium, 16 16 16 for the pancreas)")
    parser.add_argument("--device", default="auto", help="auto (default), cuda, cuda:N, mps or cpu")
    args = parser.parse_args(argv)
    try:
        folds = read_folds(args.prepared)
        dataset = folds.get("dataset", "")
        stride = args.stride or PAPER_STRIDES.get(dataset)
        if stride is None:
            raise InputError(f"The paper gives no stride for the dataset '{dataset}'; give --stride SX SY SZ.")
        chosen = [f for f in folds["folds"] if args.folds is None or f["fold"] in args.folds]
        if not chosen or any(str(args.labeled) not in f["manifests"]["train"] for f in chosen):
            raise InputError(f"{args.prepared} has no fold manifests for --labeled {args.labeled} (and --folds "
                             f"{args.folds or 'all'}); prepare with '--labeled {args.labeled}'.")
        overrides = dict(parse_override(text) for text in args.set)
        os.makedirs(args.output, exist_ok=True)
        runs = []
        for fold in chosen:
            for seed in args.seeds:
                folder = os.path.join(args.output, f"fold{fold['fold']}-seed{seed}")
                scores = one_run(args.prepared, fold["manifests"], args.labeled, seed, folder, args.preset,
                                 overrides, stride, args.device)
                runs.append({"fold": fold["fold"], "seed": seed, "scores": scores})
                print(f"fold {fold['fold']} seed {seed}: Dice {100 * scores['mean']['dice']:.2f} %", flush=True)
    except InputError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    table = aggregate(runs)
    label = f"{args.preset}, {args.labeled} labeled" + (f", {' '.join(args.set)}" if args.set else "")
    text = format_table(dataset, table, len(runs), label)
    write_json(os.path.join(args.output, "results.json"),
               {"dataset": dataset, "labeled": args.labeled, "preset": args.preset, "settings": overrides,
                "stride_xyz": list(stride), "table": table, "paper": PAPER_ROWS.get(dataset),
                "runs": [{"fold": r["fold"], "seed": r["seed"], "mean": r["scores"]["mean"]} for r in runs]})
    with open(os.path.join(args.output, "table.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
