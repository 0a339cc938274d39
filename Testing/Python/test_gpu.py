"""On a CUDA GPU (``pytest -m gpu``; skipped without one, Testing/Benchmarks/gpu_check.py runs them): the
precision the card gets, a training step without host syncs, the strong augmentation on the GPU, resume of
a GPU checkpoint on the CPU, the joint-backward decision, and segmentation agreeing with the CPU's with the
output blended on the GPU and in host memory."""

import json
import os
import warnings

import helpers  # noqa: F401
import numpy as np
import pytest
import torch

from SemiSupSegTraining import runfolder
from SemiSupSegTraining.cli import main
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.data import load_training_cases
from SemiSupSegTraining.fileio import read_image
from SemiSupSegTraining.devices import autocast_dtype, cuda_capability, precision_for
from SemiSupSegTraining.errors import EXIT_OK
from SemiSupSegTraining.infer import Segmenter
from SemiSupSegTraining.manifest import load_manifest
from SemiSupSegTraining.train import Trainer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda:0")


def _trainer(phantom_dataset, **overrides):
    manifest = load_manifest(phantom_dataset["train"])
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    config = preset_config("tiny", dict({"device": "cuda:0", "batch_labeled": 2, "batch_unlabeled": 2}, **overrides))
    return Trainer(config, len(manifest.classes), labeled, unlabeled, CUDA)


def test_the_card_gets_the_precision_of_its_compute_capability():
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[
        precision_for("cuda", cuda_capability(CUDA), training=True)]
    assert autocast_dtype(CUDA, "auto", training=True) == expected
    assert torch.backends.cudnn.is_available()


@pytest.mark.parametrize("amp", ["auto", "fp32"])
def test_a_training_step_does_not_wait_for_the_gpu(phantom_dataset, amp):
    """After the first steps (cuDNN's autotuner, the backward decision), a step queues its work and returns
    without a host sync (torch's sync debug mode warns on each). fp16's gradient scaler syncs by design."""
    trainer = _trainer(phantom_dataset, amp=amp)
    if trainer.scaler is not None:
        pytest.skip("fp16 on this card: the gradient scaler syncs once per step")
    for _ in range(2):
        trainer.step()
    torch.cuda.synchronize()
    # Outside the recording: the mode's own notice ("... is a prototype feature ...", once per process).
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                terms = trainer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()
             and "prototype feature" not in str(w.message)]
    assert not syncs, syncs[:3]
    assert all(torch.isfinite(v).item() for v in terms.values())
    assert trainer.prefetcher is not None and trainer.sequential_backward is False  # a tiny step fits any card


def test_a_strong_training_augments_its_crops_on_the_gpu(phantom_dataset):
    """The strong level on CUDA: the batch thread resamples and augments the crops on the GPU and hands the
    step a batch that is there already (Testing/Benchmarks/gpu_check.py's augmentation stage compares its
    crops with the CPU's and times both)."""
    trainer = _trainer(phantom_dataset, augmentation="strong")
    try:
        assert trainer.crops_on_device
        images, labels = trainer.next_batch()
        assert images.device.type == labels.device.type == "cuda" and labels.dtype == torch.int64
        assert images.shape == (4, 1, 16, 32, 32) and labels.shape == (2, 16, 32, 32)
        for _ in range(2):
            terms = trainer.step()
        assert all(torch.isfinite(v).item() for v in terms.values())
    finally:
        trainer.prefetcher.close()


def test_sequential_and_joint_backward_give_close_gradients_on_the_gpu(phantom_dataset):
    """The identity the CPU test checks exactly, within cuDNN's nondeterminism, in fp32."""
    grads = []
    for sequential in (True, False):
        trainer = _trainer(phantom_dataset, amp="fp32", sequential_backward=sequential, dropout=0.0,
                           threshold_start=0.5, threshold_end=0.5, lambda_u_rampup=0.0,
                           lambda_c_schedule="printed")
        trainer.step()
        grads.append(torch.cat([p.grad.flatten() for p in trainer.net_a.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5)


def test_a_gpu_checkpoint_resumes_on_the_cpu(phantom_dataset, tmp_path, capsys):
    folder = str(tmp_path / "run")
    args = ["train", "--manifest", phantom_dataset["train"], "--output", folder, "--preset", "tiny",
            "--device", "cuda", "--iterations", "4", "--progress", "none"]
    assert main(args) == EXIT_OK
    data = torch.load(os.path.join(folder, runfolder.PREVIOUS_CHECKPOINT_NAME), weights_only=True)
    assert data["rng_generator"].numel() == 16 and "rng_cuda" in data
    for name in os.listdir(folder):
        if name.startswith("checkpoint.pt") or name == runfolder.MODEL_NAME:
            os.remove(os.path.join(folder, name))
    os.replace(os.path.join(folder, runfolder.PREVIOUS_CHECKPOINT_NAME),
               os.path.join(folder, runfolder.CHECKPOINT_NAME))
    capsys.readouterr()
    assert main(["train", "--resume", folder, "--device", "cpu", "--progress", "json"]) == EXIT_OK
    start = json.loads(capsys.readouterr().out.splitlines()[0])
    assert start["iteration"] == 2 and "another kind of device than cpu" in start["message"]


def test_segmentation_on_the_gpu_agrees_with_the_cpu(trained_model, phantom_dataset):
    case = load_manifest(phantom_dataset["test"]).labeled_cases[0]
    volume = read_image(case.image)
    cpu = Segmenter(trained_model["model"], "cpu", amp="fp32").segment(volume)
    for blend in (True, False):  # on the GPU, and in host memory with MONAI's buffer_steps
        gpu = Segmenter(trained_model["model"], "cuda", amp="fp32", blend_on_device=blend).segment(volume)
        assert np.abs(gpu.probabilities - cpu.probabilities).max() < 1e-3
        assert (gpu.labels == cpu.labels).mean() > 0.999
