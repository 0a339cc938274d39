"""The model file: both networks' weights plus the metadata needed to use them on a new scan.

A model file is a ``torch.save`` of plain data (tensors, numbers, strings, lists, dicts) and is always
read with ``torch.load(..., weights_only=True)``: a file from a stranger cannot run code when loaded.
"""

import os
import pickle
import platform
import warnings
from typing import Any, Dict, Optional, Tuple

import torch

from . import __version__
from .atomicio import atomic_write
from .errors import InputError
from .manifest import ClassInfo
from .modelinfo import classes_problem, is_int, write_metadata
from .networks import NETWORK_KINDS

MODEL_FORMAT = "semisupseg-model"
MODEL_FORMAT_VERSION = 1
INFERENCE_CHOICES = ("a", "b", "both")  # which network(s) segment (metadata "inference")


def save_atomic(payload: Dict[str, Any], path: str, previous: Optional[str] = None) -> str:
    """``torch.save`` to ``path`` atomically (:func:`.atomicio.atomic_write`: a temporary name, fsync, rename):
    a reader (or a machine that loses power) sees the old file or the new one, never a half-written one.
    ``previous``: the current file is first renamed to this name."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)

    return atomic_write(path, write, previous)


def load_trusted_data(path: str, what: str = "model file") -> Dict[str, Any]:
    """Loads a torch file with ``weights_only=True``: tensors and plain data only, never code.

    Missing, empty, truncated, foreign or code-carrying files raise :class:`InputError` with one sentence
    naming the file. A pickle that would call a function (``os.system``...) is refused by torch's
    restricted unpickler before anything runs.
    """
    if not os.path.isfile(path):
        raise InputError(f"The {what} {path} does not exist; check the path.")
    advice = ("use a model file written by 'semisupseg train'" if what == "model file" else
              "start a new training" if what == "checkpoint" else "use a file written by SemiSupSeg")
    if os.path.getsize(path) == 0:
        raise InputError(f"The {what} {path} is empty (0 bytes); {advice}.")
    try:
        with warnings.catch_warnings():  # e.g. torch's "Detected pickle protocol 4": the refusal says enough
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or unsafe files
        text = str(e)
        if isinstance(e, pickle.UnpicklingError) and any(
                word in text for word in ("weights_only", "Weights only", "global", "GLOBAL", "REDUCE")):
            reason = "it holds Python objects that could run code, which SemiSupSeg never loads"
        else:
            reason = "it is truncated, damaged or not a SemiSupSeg file"
        raise InputError(f"The {what} {path} cannot be loaded: {reason}; {advice}.") from None
    if not isinstance(data, dict):
        raise InputError(f"The {what} {path} is not a SemiSupSeg {what}; {advice}.")
    return data


def save_model(path: str, weights_a: Dict[str, torch.Tensor], weights_b: Dict[str, torch.Tensor],
               metadata: Dict[str, Any]) -> str:
    meta = dict(metadata)
    meta.update({"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "engine_version": __version__,
                 "torch_version": str(torch.__version__), "python_version": platform.python_version()})
    weights = {k: {n: t.detach().cpu() for n, t in w.items()} for k, w in (("a", weights_a), ("b", weights_b))}
    path = save_atomic({"metadata": meta, "weights_a": weights["a"], "weights_b": weights["b"]}, path)
    write_metadata(path, meta)  # model.json beside it: the Slicer module reads it without torch
    return path


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
    problem = _metadata_problem(meta)
    if problem:
        raise InputError(f"The model file {path} has invalid metadata ({problem}); it is damaged, retrain it.")
    return meta


def _metadata_problem(meta: Dict[str, Any]) -> str:
    """What is wrong with the fields that size the networks and read the image, or ''. A file from a stranger
    could otherwise ask for networks of absurd size or crash the engine with a wrong type."""
    problem = classes_problem(meta["classes"])
    if problem:
        return problem
    net = meta["networks"]
    blocks = net.get("resnet_blocks") if isinstance(net, dict) else None
    if not isinstance(net, dict) or not is_int(net.get("base_filters"), 1, 256) or not (
            isinstance(blocks, (list, tuple)) and len(blocks) == 4 and all(is_int(b, 1, 64) for b in blocks)) \
            or not is_int(net.get("in_channels", 1), 1, 16) \
            or any(net.get(slot, default) not in NETWORK_KINDS for slot, default in zip("ab", NETWORK_KINDS)):
        return "'networks' does not describe the two networks"
    if meta.get("inference", "both") not in INFERENCE_CHOICES:
        return "'inference' is not 'a', 'b' or 'both'"
    patch = meta["patch_size"]
    if not isinstance(patch, (list, tuple)) or len(patch) != 3 or not all(
            is_int(p, 16, 4096) and p % 16 == 0 for p in patch):
        return "'patch_size' is not three sizes divisible by 16"
    norm = meta["normalization"]
    if not isinstance(norm, dict) or norm.get("method") not in ("zscore", "window"):
        return "'normalization' is not 'zscore' or 'window'"
    if "geometry" in meta:  # absent in older model files: they segment on each scan's native grid
        from .geometry import CANONICAL_ORIENTATION, parse_target_spacing

        geometry = meta["geometry"]
        spacing = geometry.get("target_spacing") if isinstance(geometry, dict) else "missing"
        try:
            valid = spacing is None or not isinstance(parse_target_spacing(spacing), str)
        except InputError:
            valid = False
        if not valid or geometry.get("orientation") != CANONICAL_ORIENTATION:
            return (f"'geometry' is not the orientation {CANONICAL_ORIENTATION} with a target spacing of three "
                    f"sizes in mm or none")
    return ""


def read_metadata(path: str) -> Dict[str, Any]:
    """The model file's metadata (classes, normalisation, patch size, preset, versions...)."""
    return _check_metadata(load_trusted_data(path).get("metadata"), path)


def load_model(path: str, device: str = "cpu") -> Tuple[torch.nn.Module, torch.nn.Module, Dict[str, Any]]:
    """Both networks in eval mode on ``device``, and the metadata."""
    from .networks import build_networks

    data = load_trusted_data(path)
    meta = _check_metadata(data.get("metadata"), path)
    net = meta["networks"]
    kinds = (net.get("a", NETWORK_KINDS[0]), net.get("b", NETWORK_KINDS[1]))
    net_a, net_b = build_networks(len(meta["classes"]), net["base_filters"], tuple(net["resnet_blocks"]),
                                  dropout=0.0, in_channels=net.get("in_channels", 1), kinds=kinds)
    try:
        net_a.load_state_dict(data["weights_a"])
        net_b.load_state_dict(data["weights_b"])
    except (KeyError, RuntimeError, TypeError):
        raise InputError(f"The model file {path} has weights that do not fit its own network description; "
                         f"it is damaged, retrain it.") from None
    return net_a.to(device).eval(), net_b.to(device).eval(), meta


def inference_of(meta: Dict[str, Any]) -> str:
    """Which network(s) segment: "a", "b" or "both" (softmax averaged; model files without the key)."""
    return meta.get("inference", "both")


def classes_of(meta: Dict[str, Any]):
    return [ClassInfo(c["value"], c["name"], c.get("color")) for c in meta["classes"]]
