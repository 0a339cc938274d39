"""Slicer nodes <-> files for the engine. Runs only inside Slicer (imports slicer and vtk).

- a volume node -> an .nrrd file with its geometry (origin, spacing, axis directions);
- a segmentation node -> a label map on its volume's grid, each segment named like a class written with
  that class's value;
- the engine's label map -> a segmentation node with the model's class names, colors and terminology
  codes, referenced to the input volume's geometry and placed in its study;
- a markups ROI -> the voxel index box of a volume (``segment --roi``).

The decisions (which segment gets which value, how values map back to segments, the index box) are made
by the plain-Python ``labels`` and ``commands`` modules.
"""

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import slicer
import vtk

from .commands import roi_index_box
from .labels import export_lookup, import_lookup, remap, segment_plan, segment_specs
from .terminology import terminology_entry

TEMP_NODE_NAME = "__SemiSupSeg_temp__"


def writeVolume(volumeNode, path: str) -> str:
    """Writes a volume (or label map) node to ``path`` (.nrrd) in the volume's own coordinates.

    A temporary storage node is used, so the node keeps pointing at its own file (``slicer.util.saveNode``
    would make it point at the temporary file). A parent transform is not applied: results are put back
    under the same transform.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    storageNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storageNode.SetFileName(path)
        storageNode.UseCompressionOff()
        if not storageNode.WriteData(volumeNode):
            raise RuntimeError(f"Could not write {volumeNode.GetName()} to {path}.")
    finally:
        slicer.mrmlScene.RemoveNode(storageNode)
    return path


def readVolume(path: str, className: str = "vtkMRMLScalarVolumeNode", name: Optional[str] = None):
    """Reads an image file into a new volume node of ``className`` (not shown in the views)."""
    volumeNode = slicer.mrmlScene.AddNewNodeByClass(className, name or TEMP_NODE_NAME)
    storageNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storageNode.SetFileName(path)
        if not storageNode.ReadData(volumeNode):
            slicer.mrmlScene.RemoveNode(volumeNode)
            raise RuntimeError(f"Could not read {path}.")
    finally:
        slicer.mrmlScene.RemoveNode(storageNode)
    return volumeNode


def removeNodeWithColorTable(labelmapNode) -> None:
    """Removes a temporary label map node and the color table that an export made for it."""
    displayNode = labelmapNode.GetDisplayNode()
    colorNode = displayNode.GetColorNode() if displayNode else None
    if colorNode is not None and colorNode.GetName().startswith(TEMP_NODE_NAME):
        slicer.mrmlScene.RemoveNode(colorNode)
    slicer.mrmlScene.RemoveNode(labelmapNode)


def segments(segmentationNode) -> List[Tuple[str, str]]:
    """(segment ID, segment name) of each segment, in segmentation order."""
    segmentation = segmentationNode.GetSegmentation()
    out = []
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        out.append((segmentId, segmentation.GetSegment(segmentId).GetName()))
    return out


def segmentColors(segmentationNode) -> Dict[str, List[float]]:
    """Segment name -> RGB color (0..1)."""
    segmentation = segmentationNode.GetSegmentation()
    return {name: list(segmentation.GetSegment(segmentId).GetColor()) for segmentId, name in segments(segmentationNode)}


def writeSegmentationAsLabelmap(segmentationNode, referenceVolumeNode, classes: Sequence, path: str) -> List[str]:
    """Writes the segments named like ``classes`` (ClassInfo) as a label map on the reference volume's grid,
    each with its class's value. Returns the names of the segments that match no class (not written).
    """
    segmentList = segments(segmentationNode)
    plan, unmatched = segment_plan([name for _, name in segmentList], classes)
    if not plan:
        wanted = ", ".join(c.name for c in classes if c.value != 0)
        have = ", ".join(name for _, name in segmentList) or "none"
        raise ValueError(f"Segmentation '{segmentationNode.GetName()}' has no segment named like a structure "
                         f"to learn ({wanted}); its segments are: {have}. Rename the segments or change the "
                         f"structure names.")
    segmentIds = vtk.vtkStringArray()
    for index, _ in plan:
        segmentIds.InsertNextValue(segmentList[index][0])
    labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", TEMP_NODE_NAME)
    try:
        # value i + 1 for the i-th given segment, on the reference volume's grid (transforms are resolved)
        if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                segmentationNode, segmentIds, labelmapNode, referenceVolumeNode):
            raise RuntimeError(f"Could not export segmentation '{segmentationNode.GetName()}' as a label map.")
        values = remap(slicer.util.arrayFromVolume(labelmapNode), export_lookup(plan))
        slicer.util.updateVolumeFromArray(labelmapNode, values)
        writeVolume(labelmapNode, path)
    finally:
        removeNodeWithColorTable(labelmapNode)
    if unmatched:
        logging.info("Segments not used for training (no structure of that name): %s", ", ".join(unmatched))
    return unmatched


def importLabelmapFile(path: str, segmentationNode, classes: Sequence[dict], referenceVolumeNode) -> List[str]:
    """Replaces the segments of ``segmentationNode`` with the classes of the label map file (the engine's
    result, on the reference volume's grid): one segment per foreground class, named and colored like the
    class. Returns the segment IDs."""
    labelmapNode = readVolume(path, "vtkMRMLLabelMapVolumeNode")
    try:
        labelmapNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
        values = remap(slicer.util.arrayFromVolume(labelmapNode), import_lookup([c["value"] for c in classes]))
        slicer.util.updateVolumeFromArray(labelmapNode, values)
        specs = segment_specs(classes)
        segmentation = segmentationNode.GetSegmentation()
        segmentation.RemoveAllSegments()
        if not segmentationNode.GetDisplayNode():
            segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        segmentationNode.SetNodeReferenceID(segmentationNode.GetReferenceImageGeometryReferenceRole(),
                                            referenceVolumeNode.GetID())
        segmentIds = vtk.vtkStringArray()
        for segmentId, _, _ in specs:
            segmentIds.InsertNextValue(segmentId)
        # label value k becomes the k-th given segment (created when missing)
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(
                labelmapNode, segmentationNode, segmentIds):
            raise RuntimeError(f"Could not import the result {path} into '{segmentationNode.GetName()}'.")
        for segmentId, name, color in specs:
            segment = segmentation.GetSegment(segmentId)
            segment.SetName(name)
            segment.SetColor(*color[:3])
            entry = terminology_entry(name)
            if entry:
                segment.SetTag(segment.GetTerminologyEntryTagName(), entry)
    finally:
        removeNodeWithColorTable(labelmapNode)
    return [segmentId for segmentId, _, _ in specs]


def newSegmentationFor(volumeNode):
    """A new segmentation node for a result on ``volumeNode``: named after it, under its transform, in its study."""
    segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(volumeNode.GetName() + " segmentation"))
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    placeInStudyOf(segmentationNode, volumeNode)
    return segmentationNode


def placeInStudyOf(node, volumeNode) -> None:
    """Moves ``node`` under the subject hierarchy parent (the study) of ``volumeNode``, as SlicerMONAIAuto3DSeg does."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    studyItem = shNode.GetItemParent(shNode.GetItemByDataNode(volumeNode))
    if studyItem:
        shNode.SetItemParent(shNode.GetItemByDataNode(node), studyItem)


def roiIndexBox(roiNode, volumeNode, margin: int = 0) -> Tuple[int, int, int, int, int, int]:
    """The voxel index box of ``volumeNode`` covered by a markups ROI (``segment --roi``)."""
    bounds = [0.0] * 6
    roiNode.GetRASBounds(bounds)  # world coordinates, axis aligned around the (maybe rotated) ROI
    worldToVolume = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), worldToVolume)
    rasToIjk = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(rasToIjk)
    corners = []
    for x in bounds[0:2]:
        for y in bounds[2:4]:
            for z in bounds[4:6]:
                local = worldToVolume.TransformPoint([x, y, z])
                corners.append(rasToIjk.MultiplyPoint([local[0], local[1], local[2], 1.0])[:3])
    box = roi_index_box(corners, volumeNode.GetImageData().GetDimensions(), margin)
    if box is None:
        raise ValueError(f"The region of interest '{roiNode.GetName()}' does not overlap volume "
                         f"'{volumeNode.GetName()}'; move it over the organ or choose 'Whole volume'.")
    return box


def findSegmentationOf(volumeNode):
    """A segmentation node made on this volume (its reference geometry volume), or None."""
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    for segmentationNode in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
        reference = segmentationNode.GetNodeReference(role)
        if reference is not None and reference.GetID() == volumeNode.GetID():
            return segmentationNode
    return None
