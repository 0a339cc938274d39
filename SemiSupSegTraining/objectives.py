"""The baselines' objectives beside ours: Mean Teacher, UA-MT, cross pseudo supervision (CPS) and
bidirectional copy-paste (BCP).

Each method says which two networks the trainer builds, which of them an optimiser trains, which of them
segment (stored in the model file), and computes its loss terms for one iteration. ``train.py`` keeps the
loop (learning rate, batches, optimiser steps, checkpoints, the unlabeled crops' intensity views); the
paper's own terms (``ours``) and the supervised and reference trainings stay in ``train.py``
(``Trainer.step``). Every semi-supervised method receives two inputs of the batch: the same labeled crops,
and one intensity view of the unlabeled crops each (the same crops twice with ``unlabeled_views=False``).

* ``mean-teacher`` (Tarvainen & Valpola 2017) as UA-MT's code (yulequan/UA-MT) trains it: a V-Net student
  learns from the labeled crops (0.5·(CE + Dice)) and from the MSE between its softmax on the unlabeled crops
  and that of a teacher whose parameters are an exponential moving average of the student's (decay 0.99);
  the teacher's input gets Gaussian noise, the student's none; the consistency weight ramps up as
  w·exp(−5(1 − s/40)²) with s = ⌊40·t / (share·T)⌋ (UA-MT: s = t // 150 of 6000). The student segments.
* ``ua-mt`` (Yu et al. 2019): Mean Teacher whose consistency counts only the voxels where the teacher is
  certain: the entropy of the mean of ``mc_samples`` Monte-Carlo-dropout passes (each with its own input
  noise) below a threshold that rises from 0.75 to 1 times ln K over training.
* ``cps`` (Chen et al. 2021): two V-Nets of the same shape, differently initialised, each trained with
  cross-entropy against the other's argmax on the labeled and unlabeled crops, weight ramped up over the
  share ``lambda_u_rampup`` of training. Both segment (their softmax averaged, as ours).
* ``bcp`` (Bai et al. 2023) as DeepMed-Lab-ECNU/BCP's ``LA_BCP_train.py`` trains it: the first share
  ``bcp_pretrain`` of the iterations (2000 of its 17000) train the student on labeled crops copy-pasted into
  each other; then the teacher starts as a copy of the student and follows it by EMA (0.99), its argmax with
  each foreground class's largest connected component is the unlabeled crops' pseudo label, and one random
  box (``bcp_box`` of each axis) pastes an unlabeled crop into a labeled one and a labeled crop into an
  unlabeled one; the targets are mixed the same way and the pseudo-labelled region weighs
  ``bcp_pseudo_weight``. The student segments.
"""

import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import losses

# Methods whose terms live in this file; "ours", "supervised" and "reference" are trained by Trainer.step.
BASELINES = ("mean-teacher", "ua-mt", "cps", "bcp")
TEACHER_METHODS = ("mean-teacher", "ua-mt", "bcp")  # network b is an EMA teacher of network a
# Which networks each method trains (a, b), by networks.build_networks' names.
NETWORK_KINDS: Dict[str, Tuple[str, str]] = {m: ("VNet", "VNet") for m in BASELINES}
PAPER_NETWORKS = ("VNet", "ResVNet")
MC_COPIES_PER_PASS = 4  # ua-mt: noisy copies of the unlabeled crops per teacher pass (bounds its memory)
RAMPUP_STEPS = 40       # mean-teacher, ua-mt: the consistency weight changes in 40 steps (UA-MT's code)


def network_kinds(method: str) -> Tuple[str, str]:
    return NETWORK_KINDS.get(method, PAPER_NETWORKS)


def inference_networks(config) -> str:
    """Which network(s) segment: "a", "b" or "both" (softmax averaged); model files without it: "both". The
    teacher methods' authors test the student (a), unless ``teacher_segments`` (Mean Teacher, UA-MT)."""
    if config.method in ("mean-teacher", "ua-mt"):
        return "b" if config.teacher_segments else "a"
    return "a" if config.method == "bcp" else "both"


