"""The rule for each method's augmentation level (Testing/Benchmarks/choose_augmentation.py) on hand-written
runs whose paired gains and outcome are worked out by hand."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Benchmarks"))
import choose_augmentation  # noqa: E402


def _runs(dataset, dice_by_variant):
    """dice_by_variant: bench_accuracy method name -> Dice % per seed 0, 1, ..."""
    return [{"dataset": dataset, "fraction": 0.1, "method": variant, "seed": seed,
             "run": {"dice": {"mean": dice / 100.0}, "hd95_mm": {"mean": 5.0}}}
            for variant, values in dice_by_variant.items() for seed, dice in enumerate(values)]


def test_strong_wins_only_where_it_gains_on_both_and_loses_nowhere_by_more_than_half_a_point():
    runs = (_runs("headroom", {"supervised": [65, 66, 64], "supervised-strong": [70, 70, 70],
                               "ours": [78, 77, 79], "ours-strong": [76, 78, 79], "ours-strong-all": [75, 0, 0]})
            + _runs("phantoms", {"supervised": [96, 96, 96], "supervised-strong": [96.5, 96, 96.2],
                                 "ours": [98, 98, 98], "ours-strong": [99, 99, 99]})
            + _runs("colin27", {"supervised": [86, 86, 86], "supervised-strong": [85.6, 85.7, 85.7],
                                "ours": [84, 84, 84], "ours-strong": [84, 84, 84]}))
    summary = choose_augmentation.summarise(runs)
    supervised, ours = summary["methods"]["supervised"], summary["methods"]["ours"]
    # headroom +5, +4, +6 → +5; phantoms +0.5, 0, +0.2 → +0.23; colin27 −0.4, −0.3, −0.3 → −0.33 (> −0.5)
    assert supervised["paired_dice_gain"]["headroom"]["mean"] == 5.0
    assert supervised["paired_dice_gain"]["phantoms"]["by_seed"] == [0.5, 0.0, 0.2]
    assert supervised["level"] == "strong"
    # ours: labeled-only (76) beats unlabeled-too (75) at seed 0; headroom −2, +1, 0 → −0.33: no gain there
    assert ours["strong_variant"] == "ours-strong"
    assert ours["paired_dice_gain"]["headroom"]["mean"] == -0.33
    assert ours["level"] == "paper" and "no gain on headroom" in ours["why"]


def test_a_loss_of_more_than_half_a_point_anywhere_keeps_paper():
    runs = (_runs("headroom", {"supervised": [60, 60, 60], "supervised-strong": [70, 70, 70]})
            + _runs("phantoms", {"supervised": [96, 96, 96], "supervised-strong": [97, 97, 97]})
            + _runs("colin27", {"supervised": [86, 86, 86], "supervised-strong": [85.4, 85.5, 85.5]}))
    decision = choose_augmentation.summarise(runs)["methods"]["supervised"]
    assert decision["paired_dice_gain"]["colin27"]["mean"] == -0.53
    assert decision["level"] == "paper" and "colin27" in decision["why"]


def test_fewer_than_three_seeds_or_no_phantoms_decide_nothing():
    headroom_only = _runs("headroom", {"supervised": [60, 60, 60], "supervised-strong": [70, 70, 70]})
    decision = choose_augmentation.summarise(headroom_only)["methods"]["supervised"]
    assert decision["level"] == "paper" and "phantoms" in decision["why"]
    two_seeds = headroom_only + _runs("phantoms", {"supervised": [96, 96], "supervised-strong": [99, 99]})
    assert choose_augmentation.summarise(two_seeds)["methods"]["supervised"]["level"] == "paper"


def test_a_loss_decides_before_the_missing_benchmarks():
    headroom_only = _runs("headroom", {"ours": [75, 75, 75], "ours-strong": [74, 74, 75], "ours-strong-all": [70]})
    decision = choose_augmentation.summarise(headroom_only)["methods"]["ours"]
    assert decision["paired_dice_gain"]["headroom"]["mean"] == -0.67
    assert decision["level"] == "paper" and decision["why"] == "loses more than 0.5 on headroom"


def test_a_baseline_that_gains_nothing_on_headroom_is_decided_without_the_phantoms():
    # ua-mt: −0.2, +0.1, −0.2 → −0.1: no gain (not a loss beyond 0.5), decisive although phantoms are missing
    headroom_only = _runs("headroom", {"ua-mt": [70, 71, 72], "ua-mt-strong-all": [69.8, 71.1, 71.8],
                                       "cps": [66, 66, 66], "cps-strong-all": [67, 67, 67]})
    methods = choose_augmentation.summarise(headroom_only)["methods"]
    assert methods["ua-mt"]["strong_variant"] == "ua-mt-strong-all"
    assert methods["ua-mt"]["level"] == "paper" and methods["ua-mt"]["why"] == "no gain on headroom"
    assert methods["cps"]["level"] == "paper" and "not measured at 3 seeds on phantoms" in methods["cps"]["why"]
