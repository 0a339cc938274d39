"""The paper's method (``ours``): two networks of different encoders (a V-Net and a ResNet-encoder V-Net)
trained by Eq. 3: each its supervised loss L_s, plus λu·(L_u + L_reg) on the unlabeled crops (the pseudo
label of the network with the lower L_s, filtered by entropy; the disagreement term of Eq. 4) and λc·L_c
(prototype contrast, Eq. 6-7) on a projection head. Both networks segment (softmax averaged).

The losses are :mod:`..losses`' (one function per equation); this file says which terms each network gets,
their weights and schedules, and runs the step, one network's backward at a time where memory asks for it.
"""

from typing import Dict, NamedTuple, Optional, Tuple

import torch

from .. import distributed, losses
from ..config import TrainConfig
from .base import Method


class PseudoTargets(NamedTuple):
    """What both networks learn from on the unlabeled crops (all detached): the pseudo label, the reliable
    voxels of the entropy filter, the unreliable voxels L_c pulls, M_diff (None without L_reg) and, with
    ``contrastive_pull="negatives"``, the (voxel, class) pairs L_c pushes apart (else None)."""
    pseudo: torch.Tensor
    reliable: torch.Tensor
    pulled: torch.Tensor
    mdiff: Optional[torch.Tensor]
    negatives: Optional[torch.Tensor] = None


def uses_unlabeled_terms(config: TrainConfig) -> bool:
    return config.use_unsupervised or config.use_regularization or config.use_contrastive


def loss_weights(config: TrainConfig, iteration: int) -> Tuple[float, float]:
    """(λu, λc) of Eq. 3 at this iteration: 0 before ``unlabeled_start`` of the budget, then the schedules run
    over the iterations left as they would over a whole training."""
    start = int(config.unlabeled_start * config.iterations)
    if iteration < start:
        return 0.0, 0.0
    iteration, total = iteration - start, config.iterations - start
    lam_c = losses.lambda_c(iteration, total, config.lambda_c_schedule, config.lambda_c_max)
    lam_u = config.lambda_u
    if config.lambda_u_rampup > 0:  # the same sigmoid ramp-up as λc, over the first share of training
        lam_u *= losses.lambda_c(iteration, max(1, int(config.lambda_u_rampup * total)), "rampup", 1.0)
    return lam_u, lam_c


def _filtered_targets(config: TrainConfig, num_classes: int, source_probs: torch.Tensor,
                      agreed: Optional[torch.Tensor], mdiff: Optional[torch.Tensor]) -> PseudoTargets:
    """The argmax of ``source_probs`` as the pseudo label, split by the entropy filter into reliable voxels
    (L_u, prototypes) and unreliable ones (the voxels L_c pulls)."""
    pseudo = source_probs.argmax(dim=1)
    entropy = losses.voxel_entropy(source_probs)
    # The entropy percentile is a rank statistic of the global batch: every process's voxels count.
    if config.reliability == "class":  # the labels travel as bytes where they fit
        small = pseudo.to(torch.uint8) if num_classes <= 256 else pseudo
        reliable = distributed.current().on_global_batch(
            lambda e, p: losses.reliable_mask_per_class(e, p.to(torch.int64), config.reliable_fraction, num_classes),
            entropy, small)
    else:
        reliable = distributed.current().on_global_batch(
            lambda e: losses.reliable_mask(e, config.reliable_fraction), entropy)
    if config.reliable_confidence > 0:
        reliable = reliable & (source_probs.amax(dim=1) >= config.reliable_confidence)
    if config.contrastive_pull == "negatives":  # no voxel pulled; the unreliable ones are negatives only
        return PseudoTargets(pseudo, reliable, torch.zeros_like(reliable), mdiff,
                             losses.negative_classes(source_probs, ~reliable))
    pulled = ~reliable if agreed is None else ~reliable & agreed
    return PseudoTargets(pseudo, reliable, pulled, mdiff)


