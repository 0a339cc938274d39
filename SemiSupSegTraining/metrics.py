"""Dice, Jaccard, HD95 and ASD per class, in voxels and in millimetres.

Definitions follow medpy, which the paper's numbers come from: surfaces are the mask voxels removed by
one 6-connected erosion; HD95 is the 95th percentile of the surface distances of both directions pooled;
ASD is the mean distance from the prediction's surface to the reference's (directed, as medpy's ``asd``);
ASSD is its symmetric version. Surface distances come from MONAI.

Empty masks: both empty → Dice = Jaccard = 1, distances 0; exactly one empty → Dice = Jaccard = 0 and
the distances are undefined (``None`` in reports, excluded from means; the count of such cases is
reported beside the means).
"""

from typing import Dict, List, Optional, Sequence

import numpy as np
from monai.metrics.utils import get_mask_edges, get_surface_distance

METRIC_NAMES = ("dice", "jaccard", "hd95_vox", "asd_vox", "assd_vox", "hd95_mm", "asd_mm", "assd_mm")


def overlap(prediction: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    p, r = prediction.astype(bool), reference.astype(bool)
    inter, total = np.logical_and(p, r).sum(), p.sum() + r.sum()
    if total == 0:
        return {"dice": 1.0, "jaccard": 1.0}
    union = total - inter
    return {"dice": float(2 * inter / total), "jaccard": float(inter / union)}


def _directed(prediction: np.ndarray, reference: np.ndarray, spacing: Optional[Sequence[float]]):
    edges_pred, edges_ref = get_mask_edges(prediction, reference, crop=True)
    edges_pred, edges_ref = np.asarray(edges_pred), np.asarray(edges_ref)
    forward = np.asarray(get_surface_distance(edges_pred, edges_ref, spacing=spacing), np.float64)
    backward = np.asarray(get_surface_distance(edges_ref, edges_pred, spacing=spacing), np.float64)
    return forward, backward


def surface_distances(prediction: np.ndarray, reference: np.ndarray,
                      spacing_zyx: Sequence[float]) -> Dict[str, Optional[float]]:
    """HD95, ASD and ASSD in voxels and millimetres of two binary masks (z, y, x)."""
    p, r = prediction.astype(bool), reference.astype(bool)
    if not p.any() and not r.any():
        return {k: 0.0 for k in METRIC_NAMES[2:]}
    if not p.any() or not r.any():
        return {k: None for k in METRIC_NAMES[2:]}
    out = {}
    for unit, spacing in (("vox", None), ("mm", list(spacing_zyx))):
        forward, backward = _directed(p, r, spacing)
        out[f"hd95_{unit}"] = float(np.percentile(np.concatenate([forward, backward]), 95))
        out[f"asd_{unit}"] = float(forward.mean())
        out[f"assd_{unit}"] = float(np.concatenate([forward, backward]).mean())
    return out


def evaluate(prediction: np.ndarray, reference: np.ndarray, spacing_xyz: Sequence[float],
             class_indices: Sequence[int], class_names: Sequence[str]) -> Dict[str, Dict[str, Optional[float]]]:
    """Metrics of each foreground class, keyed by class name; label arrays hold class indices."""
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    spacing_zyx = list(spacing_xyz)[::-1]
    results = {}
    for index, name in zip(class_indices, class_names):
        p, r = prediction == index, reference == index
        results[name] = {**overlap(p, r), **surface_distances(p, r, spacing_zyx)}
    return results


def summarize(per_case: List[Dict[str, Dict[str, Optional[float]]]]) -> Dict[str, Dict[str, object]]:
    """Mean ± std over cases of each class's metrics; undefined values are left out and counted."""
    summary = {}
    for name in per_case[0] if per_case else []:
        entry = {}
        for metric in METRIC_NAMES:
            values = [c[name][metric] for c in per_case if c[name][metric] is not None]
            entry[metric] = {"mean": float(np.mean(values)) if values else None,
                             "std": float(np.std(values)) if values else None,
                             "undefined": len(per_case) - len(values)}
        summary[name] = entry
    return summary
