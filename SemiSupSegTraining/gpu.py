"""Keeping a CUDA GPU busy: the decisions taken from its memory figures, and the CUDA settings.

The decisions are pure functions of numbers (tested on the CPU with tables of figures); the few functions
that read a GPU's figures are thin and only run on CUDA. Nothing here changes what a CPU computes.
"""

from typing import Callable, Optional, Tuple

import torch

#: Memory kept free beyond the estimate, for fragmentation and cuDNN's workspaces.
MARGIN = 0.2


def joint_backward_fits(sequential_peak: int, static: int, free: int, reserved: int, margin: float = MARGIN) -> bool:
    """Whether the joint backward (both networks' graphs alive at once) fits, from the first step's figures
    with the sequential backward: its peak allocation ``sequential_peak`` and the allocation before it
    ``static`` (weights, optimiser state), the device's ``free`` bytes and what torch's cache ``reserved``
    (reusable by this process). The joint step holds at most both graphs where the sequential one holds the
    larger of the two, so its need is at most ``static + 2 × (sequential_peak − static)``; the answer is yes
    when that need, plus ``margin`` of it, fits what this process can allocate (``free + reserved``)."""
    need = static + 2 * max(sequential_peak - static, 0)
    return need * (1.0 + margin) <= free + reserved


def blend_on_device_fits(volume_voxels: int, channels: int, free: int, window_need: int,
                         margin: float = MARGIN) -> bool:
    """Whether the sliding window's blended output can live on the GPU: ``channels`` float32 output volumes,
    MONAI's count map and the input volume (``channels + 2`` float32 values a voxel), beside ``window_need``
    bytes for one batch of windows, within ``free`` bytes with ``margin`` to spare. Otherwise the output
    stays in host memory and MONAI buffers several window batches on the GPU before each copy
    (``buffer_steps``)."""
    need = volume_voxels * (channels + 2) * 4 + window_need
    return need * (1.0 + margin) <= free


def window_memory_estimate(window_voxels: int, window_batch: int, base_filters: int = 16) -> int:
    """A generous bound on one window batch's working memory in inference: the widest full-resolution
    activations (a few of ``base_filters`` float32 channels alive at once) and both networks' outputs."""
    return window_batch * window_voxels * 4 * (6 * base_filters + 8)


def memory_figures(device: torch.device) -> Tuple[int, int, int]:
    """(free bytes on the device, bytes torch's cache reserves, bytes torch has allocated) of a CUDA device."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free), int(torch.cuda.memory_reserved(device)), int(torch.cuda.memory_allocated(device))


def configure_cuda(device: torch.device, cudnn_benchmark: bool = True) -> None:
    """cuDNN's autotuner for the fixed crop and window shapes (typically 1.2-2× for 3D convolutions; one slow
    first step while it tries the kernels). Process-wide, so only set for a CUDA device."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark)


def thread_device_setup(device: torch.device) -> Optional[Callable[[], None]]:
    """For a thread that touches CUDA (pinning host memory): selects ``device`` on it, so that the thread does
    not open a context on GPU 0. ``torch.cuda.set_device`` wants an index and rejects a bare ``cuda``, which
    means the device current here, where the thread is created. None for other devices."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return lambda: torch.cuda.set_device(index)


class BackwardChooser:
    """``sequential_backward=auto`` on CUDA: the first step runs sequentially while this measures its peak;
    :meth:`decide` then answers whether the joint backward fits (:func:`joint_backward_fits`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.static: Optional[int] = None

    def before_step(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)
        self.static = int(torch.cuda.memory_allocated(self.device))

    def decide(self) -> bool:
        """True: the joint backward fits this card."""
        peak = int(torch.cuda.max_memory_allocated(self.device))
        free, reserved, _ = memory_figures(self.device)
        return joint_backward_fits(peak, self.static or 0, free, reserved)
