"""Tests of what the unlabeled crops teach (methods.ours.pseudo_targets): M_diff under the rising threshold T, the
entropy filter, λu's ramp-up, and the switches added where the paper is silent: the pseudo label's
source, a confidence floor on reliable voxels, and which unreliable voxels L_c pulls. Four voxels, two
classes, values worked out by hand in the comments."""

import math


import pytest
import torch

from SemiSupSegTraining.config import TrainConfig
from SemiSupSegTraining.errors import InputError
from SemiSupSegTraining.methods.ours import pseudo_targets

# Foreground probability per voxel. Network b has the lower supervised loss, so it is the paper's winner.
FOREGROUND_A = [0.95, 0.9, 0.3, 0.8]
FOREGROUND_B = [0.85, 0.4, 0.45, 0.9]
SUPERVISED = (torch.tensor(0.5), torch.tensor(0.2))


def _probs(foreground):
    fg = torch.tensor(foreground).view(1, 1, 4, 1, 1)
    return torch.cat([1 - fg, fg], dim=1)  # (B=1, K=2, 4, 1, 1)


def _targets(**settings):
    config = TrainConfig(use_regularization=False, reliable_fraction=1.0, **settings)
    config.validate()
    (targets_a, targets_b), stats = pseudo_targets(config, 0, 2, (_probs(FOREGROUND_A), _probs(FOREGROUND_B)),
                                                   SUPERVISED)
    if settings.get("pseudo_label") != "cross":
        assert targets_a is targets_b  # one pseudo label teaches both networks
        return targets_a, stats
    return (targets_a, targets_b), stats


def _flat(mask):
    return mask.reshape(-1).tolist()


def test_the_pseudo_label_is_the_lower_loss_networks_argmax_by_default():
    targets, _ = _targets()
    assert _flat(targets.pseudo) == [1, 0, 0, 1]  # b's argmax: 0.85, 0.4, 0.45, 0.9


def test_ensemble_pseudo_label_is_the_argmax_of_the_averaged_softmax():
    targets, _ = _targets(pseudo_label="ensemble")
    # means 0.9, 0.65, 0.375, 0.85: voxel 1 becomes foreground although the winner b says background
    assert _flat(targets.pseudo) == [1, 1, 0, 1]


def test_cross_pseudo_labels_teach_each_network_the_others_argmax_and_filter():
    (for_a, for_b), stats = _targets(pseudo_label="cross", reliable_confidence=0.8)
    assert _flat(for_a.pseudo) == [1, 0, 0, 1]  # b's argmax
    assert _flat(for_b.pseudo) == [1, 1, 0, 1]  # a's argmax: 0.95, 0.9, 0.3, 0.8
    assert _flat(for_a.reliable) == [True, False, False, True]  # b's top probabilities 0.85, 0.6, 0.55, 0.9
    assert _flat(for_b.reliable) == [True, True, False, True]   # a's: 0.95, 0.9, 0.7, 0.8
    assert stats["reliable_fraction"].item() == pytest.approx((0.5 + 0.75) / 2)


def test_confidence_floor_makes_uncertain_voxels_unreliable():
    everything, stats = _targets()
    assert _flat(everything.reliable) == [True] * 4 and stats["reliable_fraction"].item() == 1.0
    floored, stats = _targets(reliable_confidence=0.8)
    # b's top probabilities 0.85, 0.6, 0.55, 0.9
    assert _flat(floored.reliable) == [True, False, False, True]
    assert stats["reliable_fraction"].item() == pytest.approx(0.5)


def test_contrastive_pull_takes_every_unreliable_voxel_or_only_the_agreed_ones():
    every, stats = _targets(reliable_confidence=0.8)
    assert _flat(every.pulled) == [False, True, True, False]  # the unreliable voxels 1 and 2
    assert stats["pulled_fraction"].item() == pytest.approx(0.5)
    agreed, stats = _targets(reliable_confidence=0.8, contrastive_pull="agreed")
    # argmax a: 1 1 0 1, argmax b: 1 0 0 1 -> they agree on voxel 2 only among the unreliable ones
    assert _flat(agreed.pulled) == [False, False, True, False]
    assert stats["pulled_fraction"].item() == pytest.approx(0.25)


