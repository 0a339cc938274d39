"""Dataset folders as the field lays them out (SemiSupSegTraining.layouts): small nnU-Net v2, Decathlon and
plain folders (label maps and Slicer .seg.nrrd files) written here, read into manifests; ``semisupseg
manifest``, ``train --manifest FOLDER``, ``suggest --use-test-images`` and ``prepare decathlon`` on them; one
sentence and exit code 2 for each bad layout."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import only_line, read_array, write_image, write_seg_nrrd

from SemiSupSegTraining.cli import main
from SemiSupSegTraining.errors import InputError
from SemiSupSegTraining.layouts import read_folder, scan_folder
from SemiSupSegTraining.manifest import load_manifest

SHAPE = (6, 8, 8)                 # z, y, x: tiny volumes
SPACING = (1.25, 1.25, 1.37)


def _image(path, seed, spacing=SPACING):
    array = np.random.default_rng(seed).normal(100.0, 20.0, SHAPE).astype(np.float32)
    return write_image(array, str(path), spacing)


def _label(path, values=(1,), spacing=SPACING):
    array = np.zeros(SHAPE, np.uint8)
    for i, v in enumerate(values):   # one block per value, side by side
        array[1:5, 2:6, 1 + 3 * i:3 + 3 * i] = v
    return write_image(array, str(path), spacing)


def _json(path, data):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return str(path)


def _nnunet_v2(root, train=("pan_001", "pan_002", "pan_003"), test=("pan_010",), values=(1, 2)):
    """Dataset007_Pancreas as nnU-Net v2 lays it out: CT, labels name -> value."""
    for i, case in enumerate(train):
        _image(root / "imagesTr" / f"{case}_0000.nii.gz", i)
        _label(root / "labelsTr" / f"{case}.nii.gz", values)
    for i, case in enumerate(test):
        _image(root / "imagesTs" / f"{case}_0000.nii.gz", 10 + i)
    _json(root / "dataset.json", {"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                  "labels": {"background": 0, "pancreas": 1, "tumour": 2},
                                  "numTraining": len(train), "name": "Pancreas"})
    return root


def _decathlon(root, train=("la_003", "la_004", "la_005"), test=("la_001",)):
    """Task02_Heart as the Decathlon ships it: MRI, labels value -> name, a training list, and the archive's
    hidden macOS files."""
    for i, case in enumerate(train):
        _image(root / "imagesTr" / f"{case}.nii.gz", i)
        _label(root / "labelsTr" / f"{case}.nii.gz")
    for i, case in enumerate(test):
        _image(root / "imagesTs" / f"{case}.nii.gz", 10 + i)
    with open(root / "imagesTr" / f"._{train[0]}.nii.gz", "wb") as f:
        f.write(b"\0\5\26\7")            # AppleDouble junk: not an image, not a case
    _json(root / "dataset.json", {
        "name": "LeftAtrium", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"},
        "numTraining": len(train), "training": [{"image": f"./imagesTr/{c}.nii.gz",
                                                 "label": f"./labelsTr/{c}.nii.gz"} for c in train],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test]})
    return root


def _classes(manifest):
    return [(c.value, c.name) for c in manifest.classes]


# ----------------------------------------------------------------------------------- the three layouts

def test_nnunet_v2_folder(tmp_path):
    root = _nnunet_v2(tmp_path / "Dataset007_Pancreas")
    manifest = read_folder(str(root))
    assert _classes(manifest) == [(0, "background"), (1, "pancreas"), (2, "tumour")]
    assert manifest.modality == "CT" and manifest.extra["layout"] == "nnU-Net v2"
    assert [c.id for c in manifest.labeled_cases] == ["pan_001", "pan_002", "pan_003"]
    assert manifest.labeled_cases[0].image == str(root / "imagesTr" / "pan_001_0000.nii.gz")
    assert manifest.labeled_cases[0].label == str(root / "labelsTr" / "pan_001.nii.gz")
    assert manifest.unlabeled_cases == []                      # imagesTs only when asked
    with_tests = read_folder(str(root), use_test_images=True)
    assert [(c.id, c.label) for c in with_tests.unlabeled_cases] == [("pan_010", None)]


def test_decathlon_folder(tmp_path):
    root = _decathlon(tmp_path / "Task02_Heart")
    manifest = read_folder(str(root), use_test_images=True)
    assert _classes(manifest) == [(0, "background"), (1, "left atrium")]
    assert manifest.modality == "MRI" and manifest.extra == {"layout": "Decathlon", "dataset": "LeftAtrium"}
    assert [c.id for c in manifest.labeled_cases] == ["la_003", "la_004", "la_005"]   # no "._la_003"
    assert [c.id for c in manifest.unlabeled_cases] == ["la_001"]
    assert read_folder(str(root), modality="CT").modality == "CT"   # the user's word wins


def test_plain_folder_classes_from_the_label_values(tmp_path):
    _image(tmp_path / "images" / "a.nii.gz", 0)
    _image(tmp_path / "images" / "b.nii.gz", 1)
    _image(tmp_path / "images" / "c.nii.gz", 2)
    _label(tmp_path / "labels" / "a.nii.gz", (1,))
    _label(tmp_path / "labels" / "b_label.nii.gz", (1, 3))
    manifest = read_folder(str(tmp_path))
    assert _classes(manifest) == [(0, "background"), (1, "label 1"), (3, "label 3")]
    assert manifest.modality == "MRI" and manifest.extra["layout"] == "plain"
    assert [c.id for c in manifest.labeled_cases] == ["a", "b"]
    assert [c.id for c in manifest.unlabeled_cases] == ["c"]


def test_plain_folder_numbered_names_are_cases_and_channel_names_channels(tmp_path):
    numbered = tmp_path / "numbered"
    for i in range(3):
        _image(numbered / "images" / f"scan_{i:04d}.nii.gz", i)
    _label(numbered / "labels" / "scan_0001.nii.gz")
    assert [(c[0], c[2] is not None) for c in scan_folder(str(numbered))] == [
        ("scan_0000", False), ("scan_0001", True), ("scan_0002", False)]
    channels = tmp_path / "channels"                # nnU-Net names without a dataset.json
    _image(channels / "imagesTr" / "a_0000.nii.gz", 0)
    _image(channels / "imagesTr" / "b_0000.nii.gz", 1)
    _label(channels / "labelsTr" / "a.nii.gz")
    assert [(c[0], c[2] is not None) for c in scan_folder(str(channels))] == [("a", True), ("b", False)]
    _image(channels / "imagesTr" / "b_0001.nii.gz", 2)
    with pytest.raises(InputError, match="Case 'b' .* has 2 channels"):
        scan_folder(str(channels))


def test_plain_folder_of_slicer_segmentation_files(tmp_path):
    _image(tmp_path / "p1.nrrd", 0)
    _image(tmp_path / "p2.nrrd", 1)
    _image(tmp_path / "p3.nrrd", 2)
    layer = np.zeros(SHAPE, np.uint8)
    layer[1:4, 1:4, 1:4] = 1
    layer[1:4, 5:7, 5:7] = 2
    segments = [{"name": "liver", "value": 1}, {"name": "spleen", "value": 2}]
    write_seg_nrrd([layer], segments, str(tmp_path / "p1.seg.nrrd"), SPACING)
    write_seg_nrrd([layer], segments[::-1], str(tmp_path / "p2.seg.nrrd"), SPACING)
    manifest = read_folder(str(tmp_path))
    assert _classes(manifest) == [(0, "background"), (1, "liver"), (2, "spleen")]
    assert [(c.id, os.path.basename(c.label)) for c in manifest.labeled_cases] == [
        ("p1", "p1.seg.nrrd"), ("p2", "p2.seg.nrrd")]
    assert [c.id for c in manifest.unlabeled_cases] == ["p3"]
    assert scan_folder(str(tmp_path))[2] == ("p3", str(tmp_path / "p3.nrrd"), None)


# ------------------------------------------------------------------------------- semisupseg manifest

def test_manifest_command_on_a_decathlon_folder(tmp_path, capsys):
    root = _decathlon(tmp_path / "Task02_Heart")
    out = tmp_path / "out" / "heart.json"
    assert main(["manifest", str(root), "--output", str(out), "--labeled", "1", "--use-test-images"]) == 0
    table = capsys.readouterr().out
    rows = dict(line.split(None, 1) for line in table.splitlines())
    assert rows["cases"] == "4" and rows["labeled"] == "1: la_003"
    assert rows["unlabeled"] == "3 (2 with a hidden label, 1 from imagesTs)"
    assert rows["classes"] == "0 background, 1 left atrium"
    assert rows["modality"] == "MRI (z-score)" and rows["spacings"] == "1.25 x 1.25 x 1.37 mm (4)"
    data = json.loads(out.read_text())
    assert data["cases"][0]["image"] == os.path.join("..", "Task02_Heart", "imagesTr", "la_003.nii.gz")
    assert not os.path.exists(str(out) + ".tmp")
    manifest = load_manifest(str(out))                    # what the Slicer module's Add manifest... reads
    assert [c.id for c in manifest.labeled_cases] == ["la_003"]
    assert [(c.id, c.label is not None) for c in manifest.unlabeled_cases] == [
        ("la_004", True), ("la_005", True), ("la_001", False)]


def test_manifest_command_chooses_the_labeled_cases(tmp_path, capsys):
    root = _nnunet_v2(tmp_path / "Dataset007_Pancreas", train=tuple(f"pan_{i:03d}" for i in range(1, 7)))
    out = str(tmp_path / "m.json")

    def labeled(*options):
        assert main(["manifest", str(root), "--output", out] + list(options)) == 0
        return [c.id for c in load_manifest(out).labeled_cases]

    assert labeled("--labeled", "2") == ["pan_001", "pan_002"]
    drawn = {tuple(labeled("--labeled", "2", "--seed", str(s))) for s in range(6)}
    assert all(len(set(d)) == 2 for d in drawn) and len(drawn) > 1          # at random, per seed
    assert labeled("--labeled", "2", "--seed", "3") == labeled("--labeled", "2", "--seed", "3")
    listed = tmp_path / "labeled.txt"
    listed.write_text("pan_005\n\npan_002\n")
    assert labeled("--labeled-list", str(listed)) == ["pan_002", "pan_005"]
    capsys.readouterr()
    assert main(["manifest", str(root), "--output", out, "--labeled", "7"]) == 2
    assert "--labeled 7" in only_line(capsys.readouterr().err)
    listed.write_text("pan_099\n")
    assert main(["manifest", str(root), "--output", out, "--labeled-list", str(listed)]) == 2
    assert "pan_099" in only_line(capsys.readouterr().err)


def test_manifest_command_never_writes_over_the_dataset(tmp_path, capsys):
    root = _decathlon(tmp_path / "Task02_Heart")
    before = (root / "dataset.json").read_text()
    assert main(["manifest", str(root), "--output", str(root / "dataset.json")]) == 2
    assert "dataset's own files" in only_line(capsys.readouterr().err)
    assert (root / "dataset.json").read_text() == before


# ---------------------------------------------------------------------------- the engine on a folder

def test_train_and_suggest_on_a_folder(tmp_path, capsys, tiny_model_file):
    root = _decathlon(tmp_path / "Task02_Heart", train=("la_003", "la_004"))
    output = str(tmp_path / "run")
    assert main(["train", "--manifest", str(root), "--output", output, "--preset", "tiny", "--iterations", "2",
                 "--device", "cpu", "--progress", "none", "--use-test-images"]) == 0
    with open(os.path.join(output, "run.json"), encoding="utf-8") as f:
        record = json.load(f)
    assert [c["id"] for c in record["manifest"]["cases"]] == ["la_003", "la_004", "la_001"]
    assert record["manifest"]["classes"][1]["name"] == "left atrium"
    assert os.path.isfile(os.path.join(output, "model.pt"))
    capsys.readouterr()
    assert main(["suggest", "--model", tiny_model_file, "--manifest", str(root), "--use-test-images",
                 "--json", "--device", "cpu", "--progress", "none"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["ranking"]] == ["la_001"]


# ---------------------------------------------------------------------------------------- bad layouts

def _label_without_image(tmp_path):
    root = _nnunet_v2(tmp_path / "ds")
    return root, _label(root / "labelsTr" / "pan_004.nii.gz"), []


def _image_without_channel_suffix(tmp_path):
    root = _nnunet_v2(tmp_path / "ds")
    return root, _image(root / "imagesTr" / "pan_004.nii.gz", 4), ["_0000"]


def _channel_one_without_channel_zero(tmp_path):
    root = _nnunet_v2(tmp_path / "ds")
    _image(root / "imagesTr" / "pan_004_0001.nii.gz", 4)
    return root, "'pan_004'", ["pan_004_0001.nii.gz", "pan_004_0000.nii.gz"]


def _label_values_not_in_dataset_json(tmp_path):
    root = _nnunet_v2(tmp_path / "ds")
    return root, _label(root / "labelsTr" / "pan_002.nii.gz", (1, 3)), ["value(s) 3", "dataset.json"]


def _no_structure_in_a_plain_folder(tmp_path):
    _image(tmp_path / "images" / "a.nii.gz", 0)
    write_image(np.zeros(SHAPE, np.uint8), str(tmp_path / "labels" / "a.nii.gz"), SPACING)
    return tmp_path, "No label file", ["all background"]


def _duplicate_ids_in_a_plain_folder(tmp_path):
    _image(tmp_path / "images" / "a.nii.gz", 0)
    _image(tmp_path / "images" / "a.nrrd", 1)
    return tmp_path, "'a'", ["a.nii.gz", "a.nrrd"]


def _duplicate_ids_in_train_and_test(tmp_path):
    root = _decathlon(tmp_path / "Task02_Heart", test=("la_004",))
    return root, "'la_004'", ["imagesTs"]


def _two_channels_in_dataset_json(tmp_path):
    root = _nnunet_v2(tmp_path / "ds")
    data = json.loads((root / "dataset.json").read_text())
    data["channel_names"] = {"0": "T2", "1": "ADC"}
    _json(root / "dataset.json", data)
    return root, "'pan_001'", ["2 channels"]


def _four_dimensional_image(tmp_path):
    root = _decathlon(tmp_path / "Task01_BrainTumour")
    four_d = sitk.JoinSeries([sitk.ReadImage(str(root / "imagesTr" / "la_004.nii.gz"))] * 4)
    sitk.WriteImage(four_d, str(root / "imagesTr" / "la_004.nii.gz"))
    return root, "'la_004'", ["4 channels"]


@pytest.mark.parametrize("make", [_label_without_image, _image_without_channel_suffix,
                                  _channel_one_without_channel_zero, _label_values_not_in_dataset_json,
                                  _no_structure_in_a_plain_folder, _duplicate_ids_in_a_plain_folder,
                                  _duplicate_ids_in_train_and_test,
                                  _two_channels_in_dataset_json, _four_dimensional_image])
def test_bad_layouts_say_one_sentence(tmp_path, capsys, make):
    root, named, also = make(tmp_path)
    out = tmp_path / "m.json"
    tests = ["--use-test-images"] if (root / "imagesTs").is_dir() else []
    code = main(["manifest", str(root), "--output", str(out)] + tests)
    line = only_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("semisupseg: error:") and "Traceback" not in line
    for text in [named] + also:
        assert text in line, f"{text!r} not in {line!r}"
    assert not out.exists()


def test_train_on_a_bad_folder_writes_nothing(tmp_path, capsys):
    root, label, _ = _label_values_not_in_dataset_json(tmp_path)
    output = tmp_path / "run"
    assert main(["train", "--manifest", str(root), "--output", str(output), "--preset", "tiny",
                 "--device", "cpu", "--progress", "none"]) == 2
    assert label in only_line(capsys.readouterr().err) and not output.exists()


# ---------------------------------------------------------------------------------- prepare decathlon

def test_prepare_decathlon_pancreas_with_the_tumour_merged(tmp_path):
    cases = tuple(f"pancreas_{i:03d}" for i in range(1, 6))
    root = _nnunet_v2(tmp_path / "Task07_Pancreas", train=cases, test=(), values=(1, 2))
    out = tmp_path / "prepared"
    assert main(["prepare", "decathlon", str(root), "--output", str(out), "--labeled", "1", "--merge-tumour",
                 "--progress", "none"]) == 0
    manifest = load_manifest(str(out / "manifest.json"))
    assert _classes(manifest) == [(0, "background"), (1, "pancreas")] and manifest.modality == "CT"
    label = read_array(out / "labels" / "pancreas_002.nii.gz")
    source = read_array(root / "labelsTr" / "pancreas_002.nii.gz")
    np.testing.assert_array_equal(label, (source > 0).astype(np.uint8))   # 2 became 1
    np.testing.assert_array_equal(read_array(out / "images" / "pancreas_002.nii.gz"),
                                  read_array(root / "imagesTr" / "pancreas_002_0000.nii.gz"))
    folds = json.loads((out / "folds.json").read_text())["folds"]
    assert len(folds) == 5 and sorted(c for f in folds for c in f["test"]) == list(cases)
    train = load_manifest(str(out / "fold0_labeled1_train.json"))
    assert len(train.labeled_cases) == 1 and len(train.unlabeled_cases) == 3


def test_prepare_decathlon_keeps_the_classes_without_merging(tmp_path, capsys):
    cases = tuple(f"pancreas_{i:03d}" for i in range(1, 6))
    root = _nnunet_v2(tmp_path / "Task07_Pancreas", train=cases, test=(), values=(1, 2))
    out = tmp_path / "prepared"
    assert main(["prepare", "decathlon", str(root), "--output", str(out), "--labeled", "2",
                 "--progress", "none"]) == 0
    assert len(load_manifest(str(out / "manifest.json")).classes) == 3
    assert set(np.unique(read_array(out / "labels" / "pancreas_001.nii.gz"))) == {0, 1, 2}
    heart = _decathlon(tmp_path / "Task02_Heart", train=tuple(f"la_{i:03d}" for i in range(5)))
    capsys.readouterr()
    assert main(["prepare", "decathlon", str(heart), "--output", str(tmp_path / "h"), "--labeled", "1",
                 "--merge-tumour", "--progress", "none"]) == 2
    assert "--merge-tumour" in only_line(capsys.readouterr().err)
