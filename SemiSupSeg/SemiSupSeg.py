import importlib
import importlib.util
import logging
import os
import shutil
import sys
import time
from typing import Annotated, Callable, List, Optional, Tuple

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import (
    parameterNodeWrapper,
    Choice,
    WithinRange,
)

from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from SemiSupSegLib import commands

# The engine package sits beside this file in an installed extension, one folder up in a source checkout.
_ENGINE_PARENT = commands.locate_engine(os.path.dirname(os.path.abspath(__file__)))
if _ENGINE_PARENT and _ENGINE_PARENT not in sys.path:
    sys.path.append(_ENGINE_PARENT)

from SemiSupSegLib import job as jobs  # noqa: E402
from SemiSupSegLib import nodes  # noqa: E402
from SemiSupSegLib.cases import CaseTable, build_manifest  # noqa: E402
from SemiSupSegLib.labels import classes_for_training, parse_structure_names  # noqa: E402
from SemiSupSegLib.progress import LossHistory, describe, format_duration, loss_names  # noqa: E402


#
# SemiSupSeg
#


class SemiSupSeg(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Semi-Supervised Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SemiSupSeg developers"]
        self.parent.helpText = _("""
Train a 3D segmentation model on your own cases, a few labeled and many unlabeled (two networks teach each
other with pseudo labels, consistency and prototype contrastive learning), segment new volumes, correct the
result in the Segment Editor and retrain.
See the <a href="https://github.com/semisupseg/SlicerSemiSupSeg">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
The method follows "Dual-network semi-supervised segmentation with pseudo labels and prototype contrastive
learning". The module follows the shape of SlicerMONAIAuto3DSeg and SlicerNNUnet.
""")


#
# SemiSupSegParameterNode
#


@parameterNodeWrapper
class SemiSupSegParameterNode:
    """
    The parameters of the module (saved with the scene).

    structureNames - names of the structures to learn, comma separated ("" = the segment names).
    modality - MRI (z-score) or CT (HU window) intensity normalisation.
    preset, iterations, device - training settings (iterations 0 = the preset's number).
    inputVolume, outputSegmentation, roi, uncertainty, keepLargest - segmenting settings.
    cases - the case table as JSON; manifestClasses - classes of a loaded manifest as JSON.
    """

    structureNames: str = ""
    modality: Annotated[str, Choice(list(commands.MODALITIES))] = "MRI"
    preset: Annotated[str, Choice(list(commands.PRESETS))] = commands.DEFAULT_PRESET
    iterations: Annotated[int, WithinRange(0, 1000000)] = 0
    device: Annotated[str, Choice(list(commands.DEVICES))] = "auto"
    showLossCurve: bool = True
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    roi: vtkMRMLMarkupsROINode
    uncertainty: bool = False
    keepLargest: bool = False
    cases: str = ""
    manifestClasses: str = ""


#
# SemiSupSegWidget
#


class SemiSupSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    COLUMN_VOLUME, COLUMN_SEGMENTATION, COLUMN_LABELED, COLUMN_STATUS = range(4)

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.cases = CaseTable()
        self.trainJob = None
        self.segmentJob = None
        self.lossHistory = LossHistory()
        self._plotNodes = {}
        self._lastPlotTime = 0.0
        self._updatingTable = False
        self._forgetPending = False
        self._pollTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SemiSupSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SemiSupSegLogic()

        header = self.ui.casesTable.horizontalHeader()
        header.setSectionResizeMode(self.COLUMN_VOLUME, qt.QHeaderView.Stretch)
        header.setSectionResizeMode(self.COLUMN_SEGMENTATION, qt.QHeaderView.Stretch)
        header.setSectionResizeMode(self.COLUMN_LABELED, qt.QHeaderView.ResizeToContents)
        self.ui.trainProgressBar.hide()
        self.ui.segmentProgressBar.hide()
        if not self.ui.modelFolderPathLineEdit.currentPath:
            self.ui.modelFolderPathLineEdit.currentPath = self.logic.defaultModelFolder()
        lastModel = self.logic.lastModelFile()
        if lastModel:
            self.ui.modelFilePathLineEdit.currentPath = lastModel

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(250)
        self._pollTimer.connect("timeout()", self.onPollTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)

        self.ui.addVolumeButton.connect("clicked(bool)", self.onAddVolume)
        self.ui.addAllVolumesButton.connect("clicked(bool)", self.onAddAllVolumes)
        self.ui.loadFolderButton.connect("clicked(bool)", self.onLoadFolder)
        self.ui.loadManifestButton.connect("clicked(bool)", self.onLoadManifest)
        self.ui.removeCasesButton.connect("clicked(bool)", self.onRemoveCases)
        self.ui.saveManifestButton.connect("clicked(bool)", self.onSaveManifest)
        self.ui.casesTable.connect("itemChanged(QTableWidgetItem*)", self.onCaseItemChanged)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.retrainButton.connect("clicked(bool)", self.onRetrainButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.editSegmentationButton.connect("clicked(bool)", self.onEditSegmentation)
        self.ui.useAsLabelButton.connect("clicked(bool)", self.onUseAsLabel)
        self.ui.modelFilePathLineEdit.connect("currentPathChanged(QString)", self.onModelFileChanged)

        self.initializeParameterNode()
        self.onModelFileChanged()

    def cleanup(self) -> None:
        """Called when the application closes or the module is reloaded: no engine process is left behind."""
        for job in (self.trainJob, self.segmentJob):
            if job is not None and job.active:
                job.cancel()
        if self._pollTimer:
            self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[SemiSupSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        self.cases = CaseTable.from_json(self._parameterNode.cases) if self._parameterNode else CaseTable()
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui file are connected to the parameter node.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.updateCasesTable()

    # -- cases -------------------------------------------------------------------------------------------

    def saveCases(self) -> None:
        if self._parameterNode:
            self._parameterNode.cases = self.cases.to_json()
        self.updateCasesTable()

    def updateCasesTable(self) -> None:
        table = self.ui.casesTable
        self._updatingTable = True
        try:
            table.setRowCount(len(self.cases))
            for index, row in enumerate(self.cases):
                volumeItem = qt.QTableWidgetItem(row.volume_text)
                volumeItem.setToolTip(row.image_path or row.volume_node_id or "")
                table.setItem(index, self.COLUMN_VOLUME, volumeItem)
                if row.volume_node_id:
                    table.setCellWidget(index, self.COLUMN_SEGMENTATION, self._segmentationSelector(index, row))
                else:
                    table.removeCellWidget(index, self.COLUMN_SEGMENTATION)
                    labelItem = qt.QTableWidgetItem(row.label_text or _("(none)"))
                    labelItem.setToolTip(row.label_path or "")
                    table.setItem(index, self.COLUMN_SEGMENTATION, labelItem)
                labeledItem = qt.QTableWidgetItem()
                flags = qt.Qt.ItemIsUserCheckable | (qt.Qt.ItemIsEnabled if row.has_label else qt.Qt.NoItemFlags)
                labeledItem.setFlags(flags)
                labeledItem.setCheckState(qt.Qt.Checked if row.is_labeled else qt.Qt.Unchecked)
                table.setItem(index, self.COLUMN_LABELED, labeledItem)
                table.setItem(index, self.COLUMN_STATUS, qt.QTableWidgetItem(row.status))
        finally:
            self._updatingTable = False
        self.ui.casesSummaryLabel.text = self.cases.summary() if len(self.cases) else _("No cases yet.")
        self.updateButtons()

    def _segmentationSelector(self, index: int, row):
        selector = slicer.qMRMLNodeComboBox()
        selector.nodeTypes = ["vtkMRMLSegmentationNode"]
        selector.noneEnabled = True
        selector.noneDisplay = _("(none: unlabeled)")
        selector.addEnabled = False
        selector.removeEnabled = False
        selector.setMRMLScene(slicer.mrmlScene)
        selector.setCurrentNode(slicer.mrmlScene.GetNodeByID(row.segmentation_node_id) if row.segmentation_node_id else None)
        selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node, i=index: self.onCaseSegmentationChanged(i, node))
        return selector

    def onCaseSegmentationChanged(self, index: int, node) -> None:
        if self._updatingTable or index >= len(self.cases):
            return
        self.cases.set_segmentation(index, node.GetID() if node else None, node.GetName() if node else "")
        # the table is rebuilt after this signal has returned: its sender must not be deleted while it emits
        qt.QTimer.singleShot(0, self.saveCases)

    def onCaseItemChanged(self, item) -> None:
        if self._updatingTable or item.column() != self.COLUMN_LABELED:
            return
        self.cases.set_labeled(item.row(), item.checkState() == qt.Qt.Checked and self.cases[item.row()].has_label)
        qt.QTimer.singleShot(0, self.saveCases)

    def addVolumeCases(self, volumeNodes) -> int:
        added = 0
        for volumeNode in volumeNodes:
            if volumeNode is None or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                continue
            segmentationNode = nodes.findSegmentationOf(volumeNode)
            added += self.cases.add_volume(volumeNode.GetID(), volumeNode.GetName(),
                                           segmentationNode.GetID() if segmentationNode else None,
                                           segmentationNode.GetName() if segmentationNode else "")[1]
        self.saveCases()
        return added

    def onAddVolume(self) -> None:
        self.addVolumeCases([self.ui.caseVolumeSelector.currentNode()])

    def onAddAllVolumes(self) -> None:
        self.addVolumeCases(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))

    def onLoadFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Folder of cases"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not add the folder's cases."), waitCursor=True):
            added = self.cases.add_folder(folder)
            self.saveCases()
            self.addLog(_("{count} cases added from {folder}.").format(count=added, folder=folder))

    def onLoadManifest(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Manifest"), "", _("Manifest (*.json)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not add the manifest's cases."), waitCursor=True):
            manifest = self.logic.loadManifest(path)
            added = self.cases.add_manifest(manifest)
            self._parameterNode.modality = manifest.modality
            self._parameterNode.structureNames = ", ".join(c.name for c in manifest.classes if c.value != 0)
            self._parameterNode.manifestClasses = self.logic.classesToJson(manifest.classes)
            self.saveCases()
            self.addLog(_("{count} cases added from {path}.").format(count=added, path=path))

    def onRemoveCases(self) -> None:
        rows = {index.row() for index in self.ui.casesTable.selectionModel().selectedRows()}
        self.cases.remove(rows)
        self.saveCases()

    def onSaveManifest(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Folder for the cases and the manifest"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not save the cases."), waitCursor=True):
            path = self.logic.saveCasesAsManifest(self.cases, folder, **self._classArguments())
            self.addLog(_("Cases and manifest written: {path}").format(path=path))

    def onNodeRemoved(self, caller, event) -> None:
        if not len(self.cases) or self._forgetPending:
            return
        # look once, after the removals of this moment are over
        self._forgetPending = True
        qt.QTimer.singleShot(0, self._forgetRemovedNodes)

    def _forgetRemovedNodes(self) -> None:
        self._forgetPending = False
        existing = {node.GetID() for node in slicer.util.getNodesByClass("vtkMRMLNode")}
        before = self.cases.to_json()
        self.cases.forget_missing_nodes(existing)
        if self.cases.to_json() != before:
            self.saveCases()

    # -- buttons -----------------------------------------------------------------------------------------

    def _busy(self) -> bool:
        return any(job is not None and job.active for job in (self.trainJob, self.segmentJob))

    def updateButtons(self, caller=None, event=None) -> None:
        training = self.trainJob is not None and self.trainJob.active
        segmenting = self.segmentJob is not None and self.segmentJob.active
        ready, reason = self.cases.readiness()
        modelFile = self.ui.modelFilePathLineEdit.currentPath
        hasModel = bool(modelFile) and os.path.isfile(modelFile)
        inputVolume = self._parameterNode.inputVolume if self._parameterNode else None
        outputSegmentation = self._parameterNode.outputSegmentation if self._parameterNode else None

        self.ui.trainButton.text = _("Cancel") if training else _("Train")
        self.ui.trainButton.enabled = training or (ready and not segmenting)
        self.ui.trainReasonLabel.text = reason
        self.ui.trainReasonLabel.visible = bool(reason) and not training
        self.ui.retrainButton.enabled = ready and hasModel and not self._busy()
        self.ui.retrainButton.toolTip = (_("Train again on the cases, starting from the current model file's weights.")
                                         if hasModel else _("Choose a model file first (Segment section)."))

        self.ui.segmentButton.text = _("Cancel") if segmenting else _("Segment")
        self.ui.segmentButton.enabled = segmenting or (bool(inputVolume) and hasModel and not training)
        if not segmenting:
            self.ui.segmentButton.toolTip = (_("Segment the input volume in the background; click again to cancel.")
                                             if hasModel else _("Choose a model file: train one, or browse to a model.pt."))
        self.ui.editSegmentationButton.enabled = bool(outputSegmentation)
        self.ui.useAsLabelButton.enabled = bool(inputVolume) and bool(outputSegmentation)

    def onModelFileChanged(self, path=None) -> None:
        modelFile = self.ui.modelFilePathLineEdit.currentPath
        self.ui.modelInfoLabel.text = self.logic.describeModel(modelFile) if modelFile else ""
        self.updateButtons()

    def addLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(text)

    def _classArguments(self) -> dict:
        return dict(structureNames=self._parameterNode.structureNames, modality=self._parameterNode.modality,
                    manifestClasses=self._parameterNode.manifestClasses)

    # -- training ----------------------------------------------------------------------------------------

    def onTrainButton(self) -> None:
        if self.trainJob is not None and self.trainJob.active:
            self.trainJob.cancel()
            self.ui.trainStatusLabel.text = _("Cancelling (the engine writes a checkpoint)...")
            return
        self.startTraining(initModel=None)

    def onRetrainButton(self) -> None:
        self.startTraining(initModel=self.ui.modelFilePathLineEdit.currentPath)

    def startTraining(self, initModel: Optional[str]) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start the training."), waitCursor=True):
            self.lossHistory.clear()
            self._plotNodes = {}  # a new chart for each training
            self.ui.modelFolderPathLineEdit.addCurrentPathToHistory()
            self.cases.set_status(_("exporting"))
            self.saveCases()
            slicer.app.processEvents()
            try:
                # the job reports to onTrainState from its start on ("starting"), then from the poll timer
                self.logic.train(
                    self.cases, self.ui.modelFolderPathLineEdit.currentPath, preset=self._parameterNode.preset,
                    iterations=self._parameterNode.iterations or None, device=self._parameterNode.device,
                    initModel=initModel, waitForCompletion=False,
                    onEvent=self.onTrainEvent, onState=self.onTrainState, onLog=self.addLog, **self._classArguments())
            except Exception:
                self.cases.set_status("")
                self.saveCases()
                raise
        self.updateButtons()

    def onTrainEvent(self, event) -> None:
        self.ui.trainStatusLabel.text = describe(event)
        if event.event == "progress" and event.total:
            self.ui.trainProgressBar.setRange(0, event.total)
            self.ui.trainProgressBar.setValue(event.iteration or 0)
            if self.lossHistory.add(event) and self._parameterNode.showLossCurve:
                self.updateLossPlot()
        elif event.event in ("start", "checkpoint", "error", "cancelled"):
            self.addLog(describe(event))

    def onTrainState(self, job) -> None:
        self.trainJob = job
        state = job.state
        if state == jobs.STARTING:
            self.cases.set_status(_("in training"))
            self.saveCases()
            self.ui.trainProgressBar.setRange(0, 0)  # busy until the first progress event
            self.ui.trainProgressBar.show()
            self.ui.trainStatusLabel.text = _("Starting the engine...")
            self._pollTimer.start()
        elif state == jobs.DONE:
            self.updateLossPlot(force=True)
            model = self.trainJob.result
            self.ui.modelFilePathLineEdit.currentPath = model
            self.ui.modelFilePathLineEdit.addCurrentPathToHistory()
            self.ui.trainStatusLabel.text = _("Done in {time}: {model}").format(
                time=self._elapsed(self.trainJob), model=model)
            self.cases.set_status(_("trained"))
        elif state == jobs.FAILED:
            self.ui.trainStatusLabel.text = _("Failed: {message}").format(message=self.trainJob.error_message)
            self.cases.set_status("")
            if not slicer.app.testingEnabled():
                slicer.util.errorDisplay(_("Training failed.") + "\n\n" + self.trainJob.error_message,
                                         detailedText="\n".join(self.trainJob.log_tail))
        elif state == jobs.CANCELLED:
            checkpoint = self.trainJob.checkpoint
            self.ui.trainStatusLabel.text = (_("Cancelled; checkpoint: {path}").format(path=checkpoint)
                                             if checkpoint else _("Cancelled."))
            self.cases.set_status("")
        if state in jobs.FINISHED_STATES:
            self.ui.trainProgressBar.hide()
            self.saveCases()
        self.updateButtons()

    def updateLossPlot(self, force: bool = False) -> None:
        if not self._parameterNode or not self._parameterNode.showLossCurve or not len(self.lossHistory):
            return
        now = time.monotonic()
        if not force and now - self._lastPlotTime < 2.0:
            return
        self._lastPlotTime = now
        import numpy as np

        names = loss_names(self.lossHistory.series)[:8]
        columns = [np.asarray(self.lossHistory.iterations, dtype=float)]
        columns += [np.asarray(self.lossHistory.series[name], dtype=float) for name in names]
        firstTime = "chart" not in self._plotNodes
        slicer.util.plot(np.column_stack(columns), xColumnIndex=0, columnNames=["iteration"] + names,
                         title=_("SemiSupSeg losses"), show=firstTime, nodes=self._plotNodes)

    # -- segmenting --------------------------------------------------------------------------------------

    def onSegmentButton(self) -> None:
        if self.segmentJob is not None and self.segmentJob.active:
            self.segmentJob.cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start segmenting."), waitCursor=True):
            p = self._parameterNode
            self.logic.segment(
                p.inputVolume, self.ui.modelFilePathLineEdit.currentPath, outputSegmentation=p.outputSegmentation,
                roiNode=p.roi, device=p.device, uncertainty=p.uncertainty, keepLargest=p.keepLargest,
                waitForCompletion=False, onEvent=self.onSegmentEvent, onState=self.onSegmentState, onLog=self.addLog)
        self.updateButtons()

    def onSegmentEvent(self, event) -> None:
        self.ui.segmentStatusLabel.text = describe(event)
        if event.event == "progress" and event.total:
            self.ui.segmentProgressBar.setRange(0, event.total)
            self.ui.segmentProgressBar.setValue(event.iteration or 0)

    def onSegmentState(self, job) -> None:
        self.segmentJob = job
        state = job.state
        if state == jobs.STARTING:
            self.ui.segmentProgressBar.setRange(0, 0)
            self.ui.segmentProgressBar.show()
            self.ui.segmentStatusLabel.text = _("Starting the engine...")
            self._pollTimer.start()
        elif state == jobs.IMPORTING:
            self.ui.segmentStatusLabel.text = _("Loading the result...")
        elif state == jobs.DONE:
            segmentationNode = self.segmentJob.result
            self._parameterNode.outputSegmentation = segmentationNode
            slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume)
            self.ui.segmentStatusLabel.text = _("Done in {time}: {name}").format(
                time=self._elapsed(self.segmentJob), name=segmentationNode.GetName())
        elif state == jobs.FAILED:
            self.ui.segmentStatusLabel.text = _("Failed: {message}").format(message=self.segmentJob.error_message)
            if not slicer.app.testingEnabled():
                slicer.util.errorDisplay(_("Segmenting failed.") + "\n\n" + self.segmentJob.error_message,
                                         detailedText="\n".join(self.segmentJob.log_tail))
        elif state == jobs.CANCELLED:
            self.ui.segmentStatusLabel.text = _("Cancelled.")
        if state in jobs.FINISHED_STATES:
            self.ui.segmentProgressBar.hide()
        self.updateButtons()

    def onPollTimer(self) -> None:
        for job in (self.trainJob, self.segmentJob):
            if job is not None and not job.finished:
                job.poll()
        if not self._busy():
            self._pollTimer.stop()

    @staticmethod
    def _elapsed(job) -> str:
        return format_duration(job.elapsed_s)

    # -- review ------------------------------------------------------------------------------------------

    def onEditSegmentation(self) -> None:
        p = self._parameterNode
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.util.getModuleWidget("SegmentEditor").editor
        editor.setSegmentationNode(p.outputSegmentation)
        if p.inputVolume:
            editor.setSourceVolumeNode(p.inputVolume)

    def onUseAsLabel(self) -> None:
        p = self._parameterNode
        volumeNode, segmentationNode = p.inputVolume, p.outputSegmentation
        row = self.cases.add_volume(volumeNode.GetID(), volumeNode.GetName(), segmentationNode.GetID(),
                                    segmentationNode.GetName())[0]
        index = self.cases.find_volume(volumeNode.GetID())
        self.cases.set_segmentation(index, segmentationNode.GetID(), segmentationNode.GetName())
        self.cases.set_labeled(index, True)
        row.status = _("corrected")
        self.saveCases()
        self.addLog(_("{volume} is a labeled case now, with {segmentation}.").format(
            volume=volumeNode.GetName(), segmentation=segmentationNode.GetName()))


