"""The Slicer module's job runner driving the real engine (``python -m SemiSupSegTraining``): a tiny
training on two synthetic volumes (one labeled) to ``done``, segmenting with its model, and a cancelled
long training whose process is gone afterwards. Built exactly as the module builds them (commands,
environment, manifest from the case table)."""

import os
import sys
import time

import numpy as np
import pytest
from SemiSupSegLib import commands
from SemiSupSegLib.cases import CaseTable, build_manifest
from SemiSupSegLib.job import Job
from SemiSupSegLib.labels import import_lookup, remap, segment_specs

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("torch")
if not os.path.isfile(os.path.join(os.path.dirname(__file__), "..", "..", "SemiSupSegTraining", "cli.py")):
    pytest.skip("the engine's command line (SemiSupSegTraining/cli.py) is not written yet", allow_module_level=True)

MODULE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "SemiSupSeg")


def _sphere_case(folder, name, center, labeled):
    size = (40, 40, 24)  # x, y, z
    z, y, x = np.mgrid[: size[2], : size[1], : size[0]]
    inside = ((x - center[0]) ** 2 + (y - center[1]) ** 2 + ((z - center[2]) * 2.0) ** 2) < 9.0 ** 2
    rng = np.random.default_rng(len(name))
    image = (inside * 200.0 + rng.normal(0, 20, inside.shape)).astype(np.int16)
    img = sitk.GetImageFromArray(image)
    img.SetSpacing((1.0, 1.0, 2.0))
    img.SetOrigin((-20.0, 10.0, 5.0))
    image_path = os.path.join(folder, f"{name}.nrrd")
    sitk.WriteImage(img, image_path)
    label_path = None
    if labeled:
        lab = sitk.GetImageFromArray(inside.astype(np.uint8))
        lab.CopyInformation(img)
        label_path = os.path.join(folder, f"{name}_label.nrrd")
        sitk.WriteImage(lab, label_path)
    return image_path, label_path


def _engine_job(command, name):
    env = commands.engine_environment(commands.locate_engine(MODULE_DIR))
    return Job(command, env=env, name=name, grace_s=20.0)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("cases"))
    _sphere_case(folder, "one", (18, 20, 12), labeled=True)
    _sphere_case(folder, "two", (22, 19, 11), labeled=False)
    table = CaseTable()
    assert table.add_folder(folder) == 2 and table.readiness()[0]
    entries = [(r.id, r.image_path, r.label_path, r.labeled) for r in table]
    path = os.path.join(folder, "manifest.json")
    from SemiSupSegTraining.manifest import default_classes
    build_manifest(entries, default_classes(["sphere"]), "MRI", path)
    return path


def test_tiny_training_then_segmenting_reach_done(manifest, tmp_path):
    python = sys.executable
    output = str(tmp_path / "run")
    events = []
    train = _engine_job(commands.train_command(python, manifest, output, preset="tiny", iterations=2, device="cpu"),
                        "Training")
    train.on_event = lambda e: events.append(e.event)
    state = train.start().wait(timeout=300)
    assert state == "done", (train.error_message, list(train.log_tail))
    assert train.states == ["idle", "starting", "running", "importing", "done"]
    assert "progress" in events and train.last_progress.iteration == 2
    model = train.done_event.get("model")
    assert os.path.abspath(model) == os.path.abspath(commands.model_file_in(output))

    from SemiSupSegTraining.modelfile import read_metadata
    meta = read_metadata(model)
    assert [c["name"] for c in meta["classes"]] == ["background", "sphere"]

    image = os.path.join(os.path.dirname(manifest), "two.nrrd")
    seg_path, unc_path = str(tmp_path / "seg.nrrd"), str(tmp_path / "unc.nrrd")

    def importer(job):
        result = sitk.ReadImage(seg_path)
        source = sitk.ReadImage(image)
        assert result.GetSize() == source.GetSize() and result.GetOrigin() == source.GetOrigin()
        assert result.GetSpacing() == source.GetSpacing()
        values = remap(sitk.GetArrayFromImage(result), import_lookup([c["value"] for c in meta["classes"]]))
        return int(values.max()), [s[1] for s in segment_specs(meta["classes"])]

    seg = _engine_job(commands.segment_command(python, model, image, seg_path, uncertainty=unc_path, device="cpu",
                                               roi=(4, 4, 2, 36, 36, 22)), "Segmenting")
    seg.importer = importer
    assert seg.start().wait(timeout=300) == "done", (seg.error_message, list(seg.log_tail))
    assert seg.result[0] <= 1 and seg.result[1] == ["sphere"]
    assert os.path.isfile(unc_path)


def test_cancelled_training_stops_and_its_process_is_gone(manifest, tmp_path):
    output = str(tmp_path / "long")
    train = _engine_job(commands.train_command(sys.executable, manifest, output, preset="tiny", iterations=100000,
                                               device="cpu"), "Training")
    train.start()
    deadline = time.monotonic() + 300
    while train.last_progress is None and not train.finished:
        assert time.monotonic() < deadline, "the training never reported progress"
        train.poll()
        time.sleep(0.05)
    assert train.state == "running"
    train.cancel()
    assert train.wait(timeout=120) == "cancelled", (train.error_message, list(train.log_tail))
    assert train._handle.proc.poll() is not None
    assert train.exit_code == 3  # the engine caught SIGTERM, wrote a checkpoint and said so
    assert train.checkpoint is None or os.path.exists(train.checkpoint)


def test_suggest_through_the_job_gives_the_ranking_and_honours_the_stop_file(manifest, tiny_model_file, tmp_path):
    """The module's Suggest: the ranking arrives in the done event; a stop file already there is a clean cancel
    (exit code 3, never terminated)."""
    stop_file = commands.stop_file_in(str(tmp_path))
    command = commands.suggest_command(sys.executable, tiny_model_file, manifest, device="cpu", stop_file=stop_file)
    suggest = _engine_job(command, "Suggesting")
    suggest.stop_file = stop_file
    suggest.importer = lambda job: job.done_event.get("ranking")
    assert suggest.start().wait(timeout=300) == "done", (suggest.error_message, list(suggest.log_tail))
    assert [item["id"] for item in suggest.result] == ["two"]  # the manifest's one unlabeled case
    assert 0.0 <= suggest.result[0]["score"] <= 1.0 and suggest.last_progress.total == 1

    from SemiSupSegLib.job import request_stop
    request_stop(stop_file)
    again = _engine_job(command, "Suggesting")  # no stop_file given to the Job: the stale file stays
    assert again.start().wait(timeout=300) == "cancelled"
    assert again.exit_code == 3 and not again.terminated and again.cancelled_event is not None
