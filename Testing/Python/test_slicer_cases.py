"""The case table, folder scanning and manifests of the Slicer module (SemiSupSegLib.cases)."""

import os

import pytest
from SemiSupSegLib.cases import CaseTable, build_manifest, scan_folder, split_image_name
from SemiSupSegTraining.errors import InputError
from SemiSupSegTraining.manifest import default_classes, load_manifest


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("x")
    return str(path)


def test_split_image_name():
    assert split_image_name("case01.nii.gz") == ("case01", ".nii.gz")
    assert split_image_name("a.b.nrrd") == ("a.b", ".nrrd")
    assert split_image_name("case01.seg.nrrd") == ("case01.seg", ".nrrd")
    assert split_image_name("notes.txt") == ("notes.txt", "")


def test_scan_flat_folder_pairs_labels_by_suffix(tmp_path):
    a = _touch(tmp_path / "a.nii.gz")
    a_label = _touch(tmp_path / "a_label.nii.gz")
    b = _touch(tmp_path / "b.nrrd")
    b_seg = _touch(tmp_path / "b.seg.nrrd")
    c = _touch(tmp_path / "c.mha")
    _touch(tmp_path / "readme.txt")
    mask_alone = _touch(tmp_path / "zz_mask.nii")  # no image "zz": an image of its own
    assert scan_folder(str(tmp_path)) == [("a", a, a_label), ("b", b, b_seg), ("c", c, None),
                                          ("zz_mask", mask_alone, None)]


def test_scan_images_and_labels_folders(tmp_path):
    i1 = _touch(tmp_path / "imagesTr" / "la_001_0000.nii.gz")
    i2 = _touch(tmp_path / "imagesTr" / "la_002_0000.nii.gz")
    l1 = _touch(tmp_path / "labelsTr" / "la_001.nii.gz")
    assert scan_folder(str(tmp_path)) == [("la_001", i1, l1), ("la_002", i2, None)]


def test_scan_errors(tmp_path):
    with pytest.raises(InputError, match="No image files"):
        scan_folder(str(tmp_path))
    with pytest.raises(InputError, match="not a folder"):
        scan_folder(str(tmp_path / "missing"))


def test_table_labels_follow_segmentations():
    t = CaseTable()
    row, added = t.add_volume("vtkMRMLScalarVolumeNode1", "MR head", "vtkMRMLSegmentationNode1", "MR head seg")
    assert added and row.id == "MR_head" and row.is_labeled
    row2, _ = t.add_volume("vtkMRMLScalarVolumeNode2", "MR head")
    assert row2.id == "MR_head_2" and not row2.is_labeled
    assert t.add_volume("vtkMRMLScalarVolumeNode2", "MR head")[1] is False
    assert t.summary() == "2 cases: 1 labeled, 1 unlabeled"
    with pytest.raises(ValueError, match="no segmentation"):
        t.set_labeled(1, True)
    t.set_segmentation(1, "vtkMRMLSegmentationNode2", "corrected")
    assert t[1].is_labeled and t[1].label_text == "corrected"
    t.set_labeled(1, False)
    assert not t[1].is_labeled and t[1].has_label
    t.set_segmentation(0, None)
    assert not t[0].has_label and not t[0].labeled


def test_readiness_explains_why_training_cannot_start():
    t = CaseTable()
    assert t.readiness() == (False, "Add cases first: volumes of the scene, a folder or a manifest.")
    t.add_volume("v1", "one")
    ok, reason = t.readiness()
    assert not ok and "No case is labeled" in reason
    t.add_volume("v2", "two", "s2", "two seg")
    assert t.readiness() == (True, "")
    t.remove([0])
    ok, reason = t.readiness()
    assert ok and "semi-supervised" in reason


def test_forget_missing_nodes():
    t = CaseTable()
    t.add_volume("v1", "one", "s1")
    t.add_volume("v2", "two", "s2")
    t.add_files("/data/x.nrrd")
    assert t.forget_missing_nodes({"v2", "s1"}) == ["one"]
    assert [r.id for r in t] == ["two", "x"]
    assert not t[0].has_label


def test_json_round_trip_and_bad_text():
    t = CaseTable()
    t.add_volume("v1", "one", "s1", "seg")
    t.add_files("/data/a.nii.gz", "/data/a_label.nii.gz")
    t.set_status("trained")
    again = CaseTable.from_json(t.to_json())
    assert [vars(r) for r in again] == [vars(r) for r in t]
    assert len(CaseTable.from_json("")) == 0 and len(CaseTable.from_json("{oops")) == 0