#
# SemiSupSegLogic
#


class SemiSupSegLogic(ScriptedLoadableModuleLogic):
    """Training and segmenting, usable without the GUI (Python console, ``Slicer --python-script``)::

        logic = SemiSupSegLogic()
        model = logic.train([(volume1, segmentation1), volume2], "/models", preset="cpu-fast")
        segmentation = logic.segment(volume3, model)

    Both run the engine as a separate process (``PythonSlicer -m SemiSupSegTraining``); with
    ``waitForCompletion=False`` they return the running :class:`SemiSupSegLib.job.Job` instead of waiting.
    """

    SETTINGS_LAST_MODEL = "SemiSupSeg/LastModelFile"

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.askConfirmation = True  # before installing Python packages
        self.keepTemporaryFiles = False
        self.runner = None  # a SemiSupSegLib.job runner; None: slicer.util.launchConsoleProcess
        self.lastUncertaintyVolume = None
        self._requirementsReady = False

    def getParameterNode(self):
        return SemiSupSegParameterNode(super().getParameterNode())

    # -- settings ----------------------------------------------------------------------------------------

    @staticmethod
    def defaultModelFolder() -> str:
        documents = qt.QStandardPaths.writableLocation(qt.QStandardPaths.DocumentsLocation)
        return os.path.join(documents or os.path.expanduser("~"), "SemiSupSeg", "models")

    @classmethod
    def lastModelFile(cls) -> str:
        path = slicer.app.userSettings().value(cls.SETTINGS_LAST_MODEL, "")
        return path if path and os.path.isfile(path) else ""

    @classmethod
    def setLastModelFile(cls, path: str) -> None:
        slicer.app.userSettings().setValue(cls.SETTINGS_LAST_MODEL, path)

    # -- dependencies ------------------------------------------------------------------------------------

    def setupPythonRequirements(self, askConfirmation: Optional[bool] = None) -> None:
        """PyTorch through the PyTorch extension, then what the engine needs beyond Slicer (monai, scipy)
        and psutil. Raises RuntimeError with one sentence when something is missing or was declined."""
        if self._requirementsReady:
            return
        ask = self.askConfirmation if askConfirmation is None else askConfirmation
        try:
            import PyTorchUtils
        except ImportError:
            PyTorchUtils = None
        if PyTorchUtils is None:
            if importlib.util.find_spec("torch") is None:
                raise RuntimeError(_("This module needs PyTorch: install the 'PyTorch' extension in the Extensions "
                                     "Manager, restart Slicer, and try again."))
        else:
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torch = torchLogic.installTorch(askConfirmation=ask, torchVersionRequirement=commands.TORCH_REQUIREMENT)
                if torch is None:
                    raise RuntimeError(_("PyTorch is needed to train and segment; its installation was declined."))
        missing = commands.missing_requirements()
        if missing:
            if ask and not slicer.util.confirmOkCancelDisplay(
                    _("SemiSupSeg needs these Python packages: {packages}. Download and install them now? "
                      "This may take a few minutes.").format(packages=", ".join(missing))):
                raise RuntimeError(_("These Python packages are needed: {packages}; their installation was "
                                     "declined.").format(packages=", ".join(missing)))
            slicer.util.pip_install(missing)
            importlib.invalidate_caches()
        self._requirementsReady = True

    # -- the engine --------------------------------------------------------------------------------------

    def _runner(self):
        if self.runner is not None:
            return self.runner

        def launch(command, environmentUpdates, cwd):
            return slicer.util.launchConsoleProcess(command, useStartupEnvironment=True,
                                                    updateEnvironment=environmentUpdates, cwd=cwd)

        return jobs.SubprocessRunner(popen=launch)

    def _startJob(self, command: List[str], name: str, importer: Callable, device: str,
                  onEvent=None, onState=None, onLog=None, waitForCompletion=True):
        if _ENGINE_PARENT is None:
            raise RuntimeError(_("The SemiSupSegTraining engine was not found beside the module; reinstall the extension."))
        environment = commands.engine_environment(_ENGINE_PARENT, slicer.util.startupEnvironment(),
                                                  cpu_only=device == "cpu")
        job = jobs.Job(command, runner=self._runner(), env=environment, name=name, importer=importer,
                       on_event=onEvent or self._logEvent, on_state=onState, on_log=onLog or logging.info)
        job.start()
        if not waitForCompletion:
            return job
        state = job.wait(on_tick=slicer.app.processEvents)
        if state == jobs.CANCELLED:
            raise RuntimeError(_("{name} was cancelled.").format(name=name))
        if state != jobs.DONE:
            raise RuntimeError(job.error_message)
        return job.result

    _lastLogTime = 0.0

    def _logEvent(self, event) -> None:
        """Default progress report for scripts: events, and progress at most every 5 seconds."""
        now = time.monotonic()
        if event.event != "progress" or now - self._lastLogTime > 5.0:
            self._lastLogTime = now
            logging.info(describe(event))

    @staticmethod
    def readModelMetadata(modelFile: str) -> dict:
        if not modelFile or not os.path.isfile(modelFile):
            raise ValueError(_("The model file {path} does not exist.").format(path=modelFile))
        from SemiSupSegTraining.modelfile import read_metadata

        return read_metadata(modelFile)

    def describeModel(self, modelFile: str) -> str:
        """One line about a model file for the GUI (structures, preset), or why it cannot be read."""
        if importlib.util.find_spec("torch") is None:
            return _("PyTorch is installed when you first train or segment.")
        try:
            meta = self.readModelMetadata(modelFile)
        except Exception as e:
            return _("Not a usable model file: {error}").format(error=e)
        names = ", ".join(c["name"] for c in meta["classes"] if c["value"] != 0)
        return _("Structures: {names} · preset {preset}").format(names=names, preset=meta.get("preset", "?"))

    # -- cases -------------------------------------------------------------------------------------------

    @staticmethod
    def loadManifest(path: str):
        from SemiSupSegTraining.manifest import load_manifest

        return load_manifest(path)

    @staticmethod
    def classesToJson(classes) -> str:
        import json

        return json.dumps([c.to_dict() for c in classes])

    @staticmethod
    def caseTable(cases) -> CaseTable:
        """A CaseTable from a CaseTable, or from a list of volume nodes and (volume node, segmentation node or
        None) pairs; a segmentation makes its case labeled."""
        if isinstance(cases, CaseTable):
            return cases
        table = CaseTable()
        for item in cases:
            volumeNode, segmentationNode = (item if isinstance(item, (tuple, list)) else (item, None))
            table.add_volume(volumeNode.GetID(), volumeNode.GetName(),
                             segmentationNode.GetID() if segmentationNode else None,
                             segmentationNode.GetName() if segmentationNode else "")
        return table

    def trainingClasses(self, table: CaseTable, structureNames: str = "", manifestClasses: str = "",
                        initModel: Optional[str] = None):
        """The classes to train: the model's (retrain), a loaded manifest's, the typed names, or the segment
        names of the labeled cases."""
        import json

        if initModel:
            return classes_for_training(model_classes=self.readModelMetadata(initModel)["classes"])
        typed = parse_structure_names(structureNames or "")
        if manifestClasses:
            fromManifest = json.loads(manifestClasses)
            if not typed or typed == [c["name"] for c in fromManifest if c["value"] != 0]:
                return classes_for_training(model_classes=fromManifest)
        namesPerCase, colors = [], {}
        for row in table.labeled_rows:
            segmentationNode = slicer.mrmlScene.GetNodeByID(row.segmentation_node_id) if row.segmentation_node_id else None
            if segmentationNode is not None:
                namesPerCase.append([name for _, name in nodes.segments(segmentationNode)])
                colors.update({k: v for k, v in nodes.segmentColors(segmentationNode).items() if k not in colors})
        return classes_for_training(typed, namesPerCase, segment_colors=colors)

    def exportCases(self, table: CaseTable, folder: str, classes) -> List[Tuple[str, str, Optional[str], bool]]:
        """Writes the scene's volumes (and the segmentations of labeled cases) of the table into ``folder``;
        file cases stay where they are. Returns manifest entries (id, image, label, labeled)."""
        entries = []
        for row in table:
            if not row.volume_node_id:
                entries.append((row.id, row.image_path, row.label_path, row.labeled))
                continue
            volumeNode = slicer.mrmlScene.GetNodeByID(row.volume_node_id)
            if volumeNode is None:
                raise ValueError(_("The volume of case '{id}' is no longer in the scene.").format(id=row.id))
            image = nodes.writeVolume(volumeNode, os.path.join(folder, "images", row.id + ".nrrd"))
            label = None
            if row.is_labeled:
                segmentationNode = slicer.mrmlScene.GetNodeByID(row.segmentation_node_id)
                if segmentationNode is None:
                    raise ValueError(_("The segmentation of case '{id}' is no longer in the scene.").format(id=row.id))
                label = os.path.join(folder, "labels", row.id + ".nrrd")
                nodes.writeSegmentationAsLabelmap(segmentationNode, volumeNode, classes, label)
            entries.append((row.id, image, label, row.is_labeled))
        return entries

    def saveCasesAsManifest(self, cases, folder: str, structureNames: str = "", modality: str = "MRI",
                            manifestClasses: str = "") -> str:
        """Writes the cases to ``folder`` (images/, labels/, manifest.json) for the command line."""
        table = self.caseTable(cases)
        classes = self.trainingClasses(table, structureNames, manifestClasses)
        for sub in ("images", "labels"):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
        path = os.path.join(folder, "manifest.json")
        build_manifest(self.exportCases(table, folder, classes), classes, modality, path)
        return path

    # -- train and segment -------------------------------------------------------------------------------

    def train(self, cases, modelFolder: str, preset: str = commands.DEFAULT_PRESET, iterations: Optional[int] = None,
              device: str = "auto", modality: str = "MRI", structureNames: str = "", manifestClasses: str = "",
              initModel: Optional[str] = None, waitForCompletion: bool = True,
              onEvent=None, onState=None, onLog=None):
        """Trains on ``cases`` (a CaseTable, a list of volume nodes / (volume, segmentation) pairs, or the
        path of a manifest file) and writes ``<modelFolder>/run-DATE-TIME/model.pt``.

        :param initModel: start from this model file's weights and classes ("Retrain").
        :return: the model file path; with ``waitForCompletion=False`` the running Job (its ``result``
          is the model file path once it is done).
        """
        self.setupPythonRequirements()
        if not modelFolder:
            raise ValueError(_("Choose a model folder."))
        os.makedirs(modelFolder, exist_ok=True)
        workFolder = None
        if isinstance(cases, str):
            manifestPath = cases
            self.loadManifest(manifestPath)  # a clear error now rather than in the engine
        else:
            table = self.caseTable(cases)
            ready, reason = table.readiness()
            if not ready:
                raise ValueError(reason)
            classes = self.trainingClasses(table, structureNames, manifestClasses, initModel)
            workFolder = slicer.util.tempDirectory("SemiSupSeg-train-")
            manifestPath = os.path.join(workFolder, "manifest.json")
            build_manifest(self.exportCases(table, workFolder, classes), classes, modality, manifestPath)
        runFolder = commands.new_run_folder(modelFolder)
        command = commands.train_command(commands.find_python_slicer(), manifestPath, runFolder, preset=preset,
                                         iterations=iterations, device=device, init_model=initModel)

        def importModel(job):
            model = job.done_event.get("model") if job.done_event else None
            if not model or not os.path.isfile(model):
                model = commands.model_file_in(runFolder)
            if not os.path.isfile(model):
                raise RuntimeError(_("The training ended without writing {path}.").format(path=model))
            self.setLastModelFile(model)
            if workFolder and not self.keepTemporaryFiles:
                shutil.rmtree(workFolder, ignore_errors=True)
            return model

        return self._startJob(command, _("Training"), importModel, device, onEvent, onState, onLog, waitForCompletion)

    def segment(self, volumeNode, modelFile: str, outputSegmentation=None, roiNode=None, device: str = "auto",
                uncertainty: bool = False, keepLargest: bool = False, waitForCompletion: bool = True,
                onEvent=None, onState=None, onLog=None):
        """Segments ``volumeNode`` with a model file into ``outputSegmentation`` (a new segmentation node when
        None): one segment per structure of the model, named and colored like it, on the volume's geometry.

        :param roiNode: a markups ROI; only the voxels inside it are segmented.
        :param uncertainty: also load an uncertainty volume (``logic.lastUncertaintyVolume``).
        :return: the segmentation node; with ``waitForCompletion=False`` the running Job.
        """
        self.setupPythonRequirements()
        if volumeNode is None:
            raise ValueError(_("Choose the volume to segment."))
        meta = self.readModelMetadata(modelFile)
        workFolder = slicer.util.tempDirectory("SemiSupSeg-segment-")
        inputPath = nodes.writeVolume(volumeNode, os.path.join(workFolder, "input.nrrd"))
        outputPath = os.path.join(workFolder, "segmentation.nrrd")
        uncertaintyPath = os.path.join(workFolder, "uncertainty.nrrd") if uncertainty else None
        roi = nodes.roiIndexBox(roiNode, volumeNode) if roiNode is not None else None
        command = commands.segment_command(commands.find_python_slicer(), modelFile, inputPath, outputPath,
                                           uncertainty=uncertaintyPath, device=device, roi=roi,
                                           keep_largest=keepLargest)

        def importResult(job):
            segmentationNode = outputSegmentation
            if segmentationNode is None:
                segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(volumeNode.GetName() + " segmentation"))
                segmentationNode.CreateDefaultDisplayNodes()
                segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
            nodes.importLabelmapFile(outputPath, segmentationNode, meta["classes"], volumeNode)
            if uncertaintyPath:
                self.lastUncertaintyVolume = nodes.readVolume(uncertaintyPath, name=slicer.mrmlScene.GenerateUniqueName(
                    volumeNode.GetName() + " uncertainty"))
                self.lastUncertaintyVolume.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
                self.lastUncertaintyVolume.CreateDefaultDisplayNodes()
            if not self.keepTemporaryFiles:
                shutil.rmtree(workFolder, ignore_errors=True)
            return segmentationNode

        return self._startJob(command, _("Segmenting"), importResult, device, onEvent, onState, onLog,
                              waitForCompletion)