def pseudo_targets(config: TrainConfig, iteration: int, num_classes: int, probs: Tuple[torch.Tensor, torch.Tensor],
                   supervised: Tuple[torch.Tensor, torch.Tensor]
                   ) -> Tuple[Tuple[PseudoTargets, PseudoTargets], Dict[str, torch.Tensor]]:
    """What networks A and B learn from on the unlabeled crops, ``((targets_a, targets_b), stats)``.

    The paper's pseudo label (``pseudo_label="lower-loss"``) comes from the network with the lower supervised
    loss and teaches both; ``"ensemble"`` takes both networks' averaged softmax; ``"cross"`` teaches each
    network the other's (as CPS does), so no network trains on its own argmax. M_diff holds the voxels where
    both networks are confident and disagree (Eq. 4). ``probs`` are both networks' softmax on the unlabeled
    crops."""
    probs = tuple(p.detach() for p in probs)
    mdiff = None
    stats: Dict[str, torch.Tensor] = {}
    if config.use_regularization:
        threshold = losses.confidence_threshold(iteration, config.iterations, config.threshold_start,
                                                config.threshold_end)
        mdiff = losses.disagreement_mask(probs[0], probs[1], threshold)
        stats["mdiff_voxels"] = mdiff.sum().float()
    if config.pseudo_label == "cross":
        sources = [probs[1], probs[0]]  # A learns B's pseudo label, B learns A's
    elif config.pseudo_label == "ensemble":
        sources = [(probs[0] + probs[1]) / 2]
    else:
        sources = [losses.select_pseudo_labels(probs[0], probs[1], supervised[0].detach(), supervised[1].detach())[1]]
    agreed = probs[0].argmax(dim=1) == probs[1].argmax(dim=1) if config.contrastive_pull == "agreed" else None
    distinct = [_filtered_targets(config, num_classes, source, agreed, mdiff) for source in sources]
    stats["reliable_fraction"] = sum(t.reliable.float().mean() for t in distinct) / len(distinct)
    stats["pulled_fraction"] = sum(t.pulled.float().mean() for t in distinct) / len(distinct)
    targets = (distinct[0], distinct[-1])  # one object for both networks unless "cross"
    lam_u, lam_c = loss_weights(config, iteration)
    stats["lambda_u"], stats["lambda_c"] = torch.tensor(lam_u), torch.tensor(lam_c)
    return targets, stats


def network_terms(config: TrainConfig, iteration: int, num_classes: int, labeled_count: int, labels: torch.Tensor,
                  logits: torch.Tensor, features: torch.Tensor, other_probs: torch.Tensor, targets: PseudoTargets,
                  generator: torch.Generator, name: str) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """λu·(L_u + L_reg) + λc·L_c of Eq. 3 as they reach ONE network (``name`` "a" or "b"), with gradient.

    ``logits``/``features`` are this network's over the whole batch, labeled crops first; ``other_probs`` is
    the other network's softmax on the unlabeled crops, a constant here. L_reg depends on both networks, so
    each network's share holds all of it: its gradient with respect to this network is the joint loss's, and
    summing both shares counts L_reg's value twice (:meth:`Ours.step` reports it once).
    """
    n = labeled_count
    reduce = distributed.current().reduce  # sums and counts over the global batch (None: one process)
    logits_u = logits[n:].float()
    zero = logits_u.sum() * 0.0
    lam_u, lam_c = loss_weights(config, iteration)
    stats: Dict[str, torch.Tensor] = {}
    total_u = zero
    if config.use_unsupervised:
        stats[f"unsup_{name}"] = losses.unsupervised_loss(logits_u, targets.pseudo, targets.reliable, num_classes,
                                                                   reduce)
        total_u = total_u + stats[f"unsup_{name}"]
    if config.use_regularization:
        stats["reg"] = losses.regularization_loss(torch.softmax(logits_u, dim=1), other_probs.detach(), targets.mdiff,
                                                  config.regularization_average, reduce)
        total_u = total_u + stats["reg"]
    total_c = zero
    if config.use_contrastive:
        feat = features.float()
        if config.prototypes_from_labeled:  # ground truth is the most reliable label there is
            proto_feat = feat
            proto_labels = torch.cat([labels, targets.pseudo])
            proto_mask = torch.cat([torch.ones_like(labels, dtype=torch.bool), targets.reliable])
        else:
            proto_feat, proto_labels, proto_mask = feat[n:], targets.pseudo, targets.reliable
        prototypes, present = losses.class_prototypes(proto_feat, proto_labels, proto_mask, num_classes, detach=False,
                                                          reduce=reduce)
        stats[f"contrast_{name}"] = losses.contrastive_loss(
            feat[n:], targets.pseudo, targets.pulled, prototypes, present, config.contrastive_temperature,
            config.contrastive_max_voxels, config.prototype_margin, generator, reduce)
        if targets.negatives is not None:
            stats[f"contrast_{name}"] = stats[f"contrast_{name}"] + losses.negative_loss(
                feat[n:], targets.negatives, prototypes, present, config.contrastive_temperature,
                config.contrastive_max_voxels, generator, reduce)
        total_c = stats[f"contrast_{name}"]
    return lam_u * total_u + lam_c * total_c, stats


