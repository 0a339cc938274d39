"""Classes, segments and label values: which segment of a segmentation becomes which label value, and back.

Slicer's segmentations name their segments; the engine's label maps hold class values. Training exports the
segments whose names match the classes (case-insensitive) with the class's value; segmenting imports each
class value as a segment named after the class, with the class's color. Plain Python and numpy only.
"""

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from SemiSupSegTraining.manifest import ClassInfo, class_color, default_classes


def _key(name: str) -> str:
    return " ".join(name.strip().lower().split())


def parse_structure_names(text: str) -> List[str]:
    """``"left atrium, tumor"`` -> ``["left atrium", "tumor"]`` (commas, semicolons or new lines; duplicates
    and a leading "background" dropped)."""
    names, seen = [], set()
    for part in re.split(r"[,;\n]", text or ""):
        name = part.strip()
        if not name or _key(name) in seen or _key(name) == "background":
            continue
        seen.add(_key(name))
        names.append(name)
    return names


def classes_for_training(structure_names: Optional[Sequence[str]] = None,
                         segment_names_per_case: Optional[Sequence[Sequence[str]]] = None,
                         model_classes: Optional[Sequence[dict]] = None,
                         segment_colors: Optional[Dict[str, Sequence[float]]] = None) -> List[ClassInfo]:
    """The classes of a training, by priority:

    1. ``model_classes`` (a retrain keeps the classes of the model it starts from: the model file's
       ``metadata["classes"]``),
    2. ``structure_names`` typed by the user (values 1..N in that order),
    3. the segment names of the labeled cases, in the order they first appear.

    Colors come from ``segment_colors`` (segment name -> RGB in 0..1) when a segment has the class's name.
    """
    if model_classes:
        classes = [ClassInfo(int(c["value"]), str(c["name"]), c.get("color")) for c in model_classes]
    else:
        names = list(structure_names or [])
        if not names:
            seen = set()
            for case_names in segment_names_per_case or []:
                for name in case_names:
                    if name.strip() and _key(name) not in seen and _key(name) != "background":
                        seen.add(_key(name))
                        names.append(name.strip())
        if not names:
            raise ValueError("No structure to learn: give the labeled cases segmentations with named segments, "
                             "or type the structure names.")
        classes = default_classes(names)
    colors = {_key(k): list(v) for k, v in (segment_colors or {}).items()}
    for c in classes:
        if c.color is None and c.value != 0 and _key(c.name) in colors:
            c.color = [float(x) for x in colors[_key(c.name)][:3]]
    return classes


def segment_plan(segment_names: Sequence[str], classes: Sequence[ClassInfo]
                 ) -> Tuple[List[Tuple[int, int]], List[str]]:
    """Which segments to export with which class value.

    Returns ``[(segment index, class value), ...]`` for the segments whose name is a foreground class's
    name (case and extra spaces ignored), and the names of the segments that match no class.
    """
    value_by_key = {_key(c.name): c.value for c in classes if c.value != 0}
    plan, unmatched = [], []
    for index, name in enumerate(segment_names):
        value = value_by_key.get(_key(name))
        if value is None:
            unmatched.append(name)
        else:
            plan.append((index, value))
    return plan, unmatched


def export_lookup(plan: Sequence[Tuple[int, int]]) -> np.ndarray:
    """Lookup table for a label map exported with the plan's segments in plan order (Slicer then writes
    value i + 1 for the i-th segment): ``lookup[i + 1]`` is that segment's class value."""
    values = [0] + [value for _, value in plan]
    dtype = np.uint8 if max(values) < 256 else np.uint16
    return np.asarray(values, dtype=dtype)


def import_lookup(class_values: Sequence[int]) -> np.ndarray:
    """Lookup table that maps a result's class values to 1..K, K foreground classes in their order (the
    order of the segment IDs given to ``ImportLabelmapToSegmentationNode``); other values map to 0."""
    foreground = [int(v) for v in class_values if int(v) != 0]
    if any(v < 0 for v in foreground):
        raise ValueError("Class values must not be negative.")
    lookup = np.zeros(max(foreground + [0]) + 1, dtype=np.uint8 if len(foreground) < 256 else np.uint16)
    for position, value in enumerate(foreground, start=1):
        lookup[value] = position
    return lookup


def remap(array: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """``lookup[array]``, with values outside the table (or negative) mapped to 0. The array itself comes back
    (no copy) when the lookup leaves its values as they are; no int64 copy is made otherwise."""
    array = np.asarray(array)
    if array.dtype.kind not in "biu":
        array = np.rint(array).astype(np.int32)
    size = len(lookup)
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low >= 0 and high < size and np.array_equal(lookup[:high + 1], np.arange(high + 1)):
        return array
    table = np.append(lookup, np.zeros(1, dtype=lookup.dtype))  # index ``size``: outside -> 0
    if low < 0 or high >= size:
        array = np.where((array < 0) | (array >= size), size, array)
    return np.take(table, array)


def segment_specs(classes: Sequence) -> List[Tuple[str, str, List[float]]]:
    """(segment ID, name, color) of each foreground class, in class order; ``classes`` are ClassInfo or
    the model file's dicts. Segment IDs are the class names made unique."""
    infos = [c if isinstance(c, ClassInfo) else ClassInfo(int(c["value"]), str(c["name"]), c.get("color"))
             for c in classes]
    specs, used = [], set()
    for index, c in enumerate(infos):
        if c.value == 0:
            continue
        segment_id, n = c.name, 2
        while segment_id in used:
            segment_id = f"{c.name}_{n}"
            n += 1
        used.add(segment_id)
        specs.append((segment_id, c.name, [float(x) for x in class_color(infos, index)]))
    return specs
