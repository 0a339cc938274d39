"""The module's form (SemiSupSeg.ui) loads with Qt's own form loader, offscreen, without Slicer; every widget
the module code uses exists in it; the parameter-node names match; a screenshot of the form renders.

Set SEMISUPSEG_UPDATE_SCREENSHOT=1 to also rewrite Resources/Screenshots/SemiSupSeg-form.png.
"""

import ast
import os
import re

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtUiTools")
from PySide6.QtCore import QObject  # noqa: E402
from PySide6.QtWidgets import QComboBox  # noqa: E402
from SemiSupSegLib import commands  # noqa: E402

import make_ui_screenshot  # noqa: E402

ROOT = make_ui_screenshot.ROOT
WIDGET_FILE = os.path.join(ROOT, "SemiSupSeg", "SemiSupSegLib", "widget.py")
PARAMETER_NODE_FILE = os.path.join(ROOT, "SemiSupSeg", "SemiSupSegLib", "parameter_node.py")


@pytest.fixture(scope="module")
def plain_form():
    """The form as plain Qt loads it: Slicer's widgets fall back to the QWidget base class that the .ui
    file's <customwidgets> section declares for them."""
    return make_ui_screenshot.load_form(stand_ins=False)


def _names(form):
    return {o.objectName() for o in form.findChildren(QObject)} | {form.objectName()}


def test_form_loads_without_slicer(plain_form):
    assert plain_form.objectName() == "SemiSupSeg"
    assert len(_names(plain_form)) > 50


def test_every_widget_the_module_uses_is_in_the_form(plain_form):
    with open(WIDGET_FILE, encoding="utf-8") as f:
        used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", f.read()))
    assert {"casesTable", "trainButton", "trainProgressBar", "segmentButton", "useAsLabelButton", "suggestButton",
            "suggestProgressBar", "suggestStatusLabel"} <= used
    missing = sorted(used - _names(plain_form))
    assert not missing, f"used in SemiSupSegLib/widget.py but missing from SemiSupSeg.ui: {missing}"


def test_cases_table_columns_match_the_widget(plain_form):
    from PySide6.QtWidgets import QTableWidget

    table = plain_form.findChild(QTableWidget, "casesTable")
    headers = [table.horizontalHeaderItem(i).text() for i in range(table.columnCount())]
    assert headers == ["Volume", "Segmentation", "Labeled", "Score", "Status"]
    source = open(WIDGET_FILE, encoding="utf-8").read()
    assert "COLUMN_VOLUME, COLUMN_SEGMENTATION, COLUMN_LABELED, COLUMN_SCORE, COLUMN_STATUS = range(5)" in source


def _parameter_node_fields():
    tree = ast.parse(open(PARAMETER_NODE_FILE, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "SemiSupSegParameterNode":
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("SemiSupSegParameterNode not found")


def test_parameter_names_of_the_form_are_parameter_node_fields(plain_form):
    fields = _parameter_node_fields()
    bound = {o.objectName(): o.property("SlicerParameterName") for o in plain_form.findChildren(QObject)
             if o.property("SlicerParameterName")}
    assert {"preset", "method", "iterations", "device", "inputVolume", "outputSegmentation", "roi"} <= set(bound.values())
    assert set(bound.values()) <= fields, sorted(set(bound.values()) - fields)


def test_choices_of_the_form_match_the_module(plain_form):
    def items(name):
        combo = plain_form.findChild(QComboBox, name)
        return [combo.itemText(i) for i in range(combo.count())]

    assert items("presetComboBox") == list(commands.PRESETS)
    assert items("methodComboBox") == list(commands.METHOD_CHOICES)  # "(preset's)" first: the default
    assert items("deviceComboBox") == list(commands.DEVICES)
    assert items("modalityComboBox") == list(commands.MODALITIES)


def test_form_screenshot_renders(tmp_path):
    path = make_ui_screenshot.render(str(tmp_path / "form.png"))
    from PySide6.QtGui import QImage

    image = QImage(path)
    assert image.width() == 440 and image.height() > 600
    colors = {image.pixelColor(x, y).name() for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colors) > 20  # a drawn form, not a blank page
    if os.environ.get("SEMISUPSEG_UPDATE_SCREENSHOT"):
        make_ui_screenshot.render(make_ui_screenshot.SCREENSHOT)
    assert os.path.isfile(make_ui_screenshot.SCREENSHOT), "run Testing/Python/make_ui_screenshot.py"


def test_volume_selectors_list_no_label_maps():
    import xml.etree.ElementTree as ET

    tree = ET.parse(make_ui_screenshot.UI_FILE)
    selectors = [w for w in tree.iter("widget") if w.get("class") == "qMRMLNodeComboBox"
                 and "vtkMRMLScalarVolumeNode" in [s.text for s in w.iterfind("property[@name='nodeTypes']//string")]]
    assert {w.get("name") for w in selectors} == {"caseVolumeSelector", "inputVolumeSelector"}
    for widget in selectors:  # a label map is a vtkMRMLScalarVolumeNode subclass: hidden with the child types
        shown = widget.find("property[@name='showChildNodeTypes']/bool")
        hidden = [s.text for s in widget.iterfind("property[@name='hideChildNodeTypes']//string")]
        assert (shown is not None and shown.text == "false") or "vtkMRMLLabelMapVolumeNode" in hidden, widget.get("name")
