"""A CUDA GPU played by the CPU, strict where CUDA is: the engine's CUDA-only paths (the batch thread's device,
pinned memory and asynchronous copies, the joint-backward decision, where the sliding window blends) run on a
machine without a GPU, and what a real GPU would reject or wait for raises here.

* :class:`StandInDevice` is a CUDA device to the engine (``.type == "cuda"``, ``.index``) and the CPU to torch
  (its text is ``"cpu"``, which ``Tensor.to``, ``torch.Generator`` and ``Module.to`` parse).
* :func:`install` replaces the ``torch.cuda`` functions the engine calls. Each resolves its device argument as
  real CUDA does (``torch.cuda._utils._get_device_index``), so ``set_device`` rejects a device without an index
  exactly as on a GPU; the memory figures come from :attr:`CudaStandIn.memory`.
* Host memory pinned on the stand-in becomes :class:`PinnedTensor`; its copy to the stand-in device becomes a
  :class:`DeviceTensor`, and every tensor computed from one is one too. Inside :meth:`CudaStandIn.strict`, a
  device tensor raises :class:`HostSync` on what makes the CPU wait for a GPU: reading a value (``.item()``,
  ``bool``, ``float``, printing), copying to the host, building a tensor from Python data on the device
  (``new_tensor``), data-dependent shapes (``nonzero``, boolean-mask indexing, ``unique``, ``bincount``), and a
  blocking or pageable copy to the device.

Not caught: syncs on tensors computed from the weights alone (they are plain CPU tensors here).
"""

import contextlib
import threading
from typing import Any, Dict, List, Optional

import torch
from torch.cuda._utils import _get_device_index

GB = 1 << 30


class HostSync(RuntimeError):
    """Something in the step that would make the CPU wait for the GPU."""


class StandInDevice(str):
    """``cuda`` (index None, as ``--device cuda`` gives) or ``cuda:N`` for the engine; the CPU for torch."""

    def __new__(cls, index: Optional[int] = None):
        self = super().__new__(cls, "cpu")
        self.type = "cuda"
        self.index = index
        return self

    def __repr__(self) -> str:
        return "StandInDevice(cuda" + ("" if self.index is None else f":{self.index}") + ")"

    def as_cuda(self) -> torch.device:
        return torch.device("cuda") if self.index is None else torch.device("cuda", self.index)


def _as_cuda(device: Any) -> Any:
    return device.as_cuda() if isinstance(device, StandInDevice) else device


_STRICT = threading.local()
#: Host syncs by name: always, or when a condition on the arguments holds.
_SYNCS = {"item", "__bool__", "__float__", "__int__", "__index__", "__complex__", "__repr__", "__format__",
          "tolist", "numpy", "cpu", "new_tensor", "nonzero", "argwhere", "unique", "unique_consecutive", "bincount",
          "masked_select", "is_nonzero", "equal", "allclose"}


def _is_strict() -> bool:
    return getattr(_STRICT, "on", False)


def _bool_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _sync_reason(name: str, args: tuple, kwargs: Dict[str, Any]) -> Optional[str]:
    if name in _SYNCS:
        return name
    if name == "__getitem__" and _bool_index(args[1]):
        return "indexing with a boolean mask (its result's size depends on the data)"
    if name == "__setitem__" and _bool_index(args[1]):
        mask = args[1]
        if not (isinstance(mask, torch.Tensor) and mask.shape == args[0].shape and isinstance(args[2], (int, float))):
            return "assigning through a boolean mask"
    if name == "where" and len(args) + len(kwargs) == 1:
        return "torch.where with a condition only (nonzero)"
    if name == "repeat_interleave" and kwargs.get("output_size") is None:
        return "repeat_interleave without output_size"
    if name == "to" and any(_is_host(a) for a in list(args[1:]) + [kwargs.get("device")]):
        return "a copy to the host"
    return None


def _is_host(device: Any) -> bool:
    if isinstance(device, StandInDevice) or device is None:
        return False
    if isinstance(device, str):
        return device.startswith("cpu")
    return isinstance(device, torch.device) and device.type == "cpu"


