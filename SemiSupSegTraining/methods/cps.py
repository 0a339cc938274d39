"""Cross pseudo supervision (``cps``, Chen et al. 2021): two V-Nets of the same shape, differently
initialised, each trained with its supervised loss and with cross-entropy against the other's argmax on the
labeled and unlabeled crops (weight ``cps_weight``, ramped up over the share ``lambda_u_rampup`` of
training). Both segment (their softmax averaged, as ours).
"""

from typing import Dict

import torch
import torch.nn.functional as F

from .. import losses
from .base import Method
from .common import sigmoid_rampup


def rampup_length(config) -> int:
    """T of CPS's ramp-up: the share ``lambda_u_rampup`` of training (the same share as ours' λu)."""
    return int(config.lambda_u_rampup * config.iterations)


def cross_pseudo_loss(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` against the other network's argmax (a hard pseudo label, no gradient)."""
    return F.cross_entropy(logits, other_logits.detach().argmax(1))


class CPS(Method):
    def step(self, trainer, inputs, labels) -> Dict[str, torch.Tensor]:
        config, n, k = self.config, labels.shape[0], trainer.num_classes
        logits_a = trainer.forward(0, inputs[0], project=False)[0].float()
        logits_b = trainer.forward(1, inputs[1], project=False)[0].float()
        sup_a = losses.supervised_loss(logits_a[:n], labels, k)
        sup_b = losses.supervised_loss(logits_b[:n], labels, k)
        cps_a, cps_b = cross_pseudo_loss(logits_a, logits_b), cross_pseudo_loss(logits_b, logits_a)
        weight = config.cps_weight * sigmoid_rampup(trainer.iteration, rampup_length(config))
        loss = sup_a + sup_b + weight * (cps_a + cps_b)
        trainer.backward(loss)
        return {"loss": loss.detach(), "sup_a": sup_a.detach(), "sup_b": sup_b.detach(), "cps_a": cps_a.detach(),
                "cps_b": cps_b.detach(), "cps_weight": torch.tensor(weight)}
