"""The geometry stage (``SemiSupSegTraining/geometry.py``): canonical orientation, the training set's target
spacing (nnU-Net's rule), resampling there and back.

One tiny model is trained once (a module fixture) on phantoms stored in several orientations and spacings;
the same physical phantom, stored in other orientations, spacings and an oblique direction, must then
segment within 1 Dice point of its native grid, each output exactly on its own input's grid."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import assert_same_grid, oblique_direction, read_array

from SemiSupSegTraining import fileio, geometry
from SemiSupSegTraining.cli import main
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.data import load_training_cases
from SemiSupSegTraining.fileio import Volume, write_image_atomic, write_label_image
from SemiSupSegTraining.errors import InputError
from SemiSupSegTraining.geometry import Geometry
from SemiSupSegTraining.infer import Segmenter
from SemiSupSegTraining.manifest import CaseEntry, Manifest, load_manifest, write_manifest
from SemiSupSegTraining.metrics import overlap
from SemiSupSegTraining.modelfile import load_trusted_data, read_metadata, save_model
from SemiSupSegTraining.phantoms import phantom_classes, phantom_grid, physical_phantom

# (seed, orientation, spacing per physical axis x, y, z, labeled): a mix of orientations and spacings whose
# median spacing is 1 mm on every axis.
TRAINING_CASES = [(1, "LPS", (1.0, 1.0, 1.0), True), (2, "PIR", (1.0, 1.0, 1.0), True),
                  (3, "ASL", (1.0, 1.0, 1.0), True), (4, "RAS", (0.8, 0.8, 1.6), False),
                  (5, "LSA", (1.25, 1.25, 1.25), False)]
TEST_SEED = 100
VARIANTS = {
    "LPS": ("LPS", (1.0, 1.0, 1.0)), "coronal LSA": ("LSA", (1.0, 1.0, 1.0)),
    "sagittal ASL": ("ASL", (1.0, 1.0, 1.0)), "PIR": ("PIR", (1.0, 1.0, 1.0)), "RAS": ("RAS", (1.0, 1.0, 1.0)),
    "finer 0.7 mm": ("LPS", (0.7, 0.7, 0.7)), "anisotropic 0.8x0.8x2": ("LPS", (0.8, 0.8, 2.0)),
    "coarser 1.5 mm": ("LPS", (1.5, 1.5, 1.5)), "sagittal anisotropic": ("ASL", (2.0, 0.8, 0.8)),
}


def _write_case(folder, name, grid, seed):
    image, label = physical_phantom(grid, seed)
    image_path, label_path = os.path.join(folder, f"{name}.nii.gz"), os.path.join(folder, f"{name}-label.nii.gz")
    write_image_atomic(grid.to_image(image), image_path)
    write_label_image(label, phantom_classes(), grid, label_path)
    return image_path, label_path, label


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The mixed training set and a tiny model trained on it (supervised: the stage, not the method, is tested)."""
    folder = str(tmp_path_factory.mktemp("geometry"))
    entries = []
    for seed, code, spacing, labeled in TRAINING_CASES:
        image, label, _ = _write_case(folder, f"case{seed}", phantom_grid(spacing, code), seed)
        entries.append(CaseEntry(f"case{seed}", image, label, labeled=labeled))
    manifest = write_manifest(Manifest(phantom_classes(), entries, "MRI"), os.path.join(folder, "train.json"))
    config = preset_config("tiny", {"iterations": 60, "method": "supervised", "batch_labeled": 2,
                                    "checkpoint_every": 1000, "device": "cpu"})
    from SemiSupSegTraining.train import train

    model = train(manifest, os.path.join(folder, "run"), config, progress="none")
    native = phantom_grid()
    image, label = physical_phantom(native, TEST_SEED)
    result = Segmenter(model, "cpu").segment(Volume(image, native, "native"))
    return {"folder": folder, "manifest": manifest, "model": model, "native_dice": dice(result.labels == 1, label == 1)}


def dice(prediction, reference):
    return overlap(prediction, reference)["dice"]


def _segment(model, input_path, output_path, *extra):
    return main(["segment", "--model", model, "--input", input_path, "--output", output_path,
                 "--device", "cpu", "--progress", "none", *extra])


