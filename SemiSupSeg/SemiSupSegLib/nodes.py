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

import glob
import logging
import os
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import slicer
import vtk

from . import review
from .commands import export_cache_name, reusable_volume_file, roi_index_box, same_grid
from .labels import export_lookup, import_lookup, remap, segment_plan, segment_specs
from .terminology import terminology_entry

TEMP_NODE_NAME = "__SemiSupSeg_temp__"
#: Modified times count up within one run of Slicer only: stamps and cache names carry this run's token.
SESSION = uuid.uuid4().hex[:8]


# -- provenance ------------------------------------------------------------------------------------------

def contentStamp(segmentationNode) -> str:
    """A stamp of a segmentation's content: its segments (IDs, names, colors) and the modified time of
    each segment's source representation (a Segment Editor stroke modifies it). Equal stamps: unchanged."""
    segmentation = segmentationNode.GetSegmentation()
    source = segmentation.GetSourceRepresentationName()
    parts = [SESSION]
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        representation = segment.GetRepresentation(source)
        color = ",".join(f"{c:.4f}" for c in segment.GetColor())
        parts.append(f"{segmentId}:{segment.GetName()}:{color}:{representation.GetMTime() if representation else 0}")
    return "|".join(parts)


def nodeInfo(node) -> Optional[review.NodeInfo]:
    """The plain record of a node that the ownership rules (``review``) decide on."""
    if node is None:
        return None
    attributes = {name: node.GetAttribute(name) or "" for name in review.PROVENANCE}
    source = node.GetNodeReference(review.SOURCE_VOLUME_ROLE)
    info = review.NodeInfo(id=node.GetID(), class_name=node.GetClassName(), name=node.GetName(),
                           attributes={k: v for k, v in attributes.items() if v},
                           source_volume_id=source.GetID() if source else None)
    if node.IsA("vtkMRMLSegmentationNode"):
        reference = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
        info.reference_volume_id = reference.GetID() if reference else None
        info.stamp = contentStamp(node)
    elif node.IsA("vtkMRMLVolumeNode"):
        storageNode = node.GetStorageNode()
        info.file = storageNode.GetFileName() if storageNode else None
    return info


def setProvenance(node, role: str, volumeNode, model: str = "") -> None:
    """Marks a node as the module's: its role, model and volume; a segmentation also gets its content stamp."""
    node.SetNodeReferenceID(review.SOURCE_VOLUME_ROLE, volumeNode.GetID() if volumeNode else None)
    stamp = contentStamp(node) if node.IsA("vtkMRMLSegmentationNode") else ""
    for name, value in review.provenance(role, model, stamp).items():
        node.SetAttribute(name, value)


# -- volumes ---------------------------------------------------------------------------------------------

def volumeFileForEngine(volumeNode, cacheFolder: str) -> str:
    """A file of the volume for the engine without writing more than needed: its own file when it is
    unchanged since it was read, else a compressed export cached by the node's modified times."""
    storageNode = volumeNode.GetStorageNode()
    ownFile = storageNode.GetFileName() if storageNode else None
    if reusable_volume_file(ownFile, volumeNode.GetModifiedSinceRead(), volumeNode.GetParentTransformNode() is not None) \
            and _onFileGrid(volumeNode, ownFile):
        return ownFile
    imageData = volumeNode.GetImageData()
    name = export_cache_name(volumeNode.GetID(), SESSION, volumeNode.GetMTime(),
                             imageData.GetMTime() if imageData else 0)
    path = os.path.join(cacheFolder, name)
    if not os.path.isfile(path):
        prefix = name.split("-" + SESSION)[0] + "-"
        for old in glob.glob(os.path.join(cacheFolder, glob.escape(prefix) + "*.nrrd")):
            os.remove(old)  # an older export of this node: it changed since
        writeVolume(volumeNode, path, compress=True)
    return path


def _onFileGrid(volumeNode, path: str) -> bool:
    """Whether the node is on its file's grid (read from the file's header only)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(matrix)
    directions = [[matrix.GetElement(i, j) for j in range(3)] for i in range(3)]
    fileGrid = (reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    nodeGrid = (volumeNode.GetImageData().GetDimensions(), volumeNode.GetSpacing(), volumeNode.GetOrigin(), directions)
    return reader.GetDimension() == 3 and reader.GetNumberOfComponents() == 1 and same_grid(fileGrid, nodeGrid)


def writeVolume(volumeNode, path: str, compress: bool = False) -> str:
    """Writes a volume (or label map) node to ``path`` (.nrrd) in the volume's own coordinates.

    A temporary storage node is used, so the node keeps pointing at its own file (``slicer.util.saveNode``
    would make it point at the temporary file). A parent transform is not applied: results are put back
    under the same transform.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    storageNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    partial = path + ".partial.nrrd"  # renamed once complete: a cancelled write leaves no file under its name
    try:
        storageNode.SetFileName(partial)
        storageNode.SetUseCompression(1 if compress else 0)
        if not storageNode.WriteData(volumeNode):
            raise RuntimeError(f"Could not write {volumeNode.GetName()} to {path}.")
        os.replace(partial, path)
    finally:
        slicer.mrmlScene.RemoveNode(storageNode)
        if os.path.exists(partial):
            os.remove(partial)
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
    """Removes a temporary label map node with the display node and color table an export made for it
    (``vtkMRMLScene::RemoveNode`` removes one node: the others would stay in the scene and be saved with it)."""
    displayNode = labelmapNode.GetDisplayNode()
    colorNode = displayNode.GetColorNode() if displayNode else None
    if colorNode is not None and colorNode.GetName().startswith(TEMP_NODE_NAME):
        slicer.mrmlScene.RemoveNode(colorNode)
    slicer.mrmlScene.RemoveNode(labelmapNode)
    if displayNode is not None:
        slicer.mrmlScene.RemoveNode(displayNode)


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
        _remapInPlace(labelmapNode, export_lookup(plan))
        writeVolume(labelmapNode, path, compress=True)
    finally:
        removeNodeWithColorTable(labelmapNode)
    if unmatched:
        logging.warning("Segments of '%s' not used for training (no structure of that name; add the name to "
                        "Structures to learn it): %s", segmentationNode.GetName(), ", ".join(unmatched))
    return unmatched


def _remapInPlace(labelmapNode, lookup) -> None:
    """The label map's values through ``lookup``; nothing is copied when the lookup changes nothing."""
    array = slicer.util.arrayFromVolume(labelmapNode)
    values = remap(array, lookup)
    if values is not array:
        slicer.util.updateVolumeFromArray(labelmapNode, values)


def importLabelmapFile(path: str, segmentationNode, classes: Sequence[dict], referenceVolumeNode) -> List[str]:
    """Fills ``segmentationNode`` (a new, empty node: the logic swaps it in only when this succeeded) with the
    classes of the label map file (the engine's result, on the reference volume's grid): one segment per
    foreground class, named and colored like the class. Returns the segment IDs."""
    labelmapNode = readVolume(path, "vtkMRMLLabelMapVolumeNode")
    try:
        labelmapNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
        _remapInPlace(labelmapNode, import_lookup([c["value"] for c in classes]))
        specs = segment_specs(classes)
        segmentation = segmentationNode.GetSegmentation()
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
