"""Tests of SemiSupSegTraining.losses: each loss against arithmetic written out by hand on tiny volumes,
gradients into both networks, empty sets, multi-class, schedules."""

import math

import pytest
import torch

from SemiSupSegTraining import losses as L

TOL = dict(rel=1e-5, abs=1e-6)


def _probs(rows):
    """(V, K) list of per-voxel probabilities -> (1, K, V, 1, 1) tensor."""
    return torch.tensor(rows, dtype=torch.float32).t().reshape(1, len(rows[0]), len(rows), 1, 1)


def _labels(values):
    return torch.tensor(values, dtype=torch.int64).reshape(1, len(values), 1, 1)


def _mask(values):
    return torch.tensor(values, dtype=torch.bool).reshape(1, len(values), 1, 1)


def _ce(logit_row, k):
    return -logit_row[k] + math.log(sum(math.exp(z) for z in logit_row))


def _softmax(row):
    s = sum(math.exp(z) for z in row)
    return [math.exp(z) / s for z in row]


def _dice_term(inter, psum, gsum, eps=1e-5):
    return (2 * inter + eps) / (psum + gsum + eps)


# ---------------------------------------------------------------- Dice


def test_soft_dice_two_classes_by_hand():
    # voxel 0: p=(0.2, 0.8), label 1; voxel 1: p=(0.6, 0.4), label 0
    probs = _probs([[0.2, 0.8], [0.6, 0.4]])
    target = _labels([1, 0])
    # class 1: intersection 0.8, sum p = 1.2, sum g = 1
    expected = 1 - _dice_term(0.8, 1.2, 1.0)
    assert L.soft_dice_loss(probs, target, 2).item() == pytest.approx(expected, **TOL)


def test_soft_dice_three_classes_by_hand():
    rows = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]]
    probs = _probs(rows).reshape(1, 3, 2, 2, 1)  # 1x3x2x2x1 volume
    target = torch.tensor([0, 1, 2, 2]).reshape(1, 2, 2, 1)
    # class 1: inter = 0.6, sum p = 0.2+0.6+0.2+0.4 = 1.4, sum g = 1
    # class 2: inter = 0.6+0.3 = 0.9, sum p = 0.1+0.3+0.6+0.3 = 1.3, sum g = 2
    expected = 1 - (_dice_term(0.6, 1.4, 1.0) + _dice_term(0.9, 1.3, 2.0)) / 2
    assert L.soft_dice_loss(probs, target, 3).item() == pytest.approx(expected, **TOL)


def test_soft_dice_four_classes_masked_by_hand():
    rows = [[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]
    probs = _probs(rows)
    target = _labels([3, 1, 2])
    mask = _mask([True, True, False])
    # voxel 2 ignored. class 1: inter 0.3, p 0.2+0.3=0.5, g 1; class 2: inter 0, p 0.3+0.2=0.5, g 0;
    # class 3: inter 0.4, p 0.4+0.1=0.5, g 1
    expected = 1 - (_dice_term(0.3, 0.5, 1) + _dice_term(0.0, 0.5, 0) + _dice_term(0.4, 0.5, 1)) / 3
    assert L.soft_dice_loss(probs, target, 4, mask=mask).item() == pytest.approx(expected, **TOL)


def test_soft_dice_rejects_single_class():
    with pytest.raises(ValueError):
        L.soft_dice_loss(torch.ones(1, 1, 2, 1, 1), torch.zeros(1, 2, 1, 1, dtype=torch.long), 1)


# ---------------------------------------------------------------- cross-entropy and Eq. 1


def test_masked_cross_entropy_by_hand_k3():
    rows = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0], [2.0, 2.0, 2.0]]
    logits = _probs(rows)
    target = _labels([0, 2, 1])
    full = (_ce(rows[0], 0) + _ce(rows[1], 2) + _ce(rows[2], 1)) / 3
    assert L.masked_cross_entropy(logits, target).item() == pytest.approx(full, **TOL)
    masked = (_ce(rows[0], 0) + _ce(rows[2], 1)) / 2
    got = L.masked_cross_entropy(logits, target, _mask([True, False, True]))
    assert got.item() == pytest.approx(masked, **TOL)
    # uniform logits over 3 classes cost log 3
    assert L.masked_cross_entropy(logits, target, _mask([False, False, True])).item() == pytest.approx(
        math.log(3), **TOL
    )


