"""Losses of the dual-network semi-supervised segmentation method (paper Sec. 2, Eq. 1-7).

Shapes: logits/probs ``(B, K, *spatial)``, integer labels ``(B, *spatial)`` int64 with values
``0..K-1`` (class 0 = background), features ``(B, C, *spatial)``, masks bool ``(B, *spatial)``.
Everything is generic in the number of spatial dimensions and in the number of classes ``K >= 2``.

Deliberate differences from the released reference code (docs/method.md, "Reference facts the code relies on"):

* the unlabeled losses (L_u, L_reg, L_c) keep their gradient: nothing here detaches network outputs
  except the targets (pseudo labels, the pull prototypes), and nothing runs under ``torch.no_grad``;
* cross-entropy is applied to logits, never to probabilities;
* the prototype separation term pushes prototypes apart (a hinge on their squared distance);
* the entropy percentile is computed on the tensor's device with ``torch.kthvalue``; no function here
  calls ``.item()``, converts to numpy or branches on tensor values, so none forces a host sync;
* every loss is multi-class (Dice over all foreground classes, prototypes for every class).

``reduce`` (optional everywhere): a function applied to every sum and count before they are divided, e.g. a
differentiable all-reduce over the processes of a distributed training (:mod:`.distributed`), so that a
loss is that of the global batch. None (default): this batch alone.

The training loop combines the pieces as in Eq. 3:
``L = L_s + lambda_u * (L_u + L_reg) + lambda_c * L_c``.
"""

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

__all__ = [
    "soft_dice_loss",
    "masked_cross_entropy",
    "supervised_loss",
    "voxel_entropy",
    "reliable_mask",
    "select_pseudo_labels",
    "unsupervised_loss",
    "disagreement_mask",
    "regularization_loss",
    "class_prototypes",
    "contrastive_loss",
    "lambda_c",
    "confidence_threshold",
]


def _check_classes(num_classes: int, channels: int) -> None:
    # Shape-only checks: they never touch tensor values, so they cost no device sync.
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}")
    if channels != num_classes:
        raise ValueError(f"the tensor has {channels} channels but num_classes is {num_classes}")


Reduce = Optional[Callable[[torch.Tensor], torch.Tensor]]


def _total(tensor: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    return tensor if reduce is None else reduce(tensor)


def _one_hot(target: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """One-hot encoding of ``target`` (B, *spatial) as ``like``'s dtype, shape (B, K, *spatial)."""
    # scatter into a float tensor avoids F.one_hot's int64 (B, *spatial, K) temporary and a movedim copy.
    shape = (target.shape[0], num_classes) + tuple(target.shape[1:])
    return torch.zeros(shape, dtype=like.dtype, device=like.device).scatter_(1, target.unsqueeze(1), 1.0)


def soft_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    mask: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    reduce: Reduce = None,
) -> torch.Tensor:
    """Soft Dice loss over the foreground classes (the Dice term of Eq. 1 and Eq. 2).

    ``1 - mean_{k=1..K-1} (2 sum(p_k g_k m) + eps) / (sum(p_k m) + sum(g_k m) + eps)`` where the sums run
    over batch and space jointly, ``g_k`` is the one-hot target and ``m`` the optional voxel mask.

    Args:
        probs: (B, K, *spatial) softmax probabilities.
        target: (B, *spatial) int64 labels in 0..K-1.
        num_classes: K >= 2; class 0 (background) is left out of the mean.
        mask: optional (B, *spatial) bool; only voxels where it is True count.
        eps: smoothing; a class absent from both prediction and target scores Dice 1 (loss 0).

    Returns:
        0-dim tensor. An empty mask gives exactly 0, still connected to ``probs``.
    """
    _check_classes(num_classes, probs.shape[1])
    onehot = _one_hot(target, num_classes, probs)
    p = probs
    if mask is not None:
        m = mask.unsqueeze(1).to(probs.dtype)
        p = probs * m
        onehot = onehot * m
    dims = (0,) + tuple(range(2, probs.dim()))
    sums = _total(torch.stack([(p * onehot).sum(dims), p.sum(dims) + onehot.sum(dims)]), reduce)
    intersection, denominator = sums[0], sums[1]
    dice = (2.0 * intersection + eps) / (denominator + eps)
    return 1.0 - dice[1:].mean()


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None, reduce: Reduce = None
) -> torch.Tensor:
    """Voxel-wise cross-entropy on logits, averaged over the masked voxels (the CE term of Eq. 1 and 2).

    Args:
        logits: (B, K, *spatial) raw network outputs (softmax is applied inside ``F.cross_entropy``).
        target: (B, *spatial) int64 labels.
        mask: optional (B, *spatial) bool.

    Returns:
        0-dim tensor: mean CE over voxels where ``mask`` is True (over all voxels without a mask).
        An empty mask gives exactly 0 with a grad_fn connected to ``logits`` (zero gradient), never NaN.
    """
    ce = F.cross_entropy(logits, target, reduction="none")  # (B, *spatial)
    if mask is None:
        if reduce is None:
            return ce.mean()
        sums = reduce(torch.stack([ce.sum(), ce.new_full((), float(ce.numel()))]))
        return sums[0] / sums[1]
    # torch.where (not ce * mask) keeps a masked-out non-finite value from leaking into the sum.
    sums = _total(torch.stack([torch.where(mask, ce, torch.zeros_like(ce)).sum(), mask.sum().to(ce.dtype)]), reduce)
    return sums[0] / sums[1].clamp_min(1)


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int, reduce: Reduce = None
                    ) -> torch.Tensor:
    """Eq. 1: L_s = CE(logits, y) + Dice(softmax(logits), y) on the labeled batch, for one network.

    Args:
        logits: (B, K, *spatial); target: (B, *spatial) int64 ground truth; num_classes: K.

    Returns:
        0-dim tensor. CE is the mean over all voxels; Dice is computed over batch and space jointly.
    """
    probs = torch.softmax(logits, dim=1)
    return masked_cross_entropy(logits, target, reduce=reduce) + soft_dice_loss(probs, target, num_classes,
                                                                                 reduce=reduce)


