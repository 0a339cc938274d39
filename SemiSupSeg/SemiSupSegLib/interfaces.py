"""What the widget needs from the logic: the one interface between them (plain Python, no slicer).

The widget (``widget.py``) calls only these methods, so that a test or another front end can hand it any
object that has them (``SemiSupSegWidget(logic=...)``); ``logic.SemiSupSegLogic`` is the real one.

Long work (``train``, ``segment``, ``suggest``) runs the engine as a separate process. With
``waitForCompletion=True`` these block (keeping the GUI alive) and return the result; with ``False`` they
return the running :class:`SemiSupSegLib.job.Job` at once, whose ``result`` is set when it is ``done``.
Callbacks run in the caller's thread: ``onEvent(event)`` for each engine progress event
(:class:`SemiSupSegLib.progress.ProgressEvent`), ``onState(job)`` after each state change, ``onLog(line)``
for other output. Errors before the engine starts raise ``ValueError`` or ``RuntimeError`` with one sentence.
"""

from typing import Any, Callable, List, Optional, Protocol, Sequence

EventCallback = Optional[Callable[[Any], None]]


class SemiSupSegLogicProtocol(Protocol):
    """The logic as the widget sees it."""

    def setupPythonRequirements(self, askConfirmation: Optional[bool] = None) -> None:
        """Installs what the engine needs (PyTorch through its extension, then monai, scipy, psutil with torch
        and numpy held); RuntimeError with one sentence when something is missing, declined or offline."""

    def makeDemoCases(self) -> Any:
        """Writes the demo's synthetic phantoms (no download); returns (their manifest path, the preset)."""

    def exportModel(self, modelFile: str, path: str) -> str:
        """Copies a model file (weights and metadata in one file) to ``path``; returns it."""

    def importModel(self, path: str, modelFolder: str) -> str:
        """A model file someone gave you, copied into the model folder and read safely; returns the copy."""

    def getParameterNode(self) -> Any:
        """The module's parameter node (``parameter_node.SemiSupSegParameterNode``) of the scene."""

    def defaultModelFolder(self) -> str:
        """Where models go unless the user chooses another folder."""

    def lastModelFile(self) -> str:
        """The model file trained or chosen last ("" when none exists any more)."""

    def describeModel(self, modelFile: str) -> str:
        """One line about a model file (structures, preset), or why it cannot be read."""

    def loadManifest(self, path: str) -> Any:
        """The manifest at ``path`` (``SemiSupSegTraining.manifest.Manifest``); a bad one raises one sentence."""

    def classesToJson(self, classes: Sequence[Any]) -> str:
        """A manifest's classes as JSON, to keep in the parameter node."""

    def saveCasesAsManifest(self, cases: Any, folder: str, structureNames: str = "", modality: str = "MRI",
                            manifestClasses: str = "") -> str:
        """Writes the cases (scene nodes exported as files) and a manifest to ``folder``; returns its path."""

    def train(self, cases: Any, modelFolder: str, preset: str = "cpu-fast", iterations: Optional[int] = None,
              device: str = "auto", modality: str = "MRI", structureNames: str = "", manifestClasses: str = "",
              initModel: Optional[str] = None, waitForCompletion: bool = True,
              onEvent: EventCallback = None, onState: EventCallback = None, onLog: EventCallback = None,
              validateCases: int = 0, method: Optional[str] = None) -> Any:
        """Trains on the cases; returns the model file path (or the running Job). Cancel keeps a checkpoint.
        ``validateCases``: the last that many labeled cases are held out and scored (a ``validation`` event).
        ``method``: what trains (commands.METHODS; None: the engine's default)."""

    def resume(self, runFolder: str, workFolder: str = "", device: str = "auto", waitForCompletion: bool = True,
               onEvent: EventCallback = None, onState: EventCallback = None, onLog: EventCallback = None) -> Any:
        """Continues a cancelled training from its last checkpoint; returns the model file path (or the Job)."""

    def resumableTraining(self) -> Any:
        """(run folder, temporary folder) of the last training cancelled with a checkpoint, ("", "") if none."""

    def segment(self, volumeNode: Any, modelFile: str, outputSegmentation: Any = None, roiNode: Any = None,
                device: str = "auto", uncertainty: bool = False, keepLargest: bool = False,
                waitForCompletion: bool = True, onEvent: EventCallback = None, onState: EventCallback = None,
                onLog: EventCallback = None) -> Any:
        """Segments a volume node; returns the segmentation node (or the running Job). A segmentation of a case
        of the table is refused as the output (ValueError with one sentence)."""

    def suggest(self, cases: Any, modelFile: str, device: str = "auto", waitForCompletion: bool = True,
                onEvent: EventCallback = None, onState: EventCallback = None, onLog: EventCallback = None) -> Any:
        """Ranks the unlabeled cases by how much a label would teach; returns the ranking, best first, as
        ``[{"id", "score", "dice_error", "disagreement", "predicted_voxels", "rank"}, ...]`` (or the Job)."""


#: The names the widget may call (checked by the tests against the widget's code and the logic's methods).
LOGIC_METHODS: List[str] = [name for name in vars(SemiSupSegLogicProtocol)
                            if not name.startswith("_") and callable(getattr(SemiSupSegLogicProtocol, name))]
