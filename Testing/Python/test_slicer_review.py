"""The ownership rules (SemiSupSegLib.review), the one-job rule (SemiSupSegLib.form) and the method that
follows the preset, one plain test per path by which the loop lost or misplaced a user's work (H1-H4, M5-M9
of the module's review); each fails when its rule is taken out."""

import os

import pytest
from SemiSupSegLib import commands, form, review
from SemiSupSegLib import job as jobs
from SemiSupSegLib.cases import CaseTable
from SemiSupSegLib.review import NodeInfo

from SemiSupSegTraining import config

MODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "SemiSupSeg")


def volume(node_id, file=None, **kw):
    return NodeInfo(node_id, review.SCALAR_VOLUME, node_id.upper(), file=file, **kw)


def result(node_id, on, stamp="s1"):
    """A segmentation the module imported on volume ``on`` (content ``stamp`` then and now)."""
    return NodeInfo(node_id, review.SEGMENTATION, node_id, attributes=review.provenance(review.ROLE_RESULT, "m.pt", stamp),
                    source_volume_id=on, reference_volume_id=on, stamp=stamp)


def drawn(node_id, on):
    return NodeInfo(node_id, review.SEGMENTATION, node_id, reference_volume_id=on, stamp="x")


def _cases():
    cases = CaseTable()
    cases.add_volume("a", "A", "segA", "A segmentation")  # drawn by hand: the first labeled case
    cases.add_volume("b", "B")
    return cases


def test_h1_a_result_the_user_edited_is_never_replaced_an_unchanged_one_is():
    cases = _cases()
    assert review.writable_result(cases, result("r", on="b"), "b")  # Segment again: the swap is allowed
    edited = result("r", on="b")
    edited.stamp = "s2"  # a Segment Editor stroke since the import (or while the job ran)
    assert not review.writable_result(cases, edited, "b")
    assert not review.writable_result(cases, drawn("mine", on="b"), "b")  # the user's own: never written
    assert not review.writable_result(cases, result("r", on="c"), "b")  # made on another volume
    assert not review.writable_result(cases, None, "b")
    review.use_as_label(cases, volume("b"), result("r", on="b"))
    assert not review.writable_result(cases, result("r", on="b"), "b")  # a label now: never written
    confirmed = result("r", on="b")
    confirmed.attributes.update(review.confirmed_attributes(confirmed))
    cases.set_segmentation(1, None)
    assert not review.writable_result(cases, confirmed, "b")  # nor once it left the table
    assert review.confirmed_attributes(drawn("mine", on="b")) == {}


def test_h1_the_import_never_empties_a_node_it_writes_into():
    # the result goes into a new node and replaces the old one only after a successful import
    nodes_py = open(os.path.join(MODULE_DIR, "SemiSupSegLib", "nodes.py"), encoding="utf-8").read()
    logic_py = open(os.path.join(MODULE_DIR, "SemiSupSegLib", "logic.py"), encoding="utf-8").read()
    assert "RemoveAllSegments" not in nodes_py + logic_py
    body = logic_py[logic_py.index("def importSegmentation"):]
    assert body.index("nodes.importLabelmapFile(") < body.index("review.writable_result(") < body.index(
        "slicer.mrmlScene.RemoveNode(target)")


def test_h2_a_result_lands_only_on_its_own_volume_and_use_as_label_refuses_another_volumes():
    assert review.result_lands_on_input("a", "a") and not review.result_lands_on_input("a", "b")
    cases = _cases()
    with pytest.raises(ValueError, match="made on another volume"):  # the review's probe 2
        review.use_as_label(cases, volume("c"), result("segB", on="b"))
    assert cases.find_volume("c") is None
    with pytest.raises(ValueError, match="made on another volume"):  # a user's drawing on B, too
        review.use_as_label(cases, volume("c"), drawn("mine", on="b"))
    assert review.use_as_label(cases, volume("b"), result("segB", on="b")) == 1 and cases[1].is_labeled


