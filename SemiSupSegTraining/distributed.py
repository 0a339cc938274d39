"""Training on several processes (GPUs, machines) with torch.distributed, as started by ``torchrun``.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (and the rendezvous address); :func:`session`
reads them, starts the process group (nccl on GPUs, gloo on CPUs) and makes the :class:`Context` that the
trainer asks for with :func:`current`. Without those variables (or with one process) everything here is a
no-op, so a single-process training runs exactly the code it ran before.

Which quantities of the method are global (over every process's crops) and which stay per process is
decided here and in :mod:`.train`; docs/distributed.md lists them.
"""

import contextlib
import datetime
import os
import re
import socket
import time
import warnings
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.distributed as dist

from .errors import Cancelled, DistributedError

#: Seconds a process waits for the others in one collective before it gives up with one sentence (a dead
#: or stuck process must not hang the job); ``SEMISUPSEG_DIST_TIMEOUT_S`` changes it.
DEFAULT_TIMEOUT_S = 300.0


class Context:
    """The processes of one training: this one's rank, their number, and the collectives the method needs.

    ``reduce`` is None in a single process; in a distributed one it is a differentiable sum over the
    processes, which the losses apply to their sums and counts (:mod:`.losses`, argument ``reduce``): every
    process then computes the loss of the global batch, and DDP's gradient average makes the step that of
    one process with the global batch.
    """

    def __init__(self, rank: int = 0, local_rank: int = 0, world_size: int = 1, group: Any = None):
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        # The method's own collectives run on a group of their own, never interleaved with DDP's buckets.
        self.group = group
        self.reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = self._sum if world_size > 1 else None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the log, the progress events, checkpoints and the model file."""
        return self.rank == 0

    def _sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return _GlobalSum.apply(tensor, self.group)

    def on_global_batch(self, function: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        """``function`` applied to the global batch (every process's ``tensors`` concatenated along dim 0, in
        rank order); returns this process's part. For the entropy percentile, a rank statistic of the whole
        batch. No gradient."""
        if not self.enabled:
            return function(*tensors)
        gathered = []
        for t in tensors:
            parts = [torch.empty_like(t) for _ in range(self.world_size)]
            dist.all_gather(parts, t.detach().contiguous(), group=self.group)
            gathered.append(torch.cat(parts))
        size = tensors[0].shape[0]
        return function(*gathered)[self.rank * size:(self.rank + 1) * size]

    def any(self, *flags: bool) -> List[bool]:
        """Each flag set on ANY process (the stop request, a due checkpoint): every process gets the same
        answer, so all of them stop or checkpoint at the same iteration boundary."""
        if not self.enabled:
            return list(flags)
        values = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=self._device())
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.group)
        return [bool(v) for v in values.tolist()]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (a picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group, device=self._device())
        return box[0]

    def gather(self, value: Any) -> List[Any]:
        """Every process's ``value`` (a picklable object), in rank order, on every process."""
        if not self.enabled:
            return [value]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.group)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.group)

    @staticmethod
    def _device() -> torch.device:
        return torch.device("cpu")  # small messages: gloo carries them whatever the training device

    def replicate(self, module: torch.nn.Module, device: torch.device, sync_batchnorm: bool,
                  find_unused_parameters: bool = False) -> torch.nn.Module:
        """``module`` wrapped for gradient averaging (DDP), with synchronised batch norm where asked and
        where torch has it (GPUs); the module itself as it is in a single process.

        DDP keeps the module's own parameters, so the caller keeps using the bare module for state dicts
        (the model file and checkpoints have a single process's format) and calls the returned one for
        forward passes. Buffers (batch norm's running statistics) are broadcast from rank 0 before every
        forward pass, so that all processes save and restore the same ones.
        """
        if not self.enabled:
            return module
        if sync_batchnorm and device.type == "cuda":
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group=self.group)
        ids = [device.index] if device.type == "cuda" else None
        # Channels-last 1×1×1 kernels have two equally valid stride layouts; DDP warns about it, harmlessly.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                                         find_unused_parameters=find_unused_parameters)


class _GlobalSum(torch.autograd.Function):
    """Sum over the processes whose backward sums the gradients over the processes too (the role of
    torch.distributed.nn.functional.all_reduce, which torch 2.13 deprecates without a differentiable
    replacement). Every process's loss is then the global loss, and DDP's average of the gradients comes
    out as the global loss's gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


_current = Context()


def current() -> Context:
    """The running training's processes (a world of one outside :func:`session`)."""
    return _current


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def training_device(setting: str) -> str:
    """The device of this process: ``LOCAL_RANK`` picks the GPU of a node; a CPU setting stays the CPU."""
    if not launched_by_torchrun():
        return setting
    wants_gpu = setting.startswith("cuda") or (setting == "auto" and torch.cuda.is_available())
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if wants_gpu else "cpu"


@contextlib.contextmanager
def session():
    """Starts the process group when launched by torchrun (gloo for CPU tensors, nccl for GPU tensors where
    there are GPUs: the device is only known once rank 0 has read the settings), yields the
    :class:`Context`, and ends the group; a single process gets a world of one and starts nothing."""
    global _current
    if not launched_by_torchrun():
        yield _current
        return
    if dist.is_initialized():  # a script that started its own group: use it, and leave it to the script
        _current = Context(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size(),
                           dist.new_group())
        try:
            yield _current
        finally:
            _current = Context()
        return
    timeout = datetime.timedelta(seconds=float(os.environ.get("SEMISUPSEG_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=timeout)
        group = dist.new_group(timeout=timeout)  # the default group's backends
    except Exception as e:  # a rendezvous that never completes, an unreachable master
        raise DistributedError(f"Cannot start the distributed training ({_reason(e)}); check that every "
                               f"process was started with the same torchrun rendezvous settings.") from None
    _current = Context(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size(), group)
    main_process = _current.broadcast((socket.gethostname(), os.getpid()))
    cancelled = False
    try:
        yield _current
    except Cancelled:
        cancelled = True
        raise
    finally:
        rank = _current.rank
        _current = Context()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        if cancelled and rank:
            _outlive(main_process)


def _outlive(main_process: Tuple[str, int], timeout_s: float = 60.0) -> None:
    """After a cancel, the other processes of rank 0's machine end after rank 0: torchrun terminates the
    workers that are still running once one has ended with a non-zero code (3), and rank 0, the last to
    finish (it writes the checkpoint and the events), would then end by SIGTERM instead of with code 3."""
    host, pid = main_process
    if host != socket.gethostname():
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:  # gone (ProcessLookupError) or not ours to signal: nothing left to wait for
            return
        time.sleep(0.05)


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another process died or stopped answering."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("connection closed", "connection reset", "timed out", "timeout", "broken pipe",
                                  "gloo", "nccl"))


def peer_failure(context: Context, error: BaseException) -> DistributedError:
    return DistributedError(
        f"Process {context.rank} of {context.world_size}: another process of the distributed training died or "
        f"stopped answering ({_reason(error)}); every process stops, and the last checkpoint is kept for "
        f"'--resume'.")


def _reason(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else type(error).__name__  # gloo's "[file.cc:537]"
    return text if len(text) <= 160 else text[:157] + "..."

