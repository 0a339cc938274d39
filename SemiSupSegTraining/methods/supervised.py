"""Labels alone (``supervised``): the paper's two networks, each trained on the labeled crops with L_s
(CE + Dice), both segmenting; and ``reference``: what the paper's released reference code trains on top of
that (a correction term on the labeled crops), for comparison.
"""

from typing import Dict

import torch

from .. import distributed, losses
from .base import Method


def reference_correction(logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor,
                         threshold: float = 0.6, weight: float = 0.5) -> torch.Tensor:
    """The released reference code's only extra trained term (for comparison, not the paper): on the
    labeled crops, squared error between each network's softmax and the ground truth over voxels where
    exactly one network predicts foreground (1 - p(background)) with probability >= 0.6."""
    probs = [torch.softmax(lg.float(), 1) for lg in (logits_a, logits_b)]
    confident = [(1.0 - p[:, 0]) >= threshold for p in probs]
    mask = (confident[0] ^ confident[1]).unsqueeze(1).float()
    target = torch.nn.functional.one_hot(labels, probs[0].shape[1]).movedim(-1, 1).float()
    count = mask.sum().clamp_min(1.0) * probs[0].shape[1]
    return weight * sum(((p - target) ** 2 * mask).sum() / count for p in probs)


class Supervised(Method):
    network_kinds = ("VNet", "ResVNet")
    uses_unlabeled = False
    augmentation = "strong"  # +4.9 Dice on headroom, every seed; no loss on the phantoms (docs/benchmarks.md)

    def extra_terms(self, logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor
                    ) -> Dict[str, torch.Tensor]:
        """Terms added to both networks' L_s (none)."""
        return {}

    def step(self, trainer, inputs, labels) -> Dict[str, torch.Tensor]:
        n, k, reduce = labels.shape[0], trainer.num_classes, distributed.current().reduce
        logits_a = trainer.forward(0, inputs[0])[0]
        logits_b = trainer.forward(1, inputs[1])[0]
        sup_a = losses.supervised_loss(logits_a[:n].float(), labels, k, reduce)
        sup_b = losses.supervised_loss(logits_b[:n].float(), labels, k, reduce)
        stats = self.extra_terms(logits_a[:n], logits_b[:n], labels)
        loss = sup_a + sup_b + sum(stats.values(), torch.zeros((), device=sup_a.device))
        trainer.backward(loss)
        return {"loss": loss.detach(), "sup_a": sup_a.detach(), "sup_b": sup_b.detach(),
                **{key: v.detach() for key, v in stats.items()}}


class Reference(Supervised):
    augmentation = "paper"  # what the released reference code trains with

    def extra_terms(self, logits_a, logits_b, labels):
        return {"correction": reference_correction(logits_a, logits_b, labels)}