def test_manifest_round_trip_through_the_engine_module(tmp_path):
    img1, lab1 = _touch(tmp_path / "d" / "one.nrrd"), _touch(tmp_path / "d" / "one_label.nrrd")
    img2 = _touch(tmp_path / "d" / "two.nrrd")
    t = CaseTable()
    assert t.add_folder(str(tmp_path / "d")) == 2
    assert t.add_folder(str(tmp_path / "d")) == 0
    entries = [(r.id, r.image_path, r.label_path, r.labeled) for r in t]
    path = str(tmp_path / "train" / "manifest.json")
    build_manifest(entries, default_classes(["sphere"]), "CT", path)
    manifest = load_manifest(path)
    assert manifest.modality == "CT" and manifest.class_names == ["background", "sphere"]
    assert [(c.id, c.image, c.label, c.is_labeled) for c in manifest.cases] == [
        ("one", img1, lab1, True), ("two", img2, None, False)]
    t2 = CaseTable()
    assert t2.add_manifest(manifest) == 2
    assert [(r.id, r.is_labeled) for r in t2] == [("one", True), ("two", False)]


def test_suggest_scores_go_to_unlabeled_rows_and_the_best_one_is_returned():
    table = CaseTable()
    table.add_volume("vtkMRMLScalarVolumeNode1", "a", "vtkMRMLSegmentationNode1", "a seg")
    table.add_volume("vtkMRMLScalarVolumeNode2", "b")
    table.add_volume("vtkMRMLScalarVolumeNode3", "c")
    table[2].score = 0.9  # from an older suggestion: forgotten
    best = table.set_scores([{"id": "b", "score": 0.61}, {"id": "a", "score": 0.99}, {"id": "gone", "score": 1.0}])
    assert best == 1 and [r.score for r in table] == [None, 0.61, None]
    assert [r.score_text for r in table] == ["", "0.61", ""]
    assert CaseTable.from_json(table.to_json())[1].score == 0.61
    assert table.set_scores([]) is None


def test_cases_are_saved_as_node_references_that_follow_a_scene_import():
    table = CaseTable()
    table.add_volume("vtkMRMLScalarVolumeNode1", "A", "vtkMRMLSegmentationNode1", "A seg")
    table.add_volume("vtkMRMLScalarVolumeNode2", "B")
    table.add_files("/data/c.nii.gz", "/data/c_label.nii.gz")
    text, volumes, segmentations = table.to_parts()
    assert "vtkMRML" not in text  # no node ID inside the string: Slicer could not remap it
    assert volumes == ["vtkMRMLScalarVolumeNode1", "vtkMRMLScalarVolumeNode2", None]
    assert segmentations == ["vtkMRMLSegmentationNode1", None, None]
    # imported into a scene that had nodes already: Slicer renames the nodes and remaps the references
    loaded = CaseTable.from_parts(text, ["vtkMRMLScalarVolumeNode7", "vtkMRMLScalarVolumeNode8", None],
                                  ["vtkMRMLSegmentationNode5", None, None])
    assert [(r.id, r.volume_node_id, r.segmentation_node_id, r.is_labeled) for r in loaded] == [
        ("A", "vtkMRMLScalarVolumeNode7", "vtkMRMLSegmentationNode5", True),
        ("B", "vtkMRMLScalarVolumeNode8", None, False), ("c", None, None, True)]
    assert loaded[2].image_path.endswith("c.nii.gz")


def test_a_case_whose_nodes_left_the_scene_and_an_older_scene_text():
    table = CaseTable()
    table.add_volume("v1", "A", "s1", "A seg")
    table.add_volume("v2", "B")
    text, _, _ = table.to_parts()
    loaded = CaseTable.from_parts(text, [None, "v2"], [None, None])  # A's volume was deleted
    assert [r.id for r in loaded] == ["B"]
    loaded = CaseTable.from_parts(text, ["v1", "v2"], [None, None])  # A's segmentation was deleted
    assert not loaded[0].has_label and not loaded[0].is_labeled
    old = CaseTable.from_parts(table.to_json(), [], [])  # saved before node references: IDs in the text
    assert [r.volume_node_id for r in old] == ["v1", "v2"]
