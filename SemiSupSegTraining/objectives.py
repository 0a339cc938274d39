"""The baselines' objectives beside ours: Mean Teacher, UA-MT and cross pseudo supervision (CPS).

Each method says which two networks the trainer builds, which of them an optimiser trains, which of them
segment (stored in the model file), and computes its loss terms for one iteration. ``train.py`` keeps the
loop (learning rate, batches, optimiser steps, checkpoints); the paper's own terms (``ours``) and the
supervised and reference trainings stay in ``train.py`` (``Trainer.step``).

* ``mean-teacher`` (Tarvainen & Valpola 2017, as UA-MT's code trains it): a V-Net student learns from the
  labeled crops (CE + Dice) and from the MSE between its softmax and that of a teacher whose weights are an
  exponential moving average of the student's (decay 0.99 while the weight ramps up, 0.999 after); the
  consistency weight ramps up as w·exp(−5(1 − t/T)²); both see the unlabeled crops with their own noise.
  The teacher segments.
* ``ua-mt`` (Yu et al. 2019): Mean Teacher whose consistency counts only the voxels where the teacher is
  certain: the entropy of the mean of ``mc_samples`` Monte-Carlo-dropout passes (each with its own input
  noise) below a threshold that rises from 0.75 to 1 times ln K over training.
* ``cps`` (Chen et al. 2021): two V-Nets of the same shape, differently initialised, each trained with
  cross-entropy against the other's argmax on the labeled and unlabeled crops, weight ramped up as above.
  Both segment (their softmax averaged, as ours).
"""

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from . import losses

# Methods whose terms live in this file; "ours", "supervised" and "reference" are trained by Trainer.step.
BASELINES = ("mean-teacher", "ua-mt", "cps")
# Which networks each method trains (a, b), by networks.build_networks' names.
NETWORK_KINDS: Dict[str, Tuple[str, str]] = {"mean-teacher": ("VNet", "VNet"), "ua-mt": ("VNet", "VNet"),
                                             "cps": ("VNet", "VNet")}
PAPER_NETWORKS = ("VNet", "ResVNet")
# Which network(s) segment: "a", "b" or "both" (softmax averaged). Model files without it: "both".
INFERENCE: Dict[str, str] = {"mean-teacher": "b", "ua-mt": "b", "cps": "both"}
MC_COPIES_PER_PASS = 4  # ua-mt: noisy copies of the unlabeled crops per teacher pass (bounds its memory)


def network_kinds(method: str) -> Tuple[str, str]:
    return NETWORK_KINDS.get(method, PAPER_NETWORKS)


def inference_networks(method: str) -> str:
    return INFERENCE.get(method, "both")


def trained_networks(method: str) -> Tuple[int, ...]:
    """The networks an optimiser trains; a Mean Teacher's teacher follows the student by EMA only."""
    return (0,) if method in ("mean-teacher", "ua-mt") else (0, 1)


# ------------------------------------------------------------------------------------------ the pieces

def sigmoid_rampup(iteration: int, length: int) -> float:
    """exp(−5 (1 − t/T)²) with t clipped to [0, T]: 0.0067 at t = 0, 1 from t = T on; 1 when T ≤ 0."""
    if length <= 0:
        return 1.0
    ratio = min(max(float(iteration), 0.0), float(length)) / float(length)
    return float(math.exp(-5.0 * (1.0 - ratio) ** 2))


def rampup_length(config) -> int:
    """T of the ramp-ups: the share ``lambda_u_rampup`` of training (the same share as ours' λu)."""
    return int(config.lambda_u_rampup * config.iterations)


def ema_decay(iteration: int, rampup: int, during: float = 0.99, after: float = 0.999) -> float:
    """The teacher's decay: ``during`` while the consistency ramps up, ``after`` from then on, but never above
    1 − 1/(t + 1), so that the first update copies the student (as in Mean Teacher's code)."""
    return min(1.0 - 1.0 / (iteration + 1.0), during if iteration < rampup else after)


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """teacher ← decay·teacher + (1 − decay)·student for every floating-point weight and buffer (batch norm's
    running statistics too, so the teacher segments with statistics of its own weights); integer buffers
    (batch norm's counters) are copied."""
    for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
        if t.dtype.is_floating_point:
            t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
        else:
            t.copy_(s)


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


