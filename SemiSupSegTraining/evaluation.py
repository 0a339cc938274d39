"""Comparing segmentations with references: label files, or a whole manifest segmented by a model."""

import os
from typing import Callable, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from .config import DEFAULT_OVERLAP
from .fileio import is_segmentation_file, read_image, read_label, read_segmentation_file, read_sitk_image, require_3d_scalar
from .geometry import Geometry
from .errors import InputError
from .infer import Segmenter
from .manifest import ClassInfo, default_classes, load_manifest
from .metrics import evaluate, summarize


def _grid_of(path: str) -> Geometry:
    if is_segmentation_file(path):
        return Geometry.of(read_segmentation_file(path)[0])
    image = read_sitk_image(path, "label")
    require_3d_scalar(image, path, "label")
    return Geometry.of(image)


def _classes_from_files(paths: List[str], grid: Geometry) -> List[ClassInfo]:
    """Without a model's classes: a Slicer segmentation's segment names, else every value found."""
    for path in paths:
        if is_segmentation_file(path):
            _, segments = read_segmentation_file(path, grid)
            return default_classes([name for name, _ in segments])
    values = set()
    for path in paths:
        values |= set(int(v) for v in np.unique(sitk.GetArrayFromImage(read_sitk_image(path, "label"))))
    return [ClassInfo(0, "background")] + [ClassInfo(v, f"label {v}") for v in sorted(values - {0})]


def evaluate_files(prediction_path: str, reference_path: str,
                   classes: Optional[List[ClassInfo]] = None) -> Dict[str, object]:
    """Metrics per class of a predicted label map against a reference on the same grid.

    Label maps or Slicer ``.seg.nrrd`` files (segments matched to classes by name). Without ``classes``
    the classes are a segmentation file's segments, else every non-zero value found in either file.
    """
    grid = _grid_of(reference_path)
    if classes is None:
        classes = _classes_from_files([reference_path, prediction_path], grid)
    try:
        ref = read_label(reference_path, classes, grid)
        pred = read_label(prediction_path, classes, grid)
    except InputError as e:
        if "grid" in str(e):
            raise InputError(f"The prediction {prediction_path} is not on the grid of the reference "
                             f"{reference_path}; compare files that share one image grid.") from None
        raise
    per_class = evaluate(pred, ref, grid.spacing, range(1, len(classes)), [c.name for c in classes[1:]])
    return {"prediction": prediction_path, "reference": reference_path, "classes": per_class}


def evaluate_model(model_path: str, manifest_path: str, device: str = "auto", overlap: float = DEFAULT_OVERLAP,
                   output_dir: Optional[str] = None, keep_largest: bool = False,
                   on_case: Optional[Callable[[str, object, np.ndarray, object], None]] = None
                   ) -> Dict[str, object]:
    """Segments every case of a manifest that has a label and compares; optional label files in output_dir.

    ``on_case(case_id, volume, reference_indices, segmentation)`` sees each case's arrays (for pictures).
    """
    from .fileio import write_label_image

    manifest = load_manifest(manifest_path)
    segmenter = Segmenter(model_path, device, overlap)
    if [c.value for c in segmenter.classes] != manifest.class_values:
        raise InputError(f"The manifest {manifest_path} has other classes than the model {model_path}; "
                         f"evaluate with a manifest of the model's classes.")
    cases = []
    for entry in manifest.cases:
        if entry.label is None:
            continue
        volume = read_image(entry.image)
        reference = read_label(entry.label, manifest.classes, volume.geometry)
        result = segmenter.segment(volume, keep_largest=keep_largest)
        if output_dir:
            write_label_image(result.labels, manifest.classes, volume.geometry,
                              os.path.join(output_dir, f"{entry.id}.nii.gz"))
        metrics = evaluate(result.labels, reference, volume.geometry.spacing, range(1, len(manifest.classes)),
                           manifest.class_names[1:])
        cases.append({"id": entry.id, "image": entry.image, "classes": metrics})
        if on_case is not None:
            on_case(entry.id, volume, reference, result)
    if not cases:
        raise InputError(f"The manifest {manifest_path} has no case with a label to evaluate against.")
    return {"model": model_path, "manifest": manifest_path, "cases": cases,
            "mean": summarize([c["classes"] for c in cases])}


def format_table(report: Dict[str, object]) -> str:
    """A plain-text table: one row per case and class, then the means."""
    header = f"{'case':<14}{'class':<16}{'Dice':>7}{'Jaccard':>9}{'HD95 vox':>10}{'ASD vox':>9}{'HD95 mm':>9}{'ASD mm':>8}"
    lines = [header, "-" * len(header)]

    def cell(value, width, digits=2):
        return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"

    for case in report["cases"]:
        for name, m in case["classes"].items():
            lines.append(f"{case['id']:<14}{name:<16}{cell(m['dice'], 7, 3)}{cell(m['jaccard'], 9, 3)}"
                         f"{cell(m['hd95_vox'], 10)}{cell(m['asd_vox'], 9)}{cell(m['hd95_mm'], 9)}"
                         f"{cell(m['asd_mm'], 8)}")
    lines.append("-" * len(header))
    for name, m in report["mean"].items():
        lines.append(f"{'mean':<14}{name:<16}{cell(m['dice']['mean'], 7, 3)}{cell(m['jaccard']['mean'], 9, 3)}"
                     f"{cell(m['hd95_vox']['mean'], 10)}{cell(m['asd_vox']['mean'], 9)}"
                     f"{cell(m['hd95_mm']['mean'], 9)}{cell(m['asd_mm']['mean'], 8)}")
    return "\n".join(lines)
