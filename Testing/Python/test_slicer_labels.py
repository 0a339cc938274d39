"""Classes <-> segments <-> label values (SemiSupSegLib.labels)."""

import numpy as np
import pytest
from SemiSupSegLib import labels
from SemiSupSegTraining.manifest import ClassInfo


def test_parse_structure_names():
    assert labels.parse_structure_names(" left atrium, Tumor;\nleft  atrium ,background,, ") == ["left atrium", "Tumor"]


def test_classes_priority_model_then_typed_then_segment_names():
    model = [{"value": 0, "name": "background"}, {"value": 3, "name": "liver", "color": [1, 0, 0]}]
    got = labels.classes_for_training(["x"], [["y"]], model_classes=model)
    assert [(c.value, c.name, c.color) for c in got] == [(0, "background", None), (3, "liver", [1, 0, 0])]
    got = labels.classes_for_training(["x", "y"], [["z"]])
    assert [(c.value, c.name) for c in got] == [(0, "background"), (1, "x"), (2, "y")]
    got = labels.classes_for_training([], [["Sphere", "cube"], ["sphere ", "Cone"]], segment_colors={"sphere": (0, 1, 0)})
    assert [(c.value, c.name, c.color) for c in got] == [(0, "background", None), (1, "Sphere", [0.0, 1.0, 0.0]),
                                                         (2, "cube", None), (3, "Cone", None)]
    with pytest.raises(ValueError, match="No structure"):
        labels.classes_for_training([], [[]])


def test_segment_plan_and_export_lookup():
    classes = [ClassInfo(0, "background"), ClassInfo(2, "Left Atrium"), ClassInfo(5, "scar")]
    plan, unmatched = labels.segment_plan(["scar", "note", "left  atrium"], classes)
    assert plan == [(0, 5), (2, 2)] and unmatched == ["note"]
    lookup = labels.export_lookup(plan)
    exported = np.array([[0, 1], [2, 2]])  # Slicer wrote 1 for the first planned segment, 2 for the second
    assert labels.remap(exported, lookup).tolist() == [[0, 5], [2, 2]]


def test_import_lookup_maps_class_values_to_segment_positions():
    lookup = labels.import_lookup([0, 2, 7])
    result = np.array([0, 2, 7, 3, 9, -1])
    assert labels.remap(result, lookup).tolist() == [0, 1, 2, 0, 0, 0]


def test_segment_specs_use_class_colors_or_distinct_defaults():
    specs = labels.segment_specs([{"value": 0, "name": "background"}, {"value": 1, "name": "a", "color": [1, 0, 0]},
                                  {"value": 2, "name": "b"}, {"value": 3, "name": "a"}])
    assert [s[:2] for s in specs] == [("a", "a"), ("b", "b"), ("a_2", "a")]
    assert specs[0][2] == [1.0, 0.0, 0.0]
    assert specs[1][2] != specs[2][2]


def test_segments_get_snomed_terminology_entries_like_monai_auto3dseg():
    from SemiSupSegLib.terminology import terminology_entry

    entry = terminology_entry("Left Atrium")
    fields = entry.split("~")
    assert len(fields) == 7  # context, category, type, modifier, anatomic context, region, region modifier
    assert fields[:3] == ["Segmentation category and type - DICOM master list", "SCT^123037004^Anatomical Structure",
                          "SCT^82471001^Left atrium"]
    assert terminology_entry("pancreas").split("~")[2] == "SCT^15776009^Pancreas"
    assert terminology_entry("left_kidney").split("~")[2:4] == ["SCT^64033007^Kidney", "SCT^7771000^Left"]
    assert terminology_entry("tumour core") is None  # unknown: no made-up code
