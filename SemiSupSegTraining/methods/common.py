"""Pieces several methods share: the sigmoid ramp-up of the authors' codes and a teacher's EMA update."""

import math

import torch


def sigmoid_rampup(iteration: int, length: int) -> float:
    """exp(−5 (1 − t/T)²) with t clipped to [0, T]: 0.0067 at t = 0, 1 from t = T on; 1 when T ≤ 0."""
    if length <= 0:
        return 1.0
    ratio = min(max(float(iteration), 0.0), float(length)) / float(length)
    return float(math.exp(-5.0 * (1.0 - ratio) ** 2))


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """teacher ← decay·teacher + (1 − decay)·student for every parameter, as the authors' code does; the
    teacher's batch-norm statistics are its own (its forward passes in training mode update them)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
