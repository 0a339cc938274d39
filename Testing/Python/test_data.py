"""Reading every supported format with its geometry, the validation errors, normalisation and patch sampling
(SemiSupSegTraining.data and .manifest)."""

import os

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import (
    ANISOTROPIC,
    IDENTITY,
    RAS_FLIPPED,
    classes,
    make_image,
    oblique_direction,
    write_dicom_series,
    write_image,
    write_manifest_json,
    write_seg_nrrd,
)

from SemiSupSegTraining.data import Case, load_training_cases, PatchSampler
from SemiSupSegTraining.fileio import read_image, read_label, read_segmentation_file, values_to_indices, write_label_image
from SemiSupSegTraining.geometry import Geometry, normalize
from SemiSupSegTraining.errors import InputError
from SemiSupSegTraining.manifest import ClassInfo, load_manifest

SHAPE = (6, 9, 11)  # z, y, x: all different so that a transposed read shows
ORIGIN = (12.5, -30.25, 7.0)
OBLIQUE = oblique_direction()


def _grid(shape_zyx=SHAPE, spacing=ANISOTROPIC, origin=ORIGIN, direction=OBLIQUE) -> Geometry:
    return Geometry(tuple(shape_zyx[::-1]), tuple(spacing), tuple(origin), tuple(direction))


def _assert_geometry(geometry: Geometry, expected: Geometry, atol: float = 1e-5) -> None:
    assert tuple(geometry.size) == tuple(expected.size)
    np.testing.assert_allclose(geometry.spacing, expected.spacing, atol=atol)
    np.testing.assert_allclose(geometry.origin, expected.origin, atol=atol * 10)
    np.testing.assert_allclose(geometry.direction, expected.direction, atol=atol)
    assert expected.mismatch(geometry) is None


def _label_array(shape_zyx=SHAPE, values=(0, 1, 2)) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.choice(np.array(values, np.uint8), size=shape_zyx)


# ------------------------------------------------------------------------------------------ formats

@pytest.mark.parametrize("extension", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_read_image_and_label_in_each_format(tmp_path, extension):
    rng = np.random.default_rng(0)
    array = rng.normal(100.0, 20.0, SHAPE).astype(np.float32)
    image_path = write_image(array, str(tmp_path / f"image{extension}"), ANISOTROPIC, ORIGIN, OBLIQUE)
    label = _label_array()
    label_path = write_image(label, str(tmp_path / f"label{extension}"), ANISOTROPIC, ORIGIN, OBLIQUE)

    volume = read_image(image_path)
    assert volume.array.dtype == np.float32 and volume.array.shape == SHAPE
    np.testing.assert_array_equal(volume.array, array)
    _assert_geometry(volume.geometry, _grid())
    assert volume.path == image_path

    indices = read_label(label_path, classes("a", "b"), volume.geometry)
    assert indices.dtype == np.uint8
    np.testing.assert_array_equal(indices, label)


def test_read_integer_image_becomes_float32(tmp_path):
    array = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) - 300
    volume = read_image(write_image(array, str(tmp_path / "ct.nrrd"), ANISOTROPIC, ORIGIN, OBLIQUE))
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, array.astype(np.float32))


def test_read_dicom_series_folder(tmp_path):
    array = (np.random.default_rng(2).integers(-500, 1500, SHAPE)).astype(np.int16)
    image = make_image(array, ANISOTROPIC, ORIGIN, OBLIQUE)
    folder = write_dicom_series(image, str(tmp_path / "dicom"), modality="CT")
    volume = read_image(folder)
    np.testing.assert_array_equal(volume.array, array.astype(np.float32))
    _assert_geometry(volume.geometry, _grid(), atol=1e-4)
    # A label written on the image grid is accepted against the DICOM image's geometry.
    label = _label_array(values=(0, 1))
    label_path = write_image(label, str(tmp_path / "label.nii.gz"), ANISOTROPIC, ORIGIN, OBLIQUE)
    np.testing.assert_array_equal(read_label(label_path, classes("organ"), volume.geometry), label)


