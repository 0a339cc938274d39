"""Comparing segmentations with references: label files, or a whole manifest segmented by a model."""

import os
from typing import Dict, List, Optional

import numpy as np

from .data import Geometry, _read_sitk, _require_3d_scalar, read_image, read_label, values_to_indices
from .errors import InputError
from .infer import Segmenter
from .manifest import ClassInfo, load_manifest
from .metrics import evaluate, summarize


def _label_array(path: str):
    import SimpleITK as sitk

    image = _read_sitk(path, "label")
    _require_3d_scalar(image, path, "label")
    return sitk.GetArrayFromImage(image).astype(np.int64), Geometry.of(image)


def evaluate_files(prediction_path: str, reference_path: str,
                   classes: Optional[List[ClassInfo]] = None) -> Dict[str, object]:
    """Metrics per class of a predicted label file against a reference on the same grid.

    Without ``classes`` every non-zero value found in either file is a class named ``label <value>``.
    """
    prediction, grid = _label_array(prediction_path)
    reference, ref_grid = _label_array(reference_path)
    problem = ref_grid.mismatch(grid)
    if problem:
        raise InputError(f"The prediction {prediction_path} is not on the reference's grid ({problem}); "
                         f"compare files that share one image grid.")
    if classes is None:
        values = sorted((set(np.unique(prediction)) | set(np.unique(reference))) - {0})
        classes = [ClassInfo(0, "background")] + [ClassInfo(int(v), f"label {int(v)}") for v in values]
    pred = values_to_indices(prediction, classes, prediction_path)
    ref = values_to_indices(reference, classes, reference_path)
    per_class = evaluate(pred, ref, grid.spacing, range(1, len(classes)), [c.name for c in classes[1:]])
    return {"prediction": prediction_path, "reference": reference_path, "classes": per_class}


def evaluate_model(model_path: str, manifest_path: str, device: str = "auto", overlap: float = 0.5,
                   output_dir: Optional[str] = None, keep_largest: bool = False) -> Dict[str, object]:
    """Segments every case of a manifest that has a label and compares; optional label files in output_dir."""
    from .data import write_label_image

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
        cases.append({"id": entry.id, "image": entry.image, "classes": metrics,
                      "_arrays": (volume, reference, result)})
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
