"""Each method's augmentation level by the rule committed before the runs (docs/benchmarks.md, "The training
augmentation: paper or strong"), from the runs of ``bench_accuracy.py``.

    python Testing/Benchmarks/choose_augmentation.py benchmark-augmentation \
        --json Testing/Benchmarks/results/augmentation-headroom.json

(a bench_accuracy ``--out`` folder: every finished run's ``result.json`` in it; or its ``accuracy.json`` files,
which hold the runs of the last command only).

Per method, the paper level (``supervised``, ``ours``, ``ua-mt``, ``cps``, ``bcp``) against its strong variant
(``supervised-strong``; the baselines' ``-strong-all``; for ours first ``ours-strong`` or ``ours-strong-all``,
whichever has the higher headroom Dice at seed 0): Dice and
HD95 per seed, the Dice gain paired by seed, and the rule's decision. The rule: the strong variant becomes the
method's default when its paired mean gain is > 0 on the headroom benchmark AND on the phantoms (each measured
at 3 seeds) and no benchmark's paired mean is below −0.5 points; otherwise the method keeps ``paper``.
"""

import argparse
import glob
import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np

RULE = ("strong becomes a method's default when its Dice gain over the same method at paper, paired by seed, "
        "has a positive mean on the headroom benchmark and on the phantoms (3 seeds each) and a mean nowhere "
        "below -0.5 points; ours' strong variant (labeled crops only, or unlabeled too) is the one with the higher "
        "headroom Dice at seed 0. Committed before any strong run.")
DECIDING = ("headroom", "phantoms")
SEEDS_NEEDED = 3
MAX_LOSS = 0.5
# The baselines are judged by the same rule at strong on every crop, as their authors' code augments every crop
# with one pipeline (added before any baseline ran at strong).
VARIANTS = {"supervised": ["supervised-strong"], "ours": ["ours-strong", "ours-strong-all"],
            "ua-mt": ["ua-mt-strong-all"], "cps": ["cps-strong-all"], "bcp": ["bcp-strong-all"]}


def per_seed(runs: List[dict]) -> Dict[str, Dict[str, Dict[int, dict]]]:
    """{dataset: {variant: {seed: {"dice": %, "hd95_mm": mm}}}} of the 10 % runs."""
    table: Dict[str, Dict[str, Dict[int, dict]]] = {}
    for r in runs:
        if abs(r["fraction"] - 0.1) > 1e-9:
            continue
        hd95 = r["run"]["hd95_mm"]["mean"]
        table.setdefault(r["dataset"], {}).setdefault(r["method"], {})[int(r["seed"])] = {
            "dice": round(r["run"]["dice"]["mean"] * 100.0, 2), "hd95_mm": None if hd95 is None else round(hd95, 2)}
    return table


def strong_variant(method: str, table: dict) -> Optional[str]:
    """The strong variant of ``method`` the rule judges: for ours, the better one on headroom at seed 0."""
    found = [v for v in VARIANTS[method] if 0 in table.get("headroom", {}).get(v, {})]
    return max(found, key=lambda v: table["headroom"][v][0]["dice"]) if found else None


def paired(a: Dict[int, dict], b: Dict[int, dict]) -> dict:
    seeds = sorted(set(a) & set(b))
    gains = [round(a[s]["dice"] - b[s]["dice"], 2) for s in seeds]
    return {"seeds": seeds, "by_seed": gains, "mean": round(float(np.mean(gains)), 2) if gains else None,
            "std": round(float(np.std(gains, ddof=1)), 2) if len(gains) > 1 else None}


def decide(gains: Dict[str, dict]) -> dict:
    """The rule on {dataset: paired gain}: {"level", "why"}."""
    losing = [d for d, g in gains.items() if len(g["seeds"]) >= SEEDS_NEEDED and g["mean"] < -MAX_LOSS]
    if losing:  # decisive whatever is still missing
        return {"level": "paper", "why": f"loses more than {MAX_LOSS} on {', '.join(losing)}"}
    measured = [d for d in DECIDING if len(gains.get(d, {}).get("seeds", [])) >= SEEDS_NEEDED]
    not_gaining = [d for d in measured if gains[d]["mean"] <= 0]
    if not_gaining:  # decisive too: strong needs a gain on both
        return {"level": "paper", "why": f"no gain on {', '.join(not_gaining)}"}
    missing = [d for d in DECIDING if d not in measured]
    if missing:
        return {"level": "paper", "why": f"not measured at {SEEDS_NEEDED} seeds on {', '.join(missing)}"}
    return {"level": "strong", "why": "gains on headroom and phantoms, loses nowhere by more than 0.5"}


def summarise(runs: List[dict]) -> dict:
    table = per_seed(runs)
    methods = {}
    for method in VARIANTS:
        variant = strong_variant(method, table)
        if variant is None:
            continue
        gains = {d: paired(v[variant], v[method]) for d, v in table.items() if variant in v and method in v}
        methods[method] = {"strong_variant": variant, "paired_dice_gain": gains, **decide(gains)}
    return {"rule": RULE, "per_seed": table, "methods": methods}


def markdown(summary: dict) -> str:
    lines = ["| benchmark | variant | Dice % by seed | HD95 mm by seed | strong − paper, paired |", "|---|---|---|---|---|"]
    for dataset, variants in summary["per_seed"].items():
        for variant, seeds in sorted(variants.items()):
            dice = ", ".join(f"{seeds[s]['dice']:.1f} ({s})" for s in sorted(seeds))
            hd95 = ", ".join("n/a" if seeds[s]["hd95_mm"] is None else f"{seeds[s]['hd95_mm']:.1f}" for s in sorted(seeds))
            gain = ""
            for m in summary["methods"].values():
                g = m["paired_dice_gain"].get(dataset)
                if m["strong_variant"] == variant and g:
                    gain = f"{g['mean']:+.1f}" + (f" ± {g['std']:.1f}" if g["std"] is not None else "") + \
                        f" (seeds {', '.join(map(str, g['seeds']))})"
            lines.append(f"| {dataset} | {variant} | {dice} | {hd95} | {gain} |")
    lines.append("")
    for method, m in summary["methods"].items():
        lines.append(f"- {method}: **{m['level']}** ({m['why']}; strong variant {m['strong_variant']})")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("accuracy", nargs="+", help="bench_accuracy.py --out folders or their accuracy.json files")
    parser.add_argument("--json", help="write the summary here")
    parser.add_argument("--runs-command", help="the bench_accuracy command(s) that trained the runs, to record")
    parser.add_argument("--machine", help="the machine that trained them, to record")
    args = parser.parse_args(argv)
    runs, sources = [], []
    for path in args.accuracy:
        if os.path.isdir(path):
            for result in sorted(glob.glob(os.path.join(path, "runs", "*", "*", "*", "seed*", "result.json"))):
                with open(result, encoding="utf-8") as f:
                    runs.append(json.load(f))
            continue
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        runs += data["runs"]
        sources.append({"command": data.get("command"), "settings": data.get("settings")})
    settings = {r["dataset"]: {"preset": r.get("preset"), "iterations": r.get("iterations"), "labeled": r.get("labeled"),
                               "device": r.get("device"), "torch_threads": r.get("torch_threads")} for r in runs}
    summary = dict(summarise(runs), sources=sources, settings=settings, runs_command=args.runs_command,
                   machine=args.machine,
                   train_seconds={f"{r['dataset']} {r['method']} seed{r['seed']}": r["train_seconds"] for r in runs})
    print(markdown(summary))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