def test_masked_cross_entropy_k4_on_logits_not_probabilities():
    rows = [[0.0, 1.0, 2.0, 3.0], [3.0, 0.0, 0.0, -2.0]]
    logits = _probs(rows)
    target = _labels([3, 0])
    expected = (_ce(rows[0], 3) + _ce(rows[1], 0)) / 2
    assert L.masked_cross_entropy(logits, target).item() == pytest.approx(expected, **TOL)


def test_supervised_loss_by_hand():
    rows = [[0.0, math.log(4.0)], [math.log(1.5), 0.0]]  # softmax (0.2, 0.8) and (0.6, 0.4)
    logits = _probs(rows)
    target = _labels([1, 0])
    ce = (-math.log(0.8) - math.log(0.6)) / 2
    dice = 1 - _dice_term(0.8, 1.2, 1.0)
    assert L.supervised_loss(logits, target, 2).item() == pytest.approx(ce + dice, **TOL)


# ---------------------------------------------------------------- entropy filter and pseudo labels


def test_voxel_entropy_by_hand():
    probs = _probs([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]])
    got = L.voxel_entropy(probs)
    assert got.shape == (1, 3, 1, 1)
    expected = [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), 0.0, math.log(2)]
    for g, e in zip(got.reshape(-1).tolist(), expected):
        assert g == pytest.approx(e, **TOL)


def test_reliable_mask_fraction():
    entropy = torch.arange(10, dtype=torch.float32).flip(0).reshape(1, 10, 1, 1)
    m = L.reliable_mask(entropy, 0.3)
    assert m.dtype == torch.bool and m.shape == entropy.shape
    assert m.reshape(-1).tolist() == [False] * 7 + [True] * 3  # the three lowest entropies 2, 1, 0
    assert L.reliable_mask(entropy, 1.0).all()
    assert not L.reliable_mask(entropy, 0.0).any()
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(2, 10, 10, 10, generator=g)
    assert int(L.reliable_mask(rand, 0.8).sum()) == 1600
    with pytest.raises(ValueError):
        L.reliable_mask(rand, 1.5)


def test_reliable_mask_above_quantile_limit():
    # torch.quantile refuses more than 2**24 elements; the kthvalue path must not.
    g = torch.Generator().manual_seed(1)
    entropy = torch.rand(2, 128, 128, 513, generator=g)
    assert entropy.numel() > 2**24
    m = L.reliable_mask(entropy, 0.8)
    fraction = m.sum().item() / entropy.numel()
    assert abs(fraction - 0.8) < 1e-3  # float32 rand has ties, so not exact


def test_reliable_mask_per_class_keeps_share_of_each_class():
    # Class 0 entropies 0.1 0.5 0.2 0.9 -> keep ceil(0.5*4)=2 lowest (0.1, 0.2); class 1: 0.05 0.3 0.6 ->
    # ceil(1.5)=2 (0.05, 0.3); class 2 has one voxel -> ceil(0.5)=1 keeps it. A batch percentile at 0.5
    # would instead keep the 4 lowest overall: 0.01 0.05 0.1 0.2.
    entropy = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.05, 0.3, 0.6, 0.01]])
    pseudo = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2]])
    keep = L.reliable_mask_per_class(entropy, pseudo, 0.5, 3)
    assert keep.tolist() == [[True, False, True, False, True, True, False, True]]
    assert L.reliable_mask(entropy, 0.5).tolist() == [[True, False, True, False, True, False, False, True]]
    assert not L.reliable_mask_per_class(entropy, pseudo, 0.0, 3).any()
    assert L.reliable_mask_per_class(entropy, pseudo, 1.0, 3).all()
    # class 1 absent (its count is 0): classes 0 and 2 each keep ceil(0.5*2)=1 voxel, their lowest
    keep = L.reliable_mask_per_class(torch.tensor([[0.1, 0.5, 0.2, 0.9]]), torch.tensor([[0, 0, 2, 2]]), 0.5, 3)
    assert keep.tolist() == [[True, False, True, False]]