def test_h3_add_never_makes_a_result_a_label_nor_the_modules_volumes_cases():
    cases = _cases()
    segmentations = [result("segB_ai", on="b"), result("segC_ai", on="c")]
    uncertainty = NodeInfo("u", review.SCALAR_VOLUME, "C uncertainty", source_volume_id="c",
                           attributes=review.provenance(review.ROLE_UNCERTAINTY))
    vector = NodeInfo("rgb", "vtkMRMLVectorVolumeNode", "photo")
    label = NodeInfo("lm", "vtkMRMLLabelMapVolumeNode", "labels")
    added = review.add_volumes(cases, [volume("b"), volume("c"), uncertainty, vector, label], segmentations)
    assert added == 1  # C only (the review's probe 1: B stays unlabeled)
    assert not cases[1].has_label and not cases[2].has_label
    assert [r.volume_node_id for r in cases] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="cannot be a case"):  # nor through Use as label
        review.use_as_label(cases, uncertainty, result("segU", on="u"))
    cases.set_segmentation(1, None)
    review.add_volumes(cases, [volume("b")], [drawn("mine", on="b")])  # a row in the table is left as it is
    assert not cases[1].has_label
    review.add_volumes(cases, [volume("d")], [drawn("mine", on="d")])  # a new volume with the user's drawing
    assert cases[3].is_labeled and cases[3].segmentation_node_id == "mine"


def test_h4_the_widget_keeps_no_copy_of_the_case_table_and_follows_a_loaded_scene():
    widget = open(os.path.join(MODULE_DIR, "SemiSupSegLib", "widget.py"), encoding="utf-8").read()
    assert "self.cases =" not in widget and "return readCases(self._parameterNode)" in widget
    assert "slicer.mrmlScene.EndImportEvent, self.onSceneEndImport" in widget


