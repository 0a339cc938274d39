"""Tests of SemiSupSegTraining.datasets and its command line (prepare.py): small synthetic copies of the
paper's dataset layouts (left-atrium nrrd and h5 folders, NIH Pancreas-CT DICOM series with NIfTI labels)
turned into volumes, manifests and folds; geometry kept through crops; clear errors for broken inputs; a
fold manifest that train accepts."""

import argparse
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from SemiSupSegTraining.cli import main
from SemiSupSegTraining.data import load_case
from SemiSupSegTraining.datasets.folds import contiguous_folds, make_folds
from SemiSupSegTraining.datasets.grids import crop_box
from SemiSupSegTraining.datasets.la import find_la_cases, prepare_la
from SemiSupSegTraining.datasets.pancreas import prepare_pancreas
from SemiSupSegTraining.errors import InputError
from SemiSupSegTraining.manifest import load_manifest
from SemiSupSegTraining.prepare import add_prepare_parser, run_prepare
from SemiSupSegTraining.progress import Reporter

SIZE = (32, 32, 16)                                   # x, y, z
LA_SPACING = (0.625, 0.625, 1.25)
LA_ORIGIN = (10.0, -20.0, 5.0)
LA_DIRECTION = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)   # x flipped: the crop must follow it
LA_BOX = ((10, 18), (12, 20), (4, 10))                # label box, x y z (start inclusive, stop exclusive)
PANCREAS_BOX = ((12, 18), (10, 16), (5, 10))
PANCREAS_HU = 45


def _box_mask(box, size=SIZE):
    mask = np.zeros(size[::-1], np.uint8)
    (x0, x1), (y0, y1), (z0, z1) = box
    mask[z0:z1, y0:y1, x0:x1] = 1
    return mask


def _image(array_zyx, spacing, origin, direction=None):
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _la_image(seed):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 80, SIZE[::-1]).astype(np.uint8)
    array[_box_mask(LA_BOX) > 0] += 120
    return _image(array, LA_SPACING, LA_ORIGIN, LA_DIRECTION)


def _write_la_nrrd(root, count=6):
    for i in range(count):
        folder = root / f"case{i + 1:02d}"
        folder.mkdir(parents=True)
        sitk.WriteImage(_la_image(i), str(folder / "lgemri.nrrd"))
        label = _image(_box_mask(LA_BOX) * 255, LA_SPACING, LA_ORIGIN, LA_DIRECTION)
        sitk.WriteImage(label, str(folder / "laendo.nrrd"))
    return root


def _write_h5(path, image_xyz, label_xyz=None):
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image_xyz)
        if label_xyz is not None:
            f.create_dataset("label", data=label_xyz)


def _h5_arrays(seed, shape_xyz=(32, 28, 16)):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape_xyz).astype(np.float32)
    label = np.zeros(shape_xyz, np.uint8)
    label[8:20, 6:15, 3:12] = 1
    return image, label


def _write_dicom_series(folder, hu_zyx, spacing, origin, uid):
    """One CT series, a file per slice, written by SimpleITK with the tags a reader needs."""
    folder.mkdir(parents=True)
    volume = _image(hu_zyx.astype(np.int16), spacing, origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study, series = f"1.2.826.0.1.3680043.2.1125.{uid}", f"1.2.826.0.1.3680043.2.1125.{uid}.2"
    for k in range(volume.GetDepth()):
        slice_ = volume[:, :, k]
        position = "\\".join(f"{v:.6f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in (("0008|0060", "CT"), ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"),
                           ("0008|0018", f"{series}.{k + 1}"), ("0020|000d", study), ("0020|000e", series),
                           ("0010|0020", f"P{uid}"), ("0020|0013", str(k + 1)), ("0020|0032", position),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0018|0050", str(spacing[2]))):
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(slice_)


def _read_series(folder):
    reader = sitk.ImageSeriesReader()
    for dirpath, _, files in os.walk(folder):
        if files:
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(dirpath))
            return reader.Execute()
    raise AssertionError(folder)


def _pancreas_hu(seed):
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 400, SIZE[::-1]).astype(np.int16)
    hu[_box_mask(PANCREAS_BOX) > 0] = PANCREAS_HU
    return hu


