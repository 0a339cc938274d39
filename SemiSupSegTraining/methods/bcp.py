"""Bidirectional copy-paste (``bcp``, Bai et al. 2023) as DeepMed-Lab-ECNU/BCP's ``LA_BCP_train.py`` trains it.

The first ``bcp_pretrain_iterations`` (2000, as its code; at most half the budget, at least the share
``bcp_pretrain``) train the student on labeled crops copy-pasted into each other; then the teacher starts as a copy of the student and follows it by EMA (0.99),
its argmax with each foreground class's largest connected component (``bcp_largest_component``) is the unlabeled crops' pseudo label,
and one random box (``bcp_box`` of each axis) pastes an unlabeled crop into a labeled one and a labeled crop
into an unlabeled one; the targets are mixed the same way and the pseudo-labelled region weighs
``bcp_pseudo_weight``. The student segments.
"""

from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .base import Method
from .common import ema_update


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
    """The pre-training's length: BCP's 2000 iterations (``bcp_pretrain_iterations``), but at most half the
    budget, so that the teacher starts from a network trained as long as the budget allows, and at least
    the share ``bcp_pretrain`` of it (2000 of BCP's 17000)."""
    authors = min(config.bcp_pretrain_iterations, config.iterations // 2)
    return max(authors, int(round(config.bcp_pretrain * config.iterations)))


class BCP(Method):
    trained_networks = (0,)
    decoder_dropout = True  # BCP's VNet(has_dropout=True) in training: x5 and x9 (code/networks/VNet.py:182-183, 236-237)

    @classmethod
    def check(cls, config) -> None:
        if config.batch_unlabeled != config.batch_labeled:
            raise InputError(f"method bcp pastes each labeled crop into an unlabeled one: batch_unlabeled "
                             f"({config.batch_unlabeled}) must equal batch_labeled ({config.batch_labeled}).")

    def inference_networks(self) -> str:
        return "a"

    def step(self, trainer, inputs, labels) -> Dict[str, torch.Tensor]:
        config, n, k = self.config, labels.shape[0], trainer.num_classes
        a, b = halves(n)
        pretrain = bcp_pretrain_iterations(config)
        images = inputs[0][:n]
        unlabeled = inputs[0][n:]
        if trainer.iteration < pretrain or not len(unlabeled):
            # Pre-training: labeled crop b's box pasted into labeled crop a, labels likewise; (CE + Dice)/2.
            mask = bcp_box_mask(images.shape[2:], config.bcp_box, trainer.generator)
            mixed = copy_paste(images[a], images[b], mask)
            target = copy_paste(labels[a], labels[b], mask)
            logits = trainer.forward(0, mixed, project=False)[0].float()
            loss = (F.cross_entropy(logits, target) + bcp_dice(logits, target, k)) / 2
            trainer.backward(loss)
            return {"loss": loss.detach(), "sup_a": loss.detach()}
        if trainer.iteration == pretrain:
            # Self-training starts from the pre-trained student: the teacher is its copy, the optimiser new.
            trainer.net_b.load_state_dict(trainer.net_a.state_dict())
            trainer.restart_optimizer(0)
        trainer.net_b.train()
        with torch.no_grad():
            teacher = trainer.forward(1, inputs[1][n:], project=False)[0].float()
            pseudo = teacher.argmax(1)
            if config.bcp_largest_component:
                pseudo = largest_components(pseudo, k)
        mask = bcp_box_mask(images.shape[2:], config.bcp_box, trainer.generator)
        ua, ub = unlabeled[a], unlabeled[b]
        mixed_l = copy_paste(images[a], ua, mask)      # labeled outside, unlabeled inside the box
        mixed_u = copy_paste(ub, images[b], mask)      # unlabeled outside, labeled inside
        # One forward pass for both mixed batches (DDP pairs one forward with one backward).
        logits = trainer.forward(0, torch.cat([mixed_l, mixed_u]), project=False)[0].float()
        half = mixed_l.shape[0]
        w = config.bcp_pseudo_weight
        loss_l = bcp_mix_loss(logits[:half], labels[a], pseudo[a], mask, 1.0, w, k)
        loss_u = bcp_mix_loss(logits[half:], pseudo[b], labels[b], mask, w, 1.0, k)
        loss = loss_l + loss_u
        trainer.backward(loss)
        return {"loss": loss.detach(), "loss_l": loss_l.detach(), "loss_u": loss_u.detach()}

    def after_step(self, trainer) -> None:
        if trainer.iteration > bcp_pretrain_iterations(self.config):
            ema_update(trainer.net_b, trainer.net_a, self.config.ema_decay)  # a constant decay from the copy on
