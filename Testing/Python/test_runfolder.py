"""The run folder's two gaps closed (a training killed before its first checkpoint resumes from iteration 0
with what the folder records; a wall-clock bound on the time between checkpoints) and the stop file of
``train`` and ``segment``."""

import json
import os
import signal
import subprocess
import sys
import threading

import helpers  # noqa: F401  (one torch thread: tiny networks on a busy machine)
import pytest
import torch

from SemiSupSegTraining import runfolder
from SemiSupSegTraining import train as training
from SemiSupSegTraining.cli import main
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.errors import EXIT_CANCELLED, EXIT_OK, Cancelled
from SemiSupSegTraining.modelfile import read_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**overrides):
    return preset_config("tiny", dict({"iterations": 6, "device": "cpu", "checkpoint_every": 1000,
                                       "checkpoint_minutes": 0}, **overrides))


def _weights(path):
    data = torch.load(path, map_location="cpu", weights_only=True)
    return {f"{net}.{name}": t for net in ("weights_a", "weights_b") for name, t in data[net].items()}


def test_killed_before_the_first_checkpoint_resumes_from_iteration_0(phantom_dataset, tmp_path):
    """SIGKILL after the first iteration, long before the first checkpoint: ``--resume`` needs nothing
    retyped, starts again from iteration 0 with the recorded settings and cases, and ends with the weights
    of an uninterrupted run (same seed)."""
    folder = str(tmp_path / "killed")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "SemiSupSegTraining", "train", "--manifest", phantom_dataset["train"], "--output",
         folder, "--preset", "tiny", "--device", "cpu", "--iterations", "6", "--set", "checkpoint_every=1000",
         "--set", "checkpoint_minutes=0", "--progress", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    try:
        for line in proc.stdout:
            if line.startswith("{") and json.loads(line)["event"] == "progress":
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(folder, runfolder.CHECKPOINT_NAME))

    events = []
    model = training.train(None, folder, progress="none", resume=True, callback=events.append)
    start = next(e for e in events if e["event"] == "start")
    assert start["iteration"] == 0 and "starts again from iteration 0" in start["message"]
    straight = training.train(phantom_dataset["train"], str(tmp_path / "straight"), _config(), progress="none")
    a, b = _weights(model), _weights(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metadata(model)["training"]["iterations"] == 6


def test_checkpoint_clock_bounds_the_time_between_checkpoints():
    now = [0.0]
    clock = runfolder.CheckpointClock(every=500, minutes=10, clock=lambda: now[0])
    assert not clock.time_is_up() and not clock.counts(499) and clock.counts(500)
    now[0] = 599.0
    assert not clock.time_is_up()
    now[0] = 600.0
    assert clock.time_is_up()
    clock.written()
    assert not clock.time_is_up()
    assert not runfolder.CheckpointClock(every=5, minutes=0, clock=lambda: 1e9).time_is_up()


def test_wall_clock_checkpoints_during_training(phantom_dataset, tmp_path, monkeypatch):
    """checkpoint_every far away, checkpoint_minutes reached after every iteration: a checkpoint at every
    iteration boundary."""
    now = [0.0]

    class Clock(runfolder.CheckpointClock):
        def __init__(self, every, minutes):
            super().__init__(every, minutes, clock=lambda: now[0])

    def step(self, original=training.Trainer.step):
        now[0] += 61.0
        return original(self)

    monkeypatch.setattr(training, "CheckpointClock", Clock)
    monkeypatch.setattr(training.Trainer, "step", step)
    events = []
    training.train(phantom_dataset["train"], str(tmp_path / "run"), _config(iterations=4, checkpoint_minutes=1),
                   progress="none", callback=events.append)
    assert [e["iteration"] for e in events if e["event"] == "checkpoint"] == [1, 2, 3, 4]  # 4: the final one


def test_stop_file_ends_a_training_with_a_checkpoint(phantom_dataset, tmp_path):
    folder, stop_file = str(tmp_path / "run"), str(tmp_path / "STOP")
    events = []

    def on_event(event):
        events.append(event)
        if event["event"] == "progress" and event["iteration"] == 2:
            open(stop_file, "w").close()

    with pytest.raises(Cancelled):
        training.train(phantom_dataset["train"], folder, _config(), progress="none", callback=on_event,
                       stop_file=stop_file)
    assert events[-1]["event"] == "cancelled" and events[-1]["iteration"] == 2
    assert runfolder.load_checkpoint(folder)["iteration"] == 2
    assert not os.path.exists(stop_file)  # acted on: a resume with the same --stop-file runs on
    assert not os.path.exists(os.path.join(folder, runfolder.MODEL_NAME))
    assert main(["train", "--resume", folder, "--stop-file", stop_file, "--progress", "none"]) == EXIT_OK


def test_stop_file_from_the_command_line_exits_with_code_3(phantom_dataset, tmp_path):
    folder, stop_file = str(tmp_path / "run"), tmp_path / "STOP"
    stop_file.touch()  # asked before the first iteration: a checkpoint at iteration 0
    code = main(["train", "--manifest", phantom_dataset["train"], "--output", folder, "--preset", "tiny",
                 "--device", "cpu", "--stop-file", str(stop_file), "--progress", "none"])
    assert code == EXIT_CANCELLED
    assert runfolder.load_checkpoint(folder)["iteration"] == 0 and not stop_file.exists()


def test_stop_file_ends_a_segmentation_without_output(tiny_model_file, phantom_dataset, tmp_path, monkeypatch):
    """The stop file appears while the windows run: exit code 3, no output, no temporary file."""
    stop_file, out = tmp_path / "STOP", tmp_path / "out"
    out.mkdir()
    import SemiSupSegTraining.infer as infer

    original = infer.Segmenter._predictor

    def predictor(self, windows):
        stop_file.touch()
        return original(self, windows)

    monkeypatch.setattr(infer.Segmenter, "_predictor", predictor)
    image = os.path.join(phantom_dataset["folder"], "images", "phantom000.nii.gz")
    code = main(["segment", "--model", tiny_model_file, "--input", image, "--output", str(out / "seg.nii.gz"),
                 "--probabilities", str(out / "p.nii.gz"), "--device", "cpu", "--stop-file", str(stop_file),
                 "--progress", "none"])
    assert code == EXIT_CANCELLED
    assert os.listdir(out) == [] and not stop_file.exists()


def test_restart_from_iteration_0_keeps_the_starting_model(phantom_dataset, tmp_path):
    """``--init-model`` is part of what the folder records: a training whose checkpoints are all gone starts
    again from the same model file's weights, and ends as the uninterrupted run does (and not as a run
    from the seed's random weights)."""
    from helpers import make_model_file

    start = make_model_file(str(tmp_path / "start.pt"), seed=3)
    folder = str(tmp_path / "run")
    stop = threading.Event()

    def on_event(event):
        if event["event"] == "progress" and event["iteration"] == 2:
            stop.set()

    with pytest.raises(Cancelled):
        training.train(phantom_dataset["train"], folder, _config(iterations=4), progress="none", callback=on_event,
                       init_model=start, cancel_event=stop)
    for name in (runfolder.CHECKPOINT_NAME, runfolder.PREVIOUS_CHECKPOINT_NAME):
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    model = training.train(None, folder, progress="none", resume=True)
    straight = training.train(phantom_dataset["train"], str(tmp_path / "straight"), _config(iterations=4),
                              progress="none", init_model=start)
    from_seed = training.train(phantom_dataset["train"], str(tmp_path / "seed"), _config(iterations=4),
                               progress="none")
    a, b, c = _weights(model), _weights(straight), _weights(from_seed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