def test_select_pseudo_labels_picks_lower_loss():
    probs_a = _probs([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]).requires_grad_()
    probs_b = _probs([[0.3, 0.7], [0.7, 0.3], [0.6, 0.4]]).requires_grad_()
    pl, winner = L.select_pseudo_labels(probs_a, probs_b, torch.tensor(0.3), torch.tensor(0.5))
    assert pl.dtype == torch.int64 and pl.shape == (1, 3, 1, 1)
    assert pl.reshape(-1).tolist() == [0, 1, 0]
    assert torch.equal(winner, probs_a.detach())
    assert not pl.requires_grad and not winner.requires_grad
    pl, winner = L.select_pseudo_labels(probs_a, probs_b, torch.tensor(0.6), torch.tensor(0.5))
    assert pl.reshape(-1).tolist() == [1, 0, 0]
    assert torch.equal(winner, probs_b.detach())
    pl, _ = L.select_pseudo_labels(probs_a, probs_b, torch.tensor(0.5), torch.tensor(0.5))
    assert pl.reshape(-1).tolist() == [0, 1, 0]  # tie -> A


# ---------------------------------------------------------------- Eq. 2, 4, 5


def test_unsupervised_loss_by_hand():
    rows = [[0.0, math.log(4.0)], [math.log(1.5), 0.0], [1.0, -1.0]]  # softmax (0.2,0.8), (0.6,0.4), ...
    logits = _probs(rows)
    pseudo = _labels([1, 1, 0])
    reliable = _mask([True, True, False])
    ce = (-math.log(0.8) - math.log(0.4)) / 2
    # class 1 over reliable voxels: inter 0.8+0.4, sum p 1.2, sum g 2
    dice = 1 - _dice_term(1.2, 1.2, 2.0)
    got = L.unsupervised_loss(logits, pseudo, reliable, 2)
    assert got.item() == pytest.approx(ce + dice, **TOL)


def test_disagreement_mask_by_hand():
    probs_a = _probs([[0.9, 0.1, 0.0], [0.1, 0.85, 0.05], [0.8, 0.1, 0.1], [0.05, 0.05, 0.9]])
    probs_b = _probs([[0.1, 0.0, 0.9], [0.7, 0.2, 0.1], [0.05, 0.9, 0.05], [0.0, 0.05, 0.95]])
    # voxel 0: both > 0.75, 0 vs 2 -> True; voxel 1: B at 0.7 not confident; voxel 2: 0 vs 1 -> True;
    # voxel 3: agree
    assert L.disagreement_mask(probs_a, probs_b, 0.75).reshape(-1).tolist() == [True, False, True, False]
    assert L.disagreement_mask(probs_a, probs_b, torch.tensor(0.65)).reshape(-1).tolist() == [
        True,
        True,
        True,
        False,
    ]


def test_regularization_loss_by_hand():
    probs_a = _probs([[0.9, 0.1, 0.0], [0.1, 0.85, 0.05], [0.8, 0.1, 0.1]])
    probs_b = _probs([[0.1, 0.0, 0.9], [0.7, 0.2, 0.1], [0.05, 0.9, 0.05]])
    mdiff = _mask([True, False, True])
    # voxel 0: 0.8 + 0.1 + 0.9 = 1.8; voxel 2: 0.75 + 0.8 + 0.05 = 1.6; voxel 1 is masked out.
    # Averaged over all 3 voxels: 3.4 / 3; over the 2 M_diff voxels: 1.7.
    assert L.regularization_loss(probs_a, probs_b, mdiff).item() == pytest.approx(3.4 / 3, **TOL)
    assert L.regularization_loss(probs_a, probs_b, mdiff, "mdiff").item() == pytest.approx(1.7, **TOL)


# ---------------------------------------------------------------- Eq. 6, 7