def test_mixed_training_records_target_spacing_and_orientation(mixed, capsys):
    meta = read_metadata(mixed["model"])
    # The median of the five cases' spacings per canonical axis: x, y (0.8, 1, 1, 1, 1.25), z (1, 1, 1, 1.25, 1.6).
    assert meta["geometry"]["orientation"] == "LPS"
    assert meta["geometry"]["target_spacing"] == pytest.approx([1.0, 1.0, 1.0])
    assert meta["geometry"]["target_spacing_setting"] == "auto"
    assert meta["geometry"]["fingerprint"]["cases"] == 5
    assert meta["geometry"]["fingerprint"]["max_spacing"] == pytest.approx([1.25, 1.25, 1.6])
    assert main(["info", "--model", mixed["model"]]) == 0
    assert json.loads(capsys.readouterr().out)["geometry"]["target_spacing"] == pytest.approx([1.0, 1.0, 1.0])
    assert mixed["native_dice"] > 0.5  # the model learned something: the comparisons below mean something


def test_training_cases_arrive_canonical_at_the_target_spacing(mixed):
    manifest = load_manifest(mixed["manifest"])
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0), canonical=True,
                                             target_spacing=(1.0, 1.0, 1.0))
    native_label = physical_phantom(phantom_grid(), 1)[1]
    for case in labeled + unlabeled:
        assert case.geometry.direction == pytest.approx(np.eye(3).ravel())
        assert case.geometry.spacing == pytest.approx((1.0, 1.0, 1.0))
        assert case.image.shape == (48, 64, 64) and case.image.dtype == np.float32  # 48 x 64 x 64 mm at 1 mm
    # The LPS case at 1 mm is untouched; the PIR case at 1 mm is a permutation: exactly its own label.
    np.testing.assert_array_equal(labeled[0].label, native_label)
    np.testing.assert_array_equal(labeled[1].label, physical_phantom(phantom_grid(), 2)[1])


@pytest.mark.parametrize("variant", list(VARIANTS) + ["oblique"])
def test_variant_segments_within_two_dice_points_on_its_own_grid(mixed, tmp_path, variant):
    if variant == "oblique":
        grid = phantom_grid(direction=oblique_direction(0.3))
    else:
        grid = phantom_grid(VARIANTS[variant][1], VARIANTS[variant][0])
    image_path, _, label = _write_case(str(tmp_path), "scan", grid, TEST_SEED)
    outputs = {"labels": str(tmp_path / "labels.nrrd"), "probabilities": str(tmp_path / "probabilities.nii.gz"),
               "uncertainty": str(tmp_path / "uncertainty.nii.gz"), "disagreement": str(tmp_path / "disagreement.mha")}
    code = _segment(mixed["model"], image_path, outputs["labels"], "--probabilities", outputs["probabilities"],
                    "--uncertainty", outputs["uncertainty"], "--disagreement", outputs["disagreement"])
    assert code == 0
    input_image = sitk.ReadImage(image_path)
    for path in outputs.values():
        assert_same_grid(sitk.ReadImage(path), input_image)
    labels = read_array(outputs["labels"])
    probability = read_array(outputs["probabilities"])
    assert set(np.unique(labels)) <= {0, 1}
    np.testing.assert_array_equal(labels == 1, probability > 0.5)  # the argmax of the probabilities it wrote
    # Within 2 points: this 60-iteration model (Dice ~0.72) has soft boundaries, which a 1.5× coarser grid
    # moves by up to ~1.5 points (AVX2 CPU); without the stage another grid costs 6-13 points.
    assert abs(dice(labels == 1, label == 1) - mixed["native_dice"]) < 0.02