class Ours(Method):
    network_kinds = ("VNet", "ResVNet")

    def projection_heads(self) -> bool:
        return self.config.use_contrastive and self.config.projection_channels > 0

    def joint_backward(self, trainer) -> bool:
        return not trainer.sequential_backward and uses_unlabeled_terms(self.config) and trainer.unlabeled is not None

    def step(self, trainer, inputs, labels) -> Dict[str, torch.Tensor]:
        """One iteration of Eq. 3.

        With ``sequential_backward`` the networks back-propagate one after the other, so only one network's
        graph is alive at a time: Subnet A first runs without gradient (for the pseudo label and L_reg's other
        half), B runs, computes its loss and back-propagates, then A runs again with gradient from the same
        random state and batch-norm statistics (the same outputs) and back-propagates. Each network's loss
        reaches the other only through constants (the pseudo label, the other softmax), so the gradients are
        the joint loss's.
        """
        config, it, k = self.config, trainer.iteration, trainer.num_classes
        n = labels.shape[0]
        reduce = distributed.current().reduce
        semi = uses_unlabeled_terms(config) and inputs[0].shape[0] > n
        sequential = semi and trainer.sequential_backward
        chooser = trainer.backward_chooser if semi else None
        if chooser is not None:
            chooser.before_step()
        if sequential:
            random_before_a, buffers_a = trainer.dropout_state(), [b.clone() for b in trainer.net_a.buffers()]
            with torch.no_grad():
                logits_a = trainer.forward(0, inputs[0], project=False)[0]
        else:
            logits_a, feat_a = trainer.forward(0, inputs[0])
        logits_b, feat_b = trainer.forward(1, inputs[1])
        sup_a = losses.supervised_loss(logits_a[:n].float(), labels, k, reduce)
        sup_b = losses.supervised_loss(logits_b[:n].float(), labels, k, reduce)
        if not semi:
            loss = sup_a + sup_b
            trainer.backward(loss)
            return {"loss": loss.detach(), "sup_a": sup_a.detach(), "sup_b": sup_b.detach()}
        probs = tuple(torch.softmax(lg[n:].float().detach(), dim=1) for lg in (logits_a, logits_b))
        (targets_a, targets_b), stats = pseudo_targets(config, it, k, probs, (sup_a, sup_b))
        extra_b, stats_b = network_terms(config, it, k, n, labels, logits_b, feat_b, probs[0], targets_b,
                                         trainer.generator, "b")
        if sequential:
            trainer.backward(sup_b + extra_b)
            random_after_b = trainer.dropout_state()
            del logits_b, feat_b  # B's graph is gone; free its outputs before A's graph is built
            trainer.set_dropout_state(random_before_a)
            for saved, buffer in zip(buffers_a, trainer.net_a.buffers()):
                buffer.copy_(saved)
            logits_a, feat_a = trainer.forward(0, inputs[0])
            sup_a = losses.supervised_loss(logits_a[:n].float(), labels, k, reduce)
        extra_a, stats_a = network_terms(config, it, k, n, labels, logits_a, feat_a, probs[1], targets_a,
                                         trainer.generator, "a")
        if sequential:
            trainer.backward(sup_a + extra_a)
            trainer.set_dropout_state(random_after_b)
        else:
            trainer.backward(sup_a + sup_b + extra_a + extra_b)
        stats.update(stats_a)
        stats.update(stats_b)
        if chooser is not None:  # once: every process takes the joint backward only if it fits on all of them
            trainer.sequential_backward = distributed.current().any(not chooser.decide())[0]
            trainer.backward_chooser = None
        loss = (sup_a + sup_b + extra_a + extra_b).detach()  # for the log: the backward passes are done
        if "reg" in stats:  # each network's share holds all of L_reg; the loss counts it once
            loss = loss - loss_weights(config, it)[0] * stats["reg"].detach()
        return {"loss": loss, "sup_a": sup_a.detach(), "sup_b": sup_b.detach(),
                **{key: v.detach() for key, v in stats.items()}}
