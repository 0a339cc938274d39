"""Device choice and mixed precision: cuda > mps > cpu; bf16/fp16 autocast where the hardware has it."""

import contextlib
import ctypes
import sys
from typing import Optional

import torch

from .errors import InputError

DEVICES = ("auto", "cuda", "mps", "cpu")


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; an unavailable explicit choice is an error."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise InputError(f"Device {name!r} is not one of {', '.join(DEVICES)}.")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name.startswith("cuda") and not cuda:
        raise InputError("Device 'cuda' was asked for, but this PyTorch sees no CUDA GPU; use --device cpu "
                         "or install a CUDA build of PyTorch.")
    if name == "mps" and not mps:
        raise InputError("Device 'mps' was asked for, but this machine has no Apple MPS device; use --device cpu.")
    return torch.device(name)


def autocast_dtype(device: torch.device, enabled: bool = True, training: bool = False) -> Optional[torch.dtype]:
    """bf16 on CUDA GPUs that support it (else fp16), and on CPUs with native bf16 for inference; None: fp32.

    CPU training stays fp32: with bf16 autocast the dual-network step produced NaN weights within ten
    iterations on the demo (torch 2.13, AVX512-bf16), while fp32 trained normally.
    """
    if not enabled or (training and device.type == "cpu"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        try:
            return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
        except (AttributeError, RuntimeError):
            return None
    return None


def memory_format(device: torch.device) -> torch.memory_format:
    """Channels-last 3D on CPUs, where oneDNN's convolutions run faster on it (about 1.4× for a training
    step, docs/performance.md "Training step"); PyTorch's default elsewhere (untested on GPUs)."""
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def keep_freed_memory() -> bool:
    """Asks glibc's malloc to keep freed memory for the next allocation instead of giving it back.

    PyTorch takes CPU tensors straight from malloc. glibc serves blocks above 32 MiB with fresh pages from
    mmap and unmaps them on free, so each of a training step's large tensors page-faults its whole size in
    again, every step (docs/performance.md "Training step": 37.5 s → 23.4 s a paper-scale step). With mmap and trimming off,
    a block freed in one step is reused by the next. For the engine's own processes (the command line):
    memory is not given back to the system until the process ends. Returns whether glibc took the settings.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    # A trim threshold of -1 turns trimming off (mallopt(3)).
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, -1))

