"""What a training method is to the trainer: :class:`Method`, and the part of the trainer a method may
use, :class:`TrainerView`.

The trainer (``train.py``) owns the loop: the learning rate, the batch (labeled crops first, then the
unlabeled ones, each network with its own intensity view of those), the optimiser steps, mixed precision,
checkpoints and the processes of a torchrun. A method says which two networks it has, which of them an
optimiser trains and which segment, whether it needs unlabeled crops, and computes one iteration's losses
and back-propagates them through :class:`TrainerView`.
"""

from typing import Any, Dict, Protocol, Sequence, Tuple

import torch


class TrainerView(Protocol):
    """The trainer as a method sees it (``train.Trainer`` is one). Nothing else of the trainer is a method's."""

    config: Any                     # the TrainConfig
    num_classes: int
    iteration: int                  # the iteration being trained (0-based); after the step, the steps done
    generator: torch.Generator      # the device generator every method's own draws come from
    net_a: torch.nn.Module          # network a (the student of a teacher method)
    net_b: torch.nn.Module          # network b (the teacher of a teacher method)
    #: Back-propagate one network at a time (the ``sequential_backward`` setting, once decided)
    sequential_backward: bool
    unlabeled: Any                  # the unlabeled crops' sampler; None when the batch holds none
    backward_chooser: Any           # gpu.BackwardChooser on the first CUDA step of "auto", else None

    def forward(self, index: int, images: torch.Tensor, project: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) of network ``index`` (0: a, 1: b) under the run's precision (through DDP when
        several processes train); the features through its projection head when it has one and ``project``."""

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagates ``loss`` (scaled for fp16)."""

    def dropout_state(self) -> Any:
        """The generators dropout draws from, to replay a forward pass exactly."""

    def set_dropout_state(self, state: Any) -> None:
        """Takes back :meth:`dropout_state`'s generators."""

    def restart_optimizer(self, index: int = 0) -> None:
        """Forgets the momentum of optimiser ``index`` (as a new optimiser would start)."""


class Method:
    """One training method. Subclass it in a file of this package and add one line to ``REGISTRY``.

    Class attributes say what the trainer builds and how it runs the method; :meth:`step` is the method.
    """

    #: The networks a and b, by ``networks.build_networks``' names ("VNet", "ResVNet"): the model file's too.
    network_kinds: Tuple[str, str] = ("VNet", "VNet")
    #: The networks an optimiser trains (0: a, 1: b); one that is not follows by :meth:`after_step` (a teacher).
    #: Under torchrun only these are wrapped in DistributedDataParallel.
    trained_networks: Tuple[int, ...] = (0, 1)
    #: Whether the networks drop out their last decoder features too, as the authors' V-Net (the setting
    #: ``decoder_dropout`` overrides it).
    decoder_dropout: bool = False
    #: The crops' augmentation level when the setting ``augmentation`` is None (docs/benchmarks.md's rule).
    augmentation: str = "paper"
    #: Whether the batch holds unlabeled crops (``batch_unlabeled`` of them) after the labeled ones.
    uses_unlabeled: bool = True

    def __init__(self, config):
        self.config = config

    @classmethod
    def check(cls, config) -> None:
        """Raises ``InputError`` (one sentence) for settings this method cannot train with."""

    def inference_networks(self) -> str:
        """Which network(s) segment: "a", "b" or "both" (their softmax averaged)."""
        return "both"

    def projection_heads(self) -> bool:
        """Whether each trained network gets a projection head (trained with it, not in the model file)."""
        return False

    def step(self, trainer: TrainerView, inputs: Sequence[torch.Tensor], labels: torch.Tensor
             ) -> Dict[str, torch.Tensor]:
        """One iteration's losses, back-propagated through ``trainer.backward``; returns them as 0-dim tensors
        ("loss" first; logged). ``inputs``: the batch as networks a and b see it, labeled crops first (the same
        for both), then each network's view of the unlabeled crops; ``labels``: the labeled crops' labels.
        The trainer then steps the optimisers and calls :meth:`after_step`."""
        raise NotImplementedError

    def after_step(self, trainer: TrainerView) -> None:
        """After the optimiser step (``trainer.iteration`` counts it): e.g. a teacher's EMA update."""

    def state(self) -> Dict[str, Any]:
        """What a checkpoint must hold beyond the networks, optimisers and random states for an exact resume."""
        return {}

    def load_state(self, state: Dict[str, Any]) -> None:
        """Takes back :meth:`state`."""

    def joint_backward(self, trainer: TrainerView) -> bool:
        """Whether this step holds both networks' graphs at once where ``sequential_backward`` would hold one
        (an out-of-memory message then suggests it)."""
        return False

