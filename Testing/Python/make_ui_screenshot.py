"""Renders the module's form (SemiSupSeg.ui) to a PNG without Slicer, for the README and the extension page.

    QT_QPA_PLATFORM=offscreen python Testing/Python/make_ui_screenshot.py [OUTPUT.png]

The default output is Resources/Screenshots/SemiSupSeg-form.png. Qt's form loader reads the .ui file;
Slicer's own widgets (ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit) do not exist outside
Slicer, so simple Qt look-alikes stand in for them here, and the form is filled with example values (two
cases, a training at 60 %) to show what the user sees. It is a picture of the form, not of Slicer.
"""

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QRect, Qt  # noqa: E402
from PySide6.QtGui import QColor, QPalette  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QApplication,
    QCheckBox,
    QComboBox,
    QGroupBox,
    QHeaderView,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QWidget,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UI_FILE = os.path.join(ROOT, "SemiSupSeg", "Resources", "UI", "SemiSupSeg.ui")
SCREENSHOT = os.path.join(ROOT, "Resources", "Screenshots", "SemiSupSeg-form.png")


# -- look-alikes of Slicer's widgets (for the picture only) --------------------------------------------------

class ctkCollapsibleButton(QGroupBox):  # noqa: N801 (the class name in the .ui file)
    """Stands in for ctkCollapsibleButton: a titled box (its 'text' property is the title)."""


class qMRMLNodeComboBox(QComboBox):  # noqa: N801
    """Stands in for qMRMLNodeComboBox: shows a node name, or its 'noneDisplay' text."""