def trained_networks(method: str) -> Tuple[int, ...]:
    """The networks an optimiser trains; a teacher follows the student by EMA only."""
    return (0,) if method in TEACHER_METHODS else (0, 1)


# ------------------------------------------------------------------------------------------ the pieces

def sigmoid_rampup(iteration: int, length: int) -> float:
    """exp(−5 (1 − t/T)²) with t clipped to [0, T]: 0.0067 at t = 0, 1 from t = T on; 1 when T ≤ 0."""
    if length <= 0:
        return 1.0
    ratio = min(max(float(iteration), 0.0), float(length)) / float(length)
    return float(math.exp(-5.0 * (1.0 - ratio) ** 2))


def rampup_length(config) -> int:
    """T of CPS's ramp-up: the share ``lambda_u_rampup`` of training (the same share as ours' λu)."""
    return int(config.lambda_u_rampup * config.iterations)


def consistency_rampup(iteration: int, iterations: int, share: float) -> float:
    """Mean Teacher's and UA-MT's ramp-up as UA-MT's code runs it, ``sigmoid_rampup(iteration // 150, 40)``
    at 6000 iterations, scaled to ``share`` of ``iterations``: sigmoid_rampup(⌊40·t / (share·T)⌋, 40)."""
    length = share * iterations
    if length <= 0:
        return 1.0
    return sigmoid_rampup(math.floor(RAMPUP_STEPS * iteration / length), RAMPUP_STEPS)