# Four voxels where the networks disagree with different confidence. Foreground probabilities:
#   voxel 0: a 0.9 (class 1, top 0.9)    b 0.15 (class 0, top 0.85)  disagree
#   voxel 1: a 0.24 (class 0, top 0.76)  b 0.76 (class 1, top 0.76)  disagree
#   voxel 2: a 0.6 (class 1, top 0.6)    b 0.3 (class 0, top 0.7)    disagree, a never confident
#   voxel 3: a 0.95                      b 0.9                       agree
DISAGREE_A = [0.9, 0.24, 0.6, 0.95]
DISAGREE_B = [0.15, 0.76, 0.3, 0.9]


def _disagreeing(iteration, **settings):
    config = TrainConfig(iterations=100, threshold_start=0.7, threshold_end=0.95, lambda_u_rampup=0.4,
                         **settings)
    config.validate()
    (targets, _), stats = pseudo_targets(config, iteration, 2, (_probs(DISAGREE_A), _probs(DISAGREE_B)),
                                         SUPERVISED)
    return targets, stats


@pytest.mark.parametrize("iteration, expected", [
    (0, [True, True, False, False]),     # T = 0.7: voxels 0 (0.9, 0.85) and 1 (0.76, 0.76)
    (40, [True, False, False, False]),   # T = 0.7 + 0.25 · 0.4 = 0.8: voxel 1's 0.76 falls out
    (100, [False, False, False, False]),  # T = 0.95: nothing is confident enough
])
def test_mdiff_follows_the_rising_threshold(iteration, expected):
    targets, stats = _disagreeing(iteration)
    assert _flat(targets.mdiff) == expected
    assert stats["mdiff_voxels"].item() == sum(expected)


def test_mdiff_is_absent_without_l_reg():
    targets, stats = _disagreeing(0, use_regularization=False)
    assert targets.mdiff is None and "mdiff_voxels" not in stats


def test_entropy_filter_keeps_the_most_certain_share_per_class_or_over_the_batch():
    # The pseudo label is b's (lower L_s): 0 1 0 1. Entropies H(p) = -p ln p - (1-p) ln(1-p) of b:
    # voxel 0 H(0.15) = 0.423, voxel 1 H(0.24) = 0.551, voxel 2 H(0.3) = 0.611, voxel 3 H(0.1) = 0.325.
    per_class, stats = _disagreeing(0, reliable_fraction=0.5)
    assert _flat(per_class.pseudo) == [0, 1, 0, 1]
    # class 0 (voxels 0, 2): ceil(0.5 · 2) = 1 kept, voxel 0; class 1 (voxels 1, 3): voxel 3
    assert _flat(per_class.reliable) == [True, False, False, True]
    assert _flat(per_class.pulled) == [False, True, True, False]
    assert stats["reliable_fraction"].item() == pytest.approx(0.5)
    # 0.75: per class ceil(1.5) = 2 keeps all four; over the batch the ceil(3) lowest: voxels 3, 0, 1
    assert _flat(_disagreeing(0, reliable_fraction=0.75)[0].reliable) == [True] * 4
    batch, _ = _disagreeing(0, reliable_fraction=0.75, reliability="batch")
    assert _flat(batch.reliable) == [True, True, False, True]


