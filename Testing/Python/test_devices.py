"""Process-level settings of the engine (SemiSupSegTraining.devices)."""

import ctypes
import subprocess
import sys

import pytest
import torch

from SemiSupSegTraining.devices import memory_format

# Runs in a child: the setting is process-wide. Allocates and frees 64 MiB, then reads glibc's counters.
_CHILD = """
import ctypes, sys
from SemiSupSegTraining.devices import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
took = keep_freed_memory() if sys.argv[1] == "keep" else None
block = bytearray(64 << 20)
mapped = libc.mallinfo2().hblkhd
del block
print(took, mapped >= 64 << 20, libc.mallinfo2().fordblks >= 64 << 20)
"""


def _glibc_with_mallinfo2() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc 2.33 or newer")
@pytest.mark.parametrize("mode", ["keep", "default"])
def test_keep_freed_memory_keeps_large_blocks_for_reuse(mode):
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True).stdout
    took, mapped, kept = out.split()
    if mode == "keep":
        # served from the heap, not mmap, and still there to reuse after free
        assert (took, mapped, kept) == ("True", "False", "True")
    else:  # glibc's default, which the setting changes: a fresh mapping, unmapped on free
        assert (mapped, kept) == ("True", "False")


def test_channels_last_on_cpu_only():
    assert memory_format(torch.device("cpu")) == torch.channels_last_3d
    assert memory_format(torch.device("cuda")) == torch.contiguous_format
