"""docs/benchmarks.md, made from the committed results (Testing/Benchmarks/results/*.json).

    python Testing/Benchmarks/benchmarks_doc.py                          # print the page
    python Testing/Benchmarks/benchmarks_doc.py --write docs/benchmarks.md

``Testing/Python/test_docs.py`` checks that the committed page is exactly this output and at most 150 lines:
change a figure by re-running a benchmark, change the words here. History goes to CHANGELOG.md.
"""

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import choose_default  # noqa: E402

RESULTS = os.path.join(HERE, "results")
BENCHMARKS = (("headroom", "The benchmark with headroom"), ("phantoms", "The phantoms"),
              ("colin27", "The Colin27 pseudo-subjects"))
LABELS = {"supervised": "supervised only", "mean-teacher": "Mean Teacher", "ua-mt": "UA-MT", "cps": "CPS",
          "bcp": "BCP", "ours": "ours (the paper's method)", "ours-same-input": "ours, no intensity views",
          "ours-confidence-0.9": "ours, `reliable_confidence=0.9`",
          "supervised-strong": "supervised only, `strong` augmentation", "ua-mt-no-views": "UA-MT, no intensity views",
          "cps-no-views": "CPS, no intensity views", "bcp-no-views": "BCP, no intensity views",
          "cps-hybrid": "CPS, the earlier hybrid (`cps-hybrid`)",
          "ua-mt-bottleneck-dropout": "UA-MT, dropout at the bottleneck only (earlier)",
          "bcp-short-pretraining": "BCP, 2/17 of the run as pre-training (earlier)",
          "all-labeled": "*supervised, all 20 labeled (the ceiling)*"}

ROW_ORDER = ("supervised", "mean-teacher", "ua-mt", "cps", "bcp", "ours")

HEAD = """<!-- Made by Testing/Benchmarks/benchmarks_doc.py from Testing/Benchmarks/results/: do not edit by hand. -->
# Benchmarks

Which method segments best when only a few cases are labeled, measured on three small benchmarks that two
CPU cores train in minutes. They compare methods with each other at one short budget; they are not the
paper's setting (6000 iterations of 112×112×80 crops on a GPU: [reproduce-paper.md](reproduce-paper.md)).
Speed and memory: [performance.md](performance.md). How these tables came to be, and the tables they
replaced: [CHANGELOG.md](../CHANGELOG.md).

## Words used here

* **Labeled case**: a scan with its reference segmentation; **unlabeled**: a scan alone. Every benchmark
  has 20 training cases, the first 2 labeled (10 %), and separate test cases that no training sees.
* **Seed**: the random seed of a training (initial weights, crops, augmentation). Each row is trained
  with the seeds its last column counts (0-4 or 0-2); **mean ± std** is over them: the **seeds' spread**.
* **Paired by seed**: a difference between two methods taken seed by seed, then averaged (each seed's
  value in brackets). A difference smaller than its spread is not shown to be real.
* **Dice** and **Jaccard**: overlap with the reference, % (100 = identical). **HD95**: the 95th
  percentile of the distances between the two surfaces; **ASD**: their average distance (mm).
  **empty**: test cases where a method predicted nothing, summed over the seeds (left out of HD95, ASD).
* **Supervised only**: the networks trained on the labeled cases alone, the reference every method must
  beat. **The ceiling**: supervised training with every training case labeled.
* **ours**: the paper's method as this engine trains it ([method.md](method.md)). The baselines, each as
  its authors' code runs it ([method.md](method.md#the-baselines)): **Mean Teacher** (Tarvainen and
  Valpola, 2017) and **UA-MT** (Yu et al., 2019: Mean Teacher with an uncertainty filter), **CPS** (cross
  pseudo supervision, Chen et al., 2021), **BCP** (bidirectional copy-paste, Bai et al., 2023).
* **Fair**: every method with the same data, split, crops, budget and seeds, and every semi-supervised
  method with the same intensity views of the unlabeled crops.
"""

WHAT = {
    "headroom": "Synthetic patients whose anatomy (chamber size ×2, 0-5 veins, a neighbour of similar "
                "intensity) and acquisition (contrast, bias, thick slices, noise, artefacts) vary so widely that 2 "
                "labeled cases cannot show them (`headroom_phantoms.py`); 48³ voxels of 1 mm. It has room: the "
                "ceiling is {ceiling} points above supervised only. {test} test cases.",
    "phantoms": "Left-atrium-like synthetic phantoms (a chamber with veins, a bright tube and blob as "
                "distractors, bias field, noise; binary, 1 mm; `phantoms.py`): easy, little room. {test} test cases.",
    "colin27": "20 pseudo-subjects made from **one** real brain MRI (Colin27 T1 with AAL labels: caudate, "
               "putamen, thalamus), each deformed, bias-fielded, resampled to 1.5×1.5×2 mm and noised "
               "(`colin27_pseudo.py`; `apt-get install mricron-data`): real anatomy, but the unlabeled cases show "
               "nothing the labeled ones do not. {test} test cases.",
}

