"""The one skeleton every dataset converter runs (:func:`convert_cases`): the folds and every case checked
before anything is written, then per case read, crop and write, then the manifests, ``folds.json`` and
``prepare.json``. A converter only finds its cases and says how one case is read (a :class:`Conversion`)."""

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..atomicio import write_json_atomic
from ..config import PANCREAS_OVERLAP
from ..errors import InputError
from ..fileio import write_image_atomic
from ..geometry import Geometry
from ..manifest import CaseEntry, ClassInfo, Manifest, write_manifest
from ..progress import Reporter
from .folds import make_folds
from .grids import crop

PREPARE_FORMAT = "semisupseg-prepare"

# The paper's protocol per dataset beyond the defaults: the pancreas trains on 96³ crops and segments with
# windows every 16 voxels. (preset option of 'train', what to add about segmenting)
PROTOCOL = {"pancreas": (" --preset pancreas", f" and segment with --overlap {PANCREAS_OVERLAP} (the paper's "
                         f"96×96×96 crops, windows every 16 voxels)")}


@dataclass
class SourceCase:
    """One case found in the input: where its image and label come from."""

    id: str
    image: str
    label: str
    kind: str                      # "nrrd", "h5", "dicom" or "file"
    info: Dict[str, object] = field(default_factory=dict)


@dataclass
class ConvertedCase:
    """One case ready to write: the image and its label on the same grid, and what ``prepare.json`` records
    about it beyond its sources (the source size, the crop box)."""

    image: sitk.Image
    label: sitk.Image
    record: Dict[str, object]


@dataclass
class Conversion:
    """What a converter decides about its dataset; :func:`convert_cases` does the rest."""

    dataset: str                                  # the name in the manifests and folds.json
    sources: List[SourceCase]
    classes: List[ClassInfo]
    modality: str
    check: Callable[[SourceCase], None]           # cheap (headers), before anything is written
    convert: Callable[[SourceCase], ConvertedCase]
    start_message: str                            # "Preparing N ... into OUTPUT."
    description: str                              # the manifests' "description"
    provenance: Dict[str, object]                 # prepare.json's fields before "cases"
    protocol: str = ""                            # a key of PROTOCOL: its options in the summary


def check_output_folder(output_dir: str, inputs: Sequence[str]) -> str:
    """The absolute output folder, made; refused when it is an input folder or a file."""
    output_dir = os.path.abspath(output_dir)
    for folder in inputs:
        folder = os.path.abspath(folder)
        if output_dir == folder:
            raise InputError(f"The output folder {output_dir} is an input folder; give a separate --output "
                             f"folder so that the originals stay untouched.")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise InputError(f"The output {output_dir} is a file; give a folder for --output.")
    os.makedirs(output_dir, exist_ok=True)
    return output_dir


def cropped_case(image: sitk.Image, label01_zyx: np.ndarray, geometry: Geometry, start: Sequence[int],
                 stop: Sequence[int]) -> ConvertedCase:
    """The image and its 0/1 label cut to the box ``start:stop`` (x, y, z), with the box recorded."""
    return ConvertedCase(crop(image, start, stop), crop(geometry.to_image(label01_zyx), start, stop),
                         {"source_size": list(geometry.size), "crop_start": list(start),
                          "crop_stop": list(stop)})


def write_case(output_dir: str, case_id: str, image: sitk.Image, label: sitk.Image) -> CaseEntry:
    """``images/<case>.nii.gz`` and ``labels/<case>.nii.gz``, each written atomically; the manifest entry."""
    image_path = os.path.join(output_dir, "images", f"{case_id}.nii.gz")
    label_path = os.path.join(output_dir, "labels", f"{case_id}.nii.gz")
    write_image_atomic(image, image_path)
    write_image_atomic(label, label_path)
    return CaseEntry(case_id, os.path.abspath(image_path), os.path.abspath(label_path), True)


