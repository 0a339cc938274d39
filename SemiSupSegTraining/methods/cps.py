"""Cross pseudo supervision (``cps``, Chen et al. 2021) as its code (charlesCXK/TorchSemiSeg,
``exp.voc/voc8.res50v3+.CPS/train.py``) trains it: two networks of the same shape, differently initialised,
each trained with cross-entropy on the labeled crops and with cross-entropy against the other's argmax on the
labeled and unlabeled crops, weight ``cps_weight`` = 1.5 from the first iteration; the first network
segments. V-Nets here (its code: DeepLabv3+ on 2D images).

The engine's earlier CPS, a hybrid with SSL4MIS's 3D port, stays reachable by three settings:
``cps_rampup=0.4`` (λ ramped up over 40 % of training), ``cps_supervision=ce+dice`` and
``cps_segments=both`` (the benchmarks' ``cps-hybrid``).
"""

from typing import Dict

import torch
import torch.nn.functional as F

from .. import losses
from .base import Method
from .common import sigmoid_rampup


def rampup_length(config) -> int:
    """T of λ's ramp-up: the share ``cps_rampup`` of training (0: none, λ constant as CPS's code)."""
    return int(config.cps_rampup * config.iterations)


def cross_pseudo_loss(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` against the other network's argmax (a hard pseudo label, no gradient)."""
    return F.cross_entropy(logits, other_logits.detach().argmax(1))


def supervision(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, kind: str) -> torch.Tensor:
    """One network's supervised loss: CE (CPS's ``criterion``) or CE + Dice (``ce+dice``, L_s as ours)."""
    if kind == "ce+dice":
        return losses.supervised_loss(logits, labels, num_classes)
    return F.cross_entropy(logits, labels)


class CPS(Method):
    def inference_networks(self) -> str:
        return self.config.cps_segments

    def step(self, trainer, inputs, labels) -> Dict[str, torch.Tensor]:
        config, n, k = self.config, labels.shape[0], trainer.num_classes
        logits_a = trainer.forward(0, inputs[0], project=False)[0].float()
        logits_b = trainer.forward(1, inputs[1], project=False)[0].float()
        sup_a = supervision(logits_a[:n], labels, k, config.cps_supervision)
        sup_b = supervision(logits_b[:n], labels, k, config.cps_supervision)
        cps_a, cps_b = cross_pseudo_loss(logits_a, logits_b), cross_pseudo_loss(logits_b, logits_a)
        weight = config.cps_weight * sigmoid_rampup(trainer.iteration, rampup_length(config))
        loss = sup_a + sup_b + weight * (cps_a + cps_b)
        trainer.backward(loss)
        return {"loss": loss.detach(), "sup_a": sup_a.detach(), "sup_b": sup_b.detach(), "cps_a": cps_a.detach(),
                "cps_b": cps_b.detach(), "cps_weight": torch.tensor(weight)}