def _write_pancreas(root, count=5, with_labels=True):
    images, labels = root / "Pancreas-CT", root / "labels"
    labels.mkdir(parents=True)
    for n in range(1, count + 1):
        case = images / f"PANCREAS_{n:04d}"
        _write_dicom_series(case / "1.2.3-study" / "4.5.6-series", _pancreas_hu(n), (0.7, 0.7, 2.5),
                            (-120.0, 80.0, -300.0 + n), n)
        if with_labels:
            grid = _read_series(case)
            label = sitk.GetImageFromArray(_box_mask(PANCREAS_BOX))
            label.CopyInformation(grid)
            sitk.WriteImage(label, str(labels / f"label{n:04d}.nii.gz"))
    return images, labels


def _folds(output):
    with open(os.path.join(output, "folds.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def la_nrrd(tmp_path_factory):
    return _write_la_nrrd(tmp_path_factory.mktemp("la") / "Training Set")


@pytest.fixture(scope="module")
def pancreas(tmp_path_factory):
    return _write_pancreas(tmp_path_factory.mktemp("pancreas"))


@pytest.fixture(scope="module")
def pancreas_prepared(pancreas, tmp_path_factory):
    out = tmp_path_factory.mktemp("pancreas_out")
    prepare_pancreas(str(pancreas[0]), str(pancreas[1]), str(out), labeled=[2], margin=2,
                     min_crop_size=(0, 0, 0))
    return out


# ------------------------------------------------------------------------------------------- folds

def test_folds_standard_split_and_partition():
    ids = [f"c{i:03d}" for i in range(100)]
    folds = contiguous_folds(ids, 5)
    assert folds[0] == (ids[:80], ids[80:])               # fold 0: the standard 80/20 split
    tests = [t for _, t in folds]
    assert sorted(sum(tests, [])) == ids                   # every case is tested exactly once
    for train, test in folds:
        assert not set(train) & set(test) and len(train) + len(test) == 100
    data = make_folds(ids, 5, [8, 16], "la")
    assert data["folds"][0]["labeled"] == {"8": ids[:8], "16": ids[:16]}
    assert [t for _, t in folds[1:]] == [ids[0:20], ids[20:40], ids[40:60], ids[60:80]]
    pids = [f"PANCREAS_{i:04d}" for i in range(1, 83)]
    pancreas = contiguous_folds(pids, 4)                 # the reference code's pancreas folds
    assert [t for _, t in pancreas] == [pids[62:], pids[:20], pids[20:41], pids[41:62]]
    assert pancreas[2][0] == pids[:20] + pids[41:]        # training cases stay sorted


def test_fold_lists_from_reference_files(tmp_path):
    ids = [f"PANCREAS_{i:04d}" for i in range(1, 9)]
    lists = tmp_path / "Flods"
    lists.mkdir()
    (lists / "train0.list").write_text("".join(f"{i}.h5\n" for i in ids[5:] + ids[:3]))
    (lists / "test0.list").write_text("".join(f"{i}.h5\n" for i in ids[3:5]))
    (lists / "train1.list").write_text("\n".join(ids[2:]) + "\n")
    (lists / "test1.list").write_text("\n".join(ids[:2]) + "\n")
    data = make_folds(ids, 4, [2], "pancreas", str(lists))
    assert len(data["folds"]) == 2
    assert data["folds"][0]["test"] == ids[3:5]
    assert data["folds"][0]["labeled"]["2"] == ids[5:7]    # the file's order, not sorted
    (lists / "test1.list").write_text("PANCREAS_0099\n")
    with pytest.raises(InputError, match=r"test1.list names case 'PANCREAS_0099'"):
        make_folds(ids, 4, [2], "pancreas", str(lists))
    (lists / "test1.list").write_text(ids[2] + "\n")
    with pytest.raises(InputError, match=r"share case 'PANCREAS_0003'"):
        make_folds(ids, 4, [2], "pancreas", str(lists))


def test_folds_refuse_impossible_requests():
    with pytest.raises(InputError, match="folds need at least 5"):
        make_folds(["a", "b", "c"], 5, [1], "la")
    with pytest.raises(InputError, match="smaller --labeled"):
        make_folds([f"c{i}" for i in range(10)], 5, [9], "la")


def test_crop_box_margin_widening_and_clipping():
    mask = _box_mask(((10, 14), (12, 20), (4, 10)))
    assert crop_box(mask, (2, 2, 0), (0, 0, 0), (True, True, False)) == ((8, 10, 0), (16, 22, 16))
    assert crop_box(mask, (0, 0, 0), (10, 0, 0)) == ((7, 12, 4), (17, 20, 10))   # widened, centred
    assert crop_box(mask, (30, 0, 0), (0, 0, 0)) == ((0, 12, 4), (32, 20, 10))   # clipped to the volume


# ------------------------------------------------------------------------------------- left atrium

def test_la_nrrd_full_volumes(la_nrrd, tmp_path):
    out = tmp_path / "out"
    path = prepare_la(str(la_nrrd), str(out), labeled=[2, 3])
    manifest = load_manifest(path)
    assert manifest.modality == "MRI" and manifest.class_names == ["background", "left atrium"]
    assert [c.id for c in manifest.cases] == [f"case{i:02d}" for i in range(1, 7)]
    assert all(c.is_labeled for c in manifest.cases)
    image = sitk.ReadImage(manifest.cases[0].image)
    source = _la_image(0)
    assert image.GetSize() == SIZE
    np.testing.assert_allclose(image.GetOrigin(), source.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), LA_DIRECTION, atol=1e-6)
    array = sitk.GetArrayFromImage(image)
    assert array.dtype == np.float32 and abs(array.mean()) < 1e-4 and abs(array.std() - 1) < 1e-3   # z-scored
    label = sitk.GetArrayFromImage(sitk.ReadImage(manifest.cases[0].label))
    assert set(np.unique(label)) == {0, 1}                 # 255 became 1
    np.testing.assert_array_equal(label, _box_mask(LA_BOX))


def test_la_nrrd_crop_keeps_physical_positions(la_nrrd, tmp_path):
    out = tmp_path / "out"
    path = prepare_la(str(la_nrrd), str(out), labeled=[2], crop_margin=3, min_crop_xy=(0, 0))
    case = load_manifest(path).cases[0]
    image, label = sitk.ReadImage(case.image), sitk.ReadImage(case.label)
    start = (LA_BOX[0][0] - 3, LA_BOX[1][0] - 3, 0)
    assert image.GetSize() == (LA_BOX[0][1] - LA_BOX[0][0] + 6, LA_BOX[1][1] - LA_BOX[1][0] + 6, SIZE[2])
    expected = np.asarray(LA_ORIGIN) + np.asarray(LA_DIRECTION).reshape(3, 3) @ (np.asarray(start) * LA_SPACING)
    np.testing.assert_allclose(image.GetOrigin(), expected, atol=1e-5)
    np.testing.assert_allclose(label.GetOrigin(), expected, atol=1e-5)
    source = _la_image(0)
    inside = source.TransformIndexToPhysicalPoint((LA_BOX[0][0], LA_BOX[1][0], LA_BOX[2][0]))
    outside = source.TransformIndexToPhysicalPoint((LA_BOX[0][0] - 1, LA_BOX[1][0], LA_BOX[2][0]))
    assert label[label.TransformPhysicalPointToIndex(inside)] == 1
    assert label[label.TransformPhysicalPointToIndex(outside)] == 0
    record = json.load(open(out / "prepare.json"))["cases"][0]
    assert record["crop_start"] == list(start) and record["crop_stop"][2] == SIZE[2]


def test_la_folds_and_fold_manifests(la_nrrd, tmp_path):
    out = tmp_path / "out"
    prepare_la(str(la_nrrd), str(out), labeled=[2, 3])
    data = _folds(out)
    ids = [f"case{i:02d}" for i in range(1, 7)]
    assert data["cases"] == ids and len(data["folds"]) == 5
    assert [f["test"] for f in data["folds"]] == [["case06"], ["case01"], ["case02"], ["case03"],
                                                  ["case04", "case05"]]
    for fold in data["folds"]:
        k = fold["fold"]
        assert not set(fold["train"]) & set(fold["test"])
        assert sorted(fold["train"] + fold["test"]) == ids
        test = load_manifest(str(out / f"fold{k}_test.json"))
        assert [c.id for c in test.cases] == fold["test"] and all(c.is_labeled for c in test.cases)
        for n in (2, 3):
            train = load_manifest(str(out / f"fold{k}_labeled{n}_train.json"))
            assert [c.id for c in train.cases] == fold["train"]
            assert [c.id for c in train.labeled_cases] == fold["train"][:n] == fold["labeled"][str(n)]
            assert all(c.label is not None for c in train.unlabeled_cases)   # kept, hidden from training
            assert fold["manifests"]["train"][str(n)] == f"fold{k}_labeled{n}_train.json"


def test_la_h5_layout(tmp_path):
    root = tmp_path / "h5"
    for i in range(6):
        _write_h5(root / f"case{i:02d}" / "mri_norm2.h5", *_h5_arrays(i))
    out = tmp_path / "out"
    manifest = load_manifest(prepare_la(str(root), str(out), labeled=[1]))
    image = sitk.ReadImage(manifest.cases[2].image)
    source_image, source_label = _h5_arrays(2)
    assert image.GetSize() == (32, 28, 16) and image.GetSpacing() == (0.625, 0.625, 0.625)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), source_image.transpose(2, 1, 0))
    label = sitk.GetArrayFromImage(sitk.ReadImage(manifest.cases[2].label))
    np.testing.assert_array_equal(label, source_label.transpose(2, 1, 0))
    assert json.load(open(out / "prepare.json"))["layout"] == "h5"
    with pytest.raises(InputError, match="already cropped"):
        prepare_la(str(root), str(tmp_path / "again"), labeled=[1], crop_margin=10)