def voxel_entropy(probs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-voxel Shannon entropy ``-sum_k p_k log p_k`` (natural log), used by the entropy filter of Sec. 2.1.

    Args:
        probs: (B, K, *spatial) probabilities.
        eps: floor inside the log; a zero probability contributes exactly 0 (0 * log eps).

    Returns:
        (B, *spatial) entropies in [0, log K].
    """
    return -(probs * torch.log(probs.clamp_min(eps))).sum(dim=1)


def reliable_mask(entropy: torch.Tensor, reliable_fraction: float) -> torch.Tensor:
    """Entropy filter of Sec. 2.1: the ``reliable_fraction`` lowest-entropy voxels of the batch are reliable.

    A voxel is reliable when its entropy is <= the ``reliable_fraction`` quantile of all entropies in the
    batch (nearest-rank quantile: the ``ceil(q * N)``-th smallest value). ``torch.kthvalue`` on the
    flattened tensor replaces ``torch.quantile``, which refuses inputs above 2**24 elements; it runs on the
    tensor's device and returns a device tensor, so there is no host sync. Voxels tied with the threshold
    are all reliable, so the kept fraction can exceed ``reliable_fraction`` only through ties.

    Args:
        entropy: (B, *spatial) entropies (any shape works; the quantile is over all elements).
        reliable_fraction: q in [0, 1]; 1.0 keeps every voxel, 0.0 keeps none (REFERENCE default 0.8).

    Returns:
        bool tensor with ``entropy``'s shape.
    """
    q = float(reliable_fraction)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"reliable_fraction must be in [0, 1], got {reliable_fraction}")
    n = entropy.numel()
    # Branch on the Python float, never on tensor values.
    if q == 0.0 or n == 0:
        return torch.zeros_like(entropy, dtype=torch.bool)
    if q == 1.0:
        return torch.ones_like(entropy, dtype=torch.bool)
    k = min(max(int(math.ceil(q * n)), 1), n)
    threshold = torch.kthvalue(entropy.detach().reshape(-1), k).values
    return entropy <= threshold


def reliable_mask_per_class(entropy: torch.Tensor, pseudo_label: torch.Tensor, reliable_fraction: float,
                            num_classes: int) -> torch.Tensor:
    """Class-balanced entropy filter (an option; the paper is silent): within each pseudo class, the
    ``reliable_fraction`` lowest-entropy voxels are reliable.

    With one batch-wide percentile a small organ (a few % of the voxels) tends to fall entirely into the
    unreliable share, so L_u would never teach foreground. Ranks within classes come from one sort by
    (class, entropy) and per-class counts, all on the device with no host sync.

    Args:
        entropy: (B, *spatial) entropies in [0, log K].
        pseudo_label: (B, *spatial) int64 class indices.
        reliable_fraction: q in [0, 1].
        num_classes: K.

    Returns:
        bool tensor with ``entropy``'s shape.
    """
    q = float(reliable_fraction)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"reliable_fraction must be in [0, 1], got {reliable_fraction}")
    flat_entropy = entropy.detach().reshape(-1).float()
    flat_class = pseudo_label.reshape(-1)
    # Entropy never exceeds log K < log K + 1, so this key sorts by class first, then by entropy.
    key = flat_class.float() * (math.log(num_classes) + 1.0) + flat_entropy
    order = torch.argsort(key)
    sorted_class = flat_class[order]
    # Each class's first and past-the-end position in the sorted labels. (torch.bincount would sync with
    # the host on CUDA: the output size depends on the labels' maximum.)
    classes = torch.arange(num_classes, device=flat_class.device, dtype=sorted_class.dtype)
    starts = torch.searchsorted(sorted_class, classes)
    counts = torch.searchsorted(sorted_class, classes, right=True) - starts
    rank = torch.arange(order.numel(), device=order.device) - starts[sorted_class]
    keep_sorted = rank.float() < torch.ceil(q * counts[sorted_class].float())
    keep = torch.empty_like(keep_sorted)
    keep[order] = keep_sorted
    return keep.reshape(entropy.shape)


def select_pseudo_labels(
    probs_a: torch.Tensor, probs_b: torch.Tensor, sup_loss_a: torch.Tensor, sup_loss_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fig. 1: the pseudo label is the argmax of the network with the lower L_s in this iteration.

    The choice is a ``torch.where`` on the 0-dim comparison, so it stays on the device (no host sync).
    Ties go to network A.

    Args:
        probs_a, probs_b: (B, K, *spatial) softmax outputs of networks A and B on the unlabeled batch.
        sup_loss_a, sup_loss_b: 0-dim supervised losses (Eq. 1) of A and B from this iteration.

    Returns:
        (pseudo_label (B, *spatial) int64, winner_probs (B, K, *spatial)), both detached.
    """
    a_wins = sup_loss_a.detach() <= sup_loss_b.detach()
    winner_probs = torch.where(a_wins, probs_a.detach(), probs_b.detach())
    return winner_probs.argmax(dim=1), winner_probs


def unsupervised_loss(
    logits: torch.Tensor, pseudo_label: torch.Tensor, reliable: torch.Tensor, num_classes: int,
    reduce: Reduce = None,
) -> torch.Tensor:
    """Eq. 2 without L_reg: CE + soft Dice against the pseudo label, restricted to reliable voxels.

    Applied to each of the two networks; the gradient flows into ``logits`` (only the pseudo label is a
    detached target), unlike the reference code.

    Args:
        logits: (B, K, *spatial) logits of the network being trained, on the unlabeled batch.
        pseudo_label: (B, *spatial) int64 from :func:`select_pseudo_labels`.
        reliable: (B, *spatial) bool from :func:`reliable_mask`.
        num_classes: K.

    Returns:
        0-dim tensor; exactly 0 (still connected to ``logits``) when no voxel is reliable.
    """
    probs = torch.softmax(logits, dim=1)
    return masked_cross_entropy(logits, pseudo_label, reliable, reduce) + soft_dice_loss(
        probs, pseudo_label, num_classes, mask=reliable, reduce=reduce
    )


def disagreement_mask(
    probs_a: torch.Tensor, probs_b: torch.Tensor, threshold: Union[float, torch.Tensor]
) -> torch.Tensor:
    """Eq. 4: M_diff, the voxels where both networks are confident (> T) and their argmax differs.

    Args:
        probs_a, probs_b: (B, K, *spatial) softmax outputs of A and B on the unlabeled batch.
        threshold: T, a float or a 0-dim tensor (see :func:`confidence_threshold`).

    Returns:
        (B, *spatial) bool (no gradient: it selects voxels, the loss acts on the probabilities).
    """
    conf_a, arg_a = probs_a.detach().max(dim=1)
    conf_b, arg_b = probs_b.detach().max(dim=1)
    return (conf_a > threshold) & (conf_b > threshold) & (arg_a != arg_b)


def regularization_loss(probs_a: torch.Tensor, probs_b: torch.Tensor, mdiff: torch.Tensor,
                        average: str = "voxels", reduce: Reduce = None) -> torch.Tensor:
    """Eq. 5: L1 distance between the M_diff-masked softmax outputs of A and B.

    ``sum_k |pA_k - pB_k|`` at every M_diff voxel (0 elsewhere, the Hadamard mask of Eq. 5), then
    averaged. ``average="voxels"`` (default) divides by the number of voxels in the batch, as every other
    voxel loss here: each disagreeing voxel gets the same gradient as a voxel of L_u. ``average="mdiff"``
    divides by the number of M_diff voxels (the reference code's default, docs/method.md): when only a handful of
    voxels disagree, each gets a gradient ~10^5 times that of a voxel of L_u, and on the phantoms that
    spike cost 11 Dice points (Testing/Benchmarks/bench_accuracy.py; docs/benchmarks.md has the figures).
    Nothing is detached: the gradient reaches both networks, so each is pulled towards the other.

    Args:
        probs_a, probs_b: (B, K, *spatial) softmax outputs.
        mdiff: (B, *spatial) bool from :func:`disagreement_mask`.
        average: "voxels" or "mdiff" (see above).

    Returns:
        0-dim tensor; exactly 0 (connected to both inputs, zero gradient) when M_diff is empty.
    """
    diff = (probs_a - probs_b).abs().sum(dim=1)  # (B, *spatial)
    total = torch.where(mdiff, diff, torch.zeros_like(diff)).sum()
    if average == "voxels":
        count = diff.new_full((), float(mdiff.numel()))  # new_tensor would copy from the host and wait
    elif average == "mdiff":
        count = mdiff.sum().to(diff.dtype)
    else:
        raise ValueError(f"average must be 'voxels' or 'mdiff', got {average!r}")
    sums = _total(torch.stack([total, count]), reduce)
    return sums[0] / sums[1].clamp_min(1)


def class_prototypes(
    features: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    num_classes: int,
    detach: bool = True,
    reduce: Reduce = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: c_k = mean of the L2-normalised features of the masked voxels labelled k.

    Features are L2-normalised along C first (the same space in which :func:`contrastive_loss` measures
    distances), and computed in float32. The class sums are a masked one-hot matrix product: no loop
    over voxels, deterministic on GPU (unlike ``index_add``'s atomics), no host sync.

    Typical call: the unlabeled batch's features of ONE network, its pseudo labels and the reliable mask
    (each network has its own feature space, so each gets its own prototypes).

    Args:
        features: (B, C, *spatial).
        labels: (B, *spatial) int64 in 0..K-1 (pseudo labels, or ground truth on labeled voxels).
        mask: (B, *spatial) bool, the voxels that count (the reliable ones).
        num_classes: K.
        detach: True returns fixed targets. False keeps the graph so that the prototype separation term
            of :func:`contrastive_loss` can move the features the prototypes are made of.

    Returns:
        (prototypes (K, C) float32, present (K,) bool: the class had at least one voxel). Absent classes
        get zero vectors.
    """
    batch, channels = features.shape[0], features.shape[1]
    f = features.float().reshape(batch, channels, -1)  # (B, C, S)
    classes = torch.arange(num_classes, device=labels.device).view(1, num_classes, 1)
    weights = (labels.reshape(batch, 1, -1) == classes) & mask.reshape(batch, 1, -1)
    weights = weights.to(f.dtype)  # (B, K, S) masked one-hot
    counts = _total(weights.sum(dim=(0, 2)), reduce)  # (K,)
    # sum_s w_ks f_s / |f_s|: the 1/|f_s| goes into the (B, K, S) weights, so no normalised copy of the
    # features is made (F.normalize's is (B, C, S), and its backward was a fifth of a paper-scale CPU step).
    inverse_norm = 1.0 / torch.linalg.vector_norm(f, dim=1, keepdim=True).clamp_min(1e-12)  # F.normalize's eps
    # batched (K, S) @ (S, C) product summed over the batch: no (N, C) transposed copy of the features
    sums = _total(torch.einsum("bks,bcs->kc", weights * inverse_norm, f), reduce)
    prototypes = sums / counts.clamp_min(1.0).unsqueeze(1)
    if detach:
        prototypes = prototypes.detach()
    return prototypes, counts > 0


def _sample_voxels(
    candidates: torch.Tensor, max_voxels: int, generator: Optional[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform sample without replacement of at most ``max_voxels`` True voxels, without a host sync.

    The number of True voxels is unknown on the host (counting it would sync), so draw
    ``k = min(max_voxels, N)`` indices among ALL N voxels: each voxel gets a uniform key in [0, 1), the
    non-candidates get -1, and ``topk`` keeps the k largest keys. Candidates therefore come first, in
    uniformly random order: if there are at least k of them the sample is a uniform k-subset of them,
    otherwise it contains all of them plus non-candidates, which the returned ``valid`` flags drop.
    (``torch.multinomial`` without replacement is avoided: it fails when fewer than k weights are
    non-zero and it calls ``.item()`` on CUDA to validate its input.)

    Args:
        candidates: bool, any shape (flattened here).
        max_voxels: the most voxels to keep.
        generator: optional torch.Generator; its device draws the keys (moved to the mask's device).

    Returns:
        (indices (k,) int64 into the flattened mask, valid (k,) bool: the index is a candidate).
    """
    flat = candidates.reshape(-1)
    n = flat.numel()
    k = min(max(int(max_voxels), 0), n)
    key_device = generator.device if generator is not None else flat.device
    keys = torch.rand(n, generator=generator, device=key_device).to(flat.device)
    keys = torch.where(flat, keys, torch.full_like(keys, -1.0))
    indices = torch.topk(keys, k, sorted=False).indices
    return indices, flat[indices]


def contrastive_loss(
    features: torch.Tensor,
    pseudo_label: torch.Tensor,
    unreliable: torch.Tensor,
    prototypes: torch.Tensor,
    present: torch.Tensor,
    temperature: float = 0.1,
    max_voxels: int = 4096,
    separation_margin: float = 1.0,
    generator: Optional[torch.Generator] = None,
    reduce: Reduce = None,
) -> torch.Tensor:
    """Eq. 7 contrastive loss L_c: pull unreliable voxels to their class prototype, push prototypes apart.

    Pull term (Eq. 7): a uniform random subsample of at most ``max_voxels`` unreliable voxels (all of them
    when there are fewer; drawn with ``generator``, see :func:`_sample_voxels`) bounds the memory. For each
    sampled voxel with L2-normalised feature f, ``d_k = ||f - c_k||^2 / temperature`` and
    ``p(y = k | v) = softmax_k(-d_k)`` over the PRESENT prototypes only (absent ones are masked with -inf);
    the loss is ``CE(-d, pseudo_label)`` averaged over the sampled voxels whose pseudo class is present.
    The pull uses ``prototypes.detach()``: prototypes are targets, only the unreliable voxels' features
    move (towards their own class and, through the softmax denominator, away from the others).

    Push term ("pushing the prototypes of each class away from each other", Sec. 2.3): the hinge
    ``mean_{i<j, both present} relu(separation_margin - ||c_i - c_j||^2)``, which decreases as prototypes
    move apart (the reference code has the opposite sign). It is computed on ``prototypes`` AS GIVEN: pass
    the output of ``class_prototypes(..., detach=False)`` and the push moves the reliable voxels' features
    of different classes apart; pass detached prototypes and the push term is a constant with no gradient.
    Prototypes are means of unit vectors, so ``||c_i - c_j||^2 <= 4``; the default margin 1.0 is reached by
    two unit prototypes at 60 degrees. The hinge is on the raw squared distance (no temperature).

    ``L_c = pull + push``. Each network gets its own call with its own features and prototypes; the pseudo
    label is the shared one from :func:`select_pseudo_labels`. Computed in float32.

    Args:
        features: (B, C, *spatial) decoder features of one network on the unlabeled batch.
        pseudo_label: (B, *spatial) int64.
        unreliable: (B, *spatial) bool (``~reliable``).
        prototypes: (K, C) from :func:`class_prototypes` (reliable voxels), detached or not (see above).
        present: (K,) bool from :func:`class_prototypes`.
        temperature: divides the squared distances in the softmax.
        max_voxels: the most unreliable voxels used per call.
        separation_margin: hinge margin on squared prototype distances.
        generator: optional torch.Generator for the voxel sample (its device draws the random keys).

    Returns:
        0-dim tensor. No unreliable voxel, no sampled voxel with a present class, or fewer than two present
        prototypes each give a zero term connected to the graph (zero gradient), never NaN.
    """
    batch, channels = features.shape[0], features.shape[1]
    spatial = math.prod(features.shape[2:])
    indices, valid = _sample_voxels(unreliable, max_voxels, generator)
    # Gather only the sampled voxels: a full (N, C) transpose of the features would copy them all.
    f = features.reshape(batch, channels, spatial)[indices // spatial, :, indices % spatial]  # (k, C)
    f = F.normalize(f.float(), dim=1)
    target = pseudo_label.reshape(-1)[indices]  # (k,)
    valid = valid & present[target]

    protos = prototypes.float()
    pull_protos = protos.detach()
    dist = ((f.unsqueeze(1) - pull_protos.unsqueeze(0)) ** 2).sum(dim=2) / temperature  # (k, K)
    scores = (-dist).masked_fill(~present.unsqueeze(0), float("-inf"))
    # Invalid rows (non-candidate voxel or absent class) would hold an -inf target score; replace them with
    # harmless finite rows before CE and drop them after, so no inf/NaN reaches the forward or backward.
    scores = torch.where(valid.unsqueeze(1), scores, torch.zeros_like(scores))
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    ce = F.cross_entropy(scores, safe_target, reduction="none")
    sums = _total(torch.stack([torch.where(valid, ce, torch.zeros_like(ce)).sum(), valid.sum().to(ce.dtype)]),
                  reduce)
    pull = sums[0] / sums[1].clamp_min(1)

    num_classes = protos.shape[0]
    gap = ((protos.unsqueeze(1) - protos.unsqueeze(0)) ** 2).sum(dim=2)  # (K, K), no sqrt: no NaN at 0
    upper = torch.ones(num_classes, num_classes, dtype=torch.bool, device=protos.device).triu(diagonal=1)
    pairs = upper & present.unsqueeze(0) & present.unsqueeze(1)
    hinge = torch.relu(separation_margin - gap)
    push = torch.where(pairs, hinge, torch.zeros_like(hinge)).sum() / pairs.sum().clamp_min(1).to(hinge.dtype)
    return pull + push


#: An unreliable voxel is a negative for the classes below this rank of its own probabilities (0 = its argmax).
#: Rank 1 would be the pull itself: with two present prototypes, -log(1 - q_other) = -log q_own.
NEGATIVE_RANK = 2


def negative_classes(probs: torch.Tensor, unreliable: torch.Tensor, rank: int = NEGATIVE_RANK) -> torch.Tensor:
    """(B, K, *spatial) bool: unreliable voxel v is a negative for class k when at least ``rank`` classes have a
    higher probability than k at v (U2PL's rule that an unreliable pixel is evidence only against the classes it
    most surely is not). Two classes leave no negatives with the default rank."""
    above = (probs.unsqueeze(1) > probs.unsqueeze(2)).sum(dim=2)  # [b, k, s]: classes j with p_j > p_k
    return (above >= rank) & unreliable.unsqueeze(1)


def negative_loss(
    features: torch.Tensor,
    negatives: torch.Tensor,
    prototypes: torch.Tensor,
    present: torch.Tensor,
    temperature: float = 0.1,
    max_voxels: int = 4096,
    generator: Optional[torch.Generator] = None,
    reduce: Reduce = None,
) -> torch.Tensor:
    """L_c's pull with unreliable voxels as negatives only (``contrastive_pull="negatives"``, not the paper's).

    A uniform sample of at most ``max_voxels`` voxels with a negative class (:func:`_sample_voxels`); for each,
    q = softmax over the PRESENT prototypes (detached) of ``-||f - c_k||^2 / temperature`` as in the pull of
    :func:`contrastive_loss`, and the loss is ``-log(1 - q_k)`` averaged over the (voxel, present negative class
    k) pairs: the voxel moves away from the classes it is not, never toward its own pseudo class. Zero (connected
    to the graph) without such pairs or with fewer than two present prototypes.

    Args:
        features: (B, C, *spatial) features of one network on the unlabeled batch.
        negatives: (B, K, *spatial) bool from :func:`negative_classes`.
        prototypes, present: from :func:`class_prototypes`.
    """
    batch, channels, num_classes = features.shape[0], features.shape[1], negatives.shape[1]
    spatial = math.prod(features.shape[2:])
    indices, valid = _sample_voxels(negatives.any(dim=1), max_voxels, generator)
    voxel, where = indices // spatial, indices % spatial
    f = F.normalize(features.reshape(batch, channels, spatial)[voxel, :, where].float(), dim=1)  # (k, C)
    pairs = negatives.reshape(batch, num_classes, spatial)[voxel, :, where] & present.unsqueeze(0)  # (k, K)
    pairs = pairs & (valid & (present.sum() >= 2)).unsqueeze(1)
    dist = ((f.unsqueeze(1) - prototypes.float().detach().unsqueeze(0)) ** 2).sum(dim=2) / temperature
    scores = (-dist).masked_fill(~present.unsqueeze(0), float("-inf"))
    # rows without a pair may hold only -inf scores: finite stand-ins keep NaN out of the forward and backward
    scores = torch.where(pairs.any(dim=1, keepdim=True), scores, torch.zeros_like(scores))
    term = -torch.log1p(-torch.softmax(scores, dim=1).clamp(max=1.0 - 1e-6))
    sums = _total(torch.stack([torch.where(pairs, term, torch.zeros_like(term)).sum(), pairs.sum().to(term.dtype)]),
                  reduce)
    return sums[0] / sums[1].clamp_min(1)


def lambda_c(iteration: int, max_iterations: int, schedule: str = "rampup", maximum: float = 0.1) -> float:
    """Weight lambda_c of the contrastive loss in Eq. 3, with t clipped to [0, t_max].

    * ``"rampup"`` (default): ``maximum * exp(-5 (1 - t/t_max)^2)``, the usual sigmoid ramp-up, rising
      from 0.1 * e^-5 = 0.00067 to 0.1.
    * ``"printed"``: ``maximum * exp(4 (1 - t/t_max)^2)`` exactly as printed in Sec. 3.1, which FALLS from
      0.1 * e^4 = 5.46 to 0.1. Almost surely a typo for the ramp-up (docs/method.md, "Reference facts the code relies on"): a
      contrastive weight 55 times the supervised loss on untrained prototypes is unlikely to be intended.
      Kept selectable so both can be measured.
    """
    if max_iterations <= 0:
        ratio = 1.0
    else:
        ratio = min(max(float(iteration), 0.0), float(max_iterations)) / float(max_iterations)
    if schedule == "rampup":
        return float(maximum * math.exp(-5.0 * (1.0 - ratio) ** 2))
    if schedule == "printed":
        return float(maximum * math.exp(4.0 * (1.0 - ratio) ** 2))
    raise ValueError(f"unknown lambda_c schedule {schedule!r}; expected 'rampup' or 'printed'")


def confidence_threshold(iteration: int, max_iterations: int, start: float = 0.7, end: float = 0.95) -> float:
    """Confidence threshold T of Eq. 4, rising linearly from ``start`` to ``end`` (t clipped to [0, t_max]).

    The paper only says T is adjusted dynamically; a rising T (the reference code's default, docs/method.md) lets the
    regularisation act on more voxels early and only on confident disagreements late.
    """
    if max_iterations <= 0:
        ratio = 1.0
    else:
        ratio = min(max(float(iteration), 0.0), float(max_iterations)) / float(max_iterations)
    return float(start + (end - start) * ratio)
