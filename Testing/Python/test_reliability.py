"""Reliability of long jobs: checkpoints survive SIGKILL, resume is exact, a damaged checkpoint falls back to
the previous one, SIGINT/SIGTERM cancel with a checkpoint and exit code 3, one training per folder, atomic
writes, and inference that steps down (fewer windows, then the CPU) when a device runs out of memory."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import helpers  # noqa: F401  (one torch thread: tiny networks on a busy machine)
import numpy as np
import pytest
import torch

import SemiSupSegTraining.infer as infer
import SemiSupSegTraining.modelfile as modelfile
from SemiSupSegTraining import atomicio, runfolder
from SemiSupSegTraining import train as training
from SemiSupSegTraining.cli import main
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.fileio import read_image
from SemiSupSegTraining.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, Cancelled
from SemiSupSegTraining.modelfile import read_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ITERATIONS = 6  # in-process runs: checkpoints at 2 and 4, stopped at 3


def _env():
    path = ROOT + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


@contextlib.contextmanager
def _engine(args):
    """``python -m SemiSupSegTraining ARGS`` with JSON progress on a pipe; killed (if still running) and its
    pipes closed on leaving."""
    proc = subprocess.Popen([sys.executable, "-m", "SemiSupSegTraining"] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()


def _read_until(proc, event_name, seen):
    """Reads JSON events from the process's stdout until one named ``event_name`` (returned)."""
    for line in proc.stdout:
        if line.startswith("{"):
            event = json.loads(line)
            seen.append(event)
            if event["event"] == event_name:
                return event
    raise AssertionError(f"the process ended before a '{event_name}' event: {seen}\n{proc.stderr.read()}")


def _train_args(manifest, output, iterations, checkpoint_every):
    return ["train", "--manifest", manifest, "--output", output, "--preset", "tiny", "--device", "cpu",
            "--iterations", str(iterations), "--set", f"checkpoint_every={checkpoint_every}"]


def _config(iterations=ITERATIONS):
    return preset_config("tiny", {"iterations": iterations, "device": "cpu", "checkpoint_every": 2})


def _weights(path):
    data = torch.load(path, map_location="cpu", weights_only=True)
    return {f"{net}.{name}": t for net in ("weights_a", "weights_b") for name, t in data[net].items()}


def _assert_same_weights(path_a, path_b):
    a, b = _weights(path_a), _weights(path_b)
    assert a.keys() == b.keys()
    differing = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differing, f"{len(differing)} of {len(a)} tensors differ, e.g. {differing[:3]}"


def _log_iterations(folder):
    with open(os.path.join(folder, training.LOG_NAME)) as f:
        return [json.loads(line)["iteration"] for line in f]


# --------------------------------------------------------------------------- checkpoints and resume

@pytest.fixture(scope="module")
def straight_run(phantom_dataset, tmp_path_factory):
    """ITERATIONS iterations without interruption."""
    folder = str(tmp_path_factory.mktemp("straight"))
    return training.train(phantom_dataset["train"], folder, _config(), progress="none")


@pytest.fixture(scope="module")
def stopped_run(phantom_dataset, tmp_path_factory):
    """The same training cancelled after iteration 3: checkpoint.pt at 3, checkpoint.prev.pt at 2."""
    folder = str(tmp_path_factory.mktemp("stopped"))
    stop = threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if event["event"] == "progress" and event["iteration"] == 3:
            stop.set()

    with pytest.raises(Cancelled):
        training.train(phantom_dataset["train"], folder, _config(), progress="none", callback=on_event,
                       cancel_event=stop)
    assert events[-1]["event"] == "cancelled" and events[-1]["iteration"] == 3
    return folder


def test_resume_is_exact(straight_run, stopped_run, tmp_path):
    """Stopped at iteration 3 and resumed: the same weights, bit for bit, as the uninterrupted run (same
    seed, CPU): iteration count, lr, λ and T schedules, optimiser momentum, numpy, torch and generator
    random states all come back from the checkpoint."""
    folder = str(tmp_path / "run")
    shutil.copytree(stopped_run, folder)
    events = []
    model = training.train(None, folder, progress="none", resume=True, callback=events.append)
    assert events[0]["event"] == "start" and events[0]["iteration"] == 3
    assert read_metadata(model)["training"]["iterations"] == ITERATIONS
    _assert_same_weights(straight_run, model)
    final = [torch.load(os.path.join(os.path.dirname(p), training.CHECKPOINT_NAME), weights_only=True)
             for p in (straight_run, model)]
    for key in ("optimizer_a", "optimizer_b"):
        for state_a, state_b in zip(final[0][key]["state"].values(), final[1][key]["state"].values()):
            assert torch.equal(state_a["momentum_buffer"], state_b["momentum_buffer"])
    for key in ("rng_numpy", "rng_torch", "rng_generator"):
        assert (final[0][key] == final[1][key]) if isinstance(final[0][key], str) else \
            torch.equal(final[0][key], final[1][key])
    assert _log_iterations(folder) == sorted(set(_log_iterations(folder)))


