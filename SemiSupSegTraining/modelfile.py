"""The model file: both networks' weights plus the metadata needed to use them on a new scan.

A model file is a ``torch.save`` of plain data (tensors, numbers, strings, lists, dicts) and is always
read with ``torch.load(..., weights_only=True)``: a file from a stranger cannot run code when loaded.
"""

import os
import platform
from typing import Any, Dict, Tuple

import torch

from . import __version__
from .errors import InputError
from .manifest import ClassInfo

MODEL_FORMAT = "semisupseg-model"
MODEL_FORMAT_VERSION = 1


def save_atomic(payload: Dict[str, Any], path: str) -> str:
    """``torch.save`` to a temporary name in the same folder, then rename: never a half-written file."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.partial{os.getpid()}"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_trusted_data(path: str, what: str = "model file") -> Dict[str, Any]:
    """Loads a torch file with ``weights_only=True``; unreadable, truncated or code-carrying files are refused."""
    if not os.path.isfile(path):
        raise InputError(f"The {what} {path} does not exist; check the path.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or unsafe files
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            reason = "it holds Python objects that could run code, which SemiSupSeg never loads"
        else:
            reason = "it is truncated or not a SemiSupSeg file"
        raise InputError(f"The {what} {path} cannot be loaded: {reason}; use a model file written by "
                         f"'semisupseg train'.") from None
    if not isinstance(data, dict):
        raise InputError(f"The {what} {path} is not a SemiSupSeg {what}; use one written by 'semisupseg train'.")
    return data


def save_model(path: str, weights_a: Dict[str, torch.Tensor], weights_b: Dict[str, torch.Tensor],
               metadata: Dict[str, Any]) -> str:
    meta = dict(metadata)
    meta.update({"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "engine_version": __version__,
                 "torch_version": str(torch.__version__), "python_version": platform.python_version()})
    weights = {k: {n: t.detach().cpu() for n, t in w.items()} for k, w in (("a", weights_a), ("b", weights_b))}
    return save_atomic({"metadata": meta, "weights_a": weights["a"], "weights_b": weights["b"]}, path)


def _check_metadata(meta: Any, path: str) -> Dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise InputError(f"The model file {path} is not a SemiSupSeg model file; use one written by "
                         f"'semisupseg train'.")
    version = meta.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise InputError(f"The model file {path} has format version {version} (engine "
                         f"{meta.get('engine_version', 'unknown')}), but this engine ({__version__}) reads "
                         f"version {MODEL_FORMAT_VERSION}; retrain the model or use the matching SemiSupSeg.")
    for key in ("classes", "networks", "normalization", "patch_size"):
        if key not in meta:
            raise InputError(f"The model file {path} lacks its '{key}' metadata; it is damaged, retrain it.")
    return meta


def read_metadata(path: str) -> Dict[str, Any]:
    """The model file's metadata (classes, normalisation, patch size, preset, versions...)."""
    return _check_metadata(load_trusted_data(path).get("metadata"), path)


def load_model(path: str, device: str = "cpu") -> Tuple[torch.nn.Module, torch.nn.Module, Dict[str, Any]]:
    """Both networks in eval mode on ``device``, and the metadata."""
    from .networks import build_networks

    data = load_trusted_data(path)
    meta = _check_metadata(data.get("metadata"), path)
    net = meta["networks"]
    net_a, net_b = build_networks(len(meta["classes"]), net["base_filters"], tuple(net["resnet_blocks"]),
                                  dropout=0.0, in_channels=net.get("in_channels", 1))
    try:
        net_a.load_state_dict(data["weights_a"])
        net_b.load_state_dict(data["weights_b"])
    except (KeyError, RuntimeError, TypeError):
        raise InputError(f"The model file {path} has weights that do not fit its own network description; "
                         f"it is damaged, retrain it.") from None
    return net_a.to(device).eval(), net_b.to(device).eval(), meta


def classes_of(meta: Dict[str, Any]):
    return [ClassInfo(c["value"], c["name"], c.get("color")) for c in meta["classes"]]
