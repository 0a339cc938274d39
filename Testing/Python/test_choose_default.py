"""The rule for the default (Testing/Benchmarks/choose_default.py) on hand-written summaries whose
ranks, gains and outcome are worked out by hand."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Benchmarks"))
import choose_default  # noqa: E402


def _summary(name, dice_by_method):
    """dice_by_method: method -> Dice per seed."""
    methods = {}
    for method, values in dice_by_method.items():
        methods[method] = {"seeds": {str(s): {"dice": d} for s, d in enumerate(values)},
                           "dice": {"mean": sum(values) / len(values)}}
    return {"benchmark": name, "fractions": {"10pct": {"methods": methods}}}


def test_a_method_below_supervised_on_one_benchmark_is_not_eligible_however_well_it_ranks():
    varied = _summary("varied", {"supervised": [60, 62, 64], "a": [80, 80, 80], "b": [70, 71, 72],
                                 "all-labeled": [90, 90, 90]})
    real = _summary("real", {"supervised": [86, 86, 86], "a": [85, 85, 86], "b": [86, 87, 86]})
    choice = choose_default.choose([varied, real])
    rows = choice["candidates"]
    assert "all-labeled" not in rows  # needs every case labeled: never a choice
    # varied: a 80 > b 71 > supervised 62; real: b 86.33 > supervised 86 > a 85.33
    assert rows["a"]["ranks"] == [1, 3] and rows["b"]["ranks"] == [2, 1] and rows["supervised"]["ranks"] == [3, 2]
    assert rows["a"]["gains"] == [18.0, pytest.approx(-0.667, abs=1e-3)]
    assert rows["b"]["gains"] == [9.0, pytest.approx(0.333, abs=1e-3)]
    assert not rows["a"]["eligible"] and rows["b"]["eligible"]
    assert choice["default"] == "b"


def test_supervised_only_is_the_default_when_every_other_method_falls_below_it_somewhere():
    varied = _summary("varied", {"supervised": [60, 60, 60], "a": [80, 80, 80]})
    real = _summary("real", {"supervised": [86, 86, 86], "a": [86.5, 85, 86]})  # mean gain −0.17
    choice = choose_default.choose([varied, real])
    assert choice["candidates"]["a"]["ranks"] == [1, 2] and not choice["candidates"]["a"]["eligible"]
    assert choice["default"] == "supervised"


def test_a_tie_in_mean_rank_goes_to_the_larger_mean_gain_and_few_seeds_are_no_candidate():
    one = _summary("one", {"supervised": [50, 50, 50], "a": [70, 70, 70], "b": [60, 60, 60],
                           "c": [99, 99]})
    two = _summary("two", {"supervised": [50, 50, 50], "a": [51, 51, 51], "b": [52, 52, 52], "c": [99, 99]})
    choice = choose_default.choose([one, two])
    assert "c" not in choice["candidates"]  # two seeds < 3
    assert choice["candidates"]["a"]["mean_rank"] == choice["candidates"]["b"]["mean_rank"] == 1.5
    assert choice["default"] == "a"  # mean gain 10.5 against 6
    assert choose_default.choose([one, two], min_seeds=2)["default"] == "c"


def test_at_levels_each_method_is_its_chosen_variant_and_labels_alone_at_its_level_is_the_reference():
    # supervised at strong is 60 (not 50): ours' gains become +5 and +1, a's +2 and −1
    one = _summary("one", {"supervised": [50, 50, 50], "supervised-strong": [60, 60, 60],
                           "ours": [65, 65, 65], "a": [62, 62, 62], "a-strong-all": [40, 40, 40]})
    two = _summary("two", {"supervised": [90, 90, 90], "supervised-strong": [91, 91, 91],
                           "ours": [92, 92, 92], "a": [90, 90, 90]})
    levels = choose_default.chosen_variants({"methods": {
        "supervised": {"strong_variant": "supervised-strong", "level": "strong"},
        "a": {"strong_variant": "a-strong-all", "level": "paper"}}})
    assert levels == {"supervised": "supervised-strong"}
    choice = choose_default.choose([choose_default.at_levels(s, levels) for s in (one, two)])
    assert sorted(choice["candidates"]) == ["a", "ours", "supervised"]  # the variants are no candidates
    assert choice["candidates"]["ours"]["gains"] == [5.0, 1.0]
    assert choice["candidates"]["a"]["gains"] == [2.0, -1.0] and not choice["candidates"]["a"]["eligible"]
    assert choice["candidates"]["supervised"]["dice"] == [60.0, 91.0]
    assert choice["default"] == "ours"
    # a benchmark without the variant has no entry for the method: it is then no candidate anywhere
    three = _summary("three", {"supervised": [80, 80, 80], "ours": [85, 85, 85]})
    with pytest.raises(ValueError):
        choose_default.choose([choose_default.at_levels(s, levels) for s in (one, two, three)])


def test_at_paper_leaves_the_strong_variants_out():
    one = _summary("one", {"supervised": [50, 50, 50], "supervised-strong": [90, 90, 90], "ours": [60, 60, 60]})
    augmentation = {"methods": {"supervised": {"strong_variant": "supervised-strong", "level": "strong"}}}
    choice = choose_default.choose([choose_default.at_paper(one, augmentation)])
    assert sorted(choice["candidates"]) == ["ours", "supervised"] and choice["default"] == "ours"