def test_truncated_checkpoint_falls_back_to_previous(straight_run, stopped_run, tmp_path):
    """checkpoint.pt cut to half its bytes (a machine that died while copying it): resume uses
    checkpoint.prev.pt (iteration 2), says so, and still ends with the uninterrupted run's weights."""
    folder = str(tmp_path / "run")
    shutil.copytree(stopped_run, folder)
    newest = os.path.join(folder, training.CHECKPOINT_NAME)
    with open(newest, "rb") as f:
        data = f.read()
    with open(newest, "wb") as f:
        f.write(data[: len(data) // 2])
    events = []
    model = training.train(None, folder, progress="none", resume=True, callback=events.append)
    start = events[0]
    assert start["event"] == "start" and start["iteration"] == 2
    assert training.PREVIOUS_CHECKPOINT_NAME in start["message"] and newest in start["message"]
    assert read_metadata(model)["training"]["iterations"] == ITERATIONS
    _assert_same_weights(straight_run, model)


def test_no_usable_checkpoint_is_bad_input(stopped_run, tmp_path, capsys):
    """Both checkpoints damaged and no record of the start (run.json) to begin again from: one sentence."""
    folder = str(tmp_path / "run")
    shutil.copytree(stopped_run, folder)
    for name in (training.CHECKPOINT_NAME, training.PREVIOUS_CHECKPOINT_NAME):
        with open(os.path.join(folder, name), "r+b") as f:
            f.truncate(100)
    os.remove(os.path.join(folder, "run.json"))
    assert main(["train", "--resume", folder, "--progress", "none"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("semisupseg: error: ") and "\n" not in err and folder in err
    assert not os.path.exists(os.path.join(folder, training.MODEL_NAME))


def test_sigkill_mid_run_then_resume(phantom_dataset, tmp_path):
    """SIGKILL right after a checkpoint event (no handler can run): the checkpoint on disk is complete,
    the dead process's lock is taken over, and ``train --resume`` finishes all 12 iterations."""
    folder = str(tmp_path / "run")
    seen = []
    with _engine(_train_args(phantom_dataset["train"], folder, 12, 2) + ["--progress", "json"]) as proc:
        checkpoint = _read_until(proc, "checkpoint", seen)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint["iteration"] == 2
    assert not os.path.exists(os.path.join(folder, training.MODEL_NAME))
    assert os.path.exists(os.path.join(folder, training.LOCK_NAME))  # left by the killed process

    assert main(["train", "--resume", folder, "--progress", "none"]) == EXIT_OK
    meta = read_metadata(os.path.join(folder, training.MODEL_NAME))
    assert meta["training"]["iterations"] == 12
    assert not os.path.exists(os.path.join(folder, training.LOCK_NAME))
    iterations = _log_iterations(folder)
    assert iterations == sorted(set(iterations)) and iterations[-1] == 12  # no iteration logged twice


# ---------------------------------------------------------------------------------------------- cancel

def test_sigterm_cancels_with_checkpoint_and_exit_code_3(phantom_dataset, tmp_path, capsys):
    """SIGTERM (the Slicer module's cancel) after the first progress event: a `cancelled` event, a checkpoint,
    exit code 3, no model file; meanwhile a second training into the busy folder is refused; resume ends it."""
    folder = str(tmp_path / "run")
    seen = []
    with _engine(_train_args(phantom_dataset["train"], folder, 30, 1000) + ["--progress", "json"]) as proc:
        _read_until(proc, "progress", seen)
        # One training per folder: a second one is refused while the first runs.
        second = main(_train_args(phantom_dataset["train"], folder, 30, 1000) + ["--progress", "none"])
        refusal = capsys.readouterr().err.strip()
        os.kill(proc.pid, signal.SIGTERM)
        cancelled = _read_until(proc, "cancelled", seen)
        proc.wait(timeout=120)
    assert second == EXIT_BAD_INPUT
    assert refusal.startswith("semisupseg: error: ") and "\n" not in refusal
    assert folder in refusal and "in use" in refusal and str(proc.pid) in refusal

    assert proc.returncode == EXIT_CANCELLED
    assert cancelled["checkpoint"] == os.path.join(folder, training.CHECKPOINT_NAME)
    assert "--resume" in cancelled["message"]
    assert 1 <= cancelled["iteration"] < 30
    assert training.load_checkpoint(folder)["iteration"] == cancelled["iteration"]
    assert not os.path.exists(os.path.join(folder, training.MODEL_NAME))
    assert not os.path.exists(os.path.join(folder, training.LOCK_NAME))

    assert main(["train", "--resume", folder, "--progress", "none"]) == EXIT_OK
    assert read_metadata(os.path.join(folder, training.MODEL_NAME))["training"]["iterations"] == 30


def test_signal_during_a_step_is_handled_at_the_next_iteration_boundary(phantom_dataset, tmp_path, monkeypatch,
                                                                         capsys):
    """SIGINT arriving in the middle of iteration 2 does not tear the step: the step finishes, then the
    loop writes a checkpoint at iteration 2 and the command exits with code 3."""
    original = training.Trainer.step

    def step(self):
        if self.iteration == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while this step runs
        return original(self)

    monkeypatch.setattr(training.Trainer, "step", step)
    folder = str(tmp_path / "run")
    handler = signal.getsignal(signal.SIGINT)
    code = main(_train_args(phantom_dataset["train"], folder, 6, 1000) + ["--progress", "json"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == EXIT_CANCELLED
    assert [e["iteration"] for e in events if e["event"] == "progress"] == [1, 2]
    assert events[-1]["event"] == "cancelled" and events[-1]["iteration"] == 2
    assert training.load_checkpoint(folder)["iteration"] == 2
    assert signal.getsignal(signal.SIGINT) is handler  # the handlers are restored


def test_second_interrupt_while_writing_the_checkpoint_keeps_it_whole(phantom_dataset, tmp_path, monkeypatch):
    """Ctrl+C, then Ctrl+C again while the checkpoint is being written: the write finishes, the checkpoint
    loads, and no temporary file is left behind."""
    original_save = torch.save
    interrupts = []

    def save(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl+C again, mid-write
        interrupts.append(1)
        return original_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(modelfile.torch, "save", save)
    stop = threading.Event()
    stop.set()  # the first Ctrl+C: cancel before the first iteration
    folder = str(tmp_path / "run")
    with pytest.raises(Cancelled):
        training.train(phantom_dataset["train"], folder, _config(), progress="none", cancel_event=stop)
    assert interrupts
    assert training.load_checkpoint(folder)["_skipped"] == []
    assert training.CHECKPOINT_NAME in os.listdir(folder)
    assert not [name for name in os.listdir(folder) if atomicio.PARTIAL_MARK in name]


def test_full_disk_while_checkpointing_is_one_sentence(phantom_dataset, tmp_path, monkeypatch, capsys):
    """No space left for the checkpoint at iteration 4: the one at 2 stays usable and the user is told how
    to go on."""
    original = training.write_checkpoint

    def write_checkpoint(folder, payload):
        if payload["iteration"] == 4:
            raise OSError(28, "No space left on device")
        return original(folder, payload)

    monkeypatch.setattr(training, "write_checkpoint", write_checkpoint)
    folder = str(tmp_path / "run")
    code = main(_train_args(phantom_dataset["train"], folder, 6, 2) + ["--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT
    assert err.startswith("semisupseg: error: Cannot write the checkpoint into ") and "\n" not in err
    assert "No space left on device" in err and f"--resume {folder}" in err
    assert training.load_checkpoint(folder)["iteration"] == 2


def test_interrupted_save_leaves_the_old_file(tmp_path, monkeypatch):
    """KeyboardInterrupt in the middle of writing (outside training's handler): the previous file stays
    whole and the temporary file is removed."""
    path = str(tmp_path / "model.pt")
    modelfile.save_atomic({"value": torch.ones(3)}, path)
    original_save = torch.save

    def save(obj, f, *args, **kwargs):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(modelfile.torch, "save", save)
    with pytest.raises(KeyboardInterrupt):
        modelfile.save_atomic({"value": torch.zeros(3)}, path)
    monkeypatch.setattr(modelfile.torch, "save", original_save)
    assert torch.equal(modelfile.load_trusted_data(path)["value"], torch.ones(3))
    assert os.listdir(tmp_path) == ["model.pt"]


def test_sigterm_during_segment_leaves_no_output(tiny_model_file, phantom_dataset, tmp_path, monkeypatch, capsys):
    """SIGTERM while segmenting: exit code 3, one line, no output and no temporary file."""
    def segment(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM should have interrupted the segmentation")

    monkeypatch.setattr(infer.Segmenter, "segment", segment)
    handler = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    image = os.path.join(phantom_dataset["folder"], "images", "phantom000.nii.gz")
    code = main(["segment", "--model", tiny_model_file, "--input", image, "--output", str(out / "seg.nii.gz"),
                 "--device", "cpu", "--progress", "none"])
    assert code == EXIT_CANCELLED
    assert capsys.readouterr().err.strip() == "semisupseg: error: Stopped by the user."
    assert not out.exists() or not os.listdir(out)
    assert signal.getsignal(signal.SIGTERM) is handler


# ------------------------------------------------------------------------------------- one per folder

def test_busy_folder_is_refused(phantom_dataset, tmp_path, capsys):
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    with training.TrainingLock(folder):
        code = main(_train_args(phantom_dataset["train"], folder, 2, 1000) + ["--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT
    assert err.startswith("semisupseg: error: ") and folder in err and "in use" in err
    assert os.listdir(folder) == []  # the refused training wrote nothing


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_of_a_dead_process_is_taken_over(phantom_dataset, tmp_path):
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    lock = os.path.join(folder, training.LOCK_NAME)
    with open(lock, "w") as f:
        f.write(str(_dead_pid()))
    assert main(_train_args(phantom_dataset["train"], folder, 2, 1000) + ["--progress", "none"]) == EXIT_OK
    assert os.path.exists(os.path.join(folder, training.MODEL_NAME))
    assert not os.path.exists(lock)


def test_pid_lock_without_kernel_locks(tmp_path, monkeypatch):
    """Where the system has no flock (Windows, some network shares) the pid decides: a live owner keeps the
    folder, a dead one's lock is taken over."""
    monkeypatch.setattr(runfolder, "fcntl", None)
    folder = str(tmp_path)
    lock = os.path.join(folder, training.LOCK_NAME)
    with open(lock, "w") as f:
        f.write(str(os.getppid()))  # a live process that is not this one
    with pytest.raises(training.InputError, match="in use"):
        with training.TrainingLock(folder):
            pass
    with open(lock, "w") as f:
        f.write(str(_dead_pid()))
    with training.TrainingLock(folder):
        with open(lock) as f:
            assert f.read() == str(os.getpid())
    assert not os.path.exists(lock)


def test_refused_training_leaves_no_new_folder(tmp_path, capsys):
    missing = str(tmp_path / "missing.json")
    folder = str(tmp_path / "new_run")
    assert main(["train", "--manifest", missing, "--output", folder, "--preset", "tiny", "--progress",
                 "none"]) == EXIT_BAD_INPUT
    assert missing in capsys.readouterr().err
    assert not os.path.exists(folder)


# ----------------------------------------------------------------------------------- out of memory

def _oom():
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_inference_retries_with_one_window_after_out_of_memory(tiny_model_file, phantom_dataset, monkeypatch):
    """A (fake) CUDA out-of-memory error in the first window batch: the user is told, the windows go one at a
    time, and the result equals a normal run's."""
    volume = read_image(os.path.join(phantom_dataset["folder"], "images", "phantom000.nii.gz"))
    image = np.tile(infer.Segmenter(tiny_model_file, "cpu").normalize(volume.array), (2, 2, 2))  # 27 windows
    expected, _ = infer.Segmenter(tiny_model_file, "cpu", window_batch=1).predict(image)
    messages = []
    segmenter = infer.Segmenter(tiny_model_file, "cpu", window_batch=4, on_message=messages.append)
    original = infer.Segmenter._predictor
    calls = []

    def predictor(self, windows):
        calls.append(windows.shape[0])
        if len(calls) == 1:
            raise _oom()
        return original(self, windows)

    monkeypatch.setattr(infer.Segmenter, "_predictor", predictor)
    probabilities, _ = segmenter.predict(image)
    assert calls[0] == 4 and set(calls[1:]) == {1} and len(calls) == 1 + 27
    assert segmenter.window_batch == 1 and len(messages) == 1 and "one window at a time" in messages[0]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(infer.argmax_labels(probabilities), expected.argmax(0))


def test_inference_falls_back_to_the_cpu(tiny_model_file, phantom_dataset, monkeypatch):
    """Still out of memory with one window on the GPU: the networks move to the CPU and the job finishes.
    (The GPU is simulated: windows sent to a non-CPU device raise CUDA's out-of-memory error.)"""
    volume = read_image(os.path.join(phantom_dataset["folder"], "images", "phantom000.nii.gz"))
    messages = []
    segmenter = infer.Segmenter(tiny_model_file, "cpu", window_batch=2, on_message=messages.append)
    segmenter.device = torch.device("cuda")
    segmenter.blend_on_device = False  # the output in host memory: a CPU build cannot place it on the GPU
    original = infer.sliding_window_inference
    devices = []

    def sliding_window(inputs, roi, sw_batch_size, predictor, **kwargs):
        devices.append((kwargs["sw_device"].type, sw_batch_size))
        if kwargs["sw_device"].type != "cpu":
            raise _oom()
        return original(inputs, roi, sw_batch_size, predictor, **kwargs)

    monkeypatch.setattr(infer, "sliding_window_inference", sliding_window)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    result = segmenter.segment(volume)
    assert devices == [("cuda", 2), ("cuda", 1), ("cpu", 1)]
    assert len(messages) == 2 and "CPU" in messages[1]
    assert result.labels.shape == volume.array.shape


def test_out_of_memory_on_the_cpu_is_one_sentence(tiny_model_file, phantom_dataset, tmp_path, monkeypatch,
                                                  capsys):
    def predictor(self, windows):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 9663676416 bytes.")

    monkeypatch.setattr(infer.Segmenter, "_predictor", predictor)
    out = tmp_path / "out"
    image = os.path.join(phantom_dataset["folder"], "images", "phantom000.nii.gz")
    code = main(["segment", "--model", tiny_model_file, "--input", image, "--output", str(out / "seg.nii.gz"),
                 "--device", "cpu", "--progress", "json"])
    captured = capsys.readouterr()
    assert code == EXIT_FAILED
    err = captured.err.strip()
    assert err.startswith("semisupseg: error: Out of memory while segmenting") and "\n" not in err
    events = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    told = [e for e in events if e["event"] in ("warning", "error")]
    assert [e["event"] for e in told] == ["warning", "error"]
    assert "one window at a time" in told[0]["message"] and told[1]["exit_code"] == EXIT_FAILED
    assert not out.exists() or not os.listdir(out)


def test_training_out_of_memory_is_one_sentence(phantom_dataset, tmp_path, monkeypatch, capsys):
    def step(self):
        raise _oom()

    monkeypatch.setattr(training.Trainer, "step", step)
    folder = str(tmp_path / "run")
    code = main(_train_args(phantom_dataset["train"], folder, 4, 1000) + ["--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_FAILED
    assert err.startswith("semisupseg: error: The cpu ran out of memory at iteration 1") and "\n" not in err
    assert not os.path.exists(os.path.join(folder, training.MODEL_NAME))


def test_memory_savers_do_not_change_the_result(tiny_model_file, phantom_dataset):
    """No disagreement channel, the raw image released, labels and uncertainty slab by slab: the same numbers."""
    path = os.path.join(phantom_dataset["folder"], "images", "phantom000.nii.gz")
    full = infer.Segmenter(tiny_model_file, "cpu").segment(read_image(path))
    volume = read_image(path)
    lean = infer.Segmenter(tiny_model_file, "cpu", disagreement=False).segment(volume, release_input=True)
    assert volume.array is None and lean.disagreement is None and full.disagreement is not None
    np.testing.assert_array_equal(lean.labels, full.labels)
    np.testing.assert_allclose(lean.probabilities, full.probabilities, atol=1e-6)
    np.testing.assert_array_equal(lean.labels, full.probabilities.argmax(0))
    p = np.clip(full.probabilities, 1e-8, 1.0)
    np.testing.assert_allclose(full.uncertainty, -(p * np.log(p)).sum(0) / np.log(p.shape[0]), atol=1e-6)