class ctkPathLineEdit(QWidget):  # noqa: N801
    """Stands in for ctkPathLineEdit: a line edit with a browse button."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.lineEdit = QLineEdit(self)
        layout.addWidget(self.lineEdit)
        button = QToolButton(self)
        button.setText("...")
        layout.addWidget(button)


class qMRMLWidget(QWidget):  # noqa: N801
    """Stands in for qMRMLWidget (the form's top widget)."""


STAND_INS = (ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit, qMRMLWidget)


def application() -> QApplication:
    return QApplication.instance() or QApplication(sys.argv[:1])


def load_form(stand_ins: bool = True) -> QWidget:
    """The form as Qt loads it; without stand-ins Slicer's widgets become plain QWidgets (their declared base
    class in the .ui file's <customwidgets>)."""
    application()
    loader = QUiLoader()
    if stand_ins:
        for cls in STAND_INS:
            loader.registerCustomWidget(cls)
    form = loader.load(UI_FILE)
    if form is None:
        raise RuntimeError(f"Qt could not load {UI_FILE}: {loader.errorString()}")
    return form


def _find(form, cls, name):
    widget = form.findChild(cls, name)
    if widget is None:
        raise KeyError(name)
    return widget


def fill_example(form: QWidget) -> None:
    """Example values: what the form looks like during a training."""
    for box in form.findChildren(ctkCollapsibleButton):
        box.setTitle(str(box.property("text") or ""))
        if box.property("collapsed"):
            for child in box.findChildren(QWidget):
                child.hide()
            box.setFixedHeight(24)
    for combo in form.findChildren(qMRMLNodeComboBox):
        combo.addItem(combo.property("noneDisplay") or "")
    _find(form, QComboBox, "caseVolumeSelector").setItemText(0, "MRHead-3")
    _find(form, QComboBox, "inputVolumeSelector").setItemText(0, "MRHead-3")

    table = _find(form, QTableWidget, "casesTable")
    rows = [("MRHead-1", "MRHead-1 segmentation", True, "", "in training"),
            ("MRHead-2", "(none: unlabeled)", False, "0.47", "in training"),
            ("case07.nii.gz", "case07_label.nii.gz", True, "", "in training"),
            ("case08.nii.gz", "(none)", False, "0.21", "in training")]
    table.setRowCount(len(rows))
    for r, (volume, segmentation, labeled, score, status) in enumerate(rows):
        table.setItem(r, 0, QTableWidgetItem(volume))
        table.setItem(r, 1, QTableWidgetItem(segmentation))
        check = QTableWidgetItem()
        check.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled)
        check.setCheckState(Qt.Checked if labeled else Qt.Unchecked)
        table.setItem(r, 2, check)
        table.setItem(r, 3, QTableWidgetItem(score))
        table.setItem(r, 4, QTableWidgetItem(status))
    table.resizeColumnsToContents()
    for column, mode in enumerate((QHeaderView.Stretch, QHeaderView.Stretch, QHeaderView.ResizeToContents,
                                   QHeaderView.ResizeToContents)):  # as the widget sets them
        table.horizontalHeader().setSectionResizeMode(column, mode)
    table.horizontalHeader().setStretchLastSection(True)
    table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    table.setFixedHeight(table.horizontalHeader().sizeHint().height() + sum(table.rowHeight(r) for r in range(len(rows)))
                         + 2 * table.frameWidth())
    table.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
    table.setCurrentCell(-1, -1)
    _find(form, QLineEdit, "structureNamesLineEdit").setText("left atrium")
    _find(form, QLabel, "casesSummaryLabel").setText("4 cases: 2 labeled, 2 unlabeled")

    _find(form, QComboBox, "presetComboBox").setCurrentText("cpu-fast")
    _find(form, ctkPathLineEdit, "modelFolderPathLineEdit").lineEdit.setText(
        "~/AppData/Local/NA-MIC/Slicer/SemiSupSeg/models")
    train = _find(form, QPushButton, "trainButton")
    train.setText("Cancel")
    train.setEnabled(True)
    _find(form, QLabel, "trainReasonLabel").hide()
    bar = _find(form, QProgressBar, "trainProgressBar")
    bar.setRange(0, 1500)
    bar.setValue(900)
    _find(form, QLabel, "trainStatusLabel").setText(
        "Training: iteration 900/1500 · ETA 4 min 10 s · loss 0.412, sup_a 0.201, sup_b 0.197, unsup_a 0.084")
    _find(form, QCheckBox, "showLossCurveCheckBox").setChecked(True)

    _find(form, ctkPathLineEdit, "modelFilePathLineEdit").lineEdit.setText(
        "~/AppData/Local/NA-MIC/Slicer/SemiSupSeg/models/run-20250301-101500/model.pt")
    _find(form, QLabel, "modelInfoLabel").setText("Structures: left atrium · preset cpu-fast")
    _find(form, QProgressBar, "segmentProgressBar").hide()
    _find(form, QPushButton, "segmentButton").setEnabled(False)
    _find(form, QPushButton, "segmentButton").setToolTip("")
    _find(form, QProgressBar, "suggestProgressBar").hide()
    _find(form, QLabel, "suggestStatusLabel").setText(
        "Label MRHead-2 next (score 0.47): segment it, correct it, use it as a label.")
    for name in ("suggestButton", "editSegmentationButton", "useAsLabelButton", "retrainButton",
                 "resumeButton"):  # while training
        _find(form, QPushButton, name).setEnabled(False)
    _find(form, QPlainTextEdit, "logTextEdit").hide()


def render(path: str, width: int = 440) -> str:
    """Writes the filled form as a PNG and returns the path."""
    app = application()
    palette = app.palette()
    palette.setColor(QPalette.Window, QColor(246, 246, 246))
    app.setPalette(palette)
    form = load_form(stand_ins=True)
    fill_example(form)
    # lay out with room to spare (every box gets its preferred height), then cut below the last box
    form.resize(width, 2000)
    form.show()
    app.processEvents()
    bottom = max(w.geometry().bottom() for w in form.findChildren(ctkCollapsibleButton) if w.parent() is form)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not form.grab(QRect(0, 0, width, bottom + 12)).save(path):
        raise RuntimeError(f"could not write {path}")
    return path


if __name__ == "__main__":
    print(render(sys.argv[1] if len(sys.argv) > 1 else SCREENSHOT))
