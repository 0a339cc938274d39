"""``semisupseg segment`` writes every output on the input's exact grid: size, origin, spacing and direction,
for anisotropic, oblique and flipped (RAS-style, left-handed) grids, DICOM series input, and ``--roi``.

The voxels must come out where they went in: each output is compared with segmenting the same voxel array
in memory (the engine works in voxel space, so no resampling or flip may happen on the way)."""

import os

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import (
    ANISOTROPIC,
    IDENTITY,
    RAS_FLIPPED,
    Z_FLIPPED,
    assert_same_grid,
    make_image,
    oblique_direction,
    structured_volume,
    write_dicom_series,
    write_image,
)

from SemiSupSegTraining.cli import main
from SemiSupSegTraining.fileio import Volume
from SemiSupSegTraining.geometry import Geometry
from SemiSupSegTraining.infer import Segmenter

SHAPE = (20, 40, 36)  # z, y, x: not a multiple of the 32×32×16 window, so windows overlap and pad
ORIGIN = (-91.5, 40.25, 13.0)
OBLIQUE = oblique_direction()
# An oblique left-handed grid: a rotation times a flip of the slice axis.
OBLIQUE_FLIPPED = tuple((np.array(OBLIQUE).reshape(3, 3) @ np.diag([1.0, 1.0, -1.0])).ravel())

DIRECTIONS = {"oblique": OBLIQUE, "ras-flipped": RAS_FLIPPED, "z-flipped": Z_FLIPPED,
              "oblique-flipped": OBLIQUE_FLIPPED, "identity": IDENTITY}


