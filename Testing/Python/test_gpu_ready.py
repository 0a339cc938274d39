"""Ready for a GPU, checked on the CPU: the precision chosen by compute capability, the memory decisions as
numbers, a checkpoint with a CUDA random state resumed on the CPU, the batch thread giving the same batches,
and out of memory (injected) ending with one sentence, the checkpoint kept and the other processes told."""

import json
import os
import subprocess
import sys
import time

import helpers  # noqa: F401  (one torch thread)
import pytest
import torch

from SemiSupSegTraining import gpu, runfolder
from SemiSupSegTraining import train as training
from SemiSupSegTraining.cli import main
from SemiSupSegTraining.config import preset_config, with_run_settings
from SemiSupSegTraining.data import load_training_cases
from SemiSupSegTraining.devices import autocast_dtype, precision_for
from SemiSupSegTraining.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, InputError, is_out_of_memory
from SemiSupSegTraining.manifest import load_manifest
from SemiSupSegTraining.modelfile import read_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
GB = 1 << 30


@pytest.mark.parametrize("device, capability, training, cpu_bf16, expected", [
    ("cuda", (9, 0), True, False, "bf16"),   # H100
    ("cuda", (8, 0), True, False, "bf16"),   # A100: the first with bf16 convolutions in cuDNN
    ("cuda", (8, 6), False, False, "bf16"),  # RTX 3090
    ("cuda", (7, 5), True, False, "fp16"),   # T4: is_bf16_supported() says True, cuDNN has no bf16 convs
    ("cuda", (7, 0), True, False, "fp16"),   # V100
    ("cuda", (6, 1), True, False, "fp32"),   # GTX 1080: fp16 no faster than fp32
    ("cuda", (3, 7), False, False, "fp32"),  # K80
    ("cpu", None, True, True, "fp32"),       # CPU training stays fp32 even with native bf16
    ("cpu", None, False, True, "bf16"),
    ("cpu", None, False, False, "fp32"),
    ("mps", None, True, False, "fp32"),
])
def test_precision_follows_the_compute_capability(device, capability, training, cpu_bf16, expected):
    assert precision_for(device, capability, training, cpu_bf16) == expected


def test_the_amp_setting_overrides_and_older_files_still_load():
    cpu = torch.device("cpu")
    assert preset_config("tiny", {"amp": True}).amp == "auto"  # settings files written before: true/false
    assert preset_config("tiny", {"amp": False}).amp == "fp32"
    assert autocast_dtype(cpu, preset_config("tiny", {"amp": "bf16"}).amp, training=True) == torch.bfloat16
    assert autocast_dtype(cpu, "fp32") is None and autocast_dtype(cpu, "auto", training=True) is None
    with pytest.raises(InputError, match="amp=fp16 needs a CUDA GPU"):
        autocast_dtype(cpu, "fp16")
    with pytest.raises(InputError, match="amp is 'half'"):
        preset_config("tiny", {"amp": "half"})
    with pytest.raises(InputError, match="prefetch"):
        preset_config("tiny", {"prefetch": "sometimes"})


@pytest.mark.parametrize("peak, static, free, reserved, fits", [
    (5 * GB, 1 * GB, 20 * GB, 5 * GB, True),    # 24 GB card: joint needs 9 GB, +20 %: 10.8 GB
    (5 * GB, 1 * GB, 4 * GB, 5 * GB, False),    # 10.8 GB needed, 9 GB to be had
    (5 * GB, 1 * GB, 5.9 * GB, 5 * GB, True),   # just enough: 10.9 GB for 10.8
    (5 * GB, 1 * GB, 5.7 * GB, 5 * GB, False),
    (1 * GB, 1 * GB, 0.5 * GB, 1 * GB, True),   # the step needed nothing beyond its weights
])
def test_the_joint_backward_is_taken_when_the_card_has_the_memory(peak, static, free, reserved, fits):
    assert gpu.joint_backward_fits(int(peak), int(static), int(free), int(reserved)) is fits


def test_the_blended_output_stays_on_the_gpu_when_it_fits():
    voxels = 160 * 192 * 88  # 2 classes + disagreement + count map + input: 5 float32 a voxel = 54 MB
    window = gpu.window_memory_estimate(112 * 112 * 80, 4)  # 1.7 GB for four paper windows: generous
    assert gpu.blend_on_device_fits(voxels, 3, 3 * GB, window)
    assert not gpu.blend_on_device_fits(voxels, 3, int(1.5 * GB), window)
    assert not gpu.blend_on_device_fits(512 * 512 * 600, 3, 3 * GB, 0)  # a 3 GB output on a 3 GB card


def test_only_how_a_training_runs_may_change_on_resume():
    config = preset_config("tiny")
    assert with_run_settings(config, {"device": "cpu", "amp": "fp32"}).amp == "fp32"
    with pytest.raises(InputError, match="lr cannot change on --resume"):
        with_run_settings(config, {"lr": 0.1})


def test_out_of_memory_is_recognised_in_all_its_wordings():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB)"))
    assert not is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"))


