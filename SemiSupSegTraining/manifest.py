"""The case manifest: which image files are cases, which of them are labeled, and the class names.

A manifest is a JSON file; relative paths are relative to the manifest's folder::

    {
      "format": "semisupseg-manifest", "version": 1,
      "modality": "MRI",                      # "MRI" (z-score) or "CT" (HU window)
      "classes": [{"value": 0, "name": "background"},
                  {"value": 1, "name": "left atrium", "color": [0.9, 0.3, 0.2]}],
      "cases": [{"id": "case01", "image": "images/case01.nii.gz", "label": "labels/case01.nii.gz"},
                {"id": "case02", "image": "images/case02.nii.gz"},
                {"id": "case03", "image": "images/case03.nii.gz", "label": "labels/case03.nii.gz",
                 "labeled": false}]
    }

A case is labeled when it has a label file and ``labeled`` is not false (a label kept for evaluation can be
hidden from training that way). This file needs only the standard library so that the Slicer module can
import it cheaply.
"""

import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .atomicio import write_json_atomic
from .errors import InputError

MANIFEST_FORMAT = "semisupseg-manifest"
MANIFEST_VERSION = 1
MODALITIES = ("MRI", "CT")

# Distinct colors for segments (Slicer-like palette), used when a class has no color of its own.
DEFAULT_COLORS = [
    (0.95, 0.35, 0.25), (0.30, 0.70, 0.95), (0.45, 0.85, 0.35), (0.95, 0.80, 0.20),
    (0.75, 0.45, 0.95), (0.20, 0.85, 0.80), (0.95, 0.55, 0.75), (0.60, 0.60, 0.30),
]


@dataclass
class ClassInfo:
    value: int
    name: str
    color: Optional[List[float]] = None

    def to_dict(self) -> dict:
        d = {"value": self.value, "name": self.name}
        if self.color is not None:
            d["color"] = list(self.color)
        return d


@dataclass
class CaseEntry:
    id: str
    image: str                     # absolute path once loaded
    label: Optional[str] = None    # absolute path once loaded
    labeled: bool = True

    @property
    def is_labeled(self) -> bool:
        return self.label is not None and self.labeled


@dataclass
class Manifest:
    classes: List[ClassInfo]
    cases: List[CaseEntry]
    modality: str = "MRI"
    path: Optional[str] = None     # where it was read from / written to
    extra: dict = field(default_factory=dict)

    @property
    def labeled_cases(self) -> List[CaseEntry]:
        return [c for c in self.cases if c.is_labeled]

    @property
    def unlabeled_cases(self) -> List[CaseEntry]:
        return [c for c in self.cases if not c.is_labeled]

    @property
    def class_values(self) -> List[int]:
        return [c.value for c in self.classes]

    @property
    def class_names(self) -> List[str]:
        return [c.name for c in self.classes]


def hold_out(manifest: Manifest, count: int) -> Tuple[Manifest, List[CaseEntry]]:
    """(the manifest training sees, the labeled cases kept out of it to validate the trained model): the last
    ``count`` labeled cases in manifest order, so that a resumed or repeated training holds out the same ones.
    The held-out cases are out of training entirely, neither labeled nor unlabeled."""
    if count <= 0:
        return manifest, []
    labeled = manifest.labeled_cases
    if count >= len(labeled):
        raise InputError(f"Manifest {manifest.path}: {count} labeled case(s) to hold out for validation leave none "
                         f"of its {len(labeled)} labeled case(s) to train on; hold out fewer than {len(labeled)}.")
    held = labeled[-count:]
    kept = [c for c in manifest.cases if all(c is not h for h in held)]
    return Manifest(manifest.classes, kept, manifest.modality, manifest.path, dict(manifest.extra)), held


def class_color(classes: List[ClassInfo], index: int) -> List[float]:
    """The class's own color, or a distinct default one (index counts foreground classes from 1)."""
    color = classes[index].color
    return list(color) if color is not None else list(DEFAULT_COLORS[(index - 1) % len(DEFAULT_COLORS)])


def default_classes(names: List[str]) -> List[ClassInfo]:
    """Background (0) plus one class per foreground name, values 1..N."""
    return [ClassInfo(0, "background")] + [ClassInfo(i + 1, n) for i, n in enumerate(names)]


def _fail(path: str, what: str) -> InputError:
    return InputError(f"Manifest {path}: {what}.")