def test_class_prototypes_by_hand_k4():
    # four voxels with features (3,4), (1,0), (0,2), (-1,0) -> normalised (0.6,0.8), (1,0), (0,1), (-1,0)
    feats = torch.tensor([[3.0, 1.0, 0.0, -1.0], [4.0, 0.0, 2.0, 0.0]]).reshape(1, 2, 4, 1, 1)
    labels = _labels([1, 1, 0, 2])
    mask = _mask([True, True, True, False])
    protos, present = L.class_prototypes(feats, labels, mask, 4)
    assert protos.shape == (4, 2) and present.tolist() == [True, True, False, False]
    expected = [[0.0, 1.0], [0.8, 0.4], [0.0, 0.0], [0.0, 0.0]]
    assert torch.allclose(protos, torch.tensor(expected), atol=1e-6)
    assert not protos.requires_grad
    protos, _ = L.class_prototypes(feats.requires_grad_(), labels, mask, 4, detach=False)
    assert protos.grad_fn is not None


def test_class_prototypes_k3_batch_of_two():
    feats = torch.zeros(2, 2, 1, 1, 2)
    feats[0, :, 0, 0, 0] = torch.tensor([1.0, 0.0])
    feats[0, :, 0, 0, 1] = torch.tensor([0.0, 5.0])
    feats[1, :, 0, 0, 0] = torch.tensor([0.0, -2.0])
    feats[1, :, 0, 0, 1] = torch.tensor([3.0, 0.0])
    labels = torch.tensor([[[[0, 2]]], [[[2, 0]]]])
    mask = torch.ones(2, 1, 1, 2, dtype=torch.bool)
    protos, present = L.class_prototypes(feats, labels, mask, 3)
    # class 0: (1,0) and (1,0) -> (1,0); class 2: (0,1) and (0,-1) -> (0,0); class 1 absent
    assert present.tolist() == [True, False, True]
    assert torch.allclose(protos, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), atol=1e-6)


def _contrastive_case():
    # K=3, C=2; three voxels. Voxel features normalised: (0.6, 0.8), (1, 0), (0, 1)
    feats = torch.tensor([[3.0, 1.0, 0.0], [4.0, 0.0, 2.0]]).reshape(1, 2, 3, 1, 1)
    pseudo = _labels([0, 1, 2])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    return feats, pseudo, protos


def test_contrastive_loss_by_hand_k3():
    feats, pseudo, protos = _contrastive_case()
    unreliable = _mask([True, True, False])
    present = torch.tensor([True, True, True])
    t = 0.1
    fs = [(0.6, 0.8), (1.0, 0.0)]
    cs = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)]

    def neg_d(f):
        return [-((f[0] - c[0]) ** 2 + (f[1] - c[1]) ** 2) / t for c in cs]

    pull = (_ce(neg_d(fs[0]), 0) + _ce(neg_d(fs[1]), 1)) / 2
    # squared prototype gaps: (0,1): 2, (0,2): 0.5, (1,2): 0.5 -> hinge with margin 1: 0, 0.5, 0.5
    push = (0.0 + 0.5 + 0.5) / 3
    got = L.contrastive_loss(feats, pseudo, unreliable, protos, present, temperature=t)
    assert got.item() == pytest.approx(pull + push, **TOL)


def test_contrastive_loss_absent_class_masked_k4():
    feats, pseudo, protos3 = _contrastive_case()
    protos = torch.cat([protos3, torch.tensor([[0.0, 0.0]])])  # K=4, class 3 absent
    present = torch.tensor([True, False, True, False])
    unreliable = _mask([True, True, True])
    t = 0.5
    cs = {0: (1.0, 0.0), 2: (0.5, 0.5)}

    def neg_d(f):
        return [-((f[0] - c[0]) ** 2 + (f[1] - c[1]) ** 2) / t for c in cs.values()]

    # voxel 1 has pseudo class 1 (absent): dropped. Softmax over present classes {0, 2} only.
    pull = (_ce(neg_d((0.6, 0.8)), 0) + _ce(neg_d((0.0, 1.0)), 1)) / 2
    push = 1.0 - 0.5  # the single present pair (0, 2), squared gap 0.5
    got = L.contrastive_loss(feats, pseudo, unreliable, protos, present, temperature=t)
    assert got.item() == pytest.approx(pull + push, **TOL)