@pytest.fixture(scope="module")
def reference(tiny_model_file):
    """Segments the test volume in memory (voxel space, identity grid): labels and foreground probability."""
    array = structured_volume(SHAPE)
    segmenter = Segmenter(tiny_model_file, "cpu")
    geometry = Geometry(SHAPE[::-1], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    result = segmenter.segment(Volume(array, geometry, "memory"))
    return {"array": array, "labels": result.labels, "probability": result.foreground_probability,
            "segmenter": segmenter}


def _segment(model, input_path, output_path, *extra):
    return main(["segment", "--model", model, "--input", input_path, "--output", output_path,
                 "--device", "cpu", "--progress", "none", *extra])


def _check_outputs(input_image, outputs, reference, labels_expected=None, probability_expected=None):
    labels_expected = reference["labels"] if labels_expected is None else labels_expected
    probability_expected = reference["probability"] if probability_expected is None else probability_expected
    for kind, path in outputs.items():
        assert os.path.isfile(path), kind
        image = sitk.ReadImage(path)
        assert_same_grid(image, input_image)
        array = sitk.GetArrayFromImage(image)
        if kind == "labels":
            np.testing.assert_array_equal(array, labels_expected)
        elif kind == "probabilities":
            np.testing.assert_allclose(array, probability_expected, atol=1e-5)
        else:
            assert array.dtype == np.float32 and 0.0 <= array.min() and array.max() <= 1.0 + 1e-6
    assert not [f for f in os.listdir(os.path.dirname(outputs["labels"])) if "partial" in f]


@pytest.mark.parametrize("direction", list(DIRECTIONS), ids=list(DIRECTIONS))
@pytest.mark.parametrize("extension", [".nii.gz", ".nrrd"])
def test_outputs_keep_the_input_grid(tmp_path, tiny_model_file, reference, direction, extension):
    input_path = write_image(reference["array"], str(tmp_path / f"scan{extension}"), ANISOTROPIC, ORIGIN,
                             DIRECTIONS[direction])
    input_image = sitk.ReadImage(input_path)
    assert input_image.GetSpacing() == pytest.approx(ANISOTROPIC)
    outputs = {"labels": str(tmp_path / f"labels{extension}"),
               "probabilities": str(tmp_path / "probabilities.nrrd"),
               "uncertainty": str(tmp_path / "uncertainty.nii.gz"),
               "disagreement": str(tmp_path / "disagreement.mha")}
    code = _segment(tiny_model_file, input_path, outputs["labels"], "--probabilities", outputs["probabilities"],
                    "--uncertainty", outputs["uncertainty"], "--disagreement", outputs["disagreement"])
    assert code == 0
    _check_outputs(input_image, outputs, reference)


@pytest.mark.parametrize("extension", [".nii", ".mha", ".mhd", ".seg.nrrd"])
def test_label_formats_keep_the_input_grid(tmp_path, tiny_model_file, reference, extension):
    input_path = write_image(reference["array"], str(tmp_path / "scan.mha"), ANISOTROPIC, ORIGIN, OBLIQUE)
    output = str(tmp_path / "out" / f"labels{extension}")
    assert _segment(tiny_model_file, input_path, output) == 0
    _check_outputs(sitk.ReadImage(input_path), {"labels": output}, reference)
    expected = {"labels.mhd", "labels.zraw"} if extension == ".mhd" else {f"labels{extension}"}
    assert set(os.listdir(tmp_path / "out")) == expected  # a .mhd's data file under its final name


def test_dicom_series_input(tmp_path, tiny_model_file, reference):
    array = np.round(reference["array"]).astype(np.int16)  # DICOM holds integers
    image = make_image(array, ANISOTROPIC, ORIGIN, OBLIQUE)
    folder = write_dicom_series(image, str(tmp_path / "dicom"))
    expected = reference["segmenter"].segment(
        Volume(array.astype(np.float32), Geometry(SHAPE[::-1], (1.0,) * 3, (0.0,) * 3, IDENTITY), "memory"))
    outputs = {"labels": str(tmp_path / "out" / "labels.nii.gz"),
               "probabilities": str(tmp_path / "out" / "probabilities.nii.gz")}
    code = _segment(tiny_model_file, folder, outputs["labels"], "--probabilities", outputs["probabilities"])
    assert code == 0
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    series = reader.Execute()
    assert_same_grid(series, image, atol=1e-4)
    _check_outputs(series, outputs, reference, expected.labels, expected.foreground_probability)


def test_roi_keeps_the_full_grid_with_zeros_outside(tmp_path, tiny_model_file, reference):
    input_path = write_image(reference["array"], str(tmp_path / "scan.nii.gz"), ANISOTROPIC, ORIGIN, OBLIQUE)
    i0, j0, k0, i1, j1, k1 = 5, 8, 3, 30, 33, 17  # x, y, z voxel box, end exclusive
    outputs = {"labels": str(tmp_path / "labels.nrrd"), "probabilities": str(tmp_path / "probabilities.nii.gz"),
               "uncertainty": str(tmp_path / "uncertainty.nii.gz")}
    code = _segment(tiny_model_file, input_path, outputs["labels"], "--roi", *map(str, (i0, j0, k0, i1, j1, k1)),
                    "--probabilities", outputs["probabilities"], "--uncertainty", outputs["uncertainty"])
    assert code == 0
    box = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
    crop = reference["array"][box]
    inside = reference["segmenter"].segment(
        Volume(crop, Geometry(crop.shape[::-1], (1.0,) * 3, (0.0,) * 3, IDENTITY), "memory"))
    labels = np.zeros(SHAPE, np.uint8)
    labels[box] = inside.labels
    probability = np.zeros(SHAPE, np.float32)
    probability[box] = inside.foreground_probability
    _check_outputs(sitk.ReadImage(input_path), outputs, reference, labels, probability)
    outside = np.ones(SHAPE, bool)
    outside[box] = False
    uncertainty = sitk.GetArrayFromImage(sitk.ReadImage(outputs["uncertainty"]))
    # Outside the box the background is certain (0 up to the engine's 1e-8 clipping of probabilities).
    assert np.all(uncertainty[outside] < 1e-6) and uncertainty[box].min() > 1e-3


def test_roi_outside_the_image_is_bad_input(tmp_path, tiny_model_file, reference, capsys):
    input_path = write_image(reference["array"], str(tmp_path / "scan.nii.gz"), ANISOTROPIC, ORIGIN, OBLIQUE)
    output = str(tmp_path / "labels.nii.gz")
    code = _segment(tiny_model_file, input_path, output, "--roi", "50", "50", "50", "60", "60", "60")
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("semisupseg: error:") and input_path in error
    assert not os.path.exists(output)


def test_image_smaller_than_the_window(tmp_path, tiny_model_file):
    small = structured_volume((10, 12, 14), seed=4)
    input_path = write_image(small, str(tmp_path / "small.nrrd"), ANISOTROPIC, ORIGIN, RAS_FLIPPED)
    output = str(tmp_path / "labels.nii.gz")
    assert _segment(tiny_model_file, input_path, output, "--keep-largest") == 0
    assert_same_grid(sitk.ReadImage(output), sitk.ReadImage(input_path))