def test_roi_stays_in_the_input_index_space(mixed, tmp_path):
    grid = phantom_grid((0.8, 0.8, 2.0), "PIR")  # index axes: P (y), I (-z), R (-x)
    image_path, _, _ = _write_case(str(tmp_path), "scan", grid, TEST_SEED)
    box_xyz = (3, 5, 10, 40, 22, 70)  # i0 j0 k0 i1 j1 k1 of the input's own voxels
    output = str(tmp_path / "labels.nii.gz")
    probabilities = str(tmp_path / "probabilities.nii.gz")
    assert _segment(mixed["model"], image_path, output, "--roi", *map(str, box_xyz),
                    "--probabilities", probabilities) == 0
    box = tuple(slice(box_xyz[a], box_xyz[a + 3]) for a in (2, 1, 0))
    image = read_array(image_path, np.float32)
    read_grid = Geometry.of(sitk.ReadImage(image_path))  # NIfTI stores the grid in float32
    inside = Segmenter(mixed["model"], "cpu").segment(Volume(image[box].copy(), read_grid.crop(box), "crop"))
    expected = np.zeros(image.shape, np.float32)
    expected[box] = inside.foreground_probability
    np.testing.assert_allclose(read_array(probabilities), expected, atol=1e-5)
    outside = np.ones(image.shape, bool)
    outside[box] = False
    assert not read_array(output)[outside].any() and read_array(output)[box].any()


def test_older_model_file_segments_on_the_native_grid(mixed, tmp_path):
    data = load_trusted_data(mixed["model"])
    meta = {k: v for k, v in data["metadata"].items() if k != "geometry"}  # as written before the stage
    older = save_model(str(tmp_path / "older.pt"), data["weights_a"], data["weights_b"], meta)
    grid = phantom_grid((0.8, 0.8, 2.0), "PIR")
    image = physical_phantom(grid, TEST_SEED)[0]
    segmenter = Segmenter(older, "cpu")
    assert segmenter.geometry is None
    result = segmenter.segment(Volume(image, grid, "scan"))
    probabilities, _ = segmenter.predict(segmenter.normalize(image))  # the voxel array as it is, no resampling
    np.testing.assert_allclose(result.probabilities, probabilities, atol=1e-6)


def test_oblique_image_round_trips_exactly_when_only_reoriented():
    direction = np.array(oblique_direction(0.5)).reshape(3, 3) @ np.diag([1.0, -1.0, 1.0])  # also left-handed
    grid = Geometry((20, 16, 12), (0.9, 1.1, 2.0), (10.0, -20.0, 30.0), tuple(direction.ravel()))
    array = np.random.default_rng(0).normal(size=(12, 16, 20)).astype(np.float32)
    canonical, canonical_grid = geometry.to_canonical(array, grid, None)
    assert geometry.orientation_code(canonical_grid.direction) == "LPS"
    assert canonical_grid.spacing == pytest.approx(geometry.canonical_spacing(grid.spacing, grid.direction))
    np.testing.assert_array_equal(geometry.to_grid(canonical, canonical_grid, grid), array)
    # Resampled to 1 mm and back, a smooth image comes back close (linear interpolation both ways).
    smooth = physical_phantom(grid, 0, extent_mm=(20, 20, 20), noise=0.0)[0]
    resampled, resampled_grid = geometry.to_canonical(smooth, grid, (1.0, 1.0, 1.0))
    assert resampled_grid.spacing == (1.0, 1.0, 1.0)
    back = geometry.to_grid(resampled, resampled_grid, grid)
    assert np.abs(back - smooth).mean() < 0.05 * np.abs(smooth - smooth.mean()).mean()


