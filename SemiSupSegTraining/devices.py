"""Device choice and mixed precision: cuda > mps > cpu; bf16/fp16 autocast where the hardware has it."""

import contextlib
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


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
