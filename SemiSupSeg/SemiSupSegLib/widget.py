"""The module's widget: the form (Resources/UI/SemiSupSeg.ui) driving the logic.

It holds no decisions of its own beyond the GUI: the case table, command lines, job states and progress
come from the plain-Python files of this package, the work from a logic object that has the methods of
:class:`SemiSupSegLib.interfaces.SemiSupSegLogicProtocol` (``logic.SemiSupSegLogic`` unless one is given).
"""

import importlib
import logging
import os
import time
from typing import Optional

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from . import commands, form, install, nodes, review
from . import job as jobs
from .cases import CaseTable
from .interfaces import SemiSupSegLogicProtocol
from .parameter_node import SemiSupSegParameterNode, readCases, writeCases
from .progress import LossHistory, describe, format_duration, loss_names

#: The package's files in the order a reload needs (each after what it imports).
RELOAD_ORDER = ("commands", "progress", "job", "labels", "terminology", "cases", "review", "form", "install",
                "demo_cases", "interfaces", "nodes", "parameter_node", "logic", "widget")


class QuitGuard(qt.QObject):
    """Asks before Slicer's main window closes while an engine job runs (an event filter on the main window,
    as Slicer's own Python effects use them); a "Cancel" keeps Slicer and the job running."""

    def __init__(self, isBusy):
        qt.QObject.__init__(self)
        self.isBusy = isBusy

    def eventFilter(self, watched, event):
        if event.type() == qt.QEvent.Close and self.isBusy() and not slicer.util.confirmOkCancelDisplay(
                _("An engine job is running. Quit Slicer and cancel it? A training stops with a checkpoint and can "
                  "be resumed after the restart.")):
            event.ignore()
            return True
        return False


class SemiSupSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module's panel (a ScriptedLoadableModuleWidget: Slicer finds it by this name in SemiSupSeg.py).

    :param logic: what does the work; ``logic.SemiSupSegLogic()`` unless given.
    """

    COLUMN_VOLUME, COLUMN_SEGMENTATION, COLUMN_LABELED, COLUMN_SCORE, COLUMN_STATUS = range(5)

    def __init__(self, parent=None, logic: Optional[SemiSupSegLogicProtocol] = None) -> None:
        # The state first: without a parent, the base class calls setup() from its __init__.
        self.logic: Optional[SemiSupSegLogicProtocol] = logic
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.trainJob = None
        self.segmentJob = None
        self.suggestJob = None
        self.closingJobs = []  # detached by a scene close: polled until their processes have stopped
        self._inputVolumeId = None
        self.lossHistory = LossHistory()
        self._plotNodes = {}
        self._lastPlotTime = 0.0
        self._validation = ""  # the held-out cases' Dice of the current training (--validate), shown when done
        self._updatingTable = False
        self._forgetPending = False
        self._pollTimer = None
        self._quitGuard = None
        VTKObservationMixin.__init__(self)
        ScriptedLoadableModuleWidget.__init__(self, parent)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SemiSupSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        if self.logic is None:
            from .logic import SemiSupSegLogic

            self.logic = SemiSupSegLogic()

        header = self.ui.casesTable.horizontalHeader()
        header.setSectionResizeMode(self.COLUMN_VOLUME, qt.QHeaderView.Stretch)
        header.setSectionResizeMode(self.COLUMN_SEGMENTATION, qt.QHeaderView.Stretch)
        header.setSectionResizeMode(self.COLUMN_LABELED, qt.QHeaderView.ResizeToContents)
        header.setSectionResizeMode(self.COLUMN_SCORE, qt.QHeaderView.ResizeToContents)
        self.ui.logTextEdit.maximumBlockCount = 5000  # a long training's log does not grow without bound
        self.ui.trainProgressBar.hide()
        self.ui.segmentProgressBar.hide()
        self.ui.suggestProgressBar.hide()
        if not self.ui.modelFolderPathLineEdit.currentPath:
            self.ui.modelFolderPathLineEdit.currentPath = self.logic.defaultModelFolder()
        lastModel = self.logic.lastModelFile()
        if lastModel:
            self.ui.modelFilePathLineEdit.currentPath = lastModel

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(250)
        self._pollTimer.connect("timeout()", self.onPollTimer)

        mainWindow = slicer.util.mainWindow()
        if mainWindow is not None:  # none with --no-main-window
            self._quitGuard = QuitGuard(self._busy)
            mainWindow.installEventFilter(self._quitGuard)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
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
        self.ui.resumeButton.connect("clicked(bool)", self.onResumeButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.suggestButton.connect("clicked(bool)", self.onSuggestButton)
        self.ui.editSegmentationButton.connect("clicked(bool)", self.onEditSegmentation)
        self.ui.useAsLabelButton.connect("clicked(bool)", self.onUseAsLabel)
        self.ui.modelFilePathLineEdit.connect("currentPathChanged(QString)", self.onModelFileChanged)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.demoCasesButton.connect("clicked(bool)", self.onDemoCases)
        self.ui.exportModelButton.connect("clicked(bool)", self.onExportModel)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolder)
        self.updateDependencies()

        self.initializeParameterNode()
        self.onModelFileChanged()

    def cleanup(self) -> None:
        """Called when the application closes or the module is reloaded: the running job is cancelled by its
        stop file and waited for (a training writes its checkpoint and is recorded for Resume; the temporary
        files go), so no engine process is left behind."""
        if self._quitGuard is not None and slicer.util.mainWindow() is not None:
            slicer.util.mainWindow().removeEventFilter(self._quitGuard)
        self.detachJobs()
        if self._pollTimer:
            self._pollTimer.stop()
        jobs.finish_detached(self.closingJobs, jobs.DEFAULT_STOP_GRACE_S + 5.0)
        self.closingJobs = []
        self.removeObservers()

    def onReload(self) -> None:
        """Reloads this package's files too (Slicer reloads only SemiSupSeg.py), in import order; asks first
        while an engine job runs (the reload cancels it, a training with a checkpoint to resume)."""
        if self._busy() and not slicer.util.confirmOkCancelDisplay(
                _("An engine job is running. Reloading the module cancels it (a training keeps its checkpoint "
                  "and can be resumed). Reload?")):
            return
        package = __name__.rsplit(".", 1)[0]
        for name in RELOAD_ORDER:
            module = importlib.import_module(f"{package}.{name}")
            importlib.reload(module)
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def detachJobs(self) -> None:
        """Cancels the running jobs (by their stop files) and cuts them off from the widget and the scene."""
        for job in self._jobs():
            if job is not None and job.active:
                job.detach()
                self.closingJobs.append(job)
        self.trainJob = self.segmentJob = self.suggestJob = None

    def onSceneStartClose(self, caller, event) -> None:
        # a result must not land in the next scene, nor an event reach a parameter node that is gone
        self.detachJobs()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        # a loaded scene copied its parameter node into the module's: show its cases and settings
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
        self._inputVolumeId = self._nodeId(self._parameterNode.inputVolume) if self._parameterNode else None
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui file are connected to the parameter node.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.updateCasesTable()

    # -- cases -------------------------------------------------------------------------------------------

    @property
    def cases(self) -> CaseTable:
        """The case table as the parameter node holds it now: read each time, so that no copy of it can be
        written back over a scene that was loaded, imported or undone meanwhile."""
        return readCases(self._parameterNode) if self._parameterNode else CaseTable()

    def saveCases(self, cases: CaseTable) -> None:
        if self._parameterNode:
            writeCases(self._parameterNode, cases)
        self.updateCasesTable()

    @staticmethod
    def _nodeId(node) -> Optional[str]:
        return node.GetID() if node else None

    def _followInputVolume(self) -> None:
        """A new input volume gets a new output segmentation and no region of interest: each is kept only when
        it was made for that volume (``review.output_after_input_change``, ``review.roi_after_input_change``)."""
        p = self._parameterNode
        volumeId = self._nodeId(p.inputVolume) if p else None
        if not p or volumeId == self._inputVolumeId:
            return
        self._inputVolumeId = volumeId
        if p.outputSegmentation and not review.output_after_input_change(self.cases, volumeId,
                                                                         nodes.nodeInfo(p.outputSegmentation)):
            p.outputSegmentation = None
        if p.roi and not review.roi_after_input_change(nodes.nodeInfo(p.roi), volumeId):
            p.roi = None

    def updateCasesTable(self) -> None:
        table = self.ui.casesTable
        cases = self.cases
        self._updatingTable = True
        try:
            table.setRowCount(len(cases))
            for index, row in enumerate(cases):
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
                scoreItem = qt.QTableWidgetItem(row.score_text)
                scoreItem.setToolTip(_("How much a label of this case would teach (0..1; Suggest next case)."))
                table.setItem(index, self.COLUMN_SCORE, scoreItem)
                table.setItem(index, self.COLUMN_STATUS, qt.QTableWidgetItem(row.status))
        finally:
            self._updatingTable = False
        self.ui.casesSummaryLabel.text = cases.summary() if len(cases) else _("No cases yet.")
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
        cases = self.cases
        if self._updatingTable or index >= len(cases):
            return
        volumeNode = slicer.mrmlScene.GetNodeByID(cases[index].volume_node_id or "")
        refusal = review.use_as_label_refusal(cases, nodes.nodeInfo(volumeNode), nodes.nodeInfo(node)) \
            if node and volumeNode else None
        if refusal:  # another volume's segmentation, or another case's label: the row stays as it was
            slicer.util.errorDisplay(refusal)
            qt.QTimer.singleShot(0, self.updateCasesTable)
            return
        cases.set_segmentation(index, node.GetID() if node else None, node.GetName() if node else "")
        if node:
            self._confirm(node)
        # the table is rebuilt after this signal has returned: its sender must not be deleted while it emits
        qt.QTimer.singleShot(0, lambda: self.saveCases(cases))

    @staticmethod
    def _confirm(segmentationNode) -> None:
        """A segmentation the user made a case's label is theirs from now on (``review.confirmed_attributes``)."""
        for name, value in review.confirmed_attributes(nodes.nodeInfo(segmentationNode)).items():
            segmentationNode.SetAttribute(name, value)

    def onCaseItemChanged(self, item) -> None:
        if self._updatingTable or item.column() != self.COLUMN_LABELED:
            return
        cases = self.cases
        cases.set_labeled(item.row(), item.checkState() == qt.Qt.Checked and cases[item.row()].has_label)
        qt.QTimer.singleShot(0, lambda: self.saveCases(cases))

    def addVolumeCases(self, volumeNodes) -> int:
        """*Add volume* / *Add all loaded*, by the ownership rules (``review.add_volumes``)."""
        cases = self.cases
        segmentations = [nodes.nodeInfo(n) for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode")]
        added = review.add_volumes(cases, [nodes.nodeInfo(n) for n in volumeNodes], segmentations)
        self.saveCases(cases)
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
            cases = self.cases
            added = cases.add_folder(folder)
            self.saveCases(cases)
            self.addLog(_("{count} cases added from {folder}.").format(count=added, folder=folder))

    def onLoadManifest(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Manifest"), "", _("Manifest (*.json)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not add the manifest's cases."), waitCursor=True):
            self.addManifestCases(path)

    def onDemoCases(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not make the demo cases."), waitCursor=True):
            manifestPath, preset = self.logic.makeDemoCases()
            self.addManifestCases(manifestPath)
            self._parameterNode.preset = preset
            self.addLog(_("Demo cases added (synthetic, two labeled): click Train."))

    def addManifestCases(self, path: str) -> None:
        manifest = self.logic.loadManifest(path)
        cases = self.cases
        added = cases.add_manifest(manifest)
        self._parameterNode.modality = manifest.modality
        self._parameterNode.structureNames = ", ".join(c.name for c in manifest.classes if c.value != 0)
        self._parameterNode.manifestClasses = self.logic.classesToJson(manifest.classes)
        self.saveCases(cases)
        self.addLog(_("{count} cases added from {path}.").format(count=added, path=path))

    def onRemoveCases(self) -> None:
        rows = {index.row() for index in self.ui.casesTable.selectionModel().selectedRows()}
        cases = self.cases
        cases.remove(rows)
        self.saveCases(cases)

    def onSaveManifest(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Folder for the cases and the manifest"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not save the cases."), waitCursor=True):
            path = self.logic.saveCasesAsManifest(self.cases, folder, **self._classArguments())
            self.addLog(_("Cases and manifest written: {path}").format(path=path))

    def onNodeRemoved(self, caller, event) -> None:
        if self._forgetPending or not self._parameterNode or not self._parameterNode.cases:
            return
        # look once, after the removals of this moment are over
        self._forgetPending = True
        qt.QTimer.singleShot(0, self._forgetRemovedNodes)

    def _forgetRemovedNodes(self) -> None:
        self._forgetPending = False
        existing = {node.GetID() for node in slicer.util.getNodesByClass("vtkMRMLNode")}
        cases = self.cases
        before = cases.to_json()
        cases.forget_missing_nodes(existing)
        if cases.to_json() != before:
            self.saveCases(cases)

    # -- buttons -----------------------------------------------------------------------------------------

    def _jobs(self):
        return (self.trainJob, self.segmentJob, self.suggestJob)

    def _busy(self) -> bool:
        return any(job is not None and job.active for job in self._jobs())

    def _runningKind(self) -> Optional[str]:
        for kind, job in ((form.TRAIN, self.trainJob), (form.SEGMENT, self.segmentJob), (form.SUGGEST, self.suggestJob)):
            if job is not None and job.active:
                return kind
        return None

    def updateButtons(self, caller=None, event=None) -> None:
        self._followInputVolume()
        running = self._runningKind()
        cases = self.cases
        ready, reason = cases.readiness()
        modelFile = self.ui.modelFilePathLineEdit.currentPath
        hasModel = bool(modelFile) and os.path.isfile(modelFile)
        p = self._parameterNode
        resumable = self.logic.resumableTraining()[0]
        enabled = form.enabled_actions(form.FormState(
            running=running, ready_to_train=ready, has_model=hasModel, resumable=bool(resumable),
            has_input=bool(p and p.inputVolume), has_output=bool(p and p.outputSegmentation),
            has_unlabeled=bool(cases.unlabeled_rows)))
        busyTip = _("Another engine job is running: it finishes (or is cancelled) first.")

        self.ui.trainButton.text = _("Cancel") if running == form.TRAIN else _("Train")
        self.ui.trainButton.enabled = enabled["train"]
        self.ui.trainReasonLabel.text = reason
        self.ui.trainReasonLabel.visible = bool(reason) and running != form.TRAIN
        self.ui.retrainButton.enabled = enabled["retrain"]
        self.ui.resumeButton.enabled = enabled["resume"]
        self.ui.resumeButton.toolTip = (_("Continue the cancelled training in {path} from its last checkpoint.").format(
            path=resumable) if resumable else _("A training cancelled with a checkpoint can be resumed here."))
        self.ui.retrainButton.toolTip = (_("Train again on the cases, starting from the current model file's weights.")
                                         if hasModel else _("Choose a model file first (Segment section)."))
        if p:
            self.ui.presetMethodLabel.text = _("→ {method}").format(
                method=commands.effective_method(p.preset, p.method))

        self.ui.segmentButton.text = _("Cancel") if running == form.SEGMENT else _("Segment")
        self.ui.segmentButton.enabled = enabled["segment"]
        if running != form.SEGMENT:
            self.ui.segmentButton.toolTip = busyTip if running else (
                _("Segment the input volume in the background; click again to cancel.") if hasModel
                else _("Choose a model file: train one, or browse to a model.pt."))
        self.ui.suggestButton.text = _("Cancel") if running == form.SUGGEST else _("Suggest next case")
        self.ui.suggestButton.enabled = enabled["suggest"]
        if running != form.SUGGEST:
            self.ui.suggestButton.toolTip = busyTip if running else (
                _("Score the unlabeled cases with the model file and select the one whose label would teach most.")
                if hasModel else _("Choose a model file first (Segment section)."))
        self.ui.editSegmentationButton.enabled = enabled["edit"]
        self.ui.useAsLabelButton.enabled = enabled["use_as_label"]

    def onModelFileChanged(self, path=None) -> None:
        modelFile = self.ui.modelFilePathLineEdit.currentPath
        self.ui.modelInfoLabel.text = self.logic.describeModel(modelFile) if modelFile else ""
        self.updateButtons()

    def updateDependencies(self) -> None:
        self.ui.dependenciesLabel.text = "\n".join(install.dependency_lines())

    def onInstallDependencies(self) -> None:
        self.addLog(_("Installing the missing packages; pip's progress is shown in the Python console..."))
        slicer.app.processEvents()
        try:
            with slicer.util.tryWithErrorDisplay(_("The packages could not be installed.")):
                self.logic.setupPythonRequirements(askConfirmation=True)
                self.addLog(_("All packages are installed."))
        finally:
            self.updateDependencies()

    def onExportModel(self) -> None:
        modelFile = self.ui.modelFilePathLineEdit.currentPath
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export model"), "model.pt",
                                              _("Model files (*.pt)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not export the model."), waitCursor=True):
            self.addLog(_("Model exported: {path}").format(path=self.logic.exportModel(modelFile, path)))

    def onLoadModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Load model"), "", _("Model files (*.pt)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not load the model."), waitCursor=True):
            model = self.logic.importModel(path, self.ui.modelFolderPathLineEdit.currentPath)
            self.ui.modelFilePathLineEdit.currentPath = model
            self.addLog(_("Model loaded: {path}").format(path=model))

    def onOpenModelsFolder(self) -> None:
        folder = self.ui.modelFolderPathLineEdit.currentPath or self.logic.defaultModelFolder()
        os.makedirs(folder, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(folder))

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
            self.ui.trainStatusLabel.text = _("Cancelling: the engine stops after this iteration, with a checkpoint...")
            return
        self.startTraining(initModel=None)

    def onRetrainButton(self) -> None:
        self.startTraining(initModel=self.ui.modelFilePathLineEdit.currentPath)

    def onResumeButton(self) -> None:
        runFolder, workFolder = self.logic.resumableTraining()
        with slicer.util.tryWithErrorDisplay(_("Failed to resume the training."), waitCursor=True):
            self.lossHistory.clear()
            self.logic.resume(runFolder, workFolder, device=self._parameterNode.device, waitForCompletion=False,
                              onEvent=self.onTrainEvent, onState=self.onTrainState, onLog=self.addLog)
        self.updateButtons()

    def startTraining(self, initModel: Optional[str]) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start the training."), waitCursor=True):
            self.lossHistory.clear()
            self._validation = ""
            self._plotNodes = {}  # a new chart for each training
            self.ui.modelFolderPathLineEdit.addCurrentPathToHistory()
            cases = self.cases
            cases.set_status(_("exporting"))
            self.saveCases(cases)
            slicer.app.processEvents()
            try:
                # the job reports to onTrainState from its start on ("starting"), then from the poll timer
                self.logic.train(
                    cases, self.ui.modelFolderPathLineEdit.currentPath, preset=self._parameterNode.preset,
                    iterations=self._parameterNode.iterations or None, device=self._parameterNode.device,
                    initModel=initModel, waitForCompletion=False, validateCases=self._parameterNode.validateCases,
                    method=commands.method_argument(self._parameterNode.method),
                    onEvent=self.onTrainEvent, onState=self.onTrainState, onLog=self.addLog, **self._classArguments())
            except Exception:
                self._setStatus("")
                raise
        self.updateButtons()

    def onTrainEvent(self, event) -> None:
        if self._showEvent(event, self.ui.trainStatusLabel, self.ui.trainProgressBar):
            if self.lossHistory.add(event) and self._parameterNode.showLossCurve:
                self.updateLossPlot()
        elif event.event in ("start", "checkpoint", "validation", "error", "cancelled"):
            if event.event == "validation":
                self._validation = describe(event)
            self.addLog(describe(event))

    def _setStatus(self, status: str) -> None:
        cases = self.cases
        cases.set_status(status)
        self.saveCases(cases)

    def onTrainState(self, job) -> None:
        self.trainJob = job
        state = job.state
        if state == jobs.STARTING:
            self._setStatus(_("in training"))
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
                time=self._elapsed(self.trainJob), model=model) + (f"\n{self._validation}" if self._validation else "")
            self._setStatus(_("trained"))
        elif state == jobs.FAILED:
            self.ui.trainStatusLabel.text = _("Failed: {message}").format(message=self.trainJob.error_message)
            self._setStatus("")
            if not slicer.app.testingEnabled():
                slicer.util.errorDisplay(_("Training failed.") + "\n\n" + self.trainJob.error_message,
                                         detailedText="\n".join(self.trainJob.log_tail))
        elif state == jobs.CANCELLED:
            checkpoint = self.trainJob.checkpoint
            self.ui.trainStatusLabel.text = (_("Cancelled; checkpoint: {path}. Resume continues it.").format(
                path=checkpoint) if checkpoint else _("Cancelled."))
            self._setStatus("")
        if state in jobs.FINISHED_STATES:
            self.ui.trainProgressBar.hide()
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
            # the result replaces the output only where the ownership rules allow; else it goes to a new node
            output = p.outputSegmentation if p.inputVolume and review.writable_result(
                self.cases, nodes.nodeInfo(p.outputSegmentation), p.inputVolume.GetID()) else None
            if p.roi and p.inputVolume:
                p.roi.SetNodeReferenceID(review.SOURCE_VOLUME_ROLE, p.inputVolume.GetID())  # this case's ROI
            self.logic.segment(
                p.inputVolume, self.ui.modelFilePathLineEdit.currentPath, outputSegmentation=output,
                roiNode=p.roi, device=p.device, uncertainty=p.uncertainty, keepLargest=p.keepLargest,
                waitForCompletion=False, onEvent=self.onSegmentEvent, onState=self.onSegmentState, onLog=self.addLog)
        self.updateButtons()

    @staticmethod
    def _showEvent(event, statusLabel, progressBar) -> bool:
        """A job's event in its status label and progress bar; True for a progress event with a total."""
        statusLabel.text = describe(event)
        if event.event == "progress" and event.total:
            progressBar.setRange(0, event.total)
            progressBar.setValue(event.iteration or 0)
            return True
        return False

    def onSegmentEvent(self, event) -> None:
        self._showEvent(event, self.ui.segmentStatusLabel, self.ui.segmentProgressBar)

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
            p = self._parameterNode
            self.ui.segmentStatusLabel.text = _("Done in {time}: {name}").format(
                time=self._elapsed(self.segmentJob), name=segmentationNode.GetName())
            # the result belongs to the volume it was computed from: selected only while that is the input
            if review.result_lands_on_input(job.context["volume"], self._nodeId(p.inputVolume)):
                p.outputSegmentation = segmentationNode
                slicer.util.setSliceViewerLayers(background=p.inputVolume)
            else:
                self.addLog(_("The result {name} belongs to another volume than the input; select that volume to "
                              "review it.").format(name=segmentationNode.GetName()))
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
        for job in self._jobs():
            if job is not None and not job.finished:
                job.poll()
        for job in self.closingJobs:
            job.poll()
        self.closingJobs = [job for job in self.closingJobs if not job.finished]
        if not self._busy() and not self.closingJobs:
            self._pollTimer.stop()

    @staticmethod
    def _elapsed(job) -> str:
        return format_duration(job.elapsed_s)

    # -- suggesting the next case -------------------------------------------------------------------------

    def onSuggestButton(self) -> None:
        if self.suggestJob is not None and self.suggestJob.active:
            self.suggestJob.cancel()
            self.ui.suggestStatusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start scoring the cases."), waitCursor=True):
            self.logic.suggest(self.cases, self.ui.modelFilePathLineEdit.currentPath, device=self._parameterNode.device,
                               waitForCompletion=False, onEvent=self.onSuggestEvent, onState=self.onSuggestState,
                               onLog=self.addLog)
        self.updateButtons()

    def onSuggestEvent(self, event) -> None:
        self._showEvent(event, self.ui.suggestStatusLabel, self.ui.suggestProgressBar)

    def onSuggestState(self, job) -> None:
        self.suggestJob = job
        state = job.state
        if state == jobs.STARTING:
            self.ui.suggestProgressBar.setRange(0, 0)
            self.ui.suggestProgressBar.show()
            self.ui.suggestStatusLabel.text = _("Starting the engine...")
            self._pollTimer.start()
        elif state == jobs.DONE:
            self.showSuggestion(job.result)
        elif state == jobs.FAILED:
            self.ui.suggestStatusLabel.text = _("Failed: {message}").format(message=job.error_message)
        elif state == jobs.CANCELLED:
            self.ui.suggestStatusLabel.text = _("Cancelled.")
        if state in jobs.FINISHED_STATES:
            self.ui.suggestProgressBar.hide()
        self.updateButtons()

    def showSuggestion(self, ranking) -> None:
        """Scores into the cases table; the best case selected, and made the input volume for review."""
        cases = self.cases
        best = cases.set_scores(ranking)
        row = cases[best] if best is not None else None
        volumeNode = None
        if row is not None and row.volume_node_id:
            volumeNode = slicer.mrmlScene.GetNodeByID(row.volume_node_id)
        elif row is not None and row.image_path:  # a file case: loaded, and the row goes on with its node
            with slicer.util.tryWithErrorDisplay(_("Could not load {path}.").format(path=row.image_path)):
                volumeNode = slicer.util.loadVolume(row.image_path)
                cases.attach_volume(best, volumeNode.GetID(), volumeNode.GetName())
        self.saveCases(cases)
        if row is None:
            self.ui.suggestStatusLabel.text = _("No unlabeled case was scored.")
            return
        self.ui.casesTable.selectRow(best)
        if volumeNode is not None and self._parameterNode:
            self._parameterNode.inputVolume = volumeNode
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        self.ui.suggestStatusLabel.text = _("Label {case} next (score {score:.2f}): segment it, correct it, use it "
                                            "as a label.").format(case=row.volume_text, score=row.score)
        self.addLog(self.ui.suggestStatusLabel.text)

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
        with slicer.util.tryWithErrorDisplay(_("Could not use the segmentation as a label.")):
            cases = self.cases
            index = review.use_as_label(cases, nodes.nodeInfo(volumeNode), nodes.nodeInfo(segmentationNode))
            cases[index].status = _("corrected")
            self._confirm(segmentationNode)
            self.saveCases(cases)
        self.addLog(_("{volume} is a labeled case now, with {segmentation}.").format(
            volume=volumeNode.GetName(), segmentation=segmentationNode.GetName()))
