"""The module's parameter node: the settings of the form, saved with the scene (Slicer >= 5.4)."""

from typing import Annotated

from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from . import commands


@parameterNodeWrapper
class SemiSupSegParameterNode:
    """
    The parameters of the module (saved with the scene).

    structureNames - names of the structures to learn, comma separated ("" = the segment names).
    modality - MRI (z-score) or CT (HU window) intensity normalisation.
    preset, iterations, device - training settings (iterations 0 = the preset's number).
    validateCases - labeled cases held out of training and scored after it (0 = off).
    inputVolume, outputSegmentation, roi, uncertainty, keepLargest - segmenting settings.
    cases - the case table as JSON; manifestClasses - classes of a loaded manifest as JSON.
    """

    structureNames: str = ""
    modality: Annotated[str, Choice(list(commands.MODALITIES))] = "MRI"
    preset: Annotated[str, Choice(list(commands.PRESETS))] = commands.DEFAULT_PRESET
    iterations: Annotated[int, WithinRange(0, 1000000)] = 0
    device: Annotated[str, Choice(list(commands.DEVICES))] = "auto"
    validateCases: Annotated[int, WithinRange(0, 1000)] = 0
    showLossCurve: bool = True
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    roi: vtkMRMLMarkupsROINode
    uncertainty: bool = False
    keepLargest: bool = False
    cases: str = ""
    manifestClasses: str = ""
