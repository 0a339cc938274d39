"""One training step on fixed crops, for test_distributed's equivalence test.

``python distributed_step.py OUT METHOD[@64]...`` takes the whole global batch (2 labeled + 2 unlabeled crops) in
one process; under ``torchrun --nproc-per-node 2`` each process takes its share (1 + 1, in rank order).
Rank 0 saves the weights before and after the step of each method into OUT.

Batch norm's statistics are frozen (eval mode): torch's SyncBatchNorm runs on GPUs only, so on CPUs each
process normalises with its own crops, which no choice of ours can make equal to the global batch. Dropout
is off and each network sees the crops as they are (no intensity views), so that the crops are the same.
"""

import contextlib
import sys

import torch

from SemiSupSegTraining import distributed
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.train import Trainer

GLOBAL_LABELED = GLOBAL_UNLABELED = 2


def crops():
    g = torch.Generator().manual_seed(7)
    images = torch.rand(GLOBAL_LABELED + GLOBAL_UNLABELED, 1, 16, 32, 32, generator=g)
    smooth = torch.nn.functional.avg_pool3d(images[:GLOBAL_LABELED], 5, stride=1, padding=2)
    return images, (smooth[:, 0] > 0.5).to(torch.int64)


def freeze_batchnorm(module):
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.train = lambda mode=True, m=m: m  # the step's net.train() leaves them in eval mode


def one_step(method, group):
    share_l, share_u = GLOBAL_LABELED // group.world_size, GLOBAL_UNLABELED // group.world_size
    config = preset_config("tiny", {
        "method": method, "device": "cpu", "amp": False, "dropout": 0.0, "unlabeled_views": False,
        "batch_labeled": share_l, "batch_unlabeled": share_u, "contrastive_max_voxels": 1 << 20,
        # strong unlabeled terms from the first iteration, so that they weigh in the step
        "lambda_u_rampup": 0.0, "lambda_c_schedule": "printed"})
    trainer = Trainer(config, 2, [], [], torch.device("cpu"))
    for module in list(trainer.networks()) + list(trainer.projectors or []):
        freeze_batchnorm(module)
    images, labels = crops()
    r = group.rank
    mine = torch.cat([images[r * share_l:(r + 1) * share_l],
                      images[GLOBAL_LABELED + r * share_u:GLOBAL_LABELED + (r + 1) * share_u]])
    batch = (mine, labels[r * share_l:(r + 1) * share_l])
    trainer.next_batch = lambda: batch
    trained = list(trainer.networks()) + list(trainer.projectors or [])
    before = {f"{i}.{k}": v.clone() for i, m in enumerate(trained) for k, v in m.state_dict().items()}
    terms = trainer.step()
    after = {f"{i}.{k}": v.clone() for i, m in enumerate(trained) for k, v in m.state_dict().items()}
    return {"before": before, "after": after, "loss": float(terms["loss"])}


@contextlib.contextmanager
def in_float64():
    """Everything in float64 (the engine's ``.float()`` casts leave float64 alone): the comparison then shows
    the arithmetic, not fp32 rounding, which the L2 normalisation of small projected features amplifies
    (the order of a sum alone moves a projection head's bias gradient by several %)."""
    to_float = torch.Tensor.float
    torch.set_default_dtype(torch.float64)
    torch.Tensor.float = lambda self, *args, **kwargs: self if self.dtype == torch.float64 else \
        to_float(self, *args, **kwargs)
    try:
        yield
    finally:
        torch.Tensor.float = to_float
        torch.set_default_dtype(torch.float32)


def main(out, runs):
    """``runs``: method names, each optionally with "@64" (in float64)."""
    torch.set_num_threads(1)
    results = {}
    with distributed.session() as group:
        for run in runs:
            method, _, bits = run.partition("@")
            with in_float64() if bits == "64" else contextlib.nullcontext():
                results[run] = one_step(method, group)
        if group.is_main:
            torch.save(results, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