def test_la_autodetect_prefers_nrrd_when_both(la_nrrd, tmp_path):
    layout, cases = find_la_cases(str(la_nrrd))
    assert layout == "nrrd" and len(cases) == 6
    with pytest.raises(InputError, match="no case folder with mri_norm2.h5"):
        find_la_cases(str(la_nrrd), "h5")


def test_la_missing_label_file(tmp_path):
    root = _write_la_nrrd(tmp_path / "la", count=5)
    os.remove(root / "case03" / "laendo.nrrd")
    with pytest.raises(InputError, match=r"case03 has lgemri.nrrd but no laendo.nrrd"):
        prepare_la(str(root), str(tmp_path / "out"), labeled=[1])
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_la_h5_without_label(tmp_path):
    root = tmp_path / "h5"
    for i in range(5):
        image, label = _h5_arrays(i)
        _write_h5(root / f"case{i}" / "mri_norm2.h5", image, None if i == 1 else label)
    with pytest.raises(InputError, match=r"case1.mri_norm2.h5 has no dataset 'label'"):
        prepare_la(str(root), str(tmp_path / "out"), labeled=[1])


def test_la_label_with_other_values_or_grid(tmp_path):
    root = _write_la_nrrd(tmp_path / "la", count=5)
    label = _image(_box_mask(LA_BOX) * 7, LA_SPACING, LA_ORIGIN, LA_DIRECTION)
    sitk.WriteImage(label, str(root / "case02" / "laendo.nrrd"))
    with pytest.raises(InputError, match=r"laendo.nrrd has value\(s\) 7"):
        prepare_la(str(root), str(tmp_path / "out"), labeled=[1])
    sitk.WriteImage(_image(_box_mask(LA_BOX) * 255, (1.0, 1.0, 1.0), LA_ORIGIN, LA_DIRECTION),
                    str(root / "case02" / "laendo.nrrd"))
    with pytest.raises(InputError, match="does not lie on the grid of its image .*pick the label") as error:
        prepare_la(str(root), str(tmp_path / "out"), labeled=[1])
    assert "--label-on-image-grid" not in str(error.value)       # an option of 'prepare pancreas' only


