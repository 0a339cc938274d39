"""One step of every method on a one-crop batch, its loss against a value worked out by hand here.

The networks are 1³ convolutions with known weights, so every network's output, the other network's and the
teacher's, is a known map of its input: class 0's logit is 0 and class 1's is ``w·x + b``, so p(1) is
sigmoid(w·x + b). The crops are 1×1×3 voxels, two classes; the sums below are written out voxel by voxel
from the authors' formulas, not from the engine's functions.
"""

import math

import helpers  # noqa: F401  (one torch thread)
import pytest
import torch

from SemiSupSegTraining import methods
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.methods import bcp as BCP


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def ce(z, y):
    """Cross-entropy of one voxel with logits (0, z) against class y."""
    p1 = sigmoid(z)
    return -math.log(p1 if y == 1 else 1.0 - p1)


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def dice_foreground(zs, ys, eps=1e-5):
    """The engine's L_s Dice: 1 − (2 Σ p₁ g₁ + ε) / (Σ p₁ + Σ g₁ + ε), class 1 only."""
    p = [sigmoid(z) for z in zs]
    inter = sum(pi for pi, y in zip(p, ys) if y == 1)
    return 1.0 - (2.0 * inter + eps) / (sum(p) + sum(1 for y in ys if y == 1) + eps)


def supervised(zs, ys):
    """L_s = CE (mean over voxels) + foreground Dice."""
    return mean(ce(z, y) for z, y in zip(zs, ys)) + dice_foreground(zs, ys)


def net(w, b):
    conv = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[1] = w
        conv.bias[1] = b
    return conv


class FixedTrainer:
    """A TrainerView whose networks are the 1³ convolutions above; it records what is back-propagated."""

    def __init__(self, config, net_a, net_b, iteration):
        self.config, self.num_classes, self.iteration = config, 2, iteration
        self.net_a, self.net_b = net_a, net_b
        self.generator = torch.Generator().manual_seed(0)
        self.sequential_backward, self.backward_chooser, self.unlabeled = False, None, object()
        self.backward_losses = []
        self.restarted = []

    def forward(self, index, images, project=True):
        return (self.net_a, self.net_b)[index](images), images

    def backward(self, loss):
        self.backward_losses.append(loss.detach())
        loss.backward()

    def dropout_state(self):
        return torch.get_rng_state(), None

    def set_dropout_state(self, state):
        torch.set_rng_state(state[0])

    def restart_optimizer(self, index=0):
        self.restarted.append(index)


def crops(*values):
    """Images (B, 1, 1, 1, 3) from rows of three voxel values."""
    return torch.tensor(values, dtype=torch.float32).reshape(len(values), 1, 1, 1, 3)


def labels(*values):
    return torch.tensor(values, dtype=torch.int64).reshape(len(values), 1, 1, 3)


def step(method, settings, net_a, net_b, images, target, iteration=5, views=None):
    config = preset_config("tiny", dict({"method": method, "iterations": 10, "device": "cpu"}, **settings))
    trainer = FixedTrainer(config, net_a, net_b, iteration)
    inputs = views or [images, images]
    terms = methods.create(config).step(trainer, inputs, target)
    return {k: float(v) for k, v in terms.items()}, trainer


LABELED, Y = [1.0, 1.0, -1.0], [1, 1, 0]
UNLABELED = [1.0, -1.0, 0.1]


# ------------------------------------------------------------------------------------- labels alone

def test_supervised_is_each_networks_ce_plus_dice():
    terms, _ = step("supervised", {}, net(4.0, 0.0), net(-1.0, 0.5), crops(LABELED), labels(Y))
    sup_a = supervised([4 * x for x in LABELED], Y)
    sup_b = supervised([-x + 0.5 for x in LABELED], Y)
    assert terms["sup_a"] == pytest.approx(sup_a, rel=1e-5)
    assert terms["loss"] == pytest.approx(sup_a + sup_b, rel=1e-5)


