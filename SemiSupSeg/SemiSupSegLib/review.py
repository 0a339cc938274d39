"""Who owns each node, and so what the module may write, add and label: nothing a user drew is lost.

The annotator's loop is train -> *Suggest next case* -> *Segment* -> correct in the Segment Editor -> *Use as
label* -> segment the next case -> *Retrain*. The rules:

- Every node the module makes carries its provenance as node attributes (``PROVENANCE``): made by the
  module, its role (a result or an uncertainty volume), from which model, on which volume (a node reference,
  which Slicer remaps when a scene is imported) and a stamp of its content at import.
- The module writes a result only into a segmentation it made, on the same volume, whose content is still
  the one it imported, and that is no case's segmentation (:func:`writable_result`); anything else gets a
  new node. A result is imported into a new node first and swapped in only on success, so a failed import
  empties nothing.
- A segmentation becomes a case's label only by the user: *Use as label*, a segmentation chosen in the
  case table, a ticked box, or *Add volume* of a volume with a segmentation the user made (never one the
  module made, and never a change to a row already in the table). A result made a label is the user's
  from then on (``ROLE_CONFIRMED``).
- *Use as label* refuses a segmentation made on another volume, or that is another case's label.
- The module's own volumes (uncertainty) and volumes that are not plain scalar volumes are never cases.

Plain Python: the scene is seen through :class:`NodeInfo` records (the Slicer layer makes them from nodes,
the tests from plain data); the widget and the logic apply these decisions.
"""

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from .cases import CaseTable
from .commands import ENGINE_READABLE

#: Node attributes of the nodes the module makes.
MADE_BY = "SemiSupSeg.MadeBy"
ROLE = "SemiSupSeg.Role"
MODEL = "SemiSupSeg.Model"
STAMP = "SemiSupSeg.Stamp"
PROVENANCE = (MADE_BY, ROLE, MODEL, STAMP)
MODULE = "SemiSupSeg"
ROLE_RESULT = "result"
ROLE_UNCERTAINTY = "uncertainty"
#: A result the user made a label (*Use as label*, the case table): theirs from then on, never written again,
#: even once it is no case's label any more.
ROLE_CONFIRMED = "confirmed"
#: The node reference role that names the volume a result (or a region of interest) was made for.
SOURCE_VOLUME_ROLE = "SemiSupSegSourceVolume"

SCALAR_VOLUME = "vtkMRMLScalarVolumeNode"
SEGMENTATION = "vtkMRMLSegmentationNode"

#: What :func:`segment_target` returns for "make a new segmentation node".
NEW_SEGMENTATION = None


@dataclass
class NodeInfo:
    """What the decisions need to know about one node of the scene."""

    id: str
    class_name: str
    name: str = ""
    attributes: Dict[str, str] = field(default_factory=dict)
    source_volume_id: Optional[str] = None  # SOURCE_VOLUME_ROLE
    reference_volume_id: Optional[str] = None  # a segmentation's reference image geometry volume
    stamp: str = ""  # the content now (a segmentation); equal stamps: nothing changed
    file: Optional[str] = None  # a volume's storage file

    @property
    def made_by_module(self) -> bool:
        return self.attributes.get(MADE_BY) == MODULE

    @property
    def role(self) -> str:
        return self.attributes.get(ROLE, "") if self.made_by_module else ""

    @property
    def made_on(self) -> Optional[str]:
        """The volume this segmentation was made on: the module's record, else its reference geometry."""
        return self.source_volume_id or self.reference_volume_id


def provenance(role: str, model: str = "", stamp: str = "") -> Dict[str, str]:
    """The attributes of a node the module makes (the volume goes in ``SOURCE_VOLUME_ROLE``)."""
    return {MADE_BY: MODULE, ROLE: role, MODEL: model or "", STAMP: stamp}


def case_of_segmentation(cases: CaseTable, segmentation_id: Optional[str]) -> Optional[int]:
    """The row whose segmentation node is ``segmentation_id`` (labeled or not), or None."""
    if not segmentation_id:
        return None
    for index, row in enumerate(cases):
        if row.segmentation_node_id == segmentation_id:
            return index
    return None


def writable_result(cases: CaseTable, node: Optional[NodeInfo], volume_id: str) -> bool:
    """Whether a result on ``volume_id`` may replace ``node``: a result the module made on that volume, whose
    content nobody changed since it was imported, that is no case's segmentation."""
    return (node is not None and node.class_name == SEGMENTATION and node.role == ROLE_RESULT
            and node.source_volume_id == volume_id and bool(node.stamp)
            and node.stamp == node.attributes.get(STAMP) and case_of_segmentation(cases, node.id) is None)


def segment_target(cases: CaseTable, volume_id: str, output_id: Optional[str],
                   output_name: str = "") -> Tuple[Optional[str], Optional[str]]:
    """For a script's explicit output: (the node to write into or ``NEW_SEGMENTATION``, a refusal sentence or
    None). A segmentation of a case of the table is refused; the rest is checked again by
    :func:`writable_result` when the result lands."""
    index = case_of_segmentation(cases, output_id)
    if index is None:
        return output_id or NEW_SEGMENTATION, None
    row = cases[index]
    what = "the label" if row.is_labeled else "the segmentation"
    return NEW_SEGMENTATION, (
        f"The output segmentation '{output_name or output_id}' is {what} of case '{row.id}' and is never "
        f"overwritten: choose another output segmentation, or none to make a new one.")