def test_sample_voxels_takes_all_or_subsample():
    cand = torch.zeros(50, dtype=torch.bool)
    cand[torch.arange(0, 50, 5)] = True  # 10 candidates
    g = torch.Generator().manual_seed(0)
    idx, valid = L._sample_voxels(cand, 20, g)
    assert idx.numel() == 20 and int(valid.sum()) == 10
    assert set(idx[valid].tolist()) == set(range(0, 50, 5))
    idx, valid = L._sample_voxels(cand, 4, g)
    assert valid.all() and len(set(idx.tolist())) == 4 and cand[idx].all()
    idx, valid = L._sample_voxels(cand, 1000, g)
    assert idx.numel() == 50 and int(valid.sum()) == 10
    # the same seed gives the same sample
    a, _ = L._sample_voxels(cand, 4, torch.Generator().manual_seed(3))
    b, _ = L._sample_voxels(cand, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_contrastive_subsample_is_mean_over_sampled_voxels():
    torch.manual_seed(0)
    feats = torch.randn(1, 3, 4, 4, 2)
    pseudo = torch.randint(0, 3, (1, 4, 4, 2))
    unreliable = torch.ones(1, 4, 4, 2, dtype=torch.bool)
    protos, present = L.class_prototypes(feats, pseudo, torch.ones_like(unreliable), 3)
    full = L.contrastive_loss(feats, pseudo, unreliable, protos, present, max_voxels=10**6)
    g = torch.Generator().manual_seed(5)
    sub = L.contrastive_loss(feats, pseudo, unreliable, protos, present, max_voxels=5, generator=g)
    assert torch.isfinite(sub) and torch.isfinite(full)
    # one voxel at a time: the subsample loss equals the loss restricted to the chosen voxel
    g = torch.Generator().manual_seed(7)
    idx, _ = L._sample_voxels(unreliable, 1, torch.Generator().manual_seed(7))
    only = torch.zeros(32, dtype=torch.bool)
    only[idx] = True
    one = L.contrastive_loss(feats, pseudo, unreliable, protos, present, max_voxels=1, generator=g)
    ref = L.contrastive_loss(feats, pseudo, only.reshape(1, 4, 4, 2), protos, present, max_voxels=10**6)
    assert one.item() == pytest.approx(ref.item(), **TOL)


# ---------------------------------------------------------------- empty sets


def _assert_zero_with_finite_grad(loss, *leaves):
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_empty_sets_give_zero_and_finite_gradients():
    k = 3
    logits = torch.randn(1, k, 2, 2, 1, requires_grad=True)
    target = torch.randint(0, k, (1, 2, 2, 1))
    empty = torch.zeros(1, 2, 2, 1, dtype=torch.bool)

    _assert_zero_with_finite_grad(L.soft_dice_loss(torch.softmax(logits, 1), target, k, mask=empty), logits)
    logits.grad = None
    _assert_zero_with_finite_grad(L.masked_cross_entropy(logits, target, empty), logits)
    logits.grad = None
    _assert_zero_with_finite_grad(L.unsupervised_loss(logits, target, empty, k), logits)

    logits_b = torch.randn(1, k, 2, 2, 1, requires_grad=True)
    logits.grad = None
    reg = L.regularization_loss(torch.softmax(logits, 1), torch.softmax(logits_b, 1), empty)
    _assert_zero_with_finite_grad(reg, logits, logits_b)

    feats = torch.randn(1, 4, 2, 2, 1, requires_grad=True)
    protos, present = L.class_prototypes(feats, target, empty, k, detach=False)
    assert not present.any() and torch.equal(protos.detach(), torch.zeros(k, 4))
    # no unreliable voxel and no present prototype
    _assert_zero_with_finite_grad(L.contrastive_loss(feats, target, empty, protos, present), feats)
    # unreliable voxels but no prototype at all (nothing reliable)
    feats.grad = None
    protos, present = L.class_prototypes(feats, target, empty, k, detach=False)
    full = torch.ones_like(empty)
    _assert_zero_with_finite_grad(L.contrastive_loss(feats, target, full, protos, present), feats)
    # one present prototype, no unreliable voxel: no pair to push, nothing to pull
    feats.grad = None
    one = torch.zeros_like(empty)
    one[0, 0, 0, 0] = True
    protos, present = L.class_prototypes(feats, target, one, k, detach=False)
    assert int(present.sum()) == 1
    _assert_zero_with_finite_grad(L.contrastive_loss(feats, target, empty, protos, present), feats)
    # unreliable voxels whose pseudo class is absent are dropped
    feats.grad = None
    protos, present = L.class_prototypes(feats, target, one, k, detach=False)
    other = torch.full_like(target, (int(target[0, 0, 0, 0]) + 1) % k)
    loss = L.contrastive_loss(feats, other, full, protos, present)
    _assert_zero_with_finite_grad(loss, feats)


# ---------------------------------------------------------------- gradient into both networks


class _TinyNet(torch.nn.Module):
    """1x1x1 convolutions: features (C channels) and logits (K channels)."""

    def __init__(self, k, c=4):
        super().__init__()
        self.feat = torch.nn.Conv3d(1, c, 1)
        self.head = torch.nn.Conv3d(c, k, 1)

    def forward(self, x):
        f = self.feat(x)
        return self.head(torch.tanh(f)), f


def _grad_norms(net):
    return [0.0 if p.grad is None else float(p.grad.abs().sum()) for p in net.parameters()]


@pytest.fixture
def two_nets():
    # seed and input scale chosen so the winner's reliable voxels cover two classes (checked in the tests)
    torch.manual_seed(2)
    k = 3
    net_a, net_b = _TinyNet(k), _TinyNet(k)
    x = 4.0 * torch.randn(2, 1, 4, 4, 2)
    y = torch.randint(0, k, (2, 4, 4, 2))
    return k, net_a, net_b, x, y


def test_unsupervised_loss_trains_both_networks(two_nets):
    k, net_a, net_b, x, y = two_nets
    logits_a, _ = net_a(x)
    logits_b, _ = net_b(x)
    probs_a, probs_b = torch.softmax(logits_a, 1), torch.softmax(logits_b, 1)
    sup_a, sup_b = L.supervised_loss(logits_a, y, k), L.supervised_loss(logits_b, y, k)
    pseudo, winner = L.select_pseudo_labels(probs_a, probs_b, sup_a, sup_b)
    reliable = L.reliable_mask(L.voxel_entropy(winner), 0.8)
    loss = L.unsupervised_loss(logits_a, pseudo, reliable, k) + L.unsupervised_loss(
        logits_b, pseudo, reliable, k
    )
    loss.backward()
    assert all(g > 0 for g in _grad_norms(net_a.head))
    assert all(g > 0 for g in _grad_norms(net_b.head))
    assert all(g > 0 for g in _grad_norms(net_a.feat))
    assert all(g > 0 for g in _grad_norms(net_b.feat))


def test_regularization_loss_trains_both_networks():
    k = 2
    net_a, net_b = torch.nn.Conv3d(1, k, 1), torch.nn.Conv3d(1, k, 1)
    with torch.no_grad():  # A predicts (x, -x), B predicts (-x, x): confident disagreement everywhere
        net_a.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1, 1))
        net_b.weight.copy_(torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1, 1))
        net_a.bias.zero_()
        net_b.bias.zero_()
    x = torch.tensor([2.0, -1.5, 3.0, 1.0]).reshape(1, 1, 2, 2, 1)
    probs_a, probs_b = torch.softmax(net_a(x), 1), torch.softmax(net_b(x), 1)
    mdiff = L.disagreement_mask(probs_a, probs_b, 0.7)
    assert mdiff.all()
    L.regularization_loss(probs_a, probs_b, mdiff).backward()
    assert net_a.weight.grad.abs().sum() > 0 and net_b.weight.grad.abs().sum() > 0