def test_reference_adds_its_correction_where_exactly_one_network_predicts_foreground():
    terms, _ = step("reference", {}, net(4.0, 0.0), net(-1.0, 0.5), crops(LABELED), labels(Y))
    za, zb = [4 * x for x in LABELED], [-x + 0.5 for x in LABELED]
    # p(foreground) ≥ 0.6: a at voxels 0, 1 (0.98); b at voxel 2 (sigmoid(1.5) = 0.82) -> exactly one everywhere
    mask = [(sigmoid(a) >= 0.6) != (sigmoid(b) >= 0.6) for a, b in zip(za, zb)]
    assert mask == [True, True, True]
    squared = sum(2 * (sigmoid(z) - y) ** 2 for zs in (za, zb) for z, y in zip(zs, Y))  # both classes alike
    correction = 0.5 * squared / (3 * 2)
    assert terms["correction"] == pytest.approx(correction, rel=1e-5)
    assert terms["loss"] == pytest.approx(supervised(za, Y) + supervised(zb, Y) + correction, rel=1e-5)


# ------------------------------------------------------------------------------------- ours (Eq. 3)

@pytest.mark.parametrize("sequential", [False, True])
def test_ours_is_both_networks_ls_plus_lu_on_the_lower_loss_pseudo_label_plus_lreg(sequential):
    settings = {"use_contrastive": False, "lambda_u_rampup": 0.0, "reliable_fraction": 1.0}
    config_images = crops(LABELED, UNLABELED)
    config = preset_config("tiny", dict({"method": "ours", "iterations": 10, "device": "cpu"}, **settings))
    trainer = FixedTrainer(config, net(4.0, 0.0), net(-4.0, 0.0), 5)
    trainer.sequential_backward = sequential
    terms = methods.create(config).step(trainer, [config_images, config_images], labels(Y))
    terms = {k: float(v) for k, v in terms.items()}
    za_l, zb_l = [4 * x for x in LABELED], [-4 * x for x in LABELED]
    za_u, zb_u = [4 * x for x in UNLABELED], [-4 * x for x in UNLABELED]
    sup_a, sup_b = supervised(za_l, Y), supervised(zb_l, Y)
    assert sup_a < sup_b
    pseudo = [1 if z > 0 else 0 for z in za_u]            # network a's argmax: [1, 0, 1]
    lu_a, lu_b = supervised(za_u, pseudo), supervised(zb_u, pseudo)   # every voxel reliable
    # M_diff at T = 0.7 + 0.25·5/10: both confident (0.982) and disagreeing at voxels 0 and 1, not at 2
    threshold = 0.7 + 0.25 * 0.5
    mdiff = [max(sigmoid(a), 1 - sigmoid(a)) > threshold and max(sigmoid(b), 1 - sigmoid(b)) > threshold
             and (a > 0) != (b > 0) for a, b in zip(za_u, zb_u)]
    assert mdiff == [True, True, False]
    reg = sum(2 * abs(sigmoid(a) - sigmoid(b)) for a, b, m in zip(za_u, zb_u, mdiff) if m) / 3   # over all voxels
    assert terms["unsup_a"] == pytest.approx(lu_a, rel=1e-5) and terms["unsup_b"] == pytest.approx(lu_b, rel=1e-5)
    assert terms["reg"] == pytest.approx(reg, rel=1e-5)
    assert terms["loss"] == pytest.approx(sup_a + sup_b + 1.0 * (lu_a + lu_b + reg), rel=1e-5)   # λu = 1


# ------------------------------------------------------------------------------------- Mean Teacher / UA-MT

@pytest.mark.parametrize("method", ["mean-teacher", "ua-mt"])
def test_mean_teacher_is_half_ls_plus_the_ramped_mse_to_the_teacher_on_its_certain_voxels(method):
    # No input noise here, so the teacher's output is the known map (its MC samples agree: the mask is then
    # decided by the entropy of the teacher's softmax itself).
    images = crops(LABELED, UNLABELED)
    terms, trainer = step(method, {"input_noise": 0.0}, net(4.0, 0.0), net(2.0, 0.3), images, labels(Y))
    zs_l, zs_u = [4 * x for x in LABELED], [4 * x for x in UNLABELED]
    zt_u = [2 * x + 0.3 for x in UNLABELED]            # teacher p(1): 0.909, 0.154, 0.622
    weight = 0.1 * math.exp(-5 * (1 - 20 / 40) ** 2)   # iteration 5 of 10: step ⌊40·5/10⌋ = 20 of 40
    entropy = [-(p * math.log(p + 1e-6) + (1 - p) * math.log(1 - p + 1e-6)) for p in map(sigmoid, zt_u)]
    threshold = (0.75 + 0.25 * math.exp(-5 * (1 - 5 / 10) ** 2)) * math.log(2)
    certain = [h < threshold for h in entropy] if method == "ua-mt" else [True] * 3
    if method == "ua-mt":
        assert certain == [True, True, False]          # 0.30, 0.43 < 0.57 < 0.66 nats
    squared = [2 * (sigmoid(s) - sigmoid(t)) ** 2 for s, t in zip(zs_u, zt_u)]   # both classes alike
    consistency = sum(q for q, c in zip(squared, certain) if c) / (2 * sum(certain))
    sup = 0.5 * supervised(zs_l, Y)
    assert terms["sup_a"] == pytest.approx(sup, rel=1e-5)
    assert terms["consistency"] == pytest.approx(consistency, rel=1e-5)
    assert terms["loss"] == pytest.approx(sup + weight * consistency, rel=1e-5)
    assert trainer.net_b.weight.grad is None           # the teacher learns by EMA only