def output_after_input_change(cases: CaseTable, new_volume_id: Optional[str], output: Optional[NodeInfo]) -> bool:
    """Whether the output selection stays once the input volume became ``new_volume_id``: only a segmentation
    made on that volume that is no case's label."""
    return bool(output and new_volume_id and output.made_on == new_volume_id
                and case_of_segmentation(cases, output.id) is None)


def roi_after_input_change(roi: Optional[NodeInfo], new_volume_id: Optional[str]) -> bool:
    """Whether the region of interest stays once the input volume changed: one not used yet, or used on that
    volume (*Segment* records the volume on the ROI); a ROI used on one case never carries over to the next."""
    return bool(roi and new_volume_id and roi.source_volume_id in (None, new_volume_id))


def result_lands_on_input(job_volume_id: str, input_volume_id: Optional[str]) -> bool:
    """A finished result becomes the output selection only while its own volume is the input."""
    return job_volume_id == input_volume_id


def use_as_label_refusal(cases: CaseTable, volume: NodeInfo, segmentation: NodeInfo) -> Optional[str]:
    """Why ``segmentation`` cannot become the label of ``volume``'s case, in one sentence, or None."""
    if not can_be_case(volume):
        return (f"Volume '{volume.name}' cannot be a case: it is the module's own (an uncertainty volume) or not a "
                f"plain scalar volume; select the case's image as the input.")
    if segmentation.made_on and segmentation.made_on != volume.id:
        return (f"Segmentation '{segmentation.name}' was made on another volume, not on '{volume.name}': select "
                f"its own volume as the input, or segment '{volume.name}' first.")
    owner = case_of_segmentation(cases, segmentation.id)
    if owner is not None and cases[owner].volume_node_id != volume.id:
        return (f"Segmentation '{segmentation.name}' is already the label of case '{cases[owner].id}': segment "
                f"this volume into a new segmentation first.")
    row = cases.find_file(volume.file) if volume.file and cases.find_volume(volume.id) is None else None
    if row is not None and cases[row].volume_node_id:
        return (f"Volume '{volume.name}' is a second copy of the file of case '{cases[row].id}': label the copy "
                f"that case already uses.")
    return None


def row_of_volume(cases: CaseTable, volume: NodeInfo) -> Optional[int]:
    """The row of a volume node, or of the file case it was loaded from (then the node is attached to it)."""
    index = cases.find_volume(volume.id)
    if index is None and volume.file:
        index = cases.find_file(volume.file)
        if index is not None and cases[index].volume_node_id:
            return None  # the file is loaded twice: the row stays with its first node
        if index is not None:
            cases.attach_volume(index, volume.id, volume.name)
    return index


def use_as_label(cases: CaseTable, volume: NodeInfo, segmentation: NodeInfo) -> int:
    """Makes the segmentation the label of the volume's case (added when new, the file case it was loaded
    from when there is one); returns its row. ValueError with one sentence: see :func:`use_as_label_refusal`."""
    refusal = use_as_label_refusal(cases, volume, segmentation)
    if refusal:
        raise ValueError(refusal)
    index = row_of_volume(cases, volume)
    if index is None:
        cases.add_volume(volume.id, volume.name, image_path=engine_file(volume))
        index = cases.find_volume(volume.id)
    cases.set_segmentation(index, segmentation.id, segmentation.name)
    cases.set_labeled(index, True)
    return index


def engine_file(volume: NodeInfo) -> Optional[str]:
    """The file a volume was loaded from when the engine reads it too (the case falls back to it)."""
    return volume.file if volume.file and volume.file.lower().endswith(ENGINE_READABLE) else None


def confirmed_attributes(segmentation: NodeInfo) -> Dict[str, str]:
    """The attributes to set on a segmentation the user just made a case's label (none for their own)."""
    return {ROLE: ROLE_CONFIRMED} if segmentation.made_by_module else {}


def can_be_case(volume: NodeInfo) -> bool:
    """A plain scalar volume the module did not make (no label map, vector, DWI or uncertainty volume)."""
    return volume.class_name == SCALAR_VOLUME and not volume.made_by_module


def user_segmentation_of(cases: CaseTable, volume_id: str, segmentations: Iterable[NodeInfo]) -> Optional[NodeInfo]:
    """The first segmentation the user made on this volume that is no case's segmentation yet, or None:
    what *Add volume* takes as a new case's label. The module's results are never taken."""
    for node in segmentations:
        if not node.made_by_module and node.made_on == volume_id and case_of_segmentation(cases, node.id) is None:
            return node
    return None


def add_volumes(cases: CaseTable, volumes: Iterable[NodeInfo], segmentations: List[NodeInfo]) -> int:
    """*Add volume* / *Add all loaded*: adds the volumes that can be cases and are not in the table (a row
    already there is left as it is), each with the user's segmentation of it when there is one (then it is
    labeled). Returns how many were added."""
    added = 0
    for volume in volumes:
        if volume is None or not can_be_case(volume) or cases.find_volume(volume.id) is not None:
            continue
        if volume.file and cases.find_file(volume.file) is not None:
            row_of_volume(cases, volume)  # a file case loaded: its row goes on with the node (once)
            continue
        segmentation = user_segmentation_of(cases, volume.id, segmentations)
        added += cases.add_volume(volume.id, volume.name, segmentation.id if segmentation else None,
                                  segmentation.name if segmentation else "", engine_file(volume))[1]
    return added