def test_contrastive_loss_trains_both_networks(two_nets):
    k, net_a, net_b, x, y = two_nets
    (logits_a, feat_a), (logits_b, feat_b) = net_a(x), net_b(x)
    probs_a, probs_b = torch.softmax(logits_a, 1), torch.softmax(logits_b, 1)
    pseudo, winner = L.select_pseudo_labels(probs_a, probs_b, torch.tensor(0.0), torch.tensor(1.0))
    reliable = L.reliable_mask(L.voxel_entropy(winner), 0.5)
    g = torch.Generator().manual_seed(0)
    total = 0
    for feat in (feat_a, feat_b):
        protos, present = L.class_prototypes(feat, pseudo, reliable, k, detach=False)
        assert int(present.sum()) >= 2
        total = total + L.contrastive_loss(feat, pseudo, ~reliable, protos, present, generator=g)
    total.backward()
    assert all(g > 0 for g in _grad_norms(net_a.feat))
    assert all(g > 0 for g in _grad_norms(net_b.feat))


def test_contrastive_pull_and_push_each_carry_gradient(two_nets):
    k, net_a, _, x, _ = two_nets
    _, feat = net_a(x)
    pseudo = torch.arange(feat[:, 0].numel()).reshape(feat[:, 0].shape) % k
    reliable = torch.zeros_like(pseudo, dtype=torch.bool)
    reliable.view(-1)[::2] = True
    # pull only: detached prototypes, so the push term is a constant
    protos, present = L.class_prototypes(feat, pseudo, reliable, k)
    L.contrastive_loss(feat, pseudo, ~reliable, protos, present).backward()
    assert all(g > 0 for g in _grad_norms(net_a.feat))
    net_a.zero_grad()
    # push only: no unreliable voxel; margin 4 (the largest squared gap of unit-norm means) keeps it active
    _, feat = net_a(x)
    protos, present = L.class_prototypes(feat, pseudo, reliable, k, detach=False)
    push = L.contrastive_loss(
        feat, pseudo, torch.zeros_like(reliable), protos, present, separation_margin=4.0
    )
    assert push.item() > 0
    push.backward()
    assert all(g > 0 for g in _grad_norms(net_a.feat))