def cross_pseudo_loss(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` against the other network's argmax (a hard pseudo label, no gradient)."""
    return F.cross_entropy(logits, other_logits.detach().argmax(1))


# ------------------------------------------------------------------------------------------ the methods

def baseline_step(trainer, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One iteration's loss terms of a baseline, back-propagated through ``trainer``; returns them detached
    ("loss" first). The trainer's optimisers step afterwards, then :func:`after_step`."""
    method = trainer.config.method
    if method in ("mean-teacher", "ua-mt"):
        return _mean_teacher_step(trainer, images, labels, uncertainty=method == "ua-mt")
    if method == "cps":
        return _cps_step(trainer, images, labels)
    raise ValueError(f"{method!r} is not a baseline of objectives.py")


def after_step(trainer) -> None:
    """After the optimiser step: the Mean Teacher's EMA update (``trainer.iteration`` counts the step just done,
    so the step's index is one less)."""
    config = trainer.config
    if config.method in ("mean-teacher", "ua-mt"):
        decay = ema_decay(trainer.iteration - 1, rampup_length(config), config.ema_decay, config.ema_decay_after)
        ema_update(trainer.net_b, trainer.net_a, decay)


def _mean_teacher_step(trainer, images, labels, uncertainty: bool) -> Dict[str, torch.Tensor]:
    config, n, k = trainer.config, labels.shape[0], trainer.num_classes
    sigma, generator = config.input_noise, trainer.generator
    unlabeled = images[n:]
    student_input = torch.cat([images[:n], noisy(unlabeled, sigma, generator)]) if len(unlabeled) else images
    logits = trainer._forward(0, student_input, project=False)[0]
    sup = losses.supervised_loss(logits[:n].float(), labels, k)
    stats: Dict[str, torch.Tensor] = {}
    weight = config.consistency_weight * sigmoid_rampup(trainer.iteration, rampup_length(config))
    consistency = logits.sum() * 0.0
    if len(unlabeled):
        trainer.net_b.train()  # dropout on: the teacher's predictions are noisy too (and MC samples differ)
        with torch.no_grad():
            target = torch.softmax(trainer._forward(1, noisy(unlabeled, sigma, generator), project=False)[0].float(), 1)
            mask = None
            if uncertainty:
                samples = _mc_samples(trainer, unlabeled, config.mc_samples, sigma)
                threshold = uncertainty_threshold(trainer.iteration, config.iterations, k)
                mask = mc_uncertainty(samples) < threshold
                stats["certain_fraction"] = mask.float().mean()
        consistency = softmax_mse(logits[n:].float(), target, mask)
    stats["consistency"] = consistency
    stats["consistency_weight"] = torch.tensor(weight)
    loss = sup + weight * consistency
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


def _cps_step(trainer, images, labels) -> Dict[str, torch.Tensor]:
    config, n, k = trainer.config, labels.shape[0], trainer.num_classes
    logits_a = trainer._forward(0, images, project=False)[0].float()
    logits_b = trainer._forward(1, images, project=False)[0].float()
    sup_a = losses.supervised_loss(logits_a[:n], labels, k)
    sup_b = losses.supervised_loss(logits_b[:n], labels, k)
    cps_a, cps_b = cross_pseudo_loss(logits_a, logits_b), cross_pseudo_loss(logits_b, logits_a)
    weight = config.cps_weight * sigmoid_rampup(trainer.iteration, rampup_length(config))
    loss = sup_a + sup_b + weight * (cps_a + cps_b)
    trainer._backward(loss)
    return {"loss": loss.detach(), "sup_a": sup_a.detach(), "sup_b": sup_b.detach(), "cps_a": cps_a.detach(),
            "cps_b": cps_b.detach(), "cps_weight": torch.tensor(weight)}
