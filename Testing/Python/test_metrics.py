"""Dice, Jaccard, HD95 and ASD against medpy (an independent implementation, the one the paper's numbers
come from), in voxels and millimetres with anisotropic spacing; the empty-mask conventions."""

import numpy as np
import pytest
from helpers import smooth_blob
from medpy.metric import binary

from SemiSupSegTraining.metrics import METRIC_NAMES, evaluate, overlap, summarize, surface_distances

SHAPE = (20, 28, 24)              # z, y, x
SPACING_XYZ = (0.7, 1.3, 2.5)     # anisotropic, as ITK gives it
SPACING_ZYX = SPACING_XYZ[::-1]


def _pair(seed):
    """A reference blob and a prediction that overlaps it imperfectly (shifted, eroded, with an extra piece)."""
    reference = smooth_blob(SHAPE, seed)
    prediction = np.roll(smooth_blob(SHAPE, seed, quantile=0.78), (1, -2, 1), axis=(0, 1, 2))
    prediction |= smooth_blob(SHAPE, seed + 100, sigma=2.0, quantile=0.97)
    assert reference.any() and prediction.any() and (reference & prediction).any()
    assert (reference != prediction).any()
    return prediction, reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlap_matches_medpy(seed):
    prediction, reference = _pair(seed)
    result = overlap(prediction, reference)
    assert result["dice"] == pytest.approx(binary.dc(prediction, reference), abs=1e-12)
    assert result["jaccard"] == pytest.approx(binary.jc(prediction, reference), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_distances_match_medpy_in_voxels_and_mm(seed):
    prediction, reference = _pair(seed)
    result = surface_distances(prediction, reference, SPACING_ZYX)
    assert result["hd95_vox"] == pytest.approx(binary.hd95(prediction, reference), rel=1e-5)
    assert result["asd_vox"] == pytest.approx(binary.asd(prediction, reference), rel=1e-5)
    assert result["assd_vox"] == pytest.approx(binary.assd(prediction, reference), rel=1e-5)
    assert result["hd95_mm"] == pytest.approx(binary.hd95(prediction, reference, SPACING_ZYX), rel=1e-5)
    assert result["asd_mm"] == pytest.approx(binary.asd(prediction, reference, SPACING_ZYX), rel=1e-5)
    assert result["assd_mm"] == pytest.approx(binary.assd(prediction, reference, SPACING_ZYX), rel=1e-5)
    # The spacing and its axis order matter (else the mm test proves nothing), and ASD is directed.
    assert result["asd_mm"] != pytest.approx(result["asd_vox"])
    assert result["asd_mm"] != pytest.approx(binary.asd(prediction, reference, SPACING_XYZ))
    assert result["asd_vox"] != pytest.approx(binary.asd(reference, prediction))


def test_evaluate_per_class_with_xyz_spacing_matches_medpy():
    first, reference_first = _pair(3)
    second, reference_second = _pair(4)
    prediction = np.zeros(SHAPE, np.uint8)
    reference = np.zeros(SHAPE, np.uint8)
    prediction[first], prediction[second & ~first] = 1, 2
    reference[reference_first], reference[reference_second & ~reference_first] = 1, 2
    result = evaluate(prediction, reference, SPACING_XYZ, [1, 2], ["organ", "vessel"])
    assert list(result) == ["organ", "vessel"]
    for index, name in ((1, "organ"), (2, "vessel")):
        p, r = prediction == index, reference == index
        m = result[name]
        assert set(m) == set(METRIC_NAMES)
        assert m["dice"] == pytest.approx(binary.dc(p, r))
        assert m["jaccard"] == pytest.approx(binary.jc(p, r))
        assert m["hd95_mm"] == pytest.approx(binary.hd95(p, r, SPACING_ZYX), rel=1e-5)
        assert m["asd_mm"] == pytest.approx(binary.asd(p, r, SPACING_ZYX), rel=1e-5)
        assert m["hd95_vox"] == pytest.approx(binary.hd95(p, r), rel=1e-5)
        assert m["asd_vox"] == pytest.approx(binary.asd(p, r), rel=1e-5)


def test_identical_masks():
    mask = smooth_blob(SHAPE, 7)
    m = evaluate(mask.astype(np.uint8), mask.astype(np.uint8), SPACING_XYZ, [1], ["organ"])["organ"]
    assert m["dice"] == 1.0 and m["jaccard"] == 1.0
    assert all(m[k] == 0.0 for k in METRIC_NAMES[2:])


def test_both_empty():
    empty = np.zeros(SHAPE, bool)
    assert overlap(empty, empty) == {"dice": 1.0, "jaccard": 1.0}
    assert surface_distances(empty, empty, SPACING_ZYX) == {k: 0.0 for k in METRIC_NAMES[2:]}


@pytest.mark.parametrize("empty_side", ["prediction", "reference"])
def test_one_empty(empty_side):
    mask, empty = smooth_blob(SHAPE, 8), np.zeros(SHAPE, bool)
    p, r = (empty, mask) if empty_side == "prediction" else (mask, empty)
    assert overlap(p, r) == {"dice": 0.0, "jaccard": 0.0}
    assert surface_distances(p, r, SPACING_ZYX) == {k: None for k in METRIC_NAMES[2:]}


def test_single_voxels_at_a_known_distance():
    p, r = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    p[5, 5, 5], r[5, 9, 5] = True, True  # 4 voxels apart along y (1.3 mm each)
    d = surface_distances(p, r, SPACING_ZYX)
    assert d["hd95_vox"] == pytest.approx(4.0) and d["asd_vox"] == pytest.approx(4.0)
    assert d["hd95_mm"] == pytest.approx(5.2) and d["asd_mm"] == pytest.approx(5.2)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        evaluate(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1, 1, 1), [1], ["a"])


def test_summarize_leaves_out_and_counts_undefined_values():
    mask = smooth_blob(SHAPE, 9)
    empty = np.zeros(SHAPE, np.uint8)
    cases = [evaluate(mask.astype(np.uint8), mask.astype(np.uint8), SPACING_XYZ, [1], ["organ"]),
             evaluate(empty, mask.astype(np.uint8), SPACING_XYZ, [1], ["organ"])]
    summary = summarize(cases)["organ"]
    assert summary["dice"] == {"mean": 0.5, "std": 0.5, "undefined": 0}
    assert summary["hd95_mm"] == {"mean": 0.0, "std": 0.0, "undefined": 1}
    assert summarize([]) == {}
