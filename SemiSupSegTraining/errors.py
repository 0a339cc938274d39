"""Errors that end a command with one sentence for the user instead of a traceback."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
#: Training was cancelled (SIGINT/SIGTERM) after writing a checkpoint; resume with ``--resume``.
EXIT_CANCELLED = 3


class InputError(Exception):
    """Bad user input: the message is one sentence naming the file, what is wrong and what to do."""


class Cancelled(Exception):
    """The user asked to stop (signal or cancel callback)."""


class DistributedError(Exception):
    """Another process of a distributed training died or stopped answering, or the group could not start."""


#: How torch's RuntimeErrors say that memory ran out: CUDA's and MPS's allocators, the CPU's, and cuDNN's or
#: cuBLAS's own allocations (a workspace or a handle on a full GPU), which are not OutOfMemoryErrors.
OUT_OF_MEMORY_TEXTS = ("out of memory", "can't allocate memory", "cudnn_status_alloc_failed",
                       "cublas_status_alloc_failed", "cufft_alloc_failed", "cusolver_status_alloc_failed")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says that a device ran out of memory (CUDA, MPS, cuDNN, cuBLAS, or a CPU allocation
    torch refused).

    Checked by name and message so that this module needs no torch import.
    """
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(t in text for t in OUT_OF_MEMORY_TEXTS)