#
# SemiSupSegTest
#


class SemiSupSegTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer on synthetic volumes: train (preset "tiny"), segment with a region of interest and
    an uncertainty volume, use the result as a label and retrain, cancel a long training."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SemiSupSeg1()

    @staticmethod
    def _syntheticCase(name, center, withSegmentation):
        import numpy as np

        shape = (24, 40, 40)  # k, j, i
        k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
        inside = ((i - center[0]) ** 2 + (j - center[1]) ** 2 + ((k - center[2]) * 2.0) ** 2) < 9.0 ** 2
        noise = np.random.default_rng(len(name)).normal(0, 20, shape)
        ijkToRas = np.diag([-1.0, -1.0, 2.0, 1.0])
        ijkToRas[:3, 3] = [20.0, 20.0, -24.0]
        volumeNode = slicer.util.addVolumeFromArray((inside * 200.0 + noise).astype(np.int16), ijkToRas, name)
        segmentationNode = None
        if withSegmentation:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name + " segmentation")
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            segmentId = segmentationNode.GetSegmentation().AddEmptySegment("sphere", "sphere")
            slicer.util.updateSegmentBinaryLabelmapFromArray(inside.astype(np.uint8), segmentationNode, segmentId,
                                                             volumeNode)
        return volumeNode, segmentationNode

    def test_SemiSupSeg1(self):
        self.delayDisplay("Starting the test")
        logic = SemiSupSegLogic()
        logic.askConfirmation = False
        volume1, segmentation1 = self._syntheticCase("case1", (18, 20, 12), True)
        volume2 = self._syntheticCase("case2", (22, 19, 11), False)[0]
        modelFolder = slicer.util.tempDirectory("SemiSupSegTest-")

        model = logic.train([(volume1, segmentation1), volume2], modelFolder, preset="tiny", iterations=2, device="cpu")
        self.assertTrue(os.path.isfile(model))
        self.assertEqual([c["name"] for c in logic.readModelMetadata(model)["classes"]], ["background", "sphere"])
        self.delayDisplay("Trained")

        bounds = [0.0] * 6
        volume2.GetRASBounds(bounds)
        roiNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "organ")
        roiNode.SetCenter([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
        roiNode.SetSize([(bounds[1] - bounds[0]) * 0.8, (bounds[3] - bounds[2]) * 0.8, (bounds[5] - bounds[4]) * 0.8])
        box = nodes.roiIndexBox(roiNode, volume2)
        self.assertTrue(all(box[a] > 0 and box[a + 3] < volume2.GetImageData().GetDimensions()[a] for a in range(3)))
        segmentation = logic.segment(volume2, model, roiNode=roiNode, device="cpu", uncertainty=True)
        self.assertEqual([name for _, name in nodes.segments(segmentation)], ["sphere"])
        reference = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
        self.assertEqual(reference.GetID(), volume2.GetID())
        self.assertIsNotNone(logic.lastUncertaintyVolume)
        self.assertEqual(logic.lastUncertaintyVolume.GetImageData().GetDimensions(),
                         volume2.GetImageData().GetDimensions())
        self.delayDisplay("Segmented")

        table = logic.caseTable([(volume1, segmentation1), (volume2, segmentation)])
        self.assertEqual(len(table.labeled_rows), 2)
        retrained = logic.train(table, modelFolder, preset="tiny", iterations=2, device="cpu", initModel=model)
        self.assertTrue(os.path.isfile(retrained))
        self.assertNotEqual(os.path.dirname(retrained), os.path.dirname(model))
        self.delayDisplay("Retrained")

        job = logic.train([(volume1, segmentation1), volume2], modelFolder, preset="tiny", iterations=100000,
                          device="cpu", waitForCompletion=False)
        deadline = time.monotonic() + 300
        while job.last_progress is None and not job.finished and time.monotonic() < deadline:
            job.poll()
            slicer.app.processEvents()
            time.sleep(0.1)
        self.assertEqual(job.state, jobs.RUNNING)
        job.cancel()
        self.assertEqual(job.wait(timeout=120, on_tick=slicer.app.processEvents), jobs.CANCELLED)
        self.delayDisplay("Test passed")