def test_dicom_folder_with_a_localiser_reads_the_scan(tmp_path):
    folder = str(tmp_path / "study")
    scout = make_image(np.full((2, 9, 11), 7, np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    write_dicom_series(scout, os.path.join(folder, "scout"))
    array = np.random.default_rng(4).integers(0, 100, SHAPE).astype(np.int16)
    write_dicom_series(make_image(array, ANISOTROPIC, ORIGIN, OBLIQUE), os.path.join(folder, "scan"))
    for sub in ("scout", "scan"):  # one flat folder, two series (distinct series UIDs)
        for name in os.listdir(os.path.join(folder, sub)):
            os.replace(os.path.join(folder, sub, name), os.path.join(folder, f"{sub}_{name}"))
        os.rmdir(os.path.join(folder, sub))
    volume = read_image(folder)
    np.testing.assert_array_equal(volume.array, array.astype(np.float32))


def test_empty_folder_is_not_a_dicom_series(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(InputError, match="no DICOM series") as e:
        read_image(str(folder))
    assert str(folder) in str(e.value)


# ----------------------------------------------------------------------------- Slicer .seg.nrrd

def test_seg_nrrd_one_layer_matched_by_name(tmp_path):
    # The file's values are in another order than the manifest's: names decide.
    layer = np.zeros(SHAPE, np.uint8)
    layer[1:3, 2:5, 3:7] = 1   # "Tumor"
    layer[3:5, 4:8, 2:9] = 2   # "liver"
    path = write_seg_nrrd([layer], [{"name": "Tumor", "value": 1}, {"name": "liver", "value": 2}],
                          str(tmp_path / "case.seg.nrrd"), ANISOTROPIC, ORIGIN, OBLIQUE)
    cls = classes("liver", "tumor")  # liver = 1, tumor = 2
    indices = read_label(path, cls, _grid())
    expected = np.zeros(SHAPE, np.uint8)
    expected[layer == 1] = 2
    expected[layer == 2] = 1
    np.testing.assert_array_equal(indices, expected)


def test_seg_nrrd_two_layers_with_overlap(tmp_path):
    liver = np.zeros(SHAPE, np.uint8)
    liver[1:5, 2:8, 2:9] = 1
    tumor = np.zeros(SHAPE, np.uint8)
    tumor[3:6, 5:9, 6:11] = 1  # overlaps the liver: segments in different layers
    assert (liver.astype(bool) & tumor.astype(bool)).any()
    segments = [{"name": "liver", "value": 1, "layer": 0}, {"name": "tumor", "value": 1, "layer": 1}]
    path = write_seg_nrrd([liver, tumor], segments, str(tmp_path / "two.seg.nrrd"), ANISOTROPIC, ORIGIN, OBLIQUE)
    assert sitk.ReadImage(path).GetNumberOfComponentsPerPixel() == 2

    image, found = read_segmentation_file(path)
    assert [name for name, _ in found] == ["liver", "tumor"]
    indices = read_label(path, classes("liver", "tumor"), _grid())
    expected = np.zeros(SHAPE, np.uint8)
    expected[liver == 1] = 1
    expected[tumor == 1] = 2  # the later segment wins where two overlap
    np.testing.assert_array_equal(indices, expected)


def test_seg_nrrd_cropped_extent_goes_back_on_the_image_grid(tmp_path):
    # Slicer saves segmentations cropped to their extent: a smaller grid whose origin is shifted.
    full = _grid()
    reference = make_image(np.zeros(SHAPE, np.float32), full.spacing, full.origin, full.direction)
    offset_xyz = (3, 2, 1)
    crop = np.zeros((3, 4, 5), np.uint8)
    crop[0, 1:3, 1:4] = 1
    crop[2, 0, 0] = 1
    crop[1, 3, 4] = 2
    shifted_origin = reference.TransformIndexToPhysicalPoint(offset_xyz)
    path = write_seg_nrrd([crop], [{"name": "organ", "value": 1}, {"name": "vessel", "value": 2}],
                          str(tmp_path / "cropped.seg.nrrd"), full.spacing, shifted_origin, full.direction)
    indices = read_label(path, classes("organ", "vessel"), full)
    assert indices.shape == SHAPE
    expected = np.zeros(SHAPE, np.uint8)
    x, y, z = offset_xyz
    expected[z:z + 3, y:y + 4, x:x + 5] = crop
    np.testing.assert_array_equal(indices, expected)


def test_seg_nrrd_segment_matching_no_class_is_an_error(tmp_path):
    layer = np.zeros(SHAPE, np.uint8)
    layer[1, 1, 1], layer[2, 2, 2] = 1, 2
    path = write_seg_nrrd([layer], [{"name": "organ", "value": 1}, {"name": "kidney", "value": 2}],
                          str(tmp_path / "x.seg.nrrd"), ANISOTROPIC, ORIGIN, OBLIQUE)
    with pytest.raises(InputError, match="kidney") as e:
        read_label(path, classes("organ"), _grid())
    assert path in str(e.value)


def test_written_seg_nrrd_reads_back(tmp_path):
    cls = classes("left atrium", "aorta")
    label = _label_array()
    path = str(tmp_path / "out.seg.nrrd")
    write_label_image(label, cls, _grid(), path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    assert reader.GetMetaData("Segment0_Name") == "left atrium"
    assert reader.GetMetaData("Segment1_LabelValue") == "2"
    np.testing.assert_array_equal(read_label(path, cls, _grid()), label)
    assert [f for f in os.listdir(tmp_path) if "partial" in f] == []


# ------------------------------------------------------------------------- label/image validation

def _write_label_with(tmp_path, name="label.nii.gz", shape=SHAPE, spacing=ANISOTROPIC, origin=ORIGIN,
                      direction=OBLIQUE, values=(0, 1)):
    return write_image(_label_array(shape, values), str(tmp_path / name), spacing, origin, direction)


@pytest.mark.parametrize("change, words", [
    ({"shape": (6, 9, 12)}, "size"),
    ({"spacing": (0.7, 1.3, 2.0)}, "spacing"),
    ({"origin": (12.5, -29.0, 7.0)}, "origin"),
    ({"direction": IDENTITY}, "direction"),
], ids=["size", "spacing", "origin", "direction"])
def test_label_off_the_image_grid_is_an_error(tmp_path, change, words):
    path = _write_label_with(tmp_path, **change)
    with pytest.raises(InputError, match=words) as e:
        read_label(path, classes("organ"), _grid())
    assert path in str(e.value)


def test_label_within_tolerance_is_accepted(tmp_path):
    nudged = tuple(o + 1e-4 for o in ORIGIN)
    path = _write_label_with(tmp_path, origin=nudged)
    assert read_label(path, classes("organ"), _grid()).shape == SHAPE


def test_label_values_not_among_the_classes(tmp_path):
    path = _write_label_with(tmp_path, values=(0, 1, 5))
    with pytest.raises(InputError, match="5") as e:
        read_label(path, classes("organ"), _grid())
    assert path in str(e.value)


def test_non_integer_label_values(tmp_path):
    label = _label_array(values=(0, 1)).astype(np.float32) * 0.5
    path = write_image(label, str(tmp_path / "label.nrrd"), ANISOTROPIC, ORIGIN, OBLIQUE)
    with pytest.raises(InputError, match="non-integer") as e:
        read_label(path, classes("organ"), _grid())
    assert path in str(e.value)


def test_values_to_indices_with_sparse_class_values():
    cls = [ClassInfo(0, "background"), ClassInfo(3, "a"), ClassInfo(7, "b")]
    values = np.array([[[0, 3, 7, 7, 3, 0]]])
    np.testing.assert_array_equal(values_to_indices(values, cls, "x"), [[[0, 1, 2, 2, 1, 0]]])


def test_2d_image_is_refused(tmp_path):
    path = str(tmp_path / "slice.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((9, 11), np.float32)), path)
    with pytest.raises(InputError, match="2D") as e:
        read_image(path)
    assert path in str(e.value)


def test_single_slice_3d_image_is_refused(tmp_path):
    path = write_image(np.zeros((1, 9, 11), np.float32), str(tmp_path / "one.nrrd"))
    with pytest.raises(InputError, match="single slice") as e:
        read_image(path)
    assert path in str(e.value)


def test_4d_image_is_refused(tmp_path):
    path = str(tmp_path / "time.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2,) + SHAPE, np.float32), isVector=False), path)
    with pytest.raises(InputError, match="4D") as e:
        read_image(path)
    assert path in str(e.value)


@pytest.mark.parametrize("extension", [".nrrd", ".mha"])
def test_vector_image_is_refused(tmp_path, extension):
    path = str(tmp_path / f"rgb{extension}")
    sitk.WriteImage(make_image(np.zeros(SHAPE + (3,), np.uint8), is_vector=True), path)
    with pytest.raises(InputError, match="values per voxel") as e:
        read_image(path)
    assert path in str(e.value)


# NIfTI is not among these: ITK's NIfTI reader itself turns NaN and inf voxels into 0 without a word.
@pytest.mark.parametrize("extension", [".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_voxels_are_refused(tmp_path, bad, extension):
    array = np.ones(SHAPE, np.float32)
    array[2, 3, 4] = bad
    path = write_image(array, str(tmp_path / f"bad{extension}"))
    with pytest.raises(InputError, match="NaN or infinite") as e:
        read_image(path)
    assert path in str(e.value)


def test_garbage_file_is_refused(tmp_path):
    path = str(tmp_path / "garbage.nii.gz")
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(700))
    with pytest.raises(InputError, match="cannot be read") as e:
        read_image(path)
    assert path in str(e.value)


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file_is_refused(tmp_path, extension):
    array = np.random.default_rng(0).normal(size=(12, 16, 16)).astype(np.float32)
    whole = write_image(array, str(tmp_path / f"whole{extension}"))
    with open(whole, "rb") as f:
        data = f.read()
    path = str(tmp_path / f"cut{extension}")
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    with pytest.raises(InputError) as e:
        read_image(path)
    assert path in str(e.value)
    np.testing.assert_array_equal(read_image(whole).array, array)  # the whole file still reads


def test_missing_file(tmp_path):
    path = str(tmp_path / "nowhere.nii.gz")
    with pytest.raises(InputError, match="does not exist") as e:
        read_image(path)
    assert path in str(e.value)


# ------------------------------------------------------------------------------------- manifests

def _manifest(tmp_path, cases, class_list=None, name="manifest.json"):
    data = {"format": "semisupseg-manifest", "version": 1, "modality": "MRI",
            "classes": class_list if class_list is not None else [{"value": 0, "name": "background"},
                                                                  {"value": 1, "name": "organ"}],
            "cases": cases}
    return write_manifest_json(str(tmp_path / name), data)


def _case_files(tmp_path, name="c1", label_values=(0, 1), with_label=True):
    shape = (8, 8, 8)
    image = write_image(np.random.default_rng(0).normal(size=shape).astype(np.float32),
                        str(tmp_path / f"{name}_image.nii.gz"))
    label = None
    if with_label:
        array = np.zeros(shape, np.uint8)
        if 1 in label_values:
            array[2:5, 2:5, 2:5] = 1
        label = write_image(array, str(tmp_path / f"{name}_label.nii.gz"))
    return image, label


def test_manifest_round_trip_resolves_relative_paths(tmp_path):
    image, label = _case_files(tmp_path)
    path = _manifest(tmp_path, [{"id": "c1", "image": os.path.basename(image), "label": os.path.basename(label)},
                                {"id": "c2", "image": os.path.basename(image)}])
    manifest = load_manifest(path)
    assert [c.id for c in manifest.labeled_cases] == ["c1"]
    assert [c.id for c in manifest.unlabeled_cases] == ["c2"]
    assert manifest.cases[0].image == image and manifest.cases[0].label == label
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    assert isinstance(labeled[0], Case) and labeled[0].label.sum() == 27 and unlabeled[0].label is None


def test_manifest_not_json(tmp_path):
    path = write_manifest_json(str(tmp_path / "m.json"), "{ not json")
    with pytest.raises(InputError, match="not valid JSON") as e:
        load_manifest(path)
    assert path in str(e.value)


def test_manifest_missing(tmp_path):
    path = str(tmp_path / "absent.json")
    with pytest.raises(InputError, match="does not exist") as e:
        load_manifest(path)
    assert path in str(e.value)


def test_manifest_case_file_missing(tmp_path):
    image, _ = _case_files(tmp_path, with_label=False)
    path = _manifest(tmp_path, [{"id": "c1", "image": image, "label": "labels/c1.nii.gz"}])
    with pytest.raises(InputError, match="does not exist") as e:
        load_manifest(path)
    assert path in str(e.value) and "c1.nii.gz" in str(e.value)


@pytest.mark.parametrize("class_list", [[], [{"value": 0, "name": "background"}], None],
                         ids=["empty", "background-only", "absent"])
def test_manifest_without_classes(tmp_path, class_list):
    image, label = _case_files(tmp_path)
    data = {"cases": [{"id": "c1", "image": image, "label": label}]}
    if class_list is not None:
        data["classes"] = class_list
    path = write_manifest_json(str(tmp_path / "m.json"), data)
    with pytest.raises(InputError, match="classes") as e:
        load_manifest(path)
    assert path in str(e.value)


def test_manifest_duplicate_case_ids(tmp_path):
    image, label = _case_files(tmp_path)
    path = _manifest(tmp_path, [{"id": "same", "image": image, "label": label}, {"id": "same", "image": image}])
    with pytest.raises(InputError, match="same") as e:
        load_manifest(path)
    assert path in str(e.value)


@pytest.mark.parametrize("case_extra, class_value, words", [
    ({"labeled": "false"}, 1, "labeled"),
    ({}, True, "integer"),
], ids=["labeled-as-string", "value-as-bool"])
def test_manifest_fields_of_the_wrong_type(tmp_path, case_extra, class_value, words):
    image, label = _case_files(tmp_path)
    path = _manifest(tmp_path, [dict({"id": "c1", "image": image, "label": label}, **case_extra)],
                     [{"value": 0, "name": "background"}, {"value": class_value, "name": "organ"}])
    with pytest.raises(InputError, match=words) as e:
        load_manifest(path)
    assert path in str(e.value)


def test_manifest_duplicate_class_values(tmp_path):
    image, label = _case_files(tmp_path)
    path = _manifest(tmp_path, [{"id": "c1", "image": image, "label": label}],
                     [{"value": 0, "name": "background"}, {"value": 1, "name": "a"}, {"value": 1, "name": "b"}])
    with pytest.raises(InputError, match="share") as e:
        load_manifest(path)
    assert path in str(e.value)


def test_manifest_without_labeled_case(tmp_path):
    image, label = _case_files(tmp_path)
    path = _manifest(tmp_path, [{"id": "c1", "image": image, "label": label, "labeled": False},
                                {"id": "c2", "image": image}])
    manifest = load_manifest(path)
    with pytest.raises(InputError, match="no labeled case") as e:
        load_training_cases(manifest, "zscore", (-120.0, 240.0))
    assert path in str(e.value)


def test_manifest_with_all_zero_label(tmp_path):
    image, label = _case_files(tmp_path, label_values=(0,))
    path = _manifest(tmp_path, [{"id": "c1", "image": image, "label": label}])
    with pytest.raises(InputError, match="empty") as e:
        load_training_cases(load_manifest(path), "zscore", (-120.0, 240.0))
    assert label in str(e.value)


def test_manifest_case_with_unreadable_image(tmp_path):
    _, label = _case_files(tmp_path)
    image = str(tmp_path / "broken.nii.gz")
    with open(image, "wb") as f:
        f.write(b"\x00not an image" * 40)
    path = _manifest(tmp_path, [{"id": "c1", "image": image, "label": label}])
    with pytest.raises(InputError) as e:
        load_training_cases(load_manifest(path), "zscore", (-120.0, 240.0))
    assert image in str(e.value)


# --------------------------------------------------------------------------------- normalisation

def test_zscore_normalisation():
    array = np.random.default_rng(0).normal(300.0, 45.0, (10, 12, 14)).astype(np.float32)
    out = normalize(array, "zscore")
    assert out.dtype == np.float32
    assert abs(float(out.mean())) < 1e-5 and abs(float(out.std()) - 1.0) < 1e-5


def test_zscore_of_a_constant_volume_is_finite():
    out = normalize(np.full((4, 4, 4), 7.0, np.float32), "zscore")
    assert np.isfinite(out).all() and np.all(out == 0)


def test_ct_window_normalisation():
    hu = np.array([-1000.0, -120.0, 0.0, 60.0, 240.0, 3000.0], np.float32)
    out = normalize(hu, "window")
    np.testing.assert_allclose(out, [0.0, 0.0, 120.0 / 360.0, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(normalize(hu, "window", (-1000.0, 1000.0))[:2], [0.0, 0.44], atol=1e-6)
    with pytest.raises(ValueError):
        normalize(hu, "minmax")


# -------------------------------------------------------------------------------- patch sampling

def _case(image, label=None):
    geometry = Geometry(tuple(image.shape[::-1]), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    return Case("c", image.astype(np.float32), label, geometry, "c.nii.gz")


def test_patch_shapes_and_types():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 40, 36)).astype(np.float32)
    label = (image > 1.0).astype(np.uint8)
    sampler = PatchSampler([_case(image, label)], (16, 32, 32), rng)
    images, labels = sampler.sample(3)
    assert images.shape == (3, 1, 16, 32, 32) and images.dtype == np.float32
    assert labels.shape == (3, 16, 32, 32) and labels.dtype == np.int64
    unlabeled = PatchSampler([_case(image)], (16, 32, 32), rng)
    images, labels = unlabeled.sample(2)
    assert images.shape == (2, 1, 16, 32, 32) and labels is None


def test_patches_of_a_small_volume_are_padded():
    image = np.arange(10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14) + 5.0
    label = np.zeros(image.shape, np.uint8)
    label[4:6, 5:7, 6:8] = 1
    sampler = PatchSampler([_case(image, label)], (16, 32, 16), np.random.default_rng(0))
    images, labels = sampler.sample(4)
    assert images.shape == (4, 1, 16, 32, 16) and labels.shape == (4, 16, 32, 16)
    for crop, crop_label in zip(images[:, 0], labels):
        # The whole volume sits inside each crop; the padding holds the image minimum and background.
        assert crop.min() == image.min() and crop.max() == image.max()
        assert np.isclose(crop.sum(), image.sum() + image.min() * (crop.size - image.size))
        assert crop_label.sum() == label.sum()
    # Only the axis that is too short is padded: z (10 → 16) and y (12 → 32); x (14 → 16) too.
    padded = sampler.images[0]
    assert padded.shape == (16, 32, 16)


def test_foreground_crops_contain_foreground():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(32, 48, 48)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[2:4, 40:43, 3:6] = 1        # a small structure near a corner
    label[28:30, 1:3, 44:46] = 2      # and a second class in the opposite corner
    sampler = PatchSampler([_case(image, label)], (16, 16, 16), rng, foreground_fraction=1.0)
    seen = set()
    for _ in range(30):
        _, labels = sampler.sample(1)
        assert labels.any()
        seen |= set(np.unique(labels).tolist()) - {0}
    assert seen == {1, 2}  # classes are drawn uniformly, not by size
    uniform = PatchSampler([_case(image, label)], (16, 16, 16), np.random.default_rng(1), foreground_fraction=0.0)
    hits = sum(bool(uniform.sample(1)[1].any()) for _ in range(30))
    assert hits < 30


def test_augmentation_keeps_image_and_label_aligned():
    rng = np.random.default_rng(0)
    image = np.random.default_rng(5).normal(size=(24, 40, 40)).astype(np.float32)
    label = (image > 0.8).astype(np.uint8)
    sampler = PatchSampler([_case(image, label)], (16, 32, 32), rng, foreground_fraction=0.5, augmentation="paper")
    for _ in range(25):
        images, labels = sampler.sample(2)
        np.testing.assert_array_equal(labels, (images[:, 0] > 0.8).astype(np.int64))
    # Flips and turns are exercised: some crop is not an unflipped crop of the volume.
    turned = 0
    for _ in range(20):
        crop = sampler.sample(1)[0][0, 0]
        found = False
        for z in range(image.shape[0] - 15):
            for y in range(image.shape[1] - 31):
                for x in range(image.shape[2] - 31):
                    if image[z, y, x] == crop[0, 0, 0] and np.array_equal(image[z:z + 16, y:y + 32, x:x + 32], crop):
                        found = True
        turned += int(not found)
    assert turned > 0


def test_paper_augmentation_is_the_crops_it_always_drew():
    """The paper's level, frozen: these three crops (values = voxel indices, so each shows where it was cut
    and how it was flipped and turned) and the generator's next draw are what version 0.1's ``augment=True``
    drew with this seed; a change to the paper's level or to the number of draws shows here."""
    image = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    label = (np.arange(4 * 6 * 6).reshape(4, 6, 6) % 3).astype(np.uint8)
    rng = np.random.default_rng(7)
    sampler = PatchSampler([_case(image, label)], (2, 4, 4), rng, foreground_fraction=0.5, augmentation="paper")
    images, labels = sampler.sample(3)
    expected = [
        [[[121, 127, 133, 139], [122, 128, 134, 140], [123, 129, 135, 141], [124, 130, 136, 142]],
         [[85, 91, 97, 103], [86, 92, 98, 104], [87, 93, 99, 105], [88, 94, 100, 106]]],
        [[[92, 86, 80, 74], [93, 87, 81, 75], [94, 88, 82, 76], [95, 89, 83, 77]],
         [[128, 122, 116, 110], [129, 123, 117, 111], [130, 124, 118, 112], [131, 125, 119, 113]]],
        [[[89, 95, 101, 107], [88, 94, 100, 106], [87, 93, 99, 105], [86, 92, 98, 104]],
         [[125, 131, 137, 143], [124, 130, 136, 142], [123, 129, 135, 141], [122, 128, 134, 140]]],
    ]
    np.testing.assert_array_equal(images[:, 0], np.array(expected, np.float32))
    np.testing.assert_array_equal(labels, np.array(expected) % 3)
    assert int(rng.integers(10 ** 6)) == 807663


def test_augmentation_with_rectangular_patches_keeps_the_shape():
    image = np.random.default_rng(3).normal(size=(20, 24, 40)).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    sampler = PatchSampler([_case(image, label)], (16, 16, 32), np.random.default_rng(0), augmentation="paper")
    for _ in range(10):
        images, labels = sampler.sample(2)
        assert images.shape == (2, 1, 16, 16, 32)
        np.testing.assert_array_equal(labels, (images[:, 0] > 0.5).astype(np.int64))


def test_geometry_round_trip_and_mismatch_words():
    grid = _grid()
    image = grid.to_image(np.zeros(SHAPE, np.uint8))
    assert Geometry.of(image).mismatch(grid) is None
    assert grid.to_dict()["size"] == list(SHAPE[::-1])
    with pytest.raises(ValueError):
        grid.to_image(np.zeros((2, 2, 2), np.uint8))
    flipped = Geometry(grid.size, grid.spacing, grid.origin, RAS_FLIPPED)
    assert "direction" in grid.mismatch(flipped)


# ------------------------------------------------------------------------------------ phantoms

def test_phantom_dataset_is_readable_and_labeled(tmp_path):
    from SemiSupSegTraining.phantoms import make_phantom, write_phantom_dataset

    train, test = write_phantom_dataset(str(tmp_path), labeled=1, unlabeled=1, test=1, shape_zyx=(16, 32, 32),
                                        spacing=(0.8, 0.8, 1.5), num_classes=3)
    manifest = load_manifest(train)
    assert [c.name for c in manifest.classes] == ["background", "left atrium", "aorta"]
    assert len(manifest.labeled_cases) == 1 and len(manifest.unlabeled_cases) == 1
    assert manifest.unlabeled_cases[0].label is not None  # kept on disk for evaluation, hidden from training
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    assert set(np.unique(labeled[0].label)) == {0, 1, 2}
    assert labeled[0].geometry.spacing == pytest.approx((0.8, 0.8, 1.5)) and labeled[0].image.shape == (16, 32, 32)
    assert len(load_manifest(test).labeled_cases) == 1
    image, label = make_phantom(0, (16, 32, 32))
    again, label_again = make_phantom(0, (16, 32, 32))
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(label, label_again)
    assert image[label == 1].mean() > image[label == 0].mean()


def test_manifest_written_with_relative_paths_reads_back(tmp_path):
    from SemiSupSegTraining.manifest import Manifest, default_classes, write_manifest
    from SemiSupSegTraining.manifest import CaseEntry

    image, label = _case_files(tmp_path)
    manifest = Manifest(default_classes(["organ"]), [CaseEntry("c1", image, label),
                                                      CaseEntry("c2", image, label, labeled=False)], "CT")
    path = write_manifest(manifest, str(tmp_path / "sub" / "manifest.json"))
    with open(path) as f:
        text = f.read()
    assert str(tmp_path) not in text and "../c1_image.nii.gz" in text
    again = load_manifest(path)
    assert again.modality == "CT" and [c.image for c in again.cases] == [image, image]
    assert [c.is_labeled for c in again.cases] == [True, False]