NOTES = {
    "headroom": "At 300 iterations two baselines at their authors' settings collapse on one seed each: CPS (λ = 1.5 "
                "from the first iteration, cross-entropy only) predicts nothing on seed 0, here and on the phantoms "
                "(both networks' argmax is background everywhere and each teaches the other so; without the "
                "intensity views too), and UA-MT's student ends at 18 % on seed 3. The earlier CPS (`cps-hybrid`) "
                "does not. The intensity views change no method by more than the seeds' spread here (the rows "
                "without them; ours without them: seeds 0-3).",
    "colin27": "UA-MT and CPS have not been re-run here since they follow their authors' code (time): their earlier "
               "rows, from another machine, are in the [changelog](../CHANGELOG.md). BCP at its authors' settings "
               "predicts nothing on every seed, with or without the step of its code that keeps each class's "
               "largest connected component (`bcp-no-largest-component`): that step is not why it fails here. Why it "
               "does is not measured further; its pre-training's loss barely fell (0.64 at iteration 50, 0.52 at "
               "300 of its 300, seed 0), so its teacher starts the self-training undertrained.",
}

TAIL = """## Which case to label next: does *Suggest* help?

Not measurably on the phantoms: preset `tiny`, 150 iterations, 2 labeled + 10 unlabeled, then 2 more
labeled per round (the 2 that `semisupseg suggest` ranks first, or 2 at random), retrained from the
previous model; mean test Dice % over 6 phantoms, 3 seeds (`results/suggest.json`):

{suggest}

The seeds' spread is larger than the difference: all phantoms come from one distribution, so no case
teaches much more than another. The ranking is meant for real collections, where some scans are unlike
the labeled ones.

## Re-running

Every table comes from one command (a few CPU hours with `--jobs 2`); `--report-only` remakes the summary
from finished runs, and this page then follows with `benchmarks_doc.py --write docs/benchmarks.md`:

```console
{commands}
python Testing/Benchmarks/choose_default.py Testing/Benchmarks/results/accuracy-headroom.json \\
    Testing/Benchmarks/results/accuracy-phantoms.json Testing/Benchmarks/results/accuracy-colin27.json
```

## Across machines

Compare figures measured on the same machine only. The same code and seed gave ours 78.7 % on one CPU
(AVX2) and 70.5 % on another (AVX-512) on the headroom benchmark: the CPUs' kernels round differently,
and a short training amplifies the difference into several Dice points on one seed. Every table above
comes from one machine (named above it); a re-run elsewhere should re-run supervised only beside the
method it tests, and expect per-seed differences of several points.
"""


def load_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load(name: str, results: str) -> Optional[dict]:
    return load_json(os.path.join(results, f"accuracy-{name}.json"))


