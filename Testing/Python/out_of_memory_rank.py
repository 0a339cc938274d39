"""``torchrun ... out_of_memory_rank.py ARGS``: the command line (``semisupseg ARGS``) with process 1 running out
of memory at its third step, for test_gpu_ready's test that the other process is told at once."""

import os
import sys

import torch

from SemiSupSegTraining import train
from SemiSupSegTraining.cli import main

_step = train.Trainer.step


def _failing_step(trainer):
    if os.environ.get("RANK") == "1" and trainer.iteration == 2:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
    return _step(trainer)


train.Trainer.step = _failing_step
sys.exit(main(sys.argv[1:]))