def test_push_term_moves_prototypes_apart():
    feats = torch.tensor([[1.0, 0.8], [0.0, 0.6]]).reshape(1, 2, 2, 1, 1).requires_grad_()
    labels = _labels([0, 1])
    mask = _mask([True, True])
    protos, present = L.class_prototypes(feats, labels, mask, 2, detach=False)
    before = float(((protos[0] - protos[1]) ** 2).sum().detach())
    loss = L.contrastive_loss(feats, labels, ~mask, protos, present)
    loss.backward()
    with torch.no_grad():
        moved = feats - 0.1 * feats.grad
    protos2, _ = L.class_prototypes(moved, labels, mask, 2)
    after = float(((protos2[0] - protos2[1]) ** 2).sum())
    assert after > before


# ---------------------------------------------------------------- schedules


def test_lambda_c_schedules():
    assert L.lambda_c(0, 6000) == pytest.approx(0.1 * math.exp(-5), rel=1e-9)
    assert L.lambda_c(0, 6000) == pytest.approx(0.000674, abs=1e-6)
    assert L.lambda_c(6000, 6000) == pytest.approx(0.1, rel=1e-12)
    assert L.lambda_c(3000, 6000) == pytest.approx(0.1 * math.exp(-5 * 0.25), rel=1e-9)
    assert L.lambda_c(0, 6000, schedule="printed") == pytest.approx(0.1 * math.exp(4), rel=1e-9)
    assert L.lambda_c(0, 6000, schedule="printed") == pytest.approx(5.46, abs=0.01)
    assert L.lambda_c(6000, 6000, schedule="printed") == pytest.approx(0.1, rel=1e-12)
    assert L.lambda_c(-5, 6000) == L.lambda_c(0, 6000)  # clipped
    assert L.lambda_c(9000, 6000, schedule="printed") == pytest.approx(0.1, rel=1e-12)
    assert L.lambda_c(6000, 6000, maximum=0.5) == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError):
        L.lambda_c(0, 10, schedule="nope")


def test_confidence_threshold_schedule():
    assert L.confidence_threshold(0, 6000) == pytest.approx(0.7)
    assert L.confidence_threshold(6000, 6000) == pytest.approx(0.95)
    assert L.confidence_threshold(3000, 6000) == pytest.approx(0.825)
    assert L.confidence_threshold(12000, 6000) == pytest.approx(0.95)
    assert L.confidence_threshold(0, 100, start=0.5, end=0.9) == pytest.approx(0.5)


