"""Mean Teacher (``mean-teacher``, Tarvainen & Valpola 2017) and UA-MT (``ua-mt``, Yu et al. 2019) as UA-MT's
code (yulequan/UA-MT, ``train_LA_meanteacher_certainty_unlabel.py``) trains them.

A V-Net student learns from the labeled crops (``mt_supervised_weight``·(CE + Dice)) and from the MSE between
its softmax on the unlabeled crops and that of a teacher whose parameters are an exponential moving average
of the student's (decay 0.99); the teacher's input gets Gaussian noise, the student's none; the consistency
weight ramps up as w·exp(−5(1 − s/40)²) with s = ⌊40·t / (share·T)⌋ (UA-MT: s = t // 150 of 6000). UA-MT
counts only the voxels where the teacher is certain: the entropy of the mean of ``mc_samples``
Monte-Carlo-dropout passes (each with its own input noise) below a threshold that rises from 0.75 to 1 times
ln K over training. The student segments (``teacher_segments``: the teacher).
"""

import math
from typing import Dict, Optional, Tuple

import torch

from .. import losses
from .base import Method
from .common import ema_update, sigmoid_rampup

MC_COPIES_PER_PASS = 4  # ua-mt: noisy copies of the unlabeled crops per teacher pass (bounds its memory)
RAMPUP_STEPS = 40       # the consistency weight changes in 40 steps (UA-MT's code)


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


class MeanTeacher(Method):
    trained_networks = (0,)
    decoder_dropout = True  # UA-MT's VNet(has_dropout=True): x5 and x9 (code/networks/vnet.py:194-196, 224-226)
    uncertainty = False  # UA-MT: the consistency counts the certain voxels only

    def inference_networks(self) -> str:
        return "b" if self.config.teacher_segments else "a"

    def step(self, trainer, inputs, labels) -> Dict[str, torch.Tensor]:
        config, n, k = self.config, labels.shape[0], trainer.num_classes
        sigma, generator = config.input_noise, trainer.generator
        logits = trainer.forward(0, inputs[0], project=False)[0].float()  # the student: no noise (UA-MT's code)
        stats: Dict[str, torch.Tensor] = {}
        weight = config.consistency_weight * consistency_rampup(trainer.iteration, config.iterations,
                                                                config.consistency_rampup)
        target, mask = None, None
        unlabeled = inputs[1][n:]
        if len(unlabeled):
            trainer.net_b.train()  # dropout on: the teacher's predictions are noisy too (and MC samples differ)
            with torch.no_grad():
                target = torch.softmax(trainer.forward(1, noisy(unlabeled, sigma, generator), project=False)[0].float(), 1)
                if self.uncertainty:
                    samples = _mc_samples(trainer, unlabeled, config.mc_samples, sigma)
                    threshold = uncertainty_threshold(trainer.iteration, config.iterations, k)
                    mask = mc_uncertainty(samples) < threshold
                    stats["certain_fraction"] = mask.float().mean()
        loss, sup, consistency = mean_teacher_loss(logits, labels, target, mask, weight, config.mt_supervised_weight, k)
        stats["consistency"] = consistency
        stats["consistency_weight"] = torch.tensor(weight)
        trainer.backward(loss)
        return {"loss": loss.detach(), "sup_a": sup.detach(), **{key: v.detach() for key, v in stats.items()}}

    def after_step(self, trainer) -> None:
        """The teacher's EMA update (``trainer.iteration`` counts the step just done: its index is one less)."""
        config = self.config
        rampup = int(config.consistency_rampup * config.iterations)
        ema_update(trainer.net_b, trainer.net_a,
                   ema_decay(trainer.iteration - 1, rampup, config.ema_decay, config.ema_decay_after))


class UAMT(MeanTeacher):
    uncertainty = True


def _mc_samples(trainer, unlabeled: torch.Tensor, count: int, sigma: float) -> torch.Tensor:
    """The teacher's softmax on ``count`` noisy copies of the unlabeled crops, (count, B, K, *spatial); up to
    MC_COPIES_PER_PASS copies go through the network at once (UA-MT's code: two)."""
    samples = []
    for start in range(0, count, MC_COPIES_PER_PASS):
        copies = min(MC_COPIES_PER_PASS, count - start)
        batch = noisy(unlabeled.repeat((copies,) + (1,) * (unlabeled.dim() - 1)), sigma, trainer.generator)
        probs = torch.softmax(trainer.forward(1, batch, project=False)[0].float(), 1)
        samples.append(probs.reshape((copies, unlabeled.shape[0]) + probs.shape[1:]))
    return torch.cat(samples)