# ---------------------------------------------------------------------------------------- pancreas

def test_pancreas_hu_kept_cropped_and_aligned(pancreas, pancreas_prepared):
    manifest = load_manifest(str(pancreas_prepared / "manifest.json"))
    assert manifest.modality == "CT" and manifest.class_names == ["background", "pancreas"]
    assert [c.id for c in manifest.cases] == [f"PANCREAS_{n:04d}" for n in range(1, 6)]
    case = manifest.cases[2]                              # PANCREAS_0003
    image, label = sitk.ReadImage(case.image), sitk.ReadImage(case.label)
    source = _read_series(pancreas[0] / "PANCREAS_0003")
    start = tuple(b[0] - 2 for b in PANCREAS_BOX)
    stop = tuple(b[1] + 2 for b in PANCREAS_BOX)
    assert image.GetSize() == tuple(b - a for a, b in zip(start, stop))
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_allclose(image.GetOrigin(), source.TransformIndexToPhysicalPoint(start), atol=1e-4)
    hu = _pancreas_hu(3)[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)         # Hounsfield units, untouched
    labels = sitk.GetArrayFromImage(label)
    assert set(np.unique(labels)) == {0, 1}
    assert (sitk.GetArrayFromImage(image)[labels == 1] == PANCREAS_HU).all()
    point = source.TransformIndexToPhysicalPoint(tuple(b[0] for b in PANCREAS_BOX))
    assert label[label.TransformPhysicalPointToIndex(point)] == 1
    loaded = load_case(case, manifest.classes, "window")  # what training does for modality CT
    assert loaded.image.min() >= 0.0 and loaded.image.max() <= 1.0
    np.testing.assert_allclose(loaded.image[loaded.label == 1], (PANCREAS_HU + 120) / 360, atol=1e-6)


