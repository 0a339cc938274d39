"""The model file's metadata as a JSON file beside it (``model.json`` beside ``model.pt``), readable without torch.

The Slicer module shows a model's structures when it opens and needs the class names to bring a result into
the scene; importing torch for that would freeze Slicer's GUI for seconds. So ``save_model`` writes this file
next to every model file, and ``semisupseg info --model FILE --write-metadata`` writes it for an older model.
It records the model file's size: a model file replaced without its metadata is noticed (the file is then
stale, and read again through the engine). Standard library only.
"""

import json
import os
from typing import Any, Dict

from .atomicio import write_json_atomic
from .errors import InputError

METADATA_FORMAT = "semisupseg-model-metadata"


def metadata_path(model_path: str) -> str:
    """``.../model.pt`` -> ``.../model.json``."""
    return os.path.splitext(os.path.abspath(model_path))[0] + ".json"


def is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def classes_problem(classes: Any) -> str:
    """What is wrong with a model's ``classes`` metadata, or ''."""
    if not isinstance(classes, list) or not 2 <= len(classes) <= 255 or not all(
            isinstance(c, dict) and is_int(c.get("value"), -32768, 65535) and isinstance(c.get("name"), str)
            for c in classes):
        return "'classes' is not a list of 2 to 255 classes with a value and a name"
    return ""


def write_metadata(model_path: str, metadata: Dict[str, Any]) -> str:
    """Writes the metadata file of ``model_path`` (which must exist) atomically; returns its path."""
    path = metadata_path(model_path)
    record = {"format": METADATA_FORMAT, "model_file": os.path.basename(model_path),
              "model_bytes": os.path.getsize(model_path), "metadata": metadata}
    write_json_atomic(path, record, indent=1)
    return path


class MetadataMissing(InputError):
    """The model file has no (current) metadata file beside it: read it through the engine."""


def read_metadata_file(model_path: str) -> Dict[str, Any]:
    """The metadata of ``model_path`` from the file beside it. Raises :class:`MetadataMissing` when that file
    is absent or belongs to another version of the model file, InputError when it is damaged."""
    if not os.path.isfile(model_path):
        raise InputError(f"The model file {model_path} does not exist.")
    path = metadata_path(model_path)
    if not os.path.isfile(path):
        raise MetadataMissing(f"The model file {model_path} has no metadata file {os.path.basename(path)} "
                              f"beside it.")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"The metadata file {path} cannot be read ({e}); delete it, it is written again.") from None
    if not isinstance(record, dict) or record.get("format") != METADATA_FORMAT \
            or not isinstance(record.get("metadata"), dict):
        raise InputError(f"The metadata file {path} is not a SemiSupSeg model metadata file; delete it, it is "
                         f"written again.")
    if record.get("model_bytes") != os.path.getsize(model_path):
        raise MetadataMissing(f"The metadata file {path} belongs to another version of {model_path}.")
    problem = classes_problem(record["metadata"].get("classes"))
    if problem:
        raise InputError(f"The metadata file {path} is damaged ({problem}); delete it, it is written again.")
    return record["metadata"]
