"""The quick self-test's stand-in for the engine (SemiSupSegLib.recorded_engine): it replays the real engine's
progress lines through the module's real runner and job, honours the stop file like the engine, and writes
the files the module reads back; the recording holds events the module understands."""

import json
import os
import sys

import pytest
from SemiSupSegLib import commands, recorded_engine
from SemiSupSegLib import job as jobs
from SemiSupSegLib.progress import parse_line
from SemiSupSegLib.recorded_engine import RECORDING, ReplayRunner


def _manifest(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    import numpy as np

    array = np.zeros((8, 12, 12), np.int16)
    array[2:6, 3:9, 3:9] = 300
    for name in ("a", "b"):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / f"{name}.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray((array > 0).astype(np.uint8)), str(tmp_path / "a_label.nrrd"))
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"format": "semisupseg-manifest", "version": 1, "modality": "CT",
                                "classes": [{"value": 0, "name": "background"}, {"value": 1, "name": "pancreas"}],
                                "cases": [{"id": "a", "image": "a.nrrd", "label": "a_label.nrrd"},
                                          {"id": "b", "image": "b.nrrd"}]}))
    return str(path)


def _run(command, **kwargs):
    job = jobs.Job(command, runner=ReplayRunner(delay_s=0.01), **kwargs)
    job.start()
    return job


def test_the_recording_is_real_engine_output_the_module_parses():
    with open(RECORDING, encoding="utf-8") as f:
        recording = json.load(f)
    for name, wanted in (("train", ["start", "progress", "checkpoint", "done"]), ("segment", ["start", "done"]),
                         ("suggest", ["start", "progress", "done"])):
        events = [parse_line(json.dumps(e)) for e in recording[name]]
        assert all(e is not None for e in events)
        assert set(wanted) <= {e.event for e in events} and events[-1].event == "done"
    assert parse_line(json.dumps(recording["cancelled"])).event == "cancelled"
    assert "/tmp" not in json.dumps(recording) and "{output}" in json.dumps(recording["train"])


def test_a_replayed_training_ends_with_a_model_file_and_its_metadata(tmp_path):
    manifest = _manifest(tmp_path)
    run = str(tmp_path / "run")
    events = []
    job = _run(commands.train_command(sys.executable, manifest, run, preset="tiny", iterations=2,
                                      stop_file=str(tmp_path / "stop")), on_event=lambda e: events.append(e.event))
    assert job.wait(timeout=60) == jobs.DONE, job.error_message
    assert events[0] == "start" and events.count("progress") >= 2 and events[-1] == "done"
    assert job.done_event.get("model") == os.path.join(run, "model.pt")
    from SemiSupSegTraining.modelinfo import read_metadata_file

    assert [c["name"] for c in read_metadata_file(job.done_event.get("model"))["classes"]] == ["background", "pancreas"]


def test_a_replayed_long_training_stops_by_its_stop_file_and_resumes(tmp_path):
    manifest = _manifest(tmp_path)
    run = str(tmp_path / "run")
    stop = str(tmp_path / "stop")
    job = _run(commands.train_command(sys.executable, manifest, run, preset="tiny", iterations=100000, stop_file=stop),
               stop_file=stop)
    while job.last_progress is None and not job.poll():
        pass
    job.cancel()
    assert job.wait(timeout=60) == jobs.CANCELLED and not job.terminated and job.exit_code == 3
    assert jobs.resumable(job) and os.path.isfile(job.checkpoint)
    resumed = _run(commands.train_command(sys.executable, resume=run, stop_file=stop), stop_file=stop)
    assert resumed.wait(timeout=60) == jobs.DONE and os.path.isfile(os.path.join(run, "model.json"))


def test_replayed_segmenting_and_suggesting_write_what_the_module_reads(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    manifest = _manifest(tmp_path)
    output, uncertainty = str(tmp_path / "seg.nrrd"), str(tmp_path / "unc.nrrd")
    job = _run(commands.segment_command(sys.executable, "model.pt", str(tmp_path / "b.nrrd"), output,
                                        uncertainty=uncertainty))
    assert job.wait(timeout=60) == jobs.DONE
    label = sitk.GetArrayFromImage(sitk.ReadImage(output))
    assert label.sum() == 4 * 6 * 6 and os.path.isfile(uncertainty)  # the bright box
    job = _run(commands.suggest_command(sys.executable, "model.pt", manifest))
    assert job.wait(timeout=60) == jobs.DONE
    assert [item["id"] for item in job.done_event.get("ranking")] == ["b"]  # the unlabeled case


def test_only_engine_command_lines_are_replayed():
    with pytest.raises(ValueError, match="Not an engine command line"):
        recorded_engine.replay_command(["python", "script.py", "train"])