def test_pancreas_folds(pancreas_prepared):
    data = _folds(pancreas_prepared)
    ids = [f"PANCREAS_{n:04d}" for n in range(1, 6)]
    assert len(data["folds"]) == 4
    assert [f["test"] for f in data["folds"]] == [[ids[4]], [ids[0]], [ids[1]], ids[2:4]]
    for fold in data["folds"]:
        k = fold["fold"]
        assert not set(fold["train"]) & set(fold["test"])
        train = load_manifest(str(pancreas_prepared / f"fold{k}_labeled2_train.json"))
        assert [c.id for c in train.labeled_cases] == fold["train"][:2]
        assert len(train.unlabeled_cases) == len(fold["train"]) - 2
        assert train.modality == "CT"


def test_pancreas_no_crop_and_flipped_label(tmp_path):
    images, labels = _write_pancreas(tmp_path / "data", count=4)
    # The same voxels stored with z reversed (another direction and origin): resampled exactly.
    original = sitk.ReadImage(str(labels / "label0002.nii.gz"))
    flipped = sitk.Flip(original, [False, False, True], flipAboutOrigin=False)
    assert flipped.GetDirection()[8] == -1.0
    sitk.WriteImage(flipped, str(labels / "label0002.nii.gz"))
    out = tmp_path / "out"
    manifest = load_manifest(prepare_pancreas(str(images), str(labels), str(out), labeled=[1], margin=None))
    image = sitk.ReadImage(manifest.cases[1].image)
    assert image.GetSize() == SIZE
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(manifest.cases[1].label)),
                                  _box_mask(PANCREAS_BOX))


def test_pancreas_label_with_other_geometry(tmp_path):
    images, labels = _write_pancreas(tmp_path / "data", count=4)
    bad = sitk.ReadImage(str(labels / "label0003.nii.gz"))
    bad.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(bad, str(labels / "label0003.nii.gz"))
    with pytest.raises(InputError, match=r"label0003.nii.gz does not lie on the grid of its image "
                                         r".*PANCREAS_0003.*--label-on-image-grid"):
        prepare_pancreas(str(images), str(labels), str(tmp_path / "out"), labeled=[1])
    assert not (tmp_path / "out" / "manifest.json").exists()
    # The escape hatch for a label whose header alone is wrong.
    manifest = load_manifest(prepare_pancreas(str(images), str(labels), str(tmp_path / "out"), labeled=[1],
                                              margin=None, label_on_image_grid=True))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(manifest.cases[2].label)),
                                  _box_mask(PANCREAS_BOX))


def test_pancreas_case_without_label(tmp_path):
    images, labels = _write_pancreas(tmp_path / "data", count=4)
    os.remove(labels / "label0004.nii.gz")
    with pytest.raises(InputError, match=r"PANCREAS_0004 \(number 4\) has no label .*label0004.nii.gz"):
        prepare_pancreas(str(images), str(labels), str(tmp_path / "out"), labeled=[1])