def test_lambda_u_ramps_up_over_its_share_of_training():
    # λu = exp(-5 (1 - t / 40)²) over the first 40 % of 100 iterations, then 1
    assert _disagreeing(0)[1]["lambda_u"].item() == pytest.approx(math.exp(-5.0))
    assert _disagreeing(20)[1]["lambda_u"].item() == pytest.approx(math.exp(-1.25))
    assert _disagreeing(40)[1]["lambda_u"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("setting", [{"pseudo_label": "best"}, {"contrastive_pull": "all"},
                                     {"reliable_confidence": 1.5}, {"unlabeled_start": -0.1}])
def test_bad_pseudo_label_settings_are_one_sentence(setting):
    with pytest.raises(InputError) as error:
        TrainConfig(**setting).validate()
    assert str(error.value).count(".") >= 1 and "\n" not in str(error.value)


def test_a_training_step_with_every_switch_trains_l_c(phantom_dataset):
    from SemiSupSegTraining.config import preset_config
    from SemiSupSegTraining.data import load_training_cases
    from SemiSupSegTraining.manifest import load_manifest
    from SemiSupSegTraining.train import Trainer

    manifest = load_manifest(phantom_dataset["train"])
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    settings = {"device": "cpu", "pseudo_label": "cross", "reliable_confidence": 0.9,
                "contrastive_pull": "agreed", "lambda_u_rampup": 0.0}
    trainer = Trainer(preset_config("tiny", settings), len(manifest.classes), labeled, unlabeled,
                      torch.device("cpu"))
    terms = [trainer.step() for _ in range(2)]
    last = {k: float(v) for k, v in terms[-1].items()}
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values())
    assert last["contrast_a"] > 0  # L_c trains (an untrained network may have no voxel above the floor yet)


def test_negatives_only_pulls_no_voxel_and_two_classes_leave_no_negatives():
    targets, stats = _targets(reliable_confidence=0.8, contrastive_pull="negatives")
    assert _flat(targets.reliable) == [True, False, False, True]
    assert not targets.pulled.any() and stats["pulled_fraction"].item() == 0.0
    assert targets.negatives.shape == (1, 2, 4, 1, 1) and not targets.negatives.any()
    assert _targets(reliable_confidence=0.8)[0].negatives is None  # the paper's pull: no negatives


def test_unlabeled_start_holds_both_weights_at_zero_then_ramps_over_the_rest():
    from SemiSupSegTraining.methods.ours import loss_weights

    config = TrainConfig(iterations=100, unlabeled_start=0.25, lambda_u_rampup=0.4)
    assert loss_weights(config, 0) == (0.0, 0.0) and loss_weights(config, 24) == (0.0, 0.0)
    # from iteration 25 the schedules run over the 75 iterations left; λu's ramp is 0.4 · 75 = 30 long
    assert loss_weights(config, 25) == pytest.approx((math.exp(-5), 0.1 * math.exp(-5)))
    assert loss_weights(config, 40) == pytest.approx((math.exp(-5 * 0.25), 0.1 * math.exp(-5 * 0.8 ** 2)))
    assert loss_weights(config, 55) == pytest.approx((1.0, 0.1 * math.exp(-5 * 0.6 ** 2)))
    assert loss_weights(config, 100) == pytest.approx((1.0, 0.1))
    # 0 keeps the schedules as they were: ramps over the whole budget from the first iteration
    assert loss_weights(TrainConfig(iterations=100), 20) == pytest.approx((math.exp(-5 * 0.5 ** 2),
                                                                          0.1 * math.exp(-5 * 0.8 ** 2)))
    with pytest.raises(InputError):
        TrainConfig(unlabeled_start=1.0).validate()


def test_a_training_step_with_negatives_only_and_a_late_start(phantom_dataset):
    from SemiSupSegTraining.config import preset_config
    from SemiSupSegTraining.data import load_training_cases
    from SemiSupSegTraining.manifest import load_manifest
    from SemiSupSegTraining.train import Trainer

    manifest = load_manifest(phantom_dataset["train"])
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    settings = {"device": "cpu", "contrastive_pull": "negatives", "unlabeled_start": 0.5}
    trainer = Trainer(preset_config("tiny", settings), len(manifest.classes), labeled, unlabeled,
                      torch.device("cpu"))
    terms = [{k: float(v) for k, v in trainer.step().items()} for _ in range(4)]  # tiny: 4 iterations
    assert [t["lambda_u"] > 0 for t in terms] == [False, False, True, True]
    assert all(t["pulled_fraction"] == 0.0 for t in terms)
    assert all(math.isfinite(v) for t in terms for v in t.values())