# ------------------------------------------------------------------------------------- CPS

def test_cps_is_each_networks_ce_plus_constant_lambda_times_ce_against_the_others_argmax():
    images = crops(LABELED, UNLABELED)
    terms, _ = step("cps", {}, net(4.0, 0.0), net(-1.0, 0.5), images, labels(Y), iteration=0)
    za, zb = [4 * x for x in LABELED + UNLABELED], [-x + 0.5 for x in LABELED + UNLABELED]
    arg_a, arg_b = [int(z > 0) for z in za], [int(z > 0) for z in zb]
    assert arg_a != arg_b
    sup_a, sup_b = mean(ce(z, y) for z, y in zip(za[:3], Y)), mean(ce(z, y) for z, y in zip(zb[:3], Y))
    cps_a = mean(ce(z, y) for z, y in zip(za, arg_b))  # a learns b's argmax, labeled and unlabeled crops
    cps_b = mean(ce(z, y) for z, y in zip(zb, arg_a))
    assert terms["cps_a"] == pytest.approx(cps_a, rel=1e-5) and terms["cps_b"] == pytest.approx(cps_b, rel=1e-5)
    assert terms["loss"] == pytest.approx(sup_a + sup_b + 1.5 * (cps_a + cps_b), rel=1e-5)   # λ = 1.5 from step 0


def test_cps_hybrid_adds_dice_and_ramps_lambda_up():
    images = crops(LABELED, UNLABELED)
    settings = {"cps_rampup": 0.4, "cps_supervision": "ce+dice", "cps_segments": "both"}
    terms, _ = step("cps", settings, net(4.0, 0.0), net(-1.0, 0.5), images, labels(Y), iteration=2)
    za, zb = [4 * x for x in LABELED + UNLABELED], [-x + 0.5 for x in LABELED + UNLABELED]
    arg_a, arg_b = [int(z > 0) for z in za], [int(z > 0) for z in zb]
    weight = 1.5 * math.exp(-5 * (1 - 2 / 4) ** 2)   # ramp over ⌊0.4·10⌋ = 4 iterations, at 2
    expected = (supervised(za[:3], Y) + supervised(zb[:3], Y)
                + weight * (mean(ce(z, y) for z, y in zip(za, arg_b)) + mean(ce(z, y) for z, y in zip(zb, arg_a))))
    assert terms["loss"] == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------- BCP

def bcp_dice(zs, ys, inside, eps=1e-5):
    """BCP's mask_DiceLoss: 1 − mean over both classes of (2 Σ p y m + ε) / (Σ (p + y) m + ε)."""
    scores = []
    for k in (0, 1):
        p = [sigmoid(z) if k == 1 else 1 - sigmoid(z) for z in zs]
        g = [1.0 if y == k else 0.0 for y in ys]
        inter = sum(pi * gi * m for pi, gi, m in zip(p, g, inside))
        union = sum((pi + gi) * m for pi, gi, m in zip(p, g, inside))
        scores.append((2 * inter + eps) / (union + eps))
    return 1 - mean(scores)


