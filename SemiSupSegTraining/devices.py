"""Device choice and mixed precision: cuda > mps > cpu; bf16/fp16 autocast where the hardware has it."""

import contextlib
import ctypes
import sys
from typing import Any, Optional, Tuple

import torch

from .config import amp_choice
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


def precision_for(device_type: str, capability: Optional[Tuple[int, int]] = None, training: bool = False,
                  cpu_bf16: bool = False) -> str:
    """The precision ``auto`` picks: ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    CUDA by the chosen GPU's compute capability: bf16 from 8.0 (Ampere; cuDNN has no bf16 convolutions
    below, and ``torch.cuda.is_bf16_supported()`` says True there too), fp16 with the gradient scaler on
    7.x (Volta, Turing: tensor cores), fp32 below (Pascal has no fp16 speed to gain). The CPU: bf16 for
    inference where oneDNN has native bf16 (``cpu_bf16``); training stays fp32 (with bf16 autocast the
    dual-network step produced NaN weights within ten iterations on the demo, torch 2.13, AVX512-bf16).
    MPS and others: fp32.
    """
    if device_type == "cuda":
        major = capability[0] if capability else 0
        return "bf16" if major >= 8 else "fp16" if major == 7 else "fp32"
    if device_type == "cpu" and not training and cpu_bf16:
        return "bf16"
    return "fp32"


def cuda_capability(device: torch.device) -> Optional[Tuple[int, int]]:
    """The compute capability of ``device`` itself (``cuda:1`` asks GPU 1, not the current one)."""
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, enabled: Any = True, training: bool = False) -> Optional[torch.dtype]:
    """The autocast dtype for ``device`` (None: fp32). ``enabled`` is the ``amp`` setting (:func:`amp_choice`):
    ``auto`` chooses by :func:`precision_for`; an explicit precision is taken as given, except fp16 outside
    CUDA (no gradient scaler there)."""
    choice = amp_choice(enabled)
    if choice == "auto":
        choice = precision_for(device.type, cuda_capability(device), training,
                               device.type == "cpu" and not training and _cpu_has_bf16())
    if choice == "fp16" and device.type != "cuda":
        raise InputError(f"amp=fp16 needs a CUDA GPU (the gradient scaler runs there); on {device} use amp=bf16, "
                         f"fp32 or auto.")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[choice]


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` (None) for messages and records."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


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