def test_pancreas_empty_case_folder(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    for n in range(1, 5):
        (images / f"PANCREAS_{n:04d}" / "study").mkdir(parents=True)
    labels.mkdir()
    for n in range(1, 5):
        label = sitk.GetImageFromArray(_box_mask(PANCREAS_BOX))
        sitk.WriteImage(label, str(labels / f"label{n:04d}.nii.gz"))
    with pytest.raises(InputError, match="PANCREAS_0001 holds no DICOM series"):
        prepare_pancreas(str(images), str(labels), str(tmp_path / "out"), labeled=[1])


def test_the_largest_dicom_series_below_a_case_folder_is_its_scan(tmp_path):
    """A two-slice localiser beside the CT series (deeper in the tree) is passed over; reading one folder
    only (the engine's DICOM input) finds no series in a folder that holds only sub-folders."""
    from SemiSupSegTraining.datasets.pancreas import read_dicom_case
    from SemiSupSegTraining.fileio import largest_dicom_series

    case = tmp_path / "PANCREAS_0001"
    _write_dicom_series(case / "study" / "a-localiser", _pancreas_hu(1)[:2], (0.7, 0.7, 2.5), (0.0, 0.0, 0.0), 7)
    _write_dicom_series(case / "study" / "b" / "ct", _pancreas_hu(1), (0.7, 0.7, 2.5), (0.0, 0.0, 0.0), 8)
    image = read_dicom_case(str(case))
    assert image.GetSize() == SIZE
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _pancreas_hu(1))
    assert largest_dicom_series(str(case)) == []
    assert len(largest_dicom_series(str(case / "study" / "a-localiser"))) == 2


