"""The rule for the product's default method, applied to committed accuracy summaries.

    python Testing/Benchmarks/choose_default.py Testing/Benchmarks/results/accuracy-headroom.json \
        Testing/Benchmarks/results/accuracy-phantoms.json Testing/Benchmarks/results/accuracy-colin27.json \
        [--json choice.json]

The rule, fixed before the fair Colin27 table was measured:

1. Candidates: every method measured with at least ``--min-seeds`` seeds (10 % labeled) on *every* summary
   given, except ``all-labeled`` (it needs every case labeled, which no user of this product has).
2. On each benchmark the candidates are ranked by mean Dice (1 = best; equal means share the better rank).
3. Eligible: a candidate whose mean Dice gain over supervised-only, paired by seed, is ≥ 0 on every
   benchmark. Supervised-only is always eligible, so the rule always picks a method.
4. The default is the eligible candidate with the best mean rank; a tie goes to the larger mean gain over
   supervised-only (averaged over the benchmarks).

``--paper results/augmentation-headroom.json`` leaves the methods' strong variants out (every method at the
``paper`` level); ``--levels results/augmentation-headroom.json`` applies the same rule with every method at its augmentation
level (that file's choice per method): a method trained at ``strong`` is represented by its strong variant's
entry (``supervised`` by ``supervised-strong``, which then is also the reference of step 3); a benchmark that
lacks the variant has no entry for that method.

The rule only reads summaries; it never looks at test cases itself, and which summaries it is given (the
fair ones) is said in docs/benchmarks.md.
"""

import argparse
import json
import sys
from typing import Dict, List, Sequence

FRACTION = "10pct"
NOT_A_CHOICE = ("all-labeled",)


def _methods(summary: dict) -> Dict[str, dict]:
    return summary["fractions"][FRACTION]["methods"]


def _gain(entry: dict, supervised: dict) -> float:
    """Mean over the shared seeds of (Dice − supervised-only's Dice), in Dice points."""
    seeds = sorted(set(entry["seeds"]) & set(supervised["seeds"]))
    if not seeds:
        raise ValueError("no seed in common with supervised-only")
    return sum(entry["seeds"][s]["dice"] - supervised["seeds"][s]["dice"] for s in seeds) / len(seeds)


def _with_methods(summary: dict, methods: Dict[str, dict]) -> dict:
    """A copy of ``summary`` whose 10 % table holds ``methods`` (the summary itself is left as it is)."""
    fractions = dict(summary["fractions"], **{FRACTION: dict(summary["fractions"][FRACTION], methods=methods)})
    return dict(summary, fractions=fractions)


def at_levels(summary: dict, levels: Dict[str, str]) -> dict:
    """``summary`` with each method's entry replaced by its variant's where ``levels`` names one ({method:
    variant}); the variants' own entries removed (each is now its method's)."""
    methods = dict(_methods(summary))
    for method, variant in levels.items():
        if variant in methods:
            methods[method] = methods.pop(variant)
        else:
            methods.pop(method, None)
    return _with_methods(summary, methods)


def at_paper(summary: dict, augmentation: dict) -> dict:
    """``summary`` without the methods' strong variants that choose_augmentation's summary names: every method
    at the ``paper`` level only."""
    variants = {v["strong_variant"] for v in augmentation["methods"].values()}
    methods = {m: e for m, e in _methods(summary).items() if m not in variants}
    return _with_methods(summary, methods)


def chosen_variants(augmentation: dict) -> Dict[str, str]:
    """{method: its strong variant} for the methods that choose_augmentation's summary put at ``strong``."""
    return {m: v["strong_variant"] for m, v in augmentation["methods"].items() if v["level"] == "strong"}


def choose(summaries: Sequence[dict], min_seeds: int = 3) -> dict:
    """The default by the rule above, with every candidate's ranks, gains and eligibility."""
    tables = [_methods(s) for s in summaries]
    if any("supervised" not in t for t in tables):
        raise ValueError("every summary needs supervised-only, the rule's reference")
    candidates = sorted(m for m in set.intersection(*(set(t) for t in tables))
                        if m not in NOT_A_CHOICE and all(len(t[m]["seeds"]) >= min_seeds for t in tables))
    rows: Dict[str, dict] = {m: {"ranks": [], "gains": [], "dice": []} for m in candidates}
    for table in tables:
        means = {m: table[m]["dice"]["mean"] for m in candidates}
        for m in candidates:
            rows[m]["ranks"].append(1 + sum(1 for other in candidates if means[other] > means[m]))
            rows[m]["gains"].append(round(_gain(table[m], table["supervised"]), 3))
            rows[m]["dice"].append(means[m])
    for row in rows.values():
        row["mean_rank"] = sum(row["ranks"]) / len(row["ranks"])
        row["mean_gain"] = round(sum(row["gains"]) / len(row["gains"]), 3)
        row["eligible"] = all(g >= 0 for g in row["gains"])
    eligible = [m for m in candidates if rows[m]["eligible"]]
    chosen = min(eligible, key=lambda m: (rows[m]["mean_rank"], -rows[m]["mean_gain"]))
    return {"benchmarks": [s.get("benchmark") for s in summaries], "candidates": rows, "default": chosen}


def report(choice: dict) -> str:
    names = choice["benchmarks"]
    lines = ["| method | " + " | ".join(f"{n}: Dice %, rank, − supervised" for n in names)
             + " | mean rank | eligible |",
             "|---|" + "---|" * len(names) + "---|---|"]
    for method, row in sorted(choice["candidates"].items(), key=lambda kv: kv[1]["mean_rank"]):
        cells = [f"{d:.1f}, {r}, {g:+.1f}" for d, r, g in zip(row["dice"], row["ranks"], row["gains"])]
        mark = "**" if method == choice["default"] else ""
        lines.append(f"| {mark}{method}{mark} | " + " | ".join(cells)
                     + f" | {row['mean_rank']:.1f} | {'yes' if row['eligible'] else 'no'} |")
    return "\n".join(lines) + f"\n\nThe rule's default: {choice['default']}"


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("summaries", nargs="+", help="accuracy-*.json summaries, one per benchmark")
    parser.add_argument("--min-seeds", type=int, default=3)
    parser.add_argument("--json", help="also write the choice here")
    parser.add_argument("--levels", help="choose_augmentation's summary: every method at its augmentation level")
    parser.add_argument("--paper", help="choose_augmentation's summary: every method at the paper level (its strong "
                                        "variants left out)")
    args = parser.parse_args(argv)
    summaries = []
    for path in args.summaries:
        with open(path, encoding="utf-8") as f:
            summaries.append(json.load(f))
    if args.levels or args.paper:
        with open(args.levels or args.paper, encoding="utf-8") as f:
            augmentation = json.load(f)
        levels = chosen_variants(augmentation)
        summaries = [at_levels(s, levels) if args.levels else at_paper(s, augmentation) for s in summaries]
    choice = choose(summaries, args.min_seeds)
    if args.levels:
        choice["levels"] = levels
    print(report(choice))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(choice, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
