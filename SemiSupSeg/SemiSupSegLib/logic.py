"""The module's logic: training, segmenting and suggesting without the GUI (scripts, the Python console).

It turns scene nodes into files, builds the engine's command lines (``commands``), runs them as background
processes (``job``) and brings the results back into the scene (``nodes``). The widget reaches it only
through :class:`SemiSupSegLib.interfaces.SemiSupSegLogicProtocol`.
"""

import importlib
import logging
import os
import platform
import shutil
import time
from typing import Callable, List, Optional, Tuple

import qt

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from . import ENGINE_PARENT, commands, demo_cases, install, nodes, review
from . import job as jobs
from .cases import CaseTable, build_manifest
from .labels import classes_for_training, parse_structure_names
from .parameter_node import SemiSupSegParameterNode, readCases
from .progress import describe


class SemiSupSegLogic(ScriptedLoadableModuleLogic):
    """Training, segmenting and suggesting, usable without the GUI (Python console, ``Slicer --python-script``)::

        logic = SemiSupSegLogic()
        model = logic.train([(volume1, segmentation1), volume2], "/models", preset="cpu-fast")
        ranking = logic.suggest([(volume1, segmentation1), volume2], model)  # the unlabeled cases, best first
        segmentation = logic.segment(volume3, model)

    Each runs the engine as a separate process (``PythonSlicer -m SemiSupSegTraining``) whose Cancel is a stop
    file (see :mod:`SemiSupSegLib.job`); with ``waitForCompletion=False`` they return the running
    :class:`SemiSupSegLib.job.Job` instead of waiting.
    """

    SETTINGS_LAST_MODEL = "SemiSupSeg/LastModelFile"
    #: The run folder and the temporary folder (its cases) of the last training cancelled with a checkpoint.
    SETTINGS_RESUMABLE_RUN = "SemiSupSeg/ResumableRun"
    SETTINGS_RESUMABLE_WORK = "SemiSupSeg/ResumableWorkFolder"
    #: Seconds the engine gets to stop by itself after Cancel (it writes a checkpoint at the next iteration)
    #: before its process tree is terminated; a user setting.
    SETTINGS_STOP_GRACE = "SemiSupSeg/CancelGracePeriod"

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.askConfirmation = True  # before installing Python packages
        self.keepTemporaryFiles = False
        self.runner = None  # a SemiSupSegLib.job runner; None: jobs.SubprocessRunner with Slicer's startup environment
        self.lastUncertaintyVolume = None
        #: where the last model and the resumable training are remembered: the user's settings, or (the
        #: self-test) a settings file of its own
        self.settings = slicer.app.userSettings()
        self.stopGracePeriod = float(self.settings.value(self.SETTINGS_STOP_GRACE, jobs.DEFAULT_STOP_GRACE_S))
        self._requirementsReady = False

    def getParameterNode(self):
        return SemiSupSegParameterNode(super().getParameterNode())

    # -- settings ----------------------------------------------------------------------------------------

    @staticmethod
    def defaultModelFolder() -> str:
        """Under the application's local data folder (on Windows %LOCALAPPDATA%\\NA-MIC\\Slicer: not roamed
        or cloud-synced like Documents often is, where renaming a checkpoint over the last one can fail)."""
        return commands.default_model_folder(
            qt.QStandardPaths.writableLocation(qt.QStandardPaths.AppLocalDataLocation), os.path.expanduser("~"))

    def lastModelFile(self) -> str:
        path = self.settings.value(self.SETTINGS_LAST_MODEL, "")
        return path if path and os.path.isfile(path) else ""

    def setLastModelFile(self, path: str) -> None:
        self.settings.setValue(self.SETTINGS_LAST_MODEL, path)

    # -- dependencies ------------------------------------------------------------------------------------

    def setupPythonRequirements(self, askConfirmation: Optional[bool] = None) -> None:
        """PyTorch through the PyTorch extension (version checked after installing), then what the engine
        needs beyond Slicer (monai, scipy) and psutil, installed with the installed torch and numpy held as
        pip constraints (``install.py``). Raises RuntimeError with one sentence when something is missing,
        was declined, or no monai fits the installed torch."""
        if self._requirementsReady:
            return
        ask = self.askConfirmation if askConfirmation is None else askConfirmation
        # torch is looked up by its package metadata: PyTorchUtils' torchInstalled would import it into Slicer
        refusal = install.platform_refusal(platform.system(), platform.machine(), install.installed_versions()["torch"])
        if refusal:
            raise RuntimeError(refusal)
        if install.installed_versions()["torch"] is None:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(_("This module needs PyTorch: install the 'PyTorch' extension in the Extensions "
                                     "Manager, restart Slicer, and try again.")) from None
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask,
                                                                  torchVersionRequirement=commands.TORCH_REQUIREMENT)
            if torch is None:
                raise RuntimeError(_("PyTorch is needed to train and segment; its installation was declined."))
        versions = install.installed_versions()
        problem = install.check_torch(versions["torch"], commands.TORCH_REQUIREMENT)
        if problem:
            raise RuntimeError(problem)
        missing = commands.missing_requirements()
        if missing:
            requirements, whyNot = install.install_plan(missing, install.python_version(), versions["torch"],
                                                        versions["numpy"])
            if whyNot:
                raise RuntimeError(whyNot)
            if ask and not slicer.util.confirmOkCancelDisplay(
                    _("SemiSupSeg needs these Python packages: {packages}. Download and install them now? "
                      "This may take a few minutes; PyTorch and numpy stay as they are.").format(
                        packages=", ".join(requirements))):
                raise RuntimeError(_("These Python packages are needed: {packages}; their installation was "
                                     "declined.").format(packages=", ".join(requirements)))
            pipFolder = slicer.util.tempDirectory("SemiSupSeg-pip-")
            try:
                constraints = install.write_constraints(pipFolder, versions["torch"], versions["numpy"])
                try:
                    slicer.util.pip_install(install.pip_arguments(requirements, constraints))
                except Exception as e:  # offline, a proxy, no wheel: one sentence with what to fetch
                    raise RuntimeError(install.offline_message(requirements, e)) from None
            finally:
                shutil.rmtree(pipFolder, ignore_errors=True)
            importlib.invalidate_caches()
            problem = install.check_unchanged(versions, install.installed_versions())
            if problem:
                raise RuntimeError(problem)
        self._requirementsReady = True

    # -- the engine --------------------------------------------------------------------------------------

    def _runner(self):
        # the one runner of the module and the tests: UTF-8 output, no console window, Slicer's startup
        # environment (PythonSlicer sets up Slicer's own paths itself)
        return self.runner if self.runner is not None else jobs.SubprocessRunner(
            base_env=slicer.util.startupEnvironment())

    @staticmethod
    def enginePython() -> str:
        """PythonSlicer, which runs the engine; RuntimeError with one sentence when it or the engine is missing."""
        if ENGINE_PARENT is None:
            raise RuntimeError(_("The SemiSupSegTraining engine was not found beside the module; reinstall the extension."))
        return commands.find_python_slicer(inside_slicer=True)

    def _startJob(self, command: List[str], name: str, importer: Callable, device: str,
                  onEvent=None, onState=None, onLog=None, waitForCompletion=True, stopFile: Optional[str] = None,
                  workFolder: Optional[str] = None, context: Optional[dict] = None, onFinished=None):
        environment = commands.engine_environment(ENGINE_PARENT, slicer.util.startupEnvironment(),
                                                  cpu_only=device == "cpu")
        removeWorkFolder = jobs.work_folder_cleanup(workFolder, keep=self.keepTemporaryFiles) if workFolder else None

        def cleanup(job):  # runs once the job is over, detached (scene closed) or not
            if removeWorkFolder:
                removeWorkFolder(job)
            if onFinished:
                onFinished(job)
        job = jobs.Job(command, runner=self._runner(), env=environment, name=name, importer=importer,
                       on_event=onEvent or self._logEvent, on_state=onState, on_log=onLog or logging.info,
                       stop_file=stopFile, stop_grace_s=self.stopGracePeriod, cleanup=cleanup, context=context)
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

    def readModelMetadata(self, modelFile: str) -> dict:
        """The model's metadata from the model.json beside it (no torch in Slicer's process); for a model file
        without one the engine writes it first (a short process)."""
        from SemiSupSegTraining.modelinfo import MetadataMissing, read_metadata_file

        if not modelFile or not os.path.isfile(modelFile):
            raise ValueError(_("The model file {path} does not exist.").format(path=modelFile))
        try:
            return read_metadata_file(modelFile)
        except MetadataMissing:
            self.setupPythonRequirements()
            command = [self.enginePython(), "-m", commands.ENGINE_PACKAGE, "info", "--model", modelFile,
                       "--write-metadata"]
            self._startJob(command, _("Reading the model file"), None, "cpu", onEvent=lambda event: None,
                           onLog=lambda line: None)
            return read_metadata_file(modelFile)

    def describeModel(self, modelFile: str) -> str:
        """One line about a model file for the GUI (structures, preset), or why it cannot be read; reads only
        the model.json beside it, at once."""
        from SemiSupSegTraining.modelinfo import MetadataMissing, read_metadata_file

        try:
            meta = read_metadata_file(modelFile)
        except MetadataMissing:
            return _("Its structures are read when it is first used (it has no model.json beside it yet).")
        except Exception as e:
            return _("Not a usable model file: {error}").format(error=e)
        names = ", ".join(c["name"] for c in meta["classes"] if c["value"] != 0)
        text = _("Structures: {names} · preset {preset}").format(names=names, preset=meta.get("preset", "?"))
        validation = meta.get("validation")  # trained with held-out cases (--validate)
        if isinstance(validation, dict) and isinstance(validation.get("mean_dice"), (int, float)):
            text += _(" · held-out Dice {dice:.3f} ({count} cases)").format(
                dice=validation["mean_dice"], count=len(validation.get("cases") or []))
        return text

    # -- models and demo cases ---------------------------------------------------------------------------

    def makeDemoCases(self) -> Tuple[str, str]:
        """Writes the demo's synthetic phantoms (no download) beside the default model folder; returns (their
        manifest, the preset that trains them in minutes on a CPU)."""
        return demo_cases.write_demo_cases(os.path.join(os.path.dirname(self.defaultModelFolder()), "demo-cases"))

    @staticmethod
    def exportModel(modelFile: str, path: str) -> str:
        """Copies a model file (its weights and metadata are one file) to ``path`` for a colleague, under a
        temporary name first."""
        if not modelFile or not os.path.isfile(modelFile):
            raise ValueError(_("There is no model file to export: train one, or choose one under Model file."))
        partial = path + ".partial"
        shutil.copyfile(modelFile, partial)
        os.replace(partial, path)
        return path

    def importModel(self, path: str, modelFolder: str) -> str:
        """Copies a model file someone gave you into its own folder of the model folder and has the engine
        read it (weights only, never code; ``semisupseg info --write-metadata``); returns the copy. A file the
        engine refuses is removed again, with one sentence."""
        folder = commands.imported_model_folder(modelFolder or self.defaultModelFolder(), path)
        os.makedirs(folder)
        target = commands.model_file_in(folder)
        try:
            shutil.copyfile(path, target)
            self.readModelMetadata(target)
        except Exception as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(_("{path} cannot be used as a model file: {error}").format(path=path, error=e)) from None
        self.setLastModelFile(target)
        return target

    @staticmethod
    def checkDevice(device: str) -> None:
        """One sentence (RuntimeError) before a job starts when the chosen device cannot be there."""
        problem = commands.device_problem(device or "auto", install.installed_versions()["torch"], platform.system(),
                                          platform.machine(), shutil.which("nvidia-smi") is not None)
        if problem:
            raise RuntimeError(problem)

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

    @staticmethod
    def exportCacheFolder() -> str:
        """Where volume exports are kept between jobs (each named by the node's modified times)."""
        folder = os.path.join(slicer.app.temporaryPath, "SemiSupSeg-exports")
        os.makedirs(folder, exist_ok=True)
        return folder

    def exportCases(self, table: CaseTable, folder: str, classes) -> List[Tuple[str, str, Optional[str], bool]]:
        """Writes the scene's volumes (and the segmentations of labeled cases) of the table into ``folder``;
        file cases stay where they are, and a volume unchanged since it was loaded is read from its own file
        (``nodes.volumeFileForEngine``). Returns manifest entries (id, image, label, labeled)."""
        entries = []
        for number, row in enumerate(table, start=1):
            logging.info("Preparing case %d of %d: %s", number, len(table), row.id)
            slicer.app.processEvents()
            if not row.volume_node_id:
                entries.append((row.id, row.image_path, row.label_path, row.labeled))
                continue
            volumeNode = slicer.mrmlScene.GetNodeByID(row.volume_node_id)
            if volumeNode is None:
                raise ValueError(_("The volume of case '{id}' is no longer in the scene.").format(id=row.id))
            image = nodes.volumeFileForEngine(volumeNode, self.exportCacheFolder())
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
              onEvent=None, onState=None, onLog=None, validateCases: int = 0, method: Optional[str] = None):
        """Trains on ``cases`` (a CaseTable, a list of volume nodes / (volume, segmentation) pairs, or the
        path of a manifest file) and writes ``<modelFolder>/run-DATE-TIME/model.pt``.

        :param initModel: start from this model file's weights and classes ("Retrain").
        :param validateCases: hold the last that many labeled cases out of training; the engine's ``validation``
          event then carries their Dice.
        :param method: what trains (``commands.METHODS``: the paper's method, labels alone, a baseline); None:
          the engine's default.
        :return: the model file path; with ``waitForCompletion=False`` the running Job (its ``result``
          is the model file path once it is done).
        """
        self.setupPythonRequirements()
        self.checkDevice(device)
        python = self.enginePython()
        if not modelFolder:
            raise ValueError(_("Choose a model folder."))
        os.makedirs(modelFolder, exist_ok=True)
        if isinstance(cases, str):
            manifestPath = cases
            self.loadManifest(manifestPath)  # a clear error now rather than in the engine
            workFolder = slicer.util.tempDirectory("SemiSupSeg-train-")  # for the stop file only
        else:
            table = self.caseTable(cases)
            ready, reason = table.readiness()
            if not ready:
                raise ValueError(reason)
            classes = self.trainingClasses(table, structureNames, manifestClasses, initModel)
            workFolder = slicer.util.tempDirectory("SemiSupSeg-train-")
            manifestPath = os.path.join(workFolder, "manifest.json")
            try:
                build_manifest(self.exportCases(table, workFolder, classes), classes, modality, manifestPath)
            except Exception:
                jobs.work_folder_cleanup(workFolder)(None)
                raise
        runFolder = commands.new_run_folder(modelFolder)
        stopFile = commands.stop_file_in(workFolder)
        command = commands.train_command(python, manifestPath, runFolder, preset=preset,
                                         iterations=iterations, device=device, init_model=initModel,
                                         stop_file=stopFile, validate=validateCases, method=method)
        return self._startTraining(command, runFolder, workFolder, stopFile, device, onEvent, onState, onLog,
                                   waitForCompletion)

    def resume(self, runFolder: str, workFolder: str = "", device: str = "auto", waitForCompletion: bool = True,
               onEvent=None, onState=None, onLog=None):
        """Continues a cancelled training from the last checkpoint of ``runFolder`` (``train --resume``);
        ``workFolder``: the temporary folder with the cases it was started with (removed once it is over)."""
        self.setupPythonRequirements()
        self.checkDevice(device)
        python = self.enginePython()
        if not runFolder or not os.path.isdir(runFolder):
            raise ValueError(_("The training folder {path} does not exist any more.").format(path=runFolder))
        workFolder = workFolder if workFolder and os.path.isdir(workFolder) else \
            slicer.util.tempDirectory("SemiSupSeg-train-")
        stopFile = commands.stop_file_in(workFolder)
        command = commands.train_command(python, resume=runFolder, device=device, stop_file=stopFile)
        return self._startTraining(command, runFolder, workFolder, stopFile, device, onEvent, onState, onLog,
                                   waitForCompletion)

    def _startTraining(self, command, runFolder, workFolder, stopFile, device, onEvent, onState, onLog,
                       waitForCompletion):
        def importTrainedModel(job):
            model = job.done_event.get("model") if job.done_event else None
            if not model or not os.path.isfile(model):
                model = commands.model_file_in(runFolder)
            if not os.path.isfile(model):
                raise RuntimeError(_("The training ended without writing {path}.").format(path=model))
            self.setLastModelFile(model)
            return model

        def remember(job):  # the last training cancelled with a checkpoint is offered for resuming
            if jobs.resumable(job):
                self.setResumableTraining(runFolder, workFolder)
            elif self.resumableTraining()[0] == runFolder:  # the resumed one is over
                self.setResumableTraining("", "")

        return self._startJob(command, _("Training"), importTrainedModel, device, onEvent, onState, onLog,
                              waitForCompletion, stopFile, workFolder, {"runFolder": runFolder}, remember)

    def resumableTraining(self) -> Tuple[str, str]:
        """(run folder, temporary folder) of the last training cancelled with a checkpoint; ("", "") if none."""
        runFolder = self.settings.value(self.SETTINGS_RESUMABLE_RUN, "")
        if not runFolder or not os.path.isdir(runFolder):
            return "", ""
        return runFolder, self.settings.value(self.SETTINGS_RESUMABLE_WORK, "")

    def setResumableTraining(self, runFolder: str, workFolder: str) -> None:
        """Remembers the training to resume; the temporary folder of the one it replaces is removed (only the
        last cancelled training is offered for resuming)."""
        previous = self.settings.value(self.SETTINGS_RESUMABLE_WORK, "")
        if previous and previous != workFolder and os.path.basename(previous).startswith("SemiSupSeg-train-"):
            shutil.rmtree(previous, ignore_errors=True)
        self.settings.setValue(self.SETTINGS_RESUMABLE_RUN, runFolder)
        self.settings.setValue(self.SETTINGS_RESUMABLE_WORK, workFolder)

    def segment(self, volumeNode, modelFile: str, outputSegmentation=None, roiNode=None, device: str = "auto",
                uncertainty: bool = False, keepLargest: bool = False, waitForCompletion: bool = True,
                onEvent=None, onState=None, onLog=None):
        """Segments ``volumeNode`` with a model file into ``outputSegmentation`` (a new segmentation node when
        None): one segment per structure of the model, named, colored and coded (terminology) like it, on the
        volume's geometry, placed in the volume's study. A segmentation of a case of the module's table is
        never written: it is refused (ValueError).

        :param roiNode: a markups ROI; only the voxels inside it are segmented.
        :param uncertainty: also load an uncertainty volume (``logic.lastUncertaintyVolume``).
        :return: the segmentation node; with ``waitForCompletion=False`` the running Job.
        """
        if volumeNode is None:
            raise ValueError(_("Choose the volume to segment."))
        self._refuseCaseSegmentation(volumeNode, outputSegmentation)
        self.setupPythonRequirements()
        self.checkDevice(device)
        python = self.enginePython()
        meta = self.readModelMetadata(modelFile)
        workFolder = slicer.util.tempDirectory("SemiSupSeg-segment-")
        try:
            inputPath = nodes.volumeFileForEngine(volumeNode, self.exportCacheFolder())
            roi = nodes.roiIndexBox(roiNode, volumeNode) if roiNode is not None else None
        except Exception:
            jobs.work_folder_cleanup(workFolder)(None)
            raise
        outputPath = os.path.join(workFolder, "segmentation.nrrd")
        uncertaintyPath = os.path.join(workFolder, "uncertainty.nrrd") if uncertainty else None
        stopFile = commands.stop_file_in(workFolder)
        command = commands.segment_command(python, modelFile, inputPath, outputPath,
                                           uncertainty=uncertaintyPath, device=device, roi=roi,
                                           keep_largest=keepLargest, stop_file=stopFile)

        def importResult(job):
            if not slicer.mrmlScene.IsNodePresent(volumeNode):
                raise RuntimeError(_("The volume that was segmented is no longer in the scene."))
            return self.importSegmentation(outputPath, meta["classes"], volumeNode, modelFile, outputSegmentation,
                                           uncertaintyPath)

        return self._startJob(command, _("Segmenting"), importResult, device, onEvent, onState, onLog,
                              waitForCompletion, stopFile, workFolder, {"volume": volumeNode.GetID()})

    def importSegmentation(self, labelmapPath: str, classes, volumeNode, modelFile: str, target=None,
                           uncertaintyPath: Optional[str] = None):
        """Brings a result file into the scene: always into a new segmentation node (a failed import empties
        nothing), marked as the module's result on ``volumeNode``; it takes the place of ``target`` only when
        the ownership rules allow (``review.writable_result``: the module's own, unchanged result on this
        volume), otherwise ``target`` stays as it is."""
        result = nodes.newSegmentationFor(volumeNode)
        try:
            nodes.importLabelmapFile(labelmapPath, result, classes, volumeNode)
        except Exception:
            slicer.mrmlScene.RemoveNode(result)
            raise
        replace = target is not None and slicer.mrmlScene.IsNodePresent(target) and review.writable_result(
            self.sceneCases(), nodes.nodeInfo(target), volumeNode.GetID())
        if replace:  # the swap: the unchanged old result goes, the new one takes its name
            name = target.GetName()
            slicer.mrmlScene.RemoveNode(target)
            result.SetName(name)
        nodes.setProvenance(result, review.ROLE_RESULT, volumeNode, modelFile)
        if uncertaintyPath:
            self.lastUncertaintyVolume = nodes.readVolume(uncertaintyPath, name=slicer.mrmlScene.GenerateUniqueName(
                volumeNode.GetName() + " uncertainty"))
            self.lastUncertaintyVolume.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
            self.lastUncertaintyVolume.CreateDefaultDisplayNodes()
            nodes.placeInStudyOf(self.lastUncertaintyVolume, volumeNode)
            nodes.setProvenance(self.lastUncertaintyVolume, review.ROLE_UNCERTAINTY, volumeNode, modelFile)
        return result

    def sceneCases(self) -> CaseTable:
        """The case table saved in this scene's parameter node."""
        return readCases(self.getParameterNode())

    def _refuseCaseSegmentation(self, volumeNode, outputSegmentation) -> None:
        if outputSegmentation is None:
            return
        refusal = review.segment_target(self.sceneCases(), volumeNode.GetID(), outputSegmentation.GetID(),
                                        outputSegmentation.GetName())[1]
        if refusal:
            raise ValueError(refusal)

    def suggest(self, cases, modelFile: str, device: str = "auto", waitForCompletion: bool = True,
                onEvent=None, onState=None, onLog=None):
        """Ranks the unlabeled cases of ``cases`` (a CaseTable, or a list of volume nodes / (volume,
        segmentation) pairs) by how much a label would teach, with the model file (``semisupseg suggest``).

        :return: the ranking, best first: ``[{"id", "score", "dice_error", "disagreement", "predicted_voxels",
          "rank"}, ...]``, ids as in the table; with ``waitForCompletion=False`` the running Job.
        """
        self.setupPythonRequirements()
        self.checkDevice(device)
        python = self.enginePython()
        meta = self.readModelMetadata(modelFile)
        unlabeled = CaseTable(self.caseTable(cases).unlabeled_rows)
        if not len(unlabeled):
            raise ValueError(_("There is no unlabeled case to rank: add cases without a segmentation."))
        classes = classes_for_training(model_classes=meta["classes"])
        workFolder = slicer.util.tempDirectory("SemiSupSeg-suggest-")
        manifestPath = os.path.join(workFolder, "manifest.json")
        try:
            build_manifest(self.exportCases(unlabeled, workFolder, classes), classes, path=manifestPath)
        except Exception:
            jobs.work_folder_cleanup(workFolder)(None)
            raise
        stopFile = commands.stop_file_in(workFolder)
        command = commands.suggest_command(python, modelFile, manifestPath, device=device,
                                           stop_file=stopFile)

        def importRanking(job):
            ranking = job.done_event.get("ranking") if job.done_event else None
            if not isinstance(ranking, list):
                raise RuntimeError(_("The engine ended without a ranking."))
            return ranking

        return self._startJob(command, _("Suggesting"), importRanking, device, onEvent, onState, onLog,
                              waitForCompletion, stopFile, workFolder)
