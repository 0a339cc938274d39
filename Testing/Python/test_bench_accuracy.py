"""The accuracy benchmark's summaries mark the product's default method (``"default": true``), driven by the
defaults of config.py, not by a name written into the benchmark."""

import json
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Benchmarks")
sys.path.insert(0, BENCHMARKS)
bench_accuracy = pytest.importorskip("bench_accuracy")

from SemiSupSegTraining.config import TrainConfig  # noqa: E402


def _result(method, seed, dice):
    run = {m: {"mean": dice, "undefined": 0} for m in ("dice", "jaccard", "hd95_mm", "asd_mm")}
    return {"dataset": "phantoms", "fraction": 0.1, "method": method, "seed": seed, "run": run}


RESULTS = [_result(m, s, d) for m, d in (("supervised", 0.8), ("supervised-strong", 0.82), ("ours", 0.9),
                                        ("ours-confidence-0.9", 0.85)) for s in (0, 1)]


def _marked(summary):
    return sorted(m for m, e in summary["fractions"]["10pct"]["methods"].items() if e.get("default") is True)


def test_the_summary_marks_the_method_that_trains_the_default_configuration():
    summary = bench_accuracy.benchmark_summary("phantoms", RESULTS, {}, "cmd")
    # TrainConfig's default method: labels alone (choose_default.py's rule), at its own level: strong (the
    # augmentation rule)
    assert _marked(summary) == ["supervised-strong"]
    assert "default" not in summary["fractions"]["10pct"]["methods"]["ours-confidence-0.9"]


def test_the_mark_follows_the_configuration_default():
    summary = bench_accuracy.benchmark_summary("phantoms", RESULTS, {}, "cmd")
    assert _marked(bench_accuracy.mark_default(summary, TrainConfig(method="ours"))) == ["ours"]
    moved = TrainConfig(method="ours", reliable_confidence=0.9)  # a new setting: the plain "ours" no longer trains it
    assert _marked(bench_accuracy.mark_default(summary, moved)) == ["ours-confidence-0.9"]


def test_mark_default_rewrites_a_committed_summary(tmp_path):
    summary = bench_accuracy.benchmark_summary("phantoms", RESULTS, {}, "cmd")
    bench_accuracy.mark_default(summary, TrainConfig(method="ours"))
    path = tmp_path / "accuracy-phantoms.json"
    path.write_text(json.dumps(summary))
    assert bench_accuracy.main(["--mark-default", str(path)]) == 0
    assert _marked(json.loads(path.read_text())) == ["supervised-strong"]


def test_every_named_variant_is_a_valid_configuration_with_a_label():
    from SemiSupSegTraining.config import preset_config

    for name, settings in bench_accuracy.METHODS.items():
        preset_config(bench_accuracy.PRESET, dict(settings))   # raises for a setting or value that is gone
        assert name in bench_accuracy.METHOD_LABELS
    hybrid = preset_config(bench_accuracy.PRESET, dict(bench_accuracy.METHODS["cps-hybrid"]))
    assert (hybrid.method, hybrid.cps_rampup, hybrid.cps_supervision, hybrid.cps_segments) == (
        "cps", 0.4, "ce+dice", "both")
