"""The module's parameter node: the settings of the form, saved with the scene (Slicer >= 5.4)."""

from typing import Annotated, List

import slicer
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from . import commands
from .cases import CaseTable


@parameterNodeWrapper
class SemiSupSegParameterNode:
    """
    The parameters of the module (saved with the scene).

    structureNames - names of the structures to learn, comma separated ("" = the segment names).
    modality - MRI (z-score) or CT (HU window) intensity normalisation.
    preset, iterations, device - training settings (iterations 0 = the preset's number).
    method - what trains: "(preset's)" (the preset's own method), or the paper's method, labels alone or a
      baseline (``--set method=...``).
    validateCases - labeled cases held out of training and scored after it (0 = off).
    inputVolume, outputSegmentation, roi, uncertainty, keepLargest - segmenting settings.
    cases - the case table as JSON without node IDs; caseVolumes, caseSegmentations - each row's volume and
      segmentation as node references (None for file cases), which Slicer remaps when a scene is imported.
    manifestClasses - classes of a loaded manifest as JSON.
    """

    structureNames: str = ""
    modality: Annotated[str, Choice(list(commands.MODALITIES))] = "MRI"
    preset: Annotated[str, Choice(list(commands.PRESETS))] = commands.DEFAULT_PRESET
    iterations: Annotated[int, WithinRange(0, 1000000)] = 0
    device: Annotated[str, Choice(list(commands.DEVICES))] = "auto"
    method: Annotated[str, Choice(list(commands.METHOD_CHOICES))] = commands.PRESET_METHOD
    validateCases: Annotated[int, WithinRange(0, 1000)] = 0
    showLossCurve: bool = True
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    roi: vtkMRMLMarkupsROINode
    uncertainty: bool = False
    keepLargest: bool = False
    cases: str = ""
    caseVolumes: List[vtkMRMLScalarVolumeNode]
    caseSegmentations: List[vtkMRMLSegmentationNode]
    manifestClasses: str = ""


def readCases(parameterNode) -> CaseTable:
    """The case table of the parameter node, with the nodes' current IDs and names."""
    volumes, segmentations = list(parameterNode.caseVolumes), list(parameterNode.caseSegmentations)
    table = CaseTable.from_parts(parameterNode.cases, [n.GetID() if n else None for n in volumes],
                                 [n.GetID() if n else None for n in segmentations])
    byId = {n.GetID(): n for n in volumes + segmentations if n}
    for row in table:
        if row.volume_node_id in byId:
            row.volume_name = byId[row.volume_node_id].GetName()
        if row.segmentation_node_id in byId:
            row.segmentation_name = byId[row.segmentation_node_id].GetName()
    return table


def writeCases(parameterNode, table: CaseTable) -> None:
    """Saves the case table into the parameter node (node references and JSON)."""
    text, volumeIds, segmentationIds = table.to_parts()
    scene = slicer.mrmlScene
    with slicer.util.NodeModify(parameterNode):
        parameterNode.caseVolumes = [scene.GetNodeByID(i) if i else None for i in volumeIds]
        parameterNode.caseSegmentations = [scene.GetNodeByID(i) if i else None for i in segmentationIds]
        parameterNode.cases = text