def _signed(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


def _gain(entry: dict) -> str:
    gain = entry.get("dice_gain_over_supervised")
    if not gain or not gain.get("by_seed"):
        return "–"
    if len(gain["by_seed"]) == 1:
        (seed, value), = gain["by_seed"].items()
        return f"{_signed(value)} (seed {seed} only)"
    seeds = ", ".join(_signed(v) for _, v in sorted(gain["by_seed"].items()))
    return f"{_signed(gain['mean'])} ± {gain['std']:.1f} ({seeds})"


def _mean(entry: dict, key: str, digits: int) -> str:
    value = entry.get(key)
    if not value or value.get("mean") is None:
        return "–"
    if len(entry["seeds"]) == 1:  # one run: no spread to show
        return f"{value['mean']:.{digits}f}"
    return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def _ahead_on_every_seed(methods: Dict[str, dict]) -> List[str]:
    """The methods (not the ceiling) whose test Dice beats every other method's on every shared seed."""
    names = [m for m in methods if m != "all-labeled"]
    best = []
    for m in names:
        seeds = methods[m]["seeds"]
        if all(seeds[s]["dice"] > methods[o]["seeds"][s]["dice"] for o in names if o != m
               for s in seeds if s in methods[o]["seeds"]):
            best.append(m)
    return best


def _row_order(method: str) -> tuple:
    """Labels alone at both levels first, then each method before its variants, the ceiling last."""
    if method == "all-labeled":
        return (len(ROW_ORDER) + 1, "")
    base = next((i for i, m in enumerate(ROW_ORDER) if method == m or method.startswith(m + "-")), len(ROW_ORDER))
    return (base, "" if method in ROW_ORDER else method)


def benchmark_section(name: str, title: str, summary: dict) -> str:
    fraction = summary["fractions"]["10pct"]
    methods = fraction["methods"]
    settings = summary["settings"]
    ceiling = methods.get("all-labeled", {}).get("dice_gain_over_supervised", {}).get("mean")
    what = WHAT[name].format(ceiling=f"{ceiling:.1f}" if ceiling is not None else "?", test=fraction["test_cases"])
    iterations = next(iter(settings["iterations"].values()))
    lines = [f"### {title}", "", what, f"Preset `demo` with {settings['patch_size']} crops, {iterations} iterations; "
             f"{settings['machine']}, torch {settings['torch']}, training fp32.", "",
             "| method | Dice % | Jaccard % | HD95 mm | ASD mm | empty | − supervised only, paired by seed | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for key, entry in sorted(methods.items(), key=lambda kv: _row_order(kv[0])):
        label = LABELS.get(key, entry.get("label", key))
        if entry.get("default"):
            label += " (**default**)"
        empty = sum(s.get("empty", 0) for s in entry["seeds"].values())
        lines.append(f"| {label} | {_mean(entry, 'dice', 1)} | {_mean(entry, 'jaccard', 1)} | "
                     f"{_mean(entry, 'hd95_mm', 2)} | {_mean(entry, 'asd_mm', 2)} | {empty} | "
                     f"{'–' if key == 'supervised' else _gain(entry)} | {len(entry['seeds'])} |")
    picture = f"../Resources/Screenshots/accuracy-{name}-dice.png"
    if os.path.exists(os.path.join(HERE, "..", "..", "docs", picture)):
        lines += ["", f"![Dice per method and seed, {title[0].lower() + title[1:]}]({picture})"]
    best = _ahead_on_every_seed(methods)
    lines += ["", "Ahead of every other method on every seed: " + (", ".join(LABELS.get(m, m) for m in best)
                                                                  if best else "none") + "." + (" " + NOTES[name] if name in NOTES else "")]
    return "\n".join(lines)


def default_section(summaries: List[dict], results: str) -> str:
    augmentation = load_json(os.path.join(results, "augmentation-headroom.json"))
    at_paper = [choose_default.at_paper(s, augmentation) for s in summaries] if augmentation else summaries
    choice = choose_default.choose(at_paper)
    table = choose_default.report(choice).split("\n\n")[0]
    default = choice["default"]
    lines = [
        "## How the default method was chosen", "",
        "The rule was fixed, as code (`Testing/Benchmarks/choose_default.py`), before the last fair table was "
        "measured: the candidates are the methods with 3 seeds on every benchmark (not the ceiling); each "
        "benchmark ranks them by mean Dice; a candidate is **eligible only if its gain over supervised only, "
        "paired by seed, is ≥ 0 on every benchmark**; the default is the eligible candidate with the best mean "
        "rank. Supervised only is always eligible. Every method at the `paper` augmentation level, gains paired "
        "by seed:", "", table, "",
        f"The rule's choice: **{LABELS.get(default, default)}** (`--set method={default}`)."]
    if augmentation is not None:
        levels = choose_default.chosen_variants(augmentation)
        at_levels = [choose_default.at_levels(s, levels) for s in summaries]
        measured = [s for s in at_levels if "supervised" in choose_default._methods(s)]
        if measured:
            level_choice = choose_default.choose(measured)
            names = ", ".join(s["benchmark"] for s in measured)
            lines += ["", f"The same rule with every method at its augmentation level (next section; labels "
                          f"alone at `strong` is then the reference), on the benchmarks measured at those "
                          f"levels ({names}):", "",
                      choose_default.report(level_choice).split("\n\n")[0], "",
                      f"Its choice there: **{LABELS.get(level_choice['default'], level_choice['default'])}**."]
    lines += ["", "The paper's method is one setting away (`--set method=ours`); when to choose it: "
                  "[Which method?](../README.md#which-method)."]
    return "\n".join(lines)


def _paired(per_seed: Dict[str, dict], variant: str, base: str) -> str:
    if variant not in per_seed or base not in per_seed:
        return "not run"
    seeds = sorted(set(per_seed[variant]) & set(per_seed[base]), key=int)
    gains = [per_seed[variant][k]["dice"] - per_seed[base][k]["dice"] for k in seeds]
    mean = sum(gains) / len(gains)
    std = (sum((g - mean) ** 2 for g in gains) / max(len(gains) - 1, 1)) ** 0.5
    return f"{_signed(mean)} ± {std:.1f} ({', '.join(_signed(g) for g in gains)})"


def augmentation_section(results: str) -> str:
    summary = load_json(os.path.join(results, "augmentation-headroom.json"))
    if summary is None:
        return ""
    per_seed, levels = summary["per_seed"], {m: v["level"] for m, v in summary["methods"].items()}
    rows = ["| method, variant | headroom: strong − paper | phantoms: strong − paper | level |", "|---|---|---|---|"]
    for variant in sorted(per_seed["headroom"]):
        base = variant.split("-strong")[0]
        if variant == base:
            continue
        chosen = summary["methods"].get(base, {}).get("strong_variant") == variant
        level = (f"**{levels[base]}** ({summary['methods'][base]['why']})" if chosen
                 else "not judged (run after the rule chose)")
        label = LABELS.get(base, base) + (", every crop" if variant.endswith("-all") else
                                          ", labeled crops" if base != "supervised" else "")
        rows.append(f"| {label} | {_paired(per_seed['headroom'], variant, base)} | "
                    f"{_paired(per_seed.get('phantoms', {}), variant, base)} | {level} |")
    return "\n".join([
        "## Augmentation: the level each method trains at", "",
        "`augmentation=strong` (nnU-Net's transforms, [method.md](method.md#augmentation)) against `paper`, "
        "Dice points paired by seed (each seed in brackets), both levels trained on one machine (" + summary["machine"] + "); the "
        "rule, fixed before the runs (`choose_augmentation.py`): strong when it gains on headroom and phantoms "
        "and loses nowhere by more than 0.5 (`results/augmentation-headroom.json`). The baselines are judged by the same "
        "rule at strong on every crop (their authors' code puts every crop through one pipeline), on the phantoms "
        "only where they gained on headroom:", "", *rows])


def suggest_table(results: str) -> str:
    path = os.path.join(results, "suggest.json")
    with open(path, encoding="utf-8") as f:
        mean = json.load(f)["mean_dice"]
    rows = ["| labeled cases | suggested | random |", "|---|---|---|",
            f"| 2 (the same model for both) | {100 * mean['round0']:.1f} | {100 * mean['round0']:.1f} |"]
    for i, (s, r) in enumerate(zip(mean["suggest"], mean["random"])):
        rows.append(f"| {4 + 2 * i} | {100 * s:.1f} | {100 * r:.1f} |")
    return "\n".join(rows)


def unwrap(text: str) -> str:
    """``text`` with each paragraph and list item on one line (the page's length counts lines, not words);
    headings, tables, pictures and code blocks as they are."""
    out: List[str] = []
    in_code = False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
            out.append(line)
            continue
        continues = (out and out[-1] and not in_code and line and not line.startswith(("* ", "#", "|", "!"))
                     and not out[-1].startswith(("#", "|", "```", "<!--")))
        if continues:
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return "\n".join(out)


def page(results: str = RESULTS) -> str:
    summaries = {name: load(name, results) for name, _ in BENCHMARKS}
    present = [(n, t) for n, t in BENCHMARKS if summaries[n] is not None]
    intro = ["## The benchmarks and their tables", "",
             "Each benchmark: 20 training cases, the first 2 labeled, every method with the same budget; mean ± "
             "std over the seeds. In bold: the product's default (labels alone at its `strong` augmentation)."]
    sections = [unwrap(HEAD), "\n".join(intro)] + [benchmark_section(n, t, summaries[n]) for n, t in present]
    if len(present) == len(BENCHMARKS):
        sections.append(default_section([summaries[n] for n, _ in BENCHMARKS], results))
    sections.append(augmentation_section(results))
    commands = "\n".join(summaries[n]["command"].replace(" --report-only", "") for n, _ in present)
    sections.append(unwrap(TAIL).format(suggest=suggest_table(results), commands=commands))
    return "\n\n".join(s.strip("\n") for s in sections) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="write the page here (docs/benchmarks.md) instead of printing it")
    text = page()
    target = parser.parse_args().write
    if not target:
        print(text, end="")
        return
    with open(target + ".part", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(target + ".part", target)


if __name__ == "__main__":
    main()
