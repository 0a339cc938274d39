"""The README's "Results at a glance" table, made from the committed accuracy summaries.

    python Testing/Benchmarks/headline.py                 # print the table
    python Testing/Benchmarks/headline.py --write README.md   # replace the table between its markers

``Testing/Python/test_docs.py`` checks that the README holds exactly this table, so that the README cannot
drift from ``Testing/Benchmarks/results/accuracy-*.json``.
"""

import argparse
import json
import os
from typing import Dict, List, Optional

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BENCHMARKS = (("headroom", "headroom"), ("phantoms", "phantoms"), ("colin27", "Colin27"))
METHODS = (("supervised", "supervised only"), ("supervised-strong", "supervised only, `strong` augmentation"),
           ("mean-teacher", "Mean Teacher"), ("ua-mt", "UA-MT"),
           ("cps", "CPS"), ("bcp", "BCP"), ("ours", "ours (the paper)"),
           ("all-labeled", "*every case labeled (the ceiling)*"))
START, END = "<!-- results-at-a-glance:start -->", "<!-- results-at-a-glance:end -->"


def _methods(benchmark: str, results: str) -> Dict[str, dict]:
    path = os.path.join(results, f"accuracy-{benchmark}.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)["fractions"]["10pct"]["methods"]


def _cell(entry: Optional[dict]) -> str:
    if entry is None:
        return "–"
    seeds = len(entry.get("seeds", {})) or None
    text = (f"{entry['dice']['mean']:.1f} (1 seed)" if seeds == 1  # no spread to show
            else f"{entry['dice']['mean']:.1f} ± {entry['dice']['std']:.1f}")
    return f"**{text}**" if entry.get("default") else text


def table(results: str = RESULTS) -> str:
    """Dice % (mean ± std over the seeds, 10 % labeled) per method and benchmark; the product's default in bold."""
    tables = [_methods(b, results) for b, _ in BENCHMARKS]
    rows: List[str] = ["| method | " + " | ".join(name for _, name in BENCHMARKS) + " |",
                       "|---|" + "---|" * len(BENCHMARKS)]
    for key, label in METHODS:
        if any(key in t for t in tables):
            rows.append(f"| {label} | " + " | ".join(_cell(t.get(key)) for t in tables) + " |")
    return "\n".join(rows)


def replace_block(text: str, block: str, markers: tuple = (START, END)) -> str:
    """``text`` with what lies between the two marker comments replaced by ``block``."""
    start, end = text.index(markers[0]) + len(markers[0]), text.index(markers[1])
    return text[:start] + "\n" + block + "\n" + text[end:]


def current_block(text: str, markers: tuple = (START, END)) -> str:
    return text[text.index(markers[0]) + len(markers[0]):text.index(markers[1])].strip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="README", help="replace the table between its markers in this file")
    parser.add_argument("--results", default=RESULTS, help="folder of accuracy-*.json (default: %(default)s)")
    args = parser.parse_args()
    block = table(args.results)
    if args.write:
        with open(args.write, encoding="utf-8") as f:
            text = f.read()
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(replace_block(text, block))
    print(block)


if __name__ == "__main__":
    main()