def test_pancreas_from_image_files_through_the_command_line(tmp_path, capsys):
    """Image files with the case number in the name (no DICOM folders): each label's header is checked
    against its image's before anything is written, then cropped like the DICOM cases."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for n in range(1, 5):
        image = _image(_pancreas_hu(n), (0.8, 0.8, 2.0), (5.0, -3.0, 40.0 + n))
        sitk.WriteImage(image, str(images / f"ct{n:04d}.nii.gz"))
        label = sitk.GetImageFromArray(_box_mask(PANCREAS_BOX))
        label.CopyInformation(image)
        sitk.WriteImage(label, str(labels / f"label{n:04d}.nii.gz"))
    out = tmp_path / "out"
    argv = ["prepare", "pancreas", "--images", str(images), "--labels", str(labels), "--output", str(out),
            "--labeled", "1", "--margin", "2", "--min-crop-size", "0", "0", "0", "--progress", "none"]
    assert main(argv) == 0
    manifest = load_manifest(str(out / "manifest.json"))
    assert [c.id for c in manifest.cases] == [f"PANCREAS_{n:04d}" for n in range(1, 5)]
    record = json.load(open(out / "prepare.json"))["cases"][2]
    assert record["image_source"] == str(images / "ct0003.nii.gz")
    assert (record["crop_start"], record["crop_stop"]) == ([10, 8, 3], [20, 18, 12])
    image, label = sitk.ReadImage(manifest.cases[2].image), sitk.ReadImage(manifest.cases[2].label)
    assert image.GetSize() == label.GetSize() == (10, 10, 9)
    assert image.GetOrigin() == pytest.approx((5.0 + 10 * 0.8, -3.0 + 8 * 0.8, 43.0 + 3 * 2.0))
    hu, mask = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
    assert mask.sum() == 6 * 6 * 5 and set(np.unique(hu[mask > 0])) == {PANCREAS_HU}
    bad = sitk.ReadImage(str(labels / "label0002.nii.gz"))
    bad.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(bad, str(labels / "label0002.nii.gz"))
    with pytest.raises(InputError, match=r"label0002.nii.gz does not lie on the grid of its image .*ct0002"):
        prepare_pancreas(str(images), str(labels), str(tmp_path / "again"), labeled=[1])
    assert os.listdir(tmp_path / "again") == []                   # refused before anything was written


def test_the_output_folder_is_neither_an_input_nor_a_file(la_nrrd, tmp_path):
    with pytest.raises(InputError, match="is an input folder; give a separate --output"):
        prepare_la(str(la_nrrd), str(la_nrrd), labeled=[1])
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is a file; give a folder for --output"):
        prepare_la(str(la_nrrd), str(tmp_path / "file"), labeled=[1])


def test_impossible_folds_are_one_sentence(tmp_path):
    ids = [f"c{i}" for i in range(6)]
    with pytest.raises(InputError, match="--folds is 1; give at least 2 folds"):
        make_folds(ids, 1, [1], "la")
    with pytest.raises(InputError, match="must list numbers of at least 1 labeled case"):
        make_folds(ids, 3, [0, 2], "la")
    with pytest.raises(InputError, match="holds no test0.list"):
        make_folds(ids, 3, [1], "la", str(tmp_path))
    (tmp_path / "test0.list").write_text("c0\n")
    with pytest.raises(InputError, match="has test0.list but no train0.list"):
        make_folds(ids, 3, [1], "la", str(tmp_path))


# --------------------------------------------------------------------------------------- CLI, train

def _parser():
    parser = argparse.ArgumentParser(prog="semisupseg")
    commands = parser.add_subparsers(dest="command")
    add_prepare_parser(commands)
    return parser


def test_cli_la_and_help(la_nrrd, tmp_path, capsys):
    parser = _parser()
    args = parser.parse_args(["prepare", "la", "--input", str(la_nrrd), "--output", str(tmp_path / "out"),
                              "--labeled", "2", "--crop-to-label", "--min-crop-size", "0", "0",
                              "--progress", "json"])
    assert args.crop_to_label == 15
    run_prepare(args)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["case"] for e in lines if e["event"] == "progress"] == [f"case{i:02d}" for i in range(1, 7)]
    assert lines[-1]["event"] == "done" and lines[-1]["manifest"].endswith("manifest.json")
    assert json.load(open(tmp_path / "out" / "prepare.json"))["settings"]["crop_to_label"] == 15
    for argv in (["prepare", "la", "--help"], ["prepare", "pancreas", "--help"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        text = capsys.readouterr().out
        assert "fold{k}_labeled" in text or "fold0_labeled" in text
    args = parser.parse_args(["prepare", "pancreas", "--images", "a", "--labels", "b", "--output", "c",
                              "--no-crop"])
    assert args.no_crop and args.margin == 25 and args.labeled == [12] and args.folds == 4


def test_fold_manifest_trains(pancreas_prepared, tmp_path):
    """What prepare writes is what train accepts: a fold manifest with labeled and hidden-label cases."""
    import torch

    from SemiSupSegTraining.config import preset_config
    from SemiSupSegTraining.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)                   # tiny networks: one thread beats several on a shared box
    try:
        model = train(str(pancreas_prepared / "fold0_labeled2_train.json"), str(tmp_path / "model"),
                      preset_config("tiny", {"iterations": 2, "device": "cpu"}), progress="none")
    finally:
        torch.set_num_threads(threads)
    assert os.path.isfile(model)


def test_pancreas_names_its_preset_and_overlap(pancreas, tmp_path, capsys):
    from SemiSupSegTraining.config import PANCREAS_OVERLAP, preset_config
    from SemiSupSegTraining.infer import window_count

    events = []
    prepare_pancreas(str(pancreas[0]), str(pancreas[1]), str(tmp_path / "out"), labeled=[2], margin=2,
                     min_crop_size=(0, 0, 0), reporter=Reporter("none", events.append))
    done = events[-1]["message"]
    assert "--preset pancreas" in done and f"--overlap {PANCREAS_OVERLAP}" in done
    assert preset_config("pancreas").patch_size == (96, 96, 96)
    # The paper's windows every 16 voxels: 128 voxels take 96-voxel windows at 0 and 32 via 16 (3 a side);
    # 1 - 16/96 = 0.8333 would give MONAI's int(96 · 0.1667) = 15 and 4 windows a side.
    assert window_count((128, 128, 128), (96, 96, 96), PANCREAS_OVERLAP) == 3 ** 3
    with pytest.raises(SystemExit):
        _parser().parse_args(["prepare", "pancreas", "--help"])
    assert "--preset pancreas" in capsys.readouterr().out