def test_m4_quit_or_reload_waits_for_the_cancelled_job_and_the_engine_survives_a_closed_pipe(tmp_path):
    widget = open(os.path.join(MODULE_DIR, "SemiSupSegLib", "widget.py"), encoding="utf-8").read()
    cleanup = widget[widget.index("    def cleanup(self)"):widget.index("    def onReload(self)")]
    assert "self.detachJobs()" in cleanup and "jobs.finish_detached(self.closingJobs" in cleanup

    class Cancelled:  # a detached training that ends two polls after its stop file
        def __init__(self, polls):
            self.polls, self.finished, self.cancels = polls, False, 0

        def poll(self):
            self.polls -= 1
            self.finished = self.finished or self.polls <= 0
            return self.finished

        def cancel(self):
            self.cancels += 1

    clock = [0.0]
    quick, stuck = Cancelled(2), Cancelled(10 ** 6)
    jobs.finish_detached([quick, stuck], 5.0, clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    assert quick.finished and quick.cancels == 0  # it ended by itself: its cleanup ran ("resumable")
    assert stuck.cancels == 1 and 4.9 <= clock[0] <= 5.2  # killed once the time was up
    assert "confirmOkCancelDisplay" in widget[widget.index("    def onReload(self)"):]
    assert "mainWindow.installEventFilter(self._quitGuard)" in widget  # quitting asks first
    from SemiSupSegTraining.progress import Reporter

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    reporter = Reporter(mode="json", stream=ClosedPipe())
    reporter.emit("progress", "train", iteration=1)  # no exception: the run goes on to its stop file
    reporter.emit("progress", "train", iteration=2)


def test_m5_the_method_follows_the_preset_unless_the_user_picks_one():
    assert commands.METHOD_CHOICES[0] == commands.PRESET_METHOD
    assert commands.method_argument(commands.PRESET_METHOD) is None
    assert commands.effective_method("paper", commands.PRESET_METHOD) == "ours"
    assert commands.effective_method("pancreas", commands.PRESET_METHOD) == "ours"
    assert commands.effective_method("paper", "supervised") == "supervised"
    command = commands.train_command("py", "m.json", "out", preset="paper", method=commands.PRESET_METHOD)
    assert "--set" not in command  # the engine trains the preset's method, as from the command line
    # the module and the engine agree: one default, one list
    assert commands.DEFAULT_METHOD == config.DEFAULT_METHOD and commands.DEFAULT_PRESET == config.DEFAULT_PRESET
    assert set(commands.PRESETS) == set(config.PRESETS)
    assert all(commands.effective_method(p, commands.PRESET_METHOD) == config.preset_method(p) for p in config.PRESETS)
    source = open(os.path.join(MODULE_DIR, "SemiSupSegLib", "commands.py"), encoding="utf-8").read()
    assert 'DEFAULT_METHOD = "' not in source and 'DEFAULT_PRESET = "' not in source  # no copy of its own


def test_m6_a_loaded_file_case_is_labeled_in_its_own_row():
    cases = CaseTable()
    cases.add_files("/data/case1.nii.gz")
    cases.add_files("/data/case2.nii.gz")
    loaded = volume("v1", file="/data/case1.nii.gz")
    index = review.use_as_label(cases, loaded, drawn("seg1", on="v1"))
    assert index == 0 and len(cases) == 2 and cases[0].is_labeled and cases[0].volume_node_id == "v1"
    assert [r.id for r in cases.unlabeled_rows] == ["case2"]  # the next Suggest cannot pick case1 again
    assert review.add_volumes(cases, [loaded, volume("v2", file="/data/case1.nii.gz")], []) == 0  # no duplicate
    with pytest.raises(ValueError, match="second copy"):
        review.use_as_label(cases, volume("v2", file="/data/case1.nii.gz"), drawn("seg2", on="v2"))
    cases.forget_missing_nodes(["seg1"])  # the loaded volume closed: the row goes back to its file
    assert cases[0].image_path and cases[0].volume_node_id is None and not cases[0].has_label


def test_m7_the_roi_belongs_to_one_volume():
    roi = NodeInfo("roi", "vtkMRMLMarkupsROINode", "organ", source_volume_id="a")
    assert review.roi_after_input_change(roi, "a")
    assert not review.roi_after_input_change(roi, "b")
    assert review.roi_after_input_change(NodeInfo("roi", "vtkMRMLMarkupsROINode"), "b")  # not used yet


def test_m8_the_self_test_uses_settings_of_its_own():
    source = open(os.path.join(MODULE_DIR, "SemiSupSeg.py"), encoding="utf-8").read()
    assert "logic.settings = qt.QSettings(" in source
    logic = open(os.path.join(MODULE_DIR, "SemiSupSegLib", "logic.py"), encoding="utf-8").read()
    assert logic.count("userSettings()") == 1  # the default of logic.settings, nothing else


@pytest.mark.parametrize("running", [form.TRAIN, form.SEGMENT, form.SUGGEST])
def test_m9_one_engine_job_at_a_time(running):
    enabled = form.enabled_actions(form.FormState(running=running, ready_to_train=True, has_model=True,
                                                  resumable=True, has_input=True, has_unlabeled=True))
    starters = {"train": form.TRAIN, "segment": form.SEGMENT, "suggest": form.SUGGEST}
    for action, kind in starters.items():
        assert enabled[action] == (kind == running), action  # only the running job's own button (Cancel)
    assert not enabled["retrain"] and not enabled["resume"]
    idle = form.enabled_actions(form.FormState(ready_to_train=True, has_model=True, resumable=True,
                                               has_input=True, has_unlabeled=True))
    assert all(idle[a] for a in ("train", "retrain", "resume", "segment", "suggest"))


def test_a_case_segmentation_is_refused_as_an_explicit_output():
    cases = _cases()
    cases.set_labeled(0, False)  # kept out of training, still the user's drawing
    target, refusal = review.segment_target(cases, "a", "segA", "A segmentation")
    assert target is review.NEW_SEGMENTATION and "the segmentation of case 'A'" in refusal
    assert review.segment_target(cases, "b", None) == (review.NEW_SEGMENTATION, None)
    assert review.output_after_input_change(cases, "b", result("r", on="b"))
    assert not review.output_after_input_change(cases, "c", result("r", on="b"))
    assert not review.output_after_input_change(cases, "a", drawn("segA", on="a"))  # a case's label