def parse_manifest(data: dict, path: str = "<manifest>") -> Manifest:
    """Checks a manifest dict and resolves its relative paths against ``path``'s folder."""
    if not isinstance(data, dict):
        raise _fail(path, "the top level must be a JSON object with 'classes' and 'cases'")
    base = os.path.dirname(os.path.abspath(path))
    raw_classes = data.get("classes")
    if not isinstance(raw_classes, list) or len(raw_classes) < 2:
        raise _fail(path, "'classes' must list at least background and one structure, e.g. "
                          "[{\"value\": 0, \"name\": \"background\"}, {\"value\": 1, \"name\": \"organ\"}]")
    classes = []
    for i, c in enumerate(raw_classes):
        if (not isinstance(c, dict) or not isinstance(c.get("value"), int) or isinstance(c.get("value"), bool)
                or not isinstance(c.get("name"), str)):
            raise _fail(path, f"class {i} must be an object with an integer 'value' and a string 'name'")
        color = c.get("color")
        if color is not None and (not isinstance(color, list) or len(color) != 3):
            raise _fail(path, f"class '{c['name']}' has a color that is not a list of three numbers")
        classes.append(ClassInfo(c["value"], c["name"], color))
    values = [c.value for c in classes]
    if len(set(values)) != len(values):
        raise _fail(path, "two classes share one label value")
    if values[0] != 0:
        raise _fail(path, "the first class must be the background with value 0")
    modality = data.get("modality", "MRI")
    if modality not in MODALITIES:
        raise _fail(path, f"'modality' is {modality!r}; use one of {', '.join(MODALITIES)}")
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise _fail(path, "'cases' must be a non-empty list of objects with at least an 'image' path")
    cases, seen = [], set()
    for i, c in enumerate(raw_cases):
        if not isinstance(c, dict) or not isinstance(c.get("image"), str):
            raise _fail(path, f"case {i} must be an object with an 'image' path")
        case_id = str(c.get("id") or os.path.basename(c["image"]).split(".")[0])
        if case_id in seen:
            raise _fail(path, f"case id '{case_id}' appears twice")
        seen.add(case_id)
        label = c.get("label")
        if label is not None and not isinstance(label, str):
            raise _fail(path, f"case '{case_id}' has a 'label' that is not a path")
        if not isinstance(c.get("labeled", True), bool):
            raise _fail(path, f"case '{case_id}' has a 'labeled' that is not true or false")
        cases.append(CaseEntry(
            id=case_id,
            image=os.path.normpath(os.path.join(base, c["image"])),
            label=os.path.normpath(os.path.join(base, label)) if label else None,
            labeled=bool(c.get("labeled", True)),
        ))
    extra = {k: v for k, v in data.items() if k not in ("format", "version", "classes", "cases", "modality")}
    return Manifest(classes=classes, cases=cases, modality=modality, path=os.path.abspath(path), extra=extra)


def load_manifest(path: str) -> Manifest:
    """Reads a manifest file; every problem is an :class:`InputError` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(f"Manifest {path} does not exist; give the path of a manifest JSON file.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"Manifest {path} is not valid JSON ({e}); fix the file or write it again.") from None
    manifest = parse_manifest(data, path)
    for case in manifest.cases:
        for kind, p in (("image", case.image), ("label", case.label)):
            if p is not None and not os.path.exists(p):
                raise InputError(f"Manifest {path}: the {kind} file of case '{case.id}' ({p}) does not exist; "
                                 f"fix the path (relative paths are relative to the manifest's folder).")
    return manifest


def manifest_to_dict(manifest: Manifest, relative_to: Optional[str] = None) -> dict:
    """The JSON form; paths are written relative to ``relative_to`` (a folder) when given."""
    def rel(p):
        return os.path.relpath(p, relative_to) if (p and relative_to) else p

    cases = []
    for c in manifest.cases:
        entry = {"id": c.id, "image": rel(c.image)}
        if c.label:
            entry["label"] = rel(c.label)
        if c.label and not c.labeled:
            entry["labeled"] = False
        cases.append(entry)
    out = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "modality": manifest.modality,
           "classes": [c.to_dict() for c in manifest.classes], "cases": cases}
    out.update(manifest.extra)
    return out


def write_manifest(manifest: Manifest, path: str) -> str:
    """Writes the manifest atomically (temporary name, then rename) with paths relative to its folder."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, manifest_to_dict(manifest, os.path.dirname(path)))
    manifest.path = path
    return path


def choose_labeled(manifest: Manifest, count: Optional[int] = None, ids: Optional[List[str]] = None,
                   seed: Optional[int] = None) -> Manifest:
    """The manifest with only some of its cases with a label labeled; the others keep their label hidden
    (``"labeled": false``, for evaluation). ``ids``: those cases; ``count``: the first ``count`` by id, or
    ``count`` drawn at random with ``seed``. Neither: the manifest as it is."""
    import random

    with_label = sorted(c.id for c in manifest.cases if c.label is not None)
    if ids is not None:
        known = {c.id for c in manifest.cases}
        for case_id in ids:
            if case_id not in known:
                raise InputError(f"The labeled list names case '{case_id}', which is not among the "
                                 f"{len(known)} cases of {manifest.path}; check the list's case ids.")
            if case_id not in with_label:
                raise InputError(f"The labeled list names case '{case_id}', which has no label in "
                                 f"{manifest.path}; remove it from the list.")
        chosen = set(ids)
    elif count is not None:
        if not 1 <= count <= len(with_label):
            raise InputError(f"--labeled {count} asks for {count} labeled cases, but {manifest.path} has "
                             f"{len(with_label)} case(s) with a label; give 1 to {len(with_label)}.")
        chosen = set(random.Random(seed).sample(with_label, count) if seed is not None else with_label[:count])
    else:
        return manifest
    cases = [CaseEntry(c.id, c.image, c.label, c.id in chosen) for c in manifest.cases]
    return Manifest(manifest.classes, cases, manifest.modality, manifest.path, dict(manifest.extra))
