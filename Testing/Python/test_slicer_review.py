"""The annotator's loop in plain Python (SemiSupSegLib.review): train -> suggest -> segment -> use as label ->
segment the next -> retrain never writes a case's segmentation, and every retraining learns each case's own
correction. The scene is modelled by which volume each segmentation node is made on."""

import pytest
from SemiSupSegLib import review
from SemiSupSegLib.cases import CaseTable


class Annotator:
    """The widget's choices, made by the functions the widget and the logic call (node IDs, no Slicer)."""

    def __init__(self, cases):
        self.cases = cases
        self.made_on = {row.segmentation_node_id: row.volume_node_id for row in cases if row.segmentation_node_id}
        self.input = self.output = None
        self.written = []  # the segmentation nodes that Segment wrote into, in order

    def select_input(self, volume_id):  # Suggest next case, or the input selector
        self.input = volume_id
        self.output = review.output_after_input_change(self.cases, volume_id, self.output,
                                                       self.made_on.get(self.output))

    def segment(self):
        target, refusal = review.segment_target(self.cases, self.input, self.output)
        if refusal:
            raise ValueError(refusal)
        if target is review.NEW_SEGMENTATION:
            target = f"segmentation{len(self.made_on) + 1}"
        self.made_on[target] = self.input  # the result is re-referenced to the segmented volume
        self.written.append(target)
        self.output = target

    def use_as_label(self):
        volume = self.input
        review.use_as_label(self.cases, volume, volume.upper(), self.output)

    def training_labels(self):
        return {row.id: (row.segmentation_node_id, self.made_on[row.segmentation_node_id])
                for row in self.cases.labeled_rows}


def _cases():
    cases = CaseTable()
    cases.add_volume("a", "A", "segA", "A segmentation")  # drawn by hand: the first labeled case
    cases.add_volume("b", "B")
    cases.add_volume("c", "C")
    return cases


def test_the_whole_loop_never_writes_a_label_and_retraining_learns_each_cases_own():
    cases = _cases()
    user = Annotator(cases)
    user.select_input("a")
    user.output = "segA"  # as after the first training: the hand-drawn label is shown
    assert user.training_labels() == {"A": ("segA", "a")}  # train

    best = cases.set_scores([{"id": "B", "score": 0.9}, {"id": "C", "score": 0.4}])  # suggest
    user.select_input(cases[best].volume_node_id)
    assert user.input == "b" and user.output is None  # a new volume gets a new segmentation
    user.segment()
    segB = user.output
    assert segB != "segA"
    user.use_as_label()  # corrected in the Segment Editor, then used as B's label

    best = cases.set_scores([{"id": "C", "score": 0.7}])  # suggest the next
    user.select_input(cases[best].volume_node_id)
    assert user.output is None  # B's label is not carried over to C
    user.segment()
    segC = user.output

    assert user.written == [segB, segC]  # no label was ever a target
    assert user.training_labels() == {"A": ("segA", "a"), "B": (segB, "b")}  # retrain: each its own, on its own grid
    assert not cases[2].is_labeled  # C is still unlabeled until it is used as a label

    user.select_input("b")
    user.output = segB  # chosen explicitly: refused with one sentence, nothing written
    with pytest.raises(ValueError, match=r"label of case 'B' and is never overwritten"):
        user.segment()
    assert user.written == [segB, segC]


def test_re_segmenting_the_same_volume_reuses_its_unlabeled_result():
    cases = _cases()
    user = Annotator(cases)
    user.select_input("b")
    user.segment()
    first = user.output
    user.select_input("b")  # e.g. after a retraining, before the result was used as a label
    user.segment()
    assert user.written == [first, first]


def test_an_unticked_case_segmentation_is_protected_too_and_other_outputs_are_kept():
    cases = _cases()
    cases.set_labeled(0, False)  # kept out of training, still the user's drawing
    target, refusal = review.segment_target(cases, "a", "segA", "A segmentation")
    assert target is review.NEW_SEGMENTATION and "the segmentation of case 'A'" in refusal
    assert review.segment_target(cases, "b", "mine") == ("mine", None)  # the user's explicit choice
    assert review.segment_target(cases, "b", None) == (review.NEW_SEGMENTATION, None)
    # the selection follows the input only when it was made on the new input and is no case's
    assert review.output_after_input_change(cases, "b", "mine", "b") == "mine"
    assert review.output_after_input_change(cases, "c", "mine", "b") is None
    assert review.output_after_input_change(cases, "a", "segA", "a") is None


def test_use_as_label_refuses_another_cases_label_and_adds_a_new_volume():
    cases = _cases()
    with pytest.raises(ValueError, match="already the label of case 'A'"):
        review.use_as_label(cases, "b", "B", "segA", "A segmentation")
    assert not cases[1].has_label
    index = review.use_as_label(cases, "d", "D", "segD")
    assert cases[index].id == "D" and cases[index].is_labeled
    assert review.use_as_label(cases, "a", "A", "segA") == 0  # its own label again: fine