def ema_decay(iteration: int, rampup: int, during: float = 0.99, after: float = 0.99) -> float:
    """The teacher's decay: ``during`` while the consistency ramps up, ``after`` from then on, but never above
    1 − 1/(t + 1), so that the first update copies the student (as in UA-MT's code)."""
    return min(1.0 - 1.0 / (iteration + 1.0), during if iteration < rampup else after)


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """teacher ← decay·teacher + (1 − decay)·student for every parameter, as the authors' code does; the
    teacher's batch-norm statistics are its own (its forward passes in training mode update them)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)


def noisy(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """``images`` plus Gaussian noise of std ``sigma`` clipped to ±2σ (UA-MT's input noise)."""
    noise = torch.randn(images.shape, generator=generator, device=generator.device).to(images.device)
    return images + (sigma * noise).clamp(-2.0 * sigma, 2.0 * sigma).to(images.dtype)


def softmax_mse(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared difference of softmax(student_logits) and the teacher's probabilities (B, K, *spatial),
    over every class channel of the voxels where ``mask`` (B, *spatial) holds (all voxels without one).
    An empty mask gives 0."""
    squared = (torch.softmax(student_logits, dim=1) - teacher_probs.detach()) ** 2
    if mask is None:
        return squared.mean()
    weights = mask.unsqueeze(1).to(squared.dtype)
    return (squared * weights).sum() / (weights.sum() * squared.shape[1]).clamp_min(1.0)


def mc_uncertainty(samples: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the mean of Monte-Carlo softmax samples (T, B, K, *spatial): (B, *spatial)."""
    mean = samples.mean(0)
    return -(mean * torch.log(mean + 1e-6)).sum(1)


def uncertainty_threshold(iteration: int, iterations: int, num_classes: int) -> float:
    """UA-MT's threshold H: (3/4 + 1/4 · ramp-up over the whole training) · ln K (ln K: the largest entropy)."""
    return (0.75 + 0.25 * sigmoid_rampup(iteration, iterations)) * math.log(num_classes)


def mean_teacher_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_probs: Optional[torch.Tensor],
                      mask: Optional[torch.Tensor], weight: float, supervised_weight: float,
                      num_classes: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, supervised, consistency) of the student: ``supervised_weight``·(CE + Dice) on its labeled crops
    (``logits``' first ``len(labels)``) + ``weight``·softmax MSE to the teacher on the rest (UA-MT's code)."""
    n = labels.shape[0]
    sup = supervised_weight * losses.supervised_loss(logits[:n], labels, num_classes)
    consistency = logits.sum() * 0.0 if teacher_probs is None else softmax_mse(logits[n:], teacher_probs, mask)
    return sup + weight * consistency, sup, consistency


def cross_pseudo_loss(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` against the other network's argmax (a hard pseudo label, no gradient)."""
    return F.cross_entropy(logits, other_logits.detach().argmax(1))


def bcp_box_mask(shape: Tuple[int, ...], share: float, generator: torch.Generator) -> torch.Tensor:
    """BCP's ``context_mask``: 1 outside, 0 inside one random box of ⌊share·size⌋ voxels per axis of a crop of
    ``shape`` (spatial sizes), its corner drawn uniformly from [0, size − box) per axis. int64."""
    mask = torch.ones(shape, dtype=torch.int64)
    box = []
    for size in shape:
        length = int(size * share)
        corner = int(torch.randint(0, max(size - length, 1), (1,), generator=generator, device=generator.device))
        box.append(slice(corner, corner + length))
    mask[tuple(box)] = 0
    return mask


def copy_paste(outer: torch.Tensor, inner: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``outer`` where ``mask`` is 1, ``inner`` inside the box (mask 0); images (B, C, *spatial) or labels
    (B, *spatial), ``mask`` (*spatial)."""
    keep = mask.to(outer.device).bool()
    return torch.where(keep, outer, inner)


def bcp_dice(logits: torch.Tensor, target: torch.Tensor, num_classes: int,
             mask: Optional[torch.Tensor] = None, smooth: float = 1e-5) -> torch.Tensor:
    """BCP's ``mask_DiceLoss``: 1 − mean over crops and classes (background too) of
    (2·Σ p·y + smooth) / (Σ (p + y) + smooth), sums over the voxels where ``mask`` (B, *spatial) is 1."""
    probs = torch.softmax(logits, dim=1).flatten(2)
    onehot = F.one_hot(target, num_classes).movedim(-1, 1).flatten(2).to(probs.dtype)
    weights = torch.ones_like(probs[:, :1]) if mask is None else mask.flatten(1).unsqueeze(1).to(probs.dtype)
    inter = (probs * onehot * weights).sum(2)
    union = ((probs + onehot) * weights).sum(2)
    return 1.0 - ((2.0 * inter + smooth) / (union + smooth)).mean()


def bcp_mix_loss(logits: torch.Tensor, outer_target: torch.Tensor, inner_target: torch.Tensor, mask: torch.Tensor,
                 outer_weight: float, inner_weight: float, num_classes: int) -> torch.Tensor:
    """BCP's ``mix_loss``: (Dice + CE)/2 of a mixed crop, each region (outside the box: ``mask`` 1, inside: 0)
    against its own target and with its own weight; CE is the mean over the region's voxels."""
    masks = mask.to(logits.device).expand(outer_target.shape)
    inside = 1 - masks
    ce = F.cross_entropy(logits, outer_target, reduction="none"), F.cross_entropy(logits, inner_target, reduction="none")
    dice = (outer_weight * bcp_dice(logits, outer_target, num_classes, masks)
            + inner_weight * bcp_dice(logits, inner_target, num_classes, inside))
    cross = (outer_weight * (ce[0] * masks).sum() / (masks.sum() + 1e-16)
             + inner_weight * (ce[1] * inside).sum() / (inside.sum() + 1e-16))
    return (dice + cross) / 2


def largest_components(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each crop's label map (B, *spatial) with every foreground class cut to its largest connected component
    (full connectivity, as BCP's skimage ``label``; the first of equally large ones); the rest is background."""
    from scipy import ndimage

    array = labels.cpu().numpy()
    out = np.zeros_like(array)
    structure = ndimage.generate_binary_structure(array.ndim - 1, array.ndim - 1)
    for b in range(array.shape[0]):
        for k in range(1, num_classes):
            components, count = ndimage.label(array[b] == k, structure)
            if count:
                sizes = np.bincount(components.ravel())[1:]
                out[b][components == int(np.argmax(sizes)) + 1] = k
    return torch.from_numpy(out).to(labels.device)


def halves(count: int) -> Tuple[slice, slice]:
    """BCP's sub-batches a and b: the first and second half (one crop: the same crop twice)."""
    half = max(1, count // 2)
    return slice(0, half), slice(count - half, count)


def bcp_pretrain_iterations(config) -> int:
    return int(round(config.bcp_pretrain * config.iterations))


# ------------------------------------------------------------------------------------------ the methods

def baseline_step(trainer, inputs: Tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One iteration's loss terms of a baseline, back-propagated through ``trainer``; returns them detached
    ("loss" first). ``inputs``: the batch as networks a and b (student and teacher) see it, labeled crops first,
    each with its own view of the unlabeled crops. The trainer's optimisers step afterwards, then
    :func:`after_step`."""
    method = trainer.config.method
    if method in ("mean-teacher", "ua-mt"):
        return _mean_teacher_step(trainer, inputs, labels, uncertainty=method == "ua-mt")
    if method == "cps":
        return _cps_step(trainer, inputs, labels)
    if method == "bcp":
        return _bcp_step(trainer, inputs, labels)
    raise ValueError(f"{method!r} is not a baseline of objectives.py")


def after_step(trainer) -> None:
    """After the optimiser step: the teacher's EMA update (``trainer.iteration`` counts the step just done,
    so the step's index is one less)."""
    config = trainer.config
    if config.method in ("mean-teacher", "ua-mt"):
        rampup = int(config.consistency_rampup * config.iterations)
        ema_update(trainer.net_b, trainer.net_a,
                   ema_decay(trainer.iteration - 1, rampup, config.ema_decay, config.ema_decay_after))
    elif config.method == "bcp" and trainer.iteration > bcp_pretrain_iterations(config):
        ema_update(trainer.net_b, trainer.net_a, config.ema_decay)  # BCP: a constant decay from the copy on


def _mean_teacher_step(trainer, inputs, labels, uncertainty: bool) -> Dict[str, torch.Tensor]:
    config, n, k = trainer.config, labels.shape[0], trainer.num_classes
    sigma, generator = config.input_noise, trainer.generator
    logits = trainer._forward(0, inputs[0], project=False)[0].float()  # the student: no noise (UA-MT's code)
    stats: Dict[str, torch.Tensor] = {}
    weight = config.consistency_weight * consistency_rampup(trainer.iteration, config.iterations,
                                                            config.consistency_rampup)
    target, mask = None, None
    unlabeled = inputs[1][n:]
    if len(unlabeled):
        trainer.net_b.train()  # dropout on: the teacher's predictions are noisy too (and MC samples differ)
        with torch.no_grad():
            target = torch.softmax(trainer._forward(1, noisy(unlabeled, sigma, generator), project=False)[0].float(), 1)
            if uncertainty:
                samples = _mc_samples(trainer, unlabeled, config.mc_samples, sigma)
                threshold = uncertainty_threshold(trainer.iteration, config.iterations, k)
                mask = mc_uncertainty(samples) < threshold
                stats["certain_fraction"] = mask.float().mean()
    loss, sup, consistency = mean_teacher_loss(logits, labels, target, mask, weight, config.mt_supervised_weight, k)
    stats["consistency"] = consistency
    stats["consistency_weight"] = torch.tensor(weight)
    trainer._backward(loss)
    return {"loss": loss.detach(), "sup_a": sup.detach(), **{key: v.detach() for key, v in stats.items()}}


def _mc_samples(trainer, unlabeled: torch.Tensor, count: int, sigma: float) -> torch.Tensor:
    """The teacher's softmax on ``count`` noisy copies of the unlabeled crops, (count, B, K, *spatial); up to
    MC_COPIES_PER_PASS copies go through the network at once (UA-MT's code: two)."""
    samples = []
    for start in range(0, count, MC_COPIES_PER_PASS):
        copies = min(MC_COPIES_PER_PASS, count - start)
        batch = noisy(unlabeled.repeat((copies,) + (1,) * (unlabeled.dim() - 1)), sigma, trainer.generator)
        probs = torch.softmax(trainer._forward(1, batch, project=False)[0].float(), 1)
        samples.append(probs.reshape((copies, unlabeled.shape[0]) + probs.shape[1:]))
    return torch.cat(samples)


def _cps_step(trainer, inputs, labels) -> Dict[str, torch.Tensor]:
    config, n, k = trainer.config, labels.shape[0], trainer.num_classes
    logits_a = trainer._forward(0, inputs[0], project=False)[0].float()
    logits_b = trainer._forward(1, inputs[1], project=False)[0].float()
    sup_a = losses.supervised_loss(logits_a[:n], labels, k)
    sup_b = losses.supervised_loss(logits_b[:n], labels, k)
    cps_a, cps_b = cross_pseudo_loss(logits_a, logits_b), cross_pseudo_loss(logits_b, logits_a)
    weight = config.cps_weight * sigmoid_rampup(trainer.iteration, rampup_length(config))
    loss = sup_a + sup_b + weight * (cps_a + cps_b)
    trainer._backward(loss)
    return {"loss": loss.detach(), "sup_a": sup_a.detach(), "sup_b": sup_b.detach(), "cps_a": cps_a.detach(),
            "cps_b": cps_b.detach(), "cps_weight": torch.tensor(weight)}


def _bcp_step(trainer, inputs, labels) -> Dict[str, torch.Tensor]:
    config, n, k = trainer.config, labels.shape[0], trainer.num_classes
    a, b = halves(n)
    pretrain = bcp_pretrain_iterations(config)
    images = inputs[0][:n]
    unlabeled = inputs[0][n:]
    if trainer.iteration < pretrain or not len(unlabeled):
        # Pre-training: labeled crop b's box pasted into labeled crop a, labels likewise; (CE + Dice)/2.
        mask = bcp_box_mask(images.shape[2:], config.bcp_box, trainer.generator)
        mixed = copy_paste(images[a], images[b], mask)
        target = copy_paste(labels[a], labels[b], mask)
        logits = trainer._forward(0, mixed, project=False)[0].float()
        loss = (F.cross_entropy(logits, target) + bcp_dice(logits, target, k)) / 2
        trainer._backward(loss)
        return {"loss": loss.detach(), "sup_a": loss.detach()}
    if trainer.iteration == pretrain:
        # Self-training starts from the pre-trained student: the teacher is its copy, the optimiser new.
        trainer.net_b.load_state_dict(trainer.net_a.state_dict())
        trainer.optimizers[0].state.clear()
    trainer.net_b.train()
    with torch.no_grad():
        teacher = trainer._forward(1, inputs[1][n:], project=False)[0].float()
        pseudo = largest_components(teacher.argmax(1), k)
    mask = bcp_box_mask(images.shape[2:], config.bcp_box, trainer.generator)
    ua, ub = unlabeled[a], unlabeled[b]
    mixed_l = copy_paste(images[a], ua, mask)      # labeled outside, unlabeled inside the box
    mixed_u = copy_paste(ub, images[b], mask)      # unlabeled outside, labeled inside
    # One forward pass for both mixed batches (DDP pairs one forward with one backward).
    logits = trainer._forward(0, torch.cat([mixed_l, mixed_u]), project=False)[0].float()
    half = mixed_l.shape[0]
    w = config.bcp_pseudo_weight
    loss_l = bcp_mix_loss(logits[:half], labels[a], pseudo[a], mask, 1.0, w, k)
    loss_u = bcp_mix_loss(logits[half:], pseudo[b], labels[b], mask, w, 1.0, k)
    loss = loss_l + loss_u
    trainer._backward(loss)
    return {"loss": loss.detach(), "loss_l": loss_l.detach(), "loss_u": loss_u.detach()}