def write_outputs(output_dir: str, entries: List[CaseEntry], classes: List[ClassInfo], modality: str,
                  dataset: str, description: str, folds: int, labeled_counts: Sequence[int], provenance: dict,
                  fold_lists: Optional[str] = None) -> Dict[str, object]:
    """``manifest.json``, ``folds.json``, the per-fold manifests and ``prepare.json``; returns their paths."""
    by_id = {e.id: e for e in entries}
    fold_data = make_folds(list(by_id), folds, labeled_counts, dataset, fold_lists)
    extra = {"dataset": dataset, "description": description}
    written: Dict[str, object] = {}
    written["manifest"] = write_manifest(
        Manifest(classes, [by_id[i] for i in fold_data["cases"]], modality, extra=dict(extra)),
        os.path.join(output_dir, "manifest.json"))
    for fold in fold_data["folds"]:
        k = fold["fold"]
        manifests = {}
        test_cases = [CaseEntry(i, by_id[i].image, by_id[i].label, True) for i in fold["test"]]
        name = f"fold{k}_test.json"
        write_manifest(Manifest(classes, test_cases, modality,
                                extra=dict(extra, fold=k, split="test")), os.path.join(output_dir, name))
        manifests["test"] = name
        manifests["train"] = {}
        for n, labeled in fold["labeled"].items():
            chosen = set(labeled)
            train_cases = [CaseEntry(i, by_id[i].image, by_id[i].label, i in chosen) for i in fold["train"]]
            name = f"fold{k}_labeled{n}_train.json"
            write_manifest(Manifest(classes, train_cases, modality,
                                    extra=dict(extra, fold=k, split="train", labeled_count=int(n))),
                           os.path.join(output_dir, name))
            manifests["train"][n] = name
        fold["manifests"] = manifests
    written["folds"] = os.path.join(output_dir, "folds.json")
    write_json_atomic(written["folds"], fold_data)
    written["prepare"] = os.path.join(output_dir, "prepare.json")
    write_json_atomic(written["prepare"], dict({"format": PREPARE_FORMAT, "version": 1, "dataset": dataset},
                                               **provenance))
    written["fold_manifests"] = fold_data["folds"]
    return written


def summary(output_dir: str, count: int, written: Dict[str, object], protocol: str = "") -> str:
    """The closing sentence: what was written and the command that trains fold 0."""
    first = written["fold_manifests"][0]
    n = sorted(first["manifests"]["train"], key=int)[0]
    preset, segment = PROTOCOL.get(protocol, ("", ""))
    manifest = os.path.join(output_dir, first["manifests"]["train"][n])
    return (f"Wrote {count} cases, manifest.json, folds.json and {len(written['fold_manifests'])} folds of "
            f"manifests to {output_dir}; train with e.g. 'semisupseg train --manifest "
            f"{manifest} --output model-fold0{preset}'{segment}.")


def convert_cases(output_dir: str, conversion: Conversion, folds: int, labeled: Sequence[int],
                  fold_lists: Optional[str] = None, reporter: Optional[Reporter] = None) -> str:
    """Runs ``conversion`` into ``output_dir`` (made by :func:`check_output_folder`); returns the path of
    ``manifest.json``. Nothing is written before the folds and every case's cheap checks pass."""
    reporter = reporter or Reporter("none")
    sources = conversion.sources
    make_folds([c.id for c in sources], folds, labeled, conversion.dataset, fold_lists)   # fail early
    for source in sources:
        conversion.check(source)
    reporter.emit("start", "prepare", total=len(sources), message=conversion.start_message)
    entries, records = [], []
    for i, source in enumerate(sources):
        case = conversion.convert(source)
        entries.append(write_case(output_dir, source.id, case.image, case.label))
        records.append(dict({"id": source.id, "image_source": os.path.abspath(source.image),
                             "label_source": os.path.abspath(source.label)}, **case.record))
        reporter.progress("prepare", i + 1, len(sources), case=source.id,
                          message=f"prepared {source.id} ({i + 1}/{len(sources)})")
    provenance = dict(conversion.provenance, cases=records)
    written = write_outputs(output_dir, entries, conversion.classes, conversion.modality, conversion.dataset,
                            conversion.description, folds, labeled, provenance, fold_lists)
    reporter.emit("done", "prepare", manifest=written["manifest"], folds=written["folds"],
                  message=summary(output_dir, len(entries), written, conversion.protocol))
    return str(written["manifest"])