def _train_args(manifest, folder, iterations, *extra):
    return ["train", "--manifest", manifest, "--output", folder, "--preset", "tiny", "--device", "cpu",
            "--iterations", str(iterations), "--progress", "none", *extra]


def test_a_checkpoint_with_a_cuda_random_state_resumes_on_the_cpu(phantom_dataset, tmp_path, capsys):
    """A run started on a GPU (its device generator's state is 16 bytes, a CPU one 5056) resumed on a
    laptop: with the GPU the checkpoint names and no CUDA here, one sentence; with --device cpu it finishes,
    in fp32, and says that the random streams are fresh."""
    folder = str(tmp_path / "run")
    assert main(_train_args(phantom_dataset["train"], folder, 4)) == EXIT_OK
    data = torch.load(os.path.join(folder, runfolder.PREVIOUS_CHECKPOINT_NAME), weights_only=True)
    assert data["iteration"] == 2 and data["rng_generator"].numel() == 5056
    data["rng_generator"] = data["rng_cuda"] = torch.zeros(16, dtype=torch.uint8)  # CUDA's Philox seed + offset
    data["config"]["device"], data["config"]["amp"] = "cuda", True
    for name in os.listdir(folder):
        if name.startswith("checkpoint") or name == runfolder.MODEL_NAME:
            os.remove(os.path.join(folder, name))
    torch.save(data, os.path.join(folder, runfolder.CHECKPOINT_NAME))
    capsys.readouterr()

    assert main(["train", "--resume", folder, "--progress", "none"]) == EXIT_BAD_INPUT
    assert "sees no CUDA GPU; use --device cpu" in capsys.readouterr().err
    assert main(["train", "--resume", folder, "--device", "cpu", "--progress", "json"]) == EXIT_OK
    start = json.loads(capsys.readouterr().out.splitlines()[0])
    assert start["event"] == "start" and start["iteration"] == 2 and start["precision"] == "fp32"
    assert "in fp32" in start["message"] and "another kind of device than cpu" in start["message"]
    meta = read_metadata(os.path.join(folder, runfolder.MODEL_NAME))
    assert meta["training"]["iterations"] == 4 and meta["training"]["device"] == "cpu"


def _tiny_trainer(phantom_dataset, **overrides):
    manifest = load_manifest(phantom_dataset["train"])
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    config = preset_config("tiny", dict({"device": "cpu"}, **overrides))
    return training.Trainer(config, len(manifest.classes), labeled, unlabeled, torch.device("cpu"))


def test_the_batch_thread_draws_the_same_batches_and_checkpoints_what_was_consumed(phantom_dataset):
    plain, threaded = _tiny_trainer(phantom_dataset, prefetch=False), _tiny_trainer(phantom_dataset, prefetch=True)
    assert plain.prefetcher is None and threaded.prefetcher is not None
    for _ in range(3):
        a, b = plain.next_batch(), threaded.next_batch()
        assert all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b))
        # the thread has drawn one batch ahead; the checkpoint holds the state before it
        assert plain.random_state()["rng_numpy"] == threaded.random_state()["rng_numpy"]
    state = plain.random_state()
    expected = plain.next_batch()
    threaded.next_batch()  # one batch the resumed run must draw again
    threaded.load_random_state(dict(state, iteration=3))
    assert all(torch.equal(x, y) for x, y in zip(expected, threaded.next_batch()))
    threaded.prefetcher.close()


@pytest.mark.parametrize("error, settings, advice", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), ["--set", "sequential_backward=false"],
     "--set sequential_backward=true"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), [], "a smaller preset or patch"),
])
def test_out_of_memory_ends_with_the_setting_that_helps_and_keeps_the_checkpoint(
        phantom_dataset, tmp_path, capsys, monkeypatch, error, settings, advice):
    step = training.Trainer.step

    def failing_step(trainer):
        if trainer.iteration == 2:
            raise error
        return step(trainer)

    monkeypatch.setattr(training.Trainer, "step", failing_step)
    folder = str(tmp_path / "run")
    assert main(_train_args(phantom_dataset["train"], folder, 4, *settings)) == EXIT_FAILED
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("semisupseg: error: The cpu ran out of memory at iteration 3")
    assert advice in lines[0] and "are kept" in lines[0]
    assert torch.load(os.path.join(folder, runfolder.CHECKPOINT_NAME), weights_only=True)["iteration"] == 2


def test_out_of_memory_in_one_process_ends_the_others_at_once(phantom_dataset, tmp_path):
    """Under torchrun, process 1 runs out of memory at its third step while process 0 waits for it in a
    collective: process 0 learns it at once (not after the 120 s timeout set here)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
               OMP_NUM_THREADS="1", SEMISUPSEG_DIST_TIMEOUT_S="120")
    folder = str(tmp_path / "run")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               os.path.join(HERE, "out_of_memory_rank.py")] + _train_args(phantom_dataset["train"], folder, 50)
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode != 0
    assert time.monotonic() - started < 90, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("semisupseg: error: ")]
    assert any("ran out of memory at iteration 3" in line for line in errors), proc.stderr
    assert not os.path.exists(os.path.join(folder, runfolder.MODEL_NAME))