# ---------------------------------------------------------------- negatives-only L_c (not the paper's)


def test_negative_classes_are_those_below_the_second_rank_of_an_unreliable_voxel():
    # voxel 0: p = 0.5, 0.3, 0.2 -> class 2 has two classes above it; voxel 1: 0.2, 0.2, 0.6 -> the tied
    # classes 0 and 1 each have one class above them: no negative
    probs = torch.tensor([[0.5, 0.2], [0.3, 0.2], [0.2, 0.6]]).view(1, 3, 2, 1, 1)
    unreliable = torch.tensor([True, True]).view(1, 2, 1, 1)
    negatives = L.negative_classes(probs, unreliable)
    assert negatives.reshape(3, 2).T.tolist() == [[False, False, True], [False, False, False]]
    assert not L.negative_classes(probs, ~unreliable).any()  # reliable voxels are never negatives
    binary = torch.tensor([[0.55, 0.9], [0.45, 0.1]]).view(1, 2, 2, 1, 1)
    assert not L.negative_classes(binary, unreliable).any()  # two classes: none (rank 1 would be the pull)


def _negative_case():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # three voxels: (0.6, 0.8) negative for class 2; (0, -1) negative for classes 0 and 1; (1, 0) for none
    features = torch.tensor([[0.6, 0.0, 1.0], [0.8, -1.0, 0.0]]).view(1, 2, 3, 1, 1).requires_grad_(True)
    negatives = torch.tensor([[False, True, False], [False, True, False], [True, False, False]]).view(1, 3, 3, 1, 1)
    return features, negatives, prototypes


def test_negative_loss_by_hand():
    features, negatives, prototypes = _negative_case()
    loss = L.negative_loss(features, negatives, prototypes, torch.tensor([True, True, True]), temperature=1.0)
    # voxel 0: squared distances 0.8, 0.4, 3.2; voxel 1: 2, 4, 2; q = softmax(-d); pairs (0, 2), (1, 0), (1, 1)
    q0 = [math.exp(-d) / sum(math.exp(-x) for x in (0.8, 0.4, 3.2)) for d in (0.8, 0.4, 3.2)]
    q1 = [math.exp(-d) / sum(math.exp(-x) for x in (2.0, 4.0, 2.0)) for d in (2.0, 4.0, 2.0)]
    expected = -(math.log(1 - q0[2]) + math.log(1 - q1[0]) + math.log(1 - q1[1])) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    grad = features.grad.reshape(2, 3)
    assert torch.equal(grad[:, 2], torch.zeros(2))  # the voxel with no negative class does not move
    moved = features.detach().reshape(2, 3)[:, 0] - 0.1 * grad[:, 0]
    before = ((features.detach().reshape(2, 3)[:, 0] - prototypes[2]) ** 2).sum()
    assert ((torch.nn.functional.normalize(moved, dim=0) - prototypes[2]) ** 2).sum() > before  # away from c2


def test_negative_loss_leaves_out_absent_classes_and_is_zero_without_pairs():
    features, negatives, prototypes = _negative_case()
    present = torch.tensor([True, True, False])
    loss = L.negative_loss(features, negatives, prototypes, present, temperature=1.0)
    # voxel 0's only negative (class 2) is absent; voxel 1 over the present c0, c1: distances 2 and 4
    q = [math.exp(-2.0) / (math.exp(-2.0) + math.exp(-4.0)), math.exp(-4.0) / (math.exp(-2.0) + math.exp(-4.0))]
    assert loss.item() == pytest.approx(-(math.log(1 - q[0]) + math.log(1 - q[1])) / 2, rel=1e-5)
    none = L.negative_loss(features, torch.zeros_like(negatives), prototypes, torch.tensor([True, True, True]))
    one = L.negative_loss(features, negatives, prototypes, torch.tensor([True, False, False]))
    for zero in (none, one):
        assert zero.item() == 0.0 and zero.requires_grad
        zero.backward()
        assert torch.isfinite(features.grad).all()