@pytest.mark.parametrize("spacing", [(0.5, 0.5, 0.5), (1.6, 1.6, 1.6), (0.6, 0.9, 3.1)])
def test_labels_never_gain_a_class(spacing):
    # Classes 1 and 3 touch; class 2 exists nowhere. Linear interpolation would put 2 between them.
    label = np.zeros((16, 20, 24), np.uint8)
    label[4:12, 5:15, 3:12] = 1
    label[4:12, 5:15, 12:21] = 3
    grid = Geometry((24, 20, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    resampled, new_grid = geometry.to_canonical(label, grid, spacing, label=True)
    assert set(np.unique(resampled)) == {0, 1, 3}
    linear = geometry.resample(sitk.Cast(grid.to_image(label), sitk.sitkFloat32), new_grid, sitk.sitkLinear)
    between = sitk.GetArrayFromImage(linear)
    assert np.any((between > 1.01) & (between < 2.99))  # values between 1 and 3: what label interpolation avoids


def test_target_spacing_rule_isotropic():
    assert geometry.target_spacing_rule([[1.0, 1.0, 1.0], [0.8, 0.8, 0.8], [1.2, 1.2, 1.2]]) == pytest.approx((1, 1, 1))
    assert geometry.target_spacing_rule([[0.6, 0.7, 0.6], [1.0, 0.9, 1.0]]) == pytest.approx((0.8, 0.8, 0.8))


def test_target_spacing_rule_anisotropic():
    in_plane = [0.7, 0.7]
    z = [1.5, 2.5, 5.0, 5.0, 5.0]  # median 5.0 > 3 x 0.7: anisotropic
    spacings = [in_plane + [s] for s in z]
    # The coarse axis takes the 10th percentile: position 0.4 between 1.5 and 2.5 -> 1.9.
    assert geometry.target_spacing_rule(spacings) == pytest.approx((0.7, 0.7, 1.9))
    # nnU-Net also asks for the coarse axis to be short in voxels; with as many slices as rows it is not.
    assert geometry.target_spacing_rule(spacings, [[100, 100, 100]] * 5) == pytest.approx((0.7, 0.7, 5.0))
    assert geometry.target_spacing_rule(spacings, [[256, 256, 40]] * 5) == pytest.approx((0.7, 0.7, 1.9))
    # Never finer than the in-plane spacing: (0.5, 0.5, 4, 4, 4) -> 10th percentile 0.5 -> 1.0.
    assert geometry.target_spacing_rule([[1.0, 1.0, s] for s in (0.5, 0.5, 4, 4, 4)]) == pytest.approx((1, 1, 1))
    # The coarse axis found in any position (sagittal stacks): x here.
    assert geometry.target_spacing_rule([[s, 0.7, 0.7] for s in z]) == pytest.approx((1.9, 0.7, 0.7))


def test_fingerprint_reads_headers_in_the_canonical_axis_order(tmp_path):
    paths = []
    for code, spacing in (("PIR", (0.5, 2.0, 1.0)), ("LPS", (0.5, 0.5, 3.0))):
        direction = sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code)
        image = Geometry((6, 7, 8), spacing, (0.0, 0.0, 0.0), direction).to_image(np.zeros((8, 7, 6), np.float32))
        paths.append(str(tmp_path / f"{code}.nrrd"))
        sitk.WriteImage(image, paths[-1])
    prints = geometry.fingerprint(fileio.read_headers(paths))
    # PIR: index i runs along y (P), j along z (I), k along x (R).
    np.testing.assert_allclose(prints.spacings, [[1.0, 0.5, 2.0], [0.5, 0.5, 3.0]])
    np.testing.assert_array_equal(prints.sizes, [[8, 6, 7], [6, 7, 8]])


def test_target_spacing_setting():
    assert preset_config("tiny").target_spacing == "auto"
    assert preset_config("tiny", {"target_spacing": "native"}).target_spacing == "native"
    assert preset_config("tiny", {"target_spacing": "0.7,0.7,2.5"}).target_spacing == [0.7, 0.7, 2.5]
    assert preset_config("tiny", {"target_spacing": [1, 1, 2]}).target_spacing == [1.0, 1.0, 2.0]
    for bad in ("fast", "1,2", [0.0, 1.0, 1.0], "a,b,c"):
        with pytest.raises(InputError, match="target_spacing"):
            preset_config("tiny", {"target_spacing": bad})


def test_model_file_with_bad_geometry_is_refused(mixed, tmp_path):
    data = load_trusted_data(mixed["model"])
    meta = dict(data["metadata"], geometry={"orientation": "LPS", "target_spacing": "fast"})
    path = save_model(str(tmp_path / "bad.pt"), data["weights_a"], data["weights_b"], meta)
    with pytest.raises(InputError, match="geometry"):
        read_metadata(path)


def test_native_setting_trains_on_reoriented_native_grids(mixed, tmp_path):
    config = preset_config("tiny", {"iterations": 1, "method": "supervised", "target_spacing": "native",
                                    "device": "cpu"})
    from SemiSupSegTraining.train import train

    torch.manual_seed(0)
    model = train(mixed["manifest"], str(tmp_path / "run"), config, progress="none")
    meta = read_metadata(model)
    assert meta["geometry"]["target_spacing"] is None and meta["geometry"]["orientation"] == "LPS"
    assert Segmenter(model, "cpu").geometry == ("LPS", None)