class DeviceTensor(torch.Tensor):
    """A tensor on the stand-in GPU: in strict mode, what would wait for the GPU raises :class:`HostSync`."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_strict():
            reason = _sync_reason(getattr(func, "__name__", ""), args, kwargs)
            if reason:
                raise HostSync(f"host sync in the step: {reason}")
        return super().__torch_function__(func, types, args, kwargs)


class PinnedTensor(torch.Tensor):
    """Host memory pinned for the stand-in GPU (the source of an asynchronous copy)."""


class CudaStandIn:
    """The installed stand-in: what the engine asked of CUDA, and the memory figures it answers with."""

    def __init__(self):
        self.memory = {"free": 70 * GB, "reserved": 0, "allocated": 1 * GB, "peak": 3 * GB}
        self.selected: Dict[str, int] = {}  # thread name -> the index it selected
        self.pinned: List[str] = []  # thread names that pinned memory
        self.calls: List[str] = []

    @contextlib.contextmanager
    def strict(self):
        """Host syncs of device tensors raise inside."""
        _STRICT.on = True
        try:
            yield
        finally:
            _STRICT.on = False

    # ---------------------------------------------------------------- torch.cuda, as strict as CUDA
    def _index(self, name: str, device: Any = None, optional: bool = True) -> int:
        self.calls.append(name)
        return _get_device_index(_as_cuda(device), optional=optional)

    def set_device(self, device: Any) -> None:
        self.selected[threading.current_thread().name] = self._index("set_device", device, optional=False)

    def current_device(self) -> int:
        self.calls.append("current_device")
        return 0

    def get_device_capability(self, device: Any = None):
        self._index("get_device_capability", device)
        return (9, 0)

    def mem_get_info(self, device: Any = None):
        self._index("mem_get_info", device)
        return self.memory["free"], 80 * GB

    def memory_figure(self, key: str, name: str):
        def figure(device: Any = None) -> int:
            self._index(name, device)
            return int(self.memory[key])
        return figure

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self._index("reset_peak_memory_stats", device)

    def get_rng_state(self, device: Any = "cuda") -> torch.Tensor:
        self._index("get_rng_state", device)
        return torch.zeros(16, dtype=torch.uint8)  # Philox seed and offset

    def set_rng_state(self, state: torch.Tensor, device: Any = "cuda") -> None:
        self._index("set_rng_state", device)
        if state.numel() != 16:
            raise RuntimeError("a CUDA generator's state is 16 bytes")

    def current_stream(self, device: Any = None):
        self._index("current_stream", device)
        return self  # MONAI waits for the stream at the end of a buffered sliding window

    def synchronize(self, device: Any = None) -> None:
        self._index("synchronize", device)
        if _is_strict():
            raise HostSync("host sync in the step: torch.cuda.synchronize")


def _pin_memory(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if isinstance(tensor, DeviceTensor):
        raise RuntimeError("cannot pin a tensor that lives on the GPU")
    _installed.pinned.append(threading.current_thread().name)
    return tensor.as_subclass(torch.Tensor).clone().as_subclass(PinnedTensor)


def _target(args: tuple, kwargs: Dict[str, Any]) -> Any:
    if "device" in kwargs:
        return kwargs["device"]
    return args[0] if args and isinstance(args[0], (str, torch.device)) else None


def _to(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``Tensor.to``: a copy to the stand-in device from pinned memory with ``non_blocking=True`` is queued;
    any other copy to it waits for the GPU (a sync, raised in strict mode)."""
    if isinstance(tensor, DeviceTensor) or not isinstance(_target(args, kwargs), StandInDevice):
        return _ORIGINAL_TO(tensor, *args, **kwargs)
    non_blocking = kwargs.get("non_blocking", len(args) > 2 and bool(args[2]))
    if _is_strict() and not (isinstance(tensor, PinnedTensor) and non_blocking):
        raise HostSync("host sync in the step: a copy to the GPU from " + (
            "pinned memory without non_blocking=True" if isinstance(tensor, PinnedTensor) else "pageable memory"))
    copy = _ORIGINAL_TO(tensor.as_subclass(torch.Tensor), *args, **kwargs)
    return copy.clone().as_subclass(DeviceTensor) if isinstance(tensor, PinnedTensor) else copy


_ORIGINAL_TO = torch.Tensor.to
_installed = CudaStandIn()


def install(monkeypatch) -> CudaStandIn:
    """Replaces the CUDA functions (for one test: ``monkeypatch`` undoes it) and returns the stand-in."""
    global _installed
    _installed = stand_in = CudaStandIn()
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # asked by torch.autocast
    for name in ("set_device", "current_device", "get_device_capability", "mem_get_info", "reset_peak_memory_stats",
                 "get_rng_state", "set_rng_state", "current_stream", "synchronize"):
        monkeypatch.setattr(cuda, name, getattr(stand_in, name))
    for name, key in (("memory_allocated", "allocated"), ("max_memory_allocated", "peak"),
                      ("memory_reserved", "reserved")):
        monkeypatch.setattr(cuda, name, stand_in.memory_figure(key, name))
    monkeypatch.setattr(cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.Tensor, "pin_memory", _pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", _to)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored after
    return stand_in
