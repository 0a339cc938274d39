"""Which segmentation *Segment* writes into, and which one *Use as label* takes: nothing a user drew is lost.

The annotator's loop is train -> *Suggest next case* -> *Segment* -> correct in the Segment Editor -> *Use as
label* -> segment the next case -> *Retrain*. A case's segmentation is its label; writing a new result into it
would make the next training learn another case's prediction as this case's label. So:

- when the input volume changes, the output selection is kept only if it was made on the new volume and is
  no case's segmentation; otherwise it is cleared, and *Segment* makes a new segmentation node;
- *Segment* refuses, with one sentence, an output that is the segmentation of a case of the table;
- *Use as label* refuses a segmentation that is already another case's label.

Plain Python (node IDs only), tested with pytest; the widget and the logic apply these decisions.
"""

from typing import Optional, Tuple

from .cases import CaseTable

#: What :func:`segment_target` returns for "make a new segmentation node".
NEW_SEGMENTATION = None


def case_of_segmentation(cases: CaseTable, segmentation_id: Optional[str]) -> Optional[int]:
    """The row whose segmentation node is ``segmentation_id`` (labeled or not), or None."""
    if not segmentation_id:
        return None
    for index, row in enumerate(cases):
        if row.segmentation_node_id == segmentation_id:
            return index
    return None


def output_after_input_change(cases: CaseTable, new_volume_id: Optional[str], output_id: Optional[str],
                              output_reference_id: Optional[str]) -> Optional[str]:
    """The output segmentation to keep selected once the input volume became ``new_volume_id``: the
    current one only when it is made on that volume (``output_reference_id``) and is no case's label."""
    if output_id and output_reference_id == new_volume_id and case_of_segmentation(cases, output_id) is None:
        return output_id
    return None


def segment_target(cases: CaseTable, volume_id: str, output_id: Optional[str],
                   output_name: str = "") -> Tuple[Optional[str], Optional[str]]:
    """(the segmentation node ID to write the result into, or ``NEW_SEGMENTATION``; a refusal sentence or
    None). A segmentation of a case in the table is never written."""
    index = case_of_segmentation(cases, output_id)
    if index is None:
        return output_id or NEW_SEGMENTATION, None
    row = cases[index]
    what = "the label" if row.is_labeled else "the segmentation"
    return NEW_SEGMENTATION, (
        f"The output segmentation '{output_name or output_id}' is {what} of case '{row.id}' and is never "
        f"overwritten: choose another output segmentation, or none to make a new one.")


def use_as_label(cases: CaseTable, volume_id: str, volume_name: str, segmentation_id: str,
                 segmentation_name: str = "") -> int:
    """Makes the segmentation the label of the volume's case (added when new); returns its row. Raises
    ValueError with one sentence when the segmentation is already another case's."""
    owner = case_of_segmentation(cases, segmentation_id)
    if owner is not None and cases[owner].volume_node_id != volume_id:
        raise ValueError(f"Segmentation '{segmentation_name or segmentation_id}' is already the label of case "
                         f"'{cases[owner].id}': segment this volume into a new segmentation first.")
    cases.add_volume(volume_id, volume_name)
    index = cases.find_volume(volume_id)
    cases.set_segmentation(index, segmentation_id, segmentation_name)
    cases.set_labeled(index, True)
    return index