def mix_loss(zs, outer, inner, mask, w_outer, w_inner):
    """BCP's mix_loss: (Dice + CE)/2, each region against its own target with its own weight."""
    inside = [1 - m for m in mask]
    dice = w_outer * bcp_dice(zs, outer, mask) + w_inner * bcp_dice(zs, inner, inside)
    cross = (w_outer * sum(ce(z, y) * m for z, y, m in zip(zs, outer, mask)) / sum(mask)
             + w_inner * sum(ce(z, y) * m for z, y, m in zip(zs, inner, inside)) / sum(inside))
    return (dice + cross) / 2


@pytest.mark.parametrize("largest_component", [True, False])
def test_bcp_mixes_both_ways_and_weighs_each_region_against_its_target(monkeypatch, largest_component):
    mask = [1, 1, 0]   # outside the box: voxels 0 and 1; the box: voxel 2
    monkeypatch.setattr(BCP, "bcp_box_mask", lambda shape, share, generator: torch.tensor(mask).reshape(1, 1, 3))
    unlabeled = [1.0, -1.0, 0.5]
    images = crops(LABELED, unlabeled)
    settings = {"bcp_largest_component": largest_component}
    # iteration 6 of 10: after the pre-training (min(2000, 10 // 2) = 5 iterations)
    terms, trainer = step("bcp", settings, net(4.0, 0.0), net(2.0, 0.0), images, labels(Y), iteration=6)
    teacher = [int(2 * x > 0) for x in unlabeled]      # [1, 0, 1]: two components of class 1
    pseudo = [1, 0, 0] if largest_component else teacher   # the first of two equal components stays
    mixed_l = [a if m else u for a, u, m in zip(LABELED, unlabeled, mask)]   # labeled outside, unlabeled inside
    mixed_u = [u if m else a for a, u, m in zip(LABELED, unlabeled, mask)]   # unlabeled outside, labeled inside
    loss_l = mix_loss([4 * x for x in mixed_l], Y, pseudo, mask, 1.0, 0.5)
    loss_u = mix_loss([4 * x for x in mixed_u], pseudo, Y, mask, 0.5, 1.0)
    assert terms["loss_l"] == pytest.approx(loss_l, rel=1e-5)
    assert terms["loss_u"] == pytest.approx(loss_u, rel=1e-5)
    assert terms["loss"] == pytest.approx(loss_l + loss_u, rel=1e-5)
    assert trainer.restarted == []                      # no switch at iteration 6


def test_bcp_pretrains_on_a_labeled_crop_pasted_into_itself(monkeypatch):
    mask = [1, 1, 0]
    monkeypatch.setattr(BCP, "bcp_box_mask", lambda shape, share, generator: torch.tensor(mask).reshape(1, 1, 3))
    images = crops(LABELED, UNLABELED)
    terms, trainer = step("bcp", {}, net(4.0, 0.0), net(2.0, 0.0), images, labels(Y), iteration=0)
    zs = [4 * x for x in LABELED]   # one crop: a and b are the same crop, the mix is the crop itself
    expected = (mean(ce(z, y) for z, y in zip(zs, Y)) + bcp_dice(zs, Y, [1, 1, 1])) / 2
    assert terms["loss"] == pytest.approx(expected, rel=1e-5)


def test_bcp_box_is_two_thirds_of_each_axis_at_a_random_corner():
    mask = BCP.bcp_box_mask((3, 6, 9), 2.0 / 3.0, torch.Generator().manual_seed(0))
    inside = (mask == 0).nonzero()
    assert len(inside) == 2 * 4 * 6                     # ⌊3·2/3⌋ × ⌊6·2/3⌋ × ⌊9·2/3⌋ voxels
    assert [int(inside[:, i].max() - inside[:, i].min()) + 1 for i in range(3)] == [2, 4, 6]


def test_bcp_teacher_follows_the_student_by_ema_after_the_pretraining_only():
    config = preset_config("tiny", {"method": "bcp", "iterations": 10, "device": "cpu"})
    method = methods.create(config)
    for done, decay in ((5, None), (6, 0.99)):    # iteration counts the steps done; pre-training: 5 iterations
        trainer = FixedTrainer(config, net(4.0, 0.0), net(2.0, 1.0), done)
        method.after_step(trainer)
        expected = 2.0 if decay is None else decay * 2.0 + (1 - decay) * 4.0
        assert float(trainer.net_b.weight[1].detach()) == pytest.approx(expected, rel=1e-6)
