"""The strong augmentation on the training's device (a CUDA training's path), run here with a torch CPU device:
the same crops as the host's numpy path from the same generator, drawn by the same draws, returned as tensors
on the device; a training step on them equals the host path's; and on the CUDA stand-in the batch reaches the
step on the device, never copied again."""

import json

import helpers  # noqa: F401  (one torch thread)
import numpy as np
import pytest
import torch

import cuda_stand_in
from cuda_stand_in import StandInDevice
from SemiSupSegTraining import augment
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.data import Case, load_training_cases, PatchSampler
from SemiSupSegTraining.geometry import Geometry
from SemiSupSegTraining.manifest import load_manifest
from SemiSupSegTraining.train import Trainer

CPU = torch.device("cpu")


def _case(image, label=None):
    geometry = Geometry(tuple(image.shape[::-1]), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    return Case("c", image.astype(np.float32), label, geometry, "c.nii.gz")


@pytest.fixture
def often_resampled(monkeypatch):
    """Rotation and scaling in most crops (nnU-Net's p 0.2 each would leave most crops unresampled)."""
    monkeypatch.setattr(augment, "P_ROTATION", 0.6)
    monkeypatch.setattr(augment, "P_SCALING", 0.6)


@pytest.mark.parametrize("labeled, level", [(True, "strong"), (False, "strong"), (True, "paper")])
def test_the_device_path_draws_the_host_paths_crops_with_the_same_draws(often_resampled, labeled, level):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(40, 48, 44)).astype(np.float32)
    label = (image > 0.5).astype(np.uint8) + (image > 1.5).astype(np.uint8) if labeled else None
    host = PatchSampler([_case(image, label)], (16, 32, 32), np.random.default_rng(0), 0.5, level)
    device = PatchSampler([_case(image, label)], (16, 32, 32), np.random.default_rng(0), 0.5, level, device=CPU)
    for _ in range(8):
        host_images, host_labels = host.sample(3)
        images, labels = device.sample(3)
        assert isinstance(images, torch.Tensor) and images.device == CPU and images.dtype == torch.float32
        assert images.shape == host_images.shape == (3, 1, 16, 32, 32) and images.is_contiguous()
        np.testing.assert_array_equal(images.numpy(), host_images)
        if labeled:
            assert isinstance(labels, torch.Tensor) and labels.device == CPU and labels.dtype == torch.int64
            np.testing.assert_array_equal(labels.numpy(), host_labels)
        else:
            assert labels is None and host_labels is None
        assert json.dumps(device.rng.bit_generator.state) == json.dumps(host.rng.bit_generator.state)


def test_strong_augmentation_returns_the_labels_dtype_on_the_device(often_resampled):
    """The label is resampled by nearest neighbour and rounded to its own dtype where it lies (no host copy)."""
    image = np.random.default_rng(1).normal(size=(20, 24, 24)).astype(np.float32)
    label = (image > 0).astype(np.int16) * 300
    strong = augment.StrongAugmentation((8, 12, 12), device=CPU)
    rng = np.random.default_rng(2)
    affine, window = strong.draw_spatial(rng)
    z, y, x = window
    crop, crop_label = strong.apply(image[:z, :y, :x], label[:z, :y, :x], affine, rng)
    assert crop.dtype == torch.float32 and crop.shape == (8, 12, 12)
    assert crop_label.dtype == torch.int16 and set(torch.unique(crop_label).tolist()) <= {0, 300}


def _trainer(phantom_dataset, on_device, **overrides):
    manifest = load_manifest(phantom_dataset["train"])
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    config = preset_config("tiny", dict({"device": "cpu", "augmentation": "strong", "augment_unlabeled": True,
                                         "batch_labeled": 2, "batch_unlabeled": 2}, **overrides))
    return Trainer(config, len(manifest.classes), labeled, unlabeled, CPU, crops_on_device=on_device)


def _two_steps(phantom_dataset, on_device):
    """Two steps (on the batch thread: ``prefetch=auto`` with strong): their loss terms, the weights after
    them and the crop generator's state as a checkpoint records it. One trainer at a time: dropout draws
    from torch's global generator, which each trainer seeds."""
    trainer = _trainer(phantom_dataset, on_device)
    try:
        assert trainer.crops_on_device is on_device and trainer.prefetcher is not None
        terms = [trainer.step() for _ in range(2)]
        return terms, [p.detach().clone() for p in trainer.net_a.parameters()], trainer.random_state()["rng_numpy"]
    finally:
        trainer.prefetcher.close()


def test_training_steps_on_crops_augmented_on_the_device_equal_the_host_paths(phantom_dataset):
    host, device = _two_steps(phantom_dataset, False), _two_steps(phantom_dataset, True)
    for host_terms, device_terms in zip(host[0], device[0]):
        assert set(host_terms) == set(device_terms) and "sup_a" in host_terms
        for name, value in host_terms.items():
            assert torch.equal(value, device_terms[name]), name
    assert all(torch.equal(a, b) for a, b in zip(host[1], device[1]))
    assert host[2] == device[2]


def test_the_device_paths_batch_is_the_host_paths_on_the_device(phantom_dataset):
    host, device = (_trainer(phantom_dataset, on_device, prefetch=False) for on_device in (False, True))
    images, labels = device.next_batch()
    expected_images, expected_labels = host.next_batch()
    assert images.shape == (4, 1, 16, 32, 32) and labels.dtype == torch.int64 and labels.shape == (2, 16, 32, 32)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


@pytest.mark.parametrize("augment_unlabeled", [True, False])
def test_on_the_cuda_stand_in_the_batch_reaches_the_step_on_the_device(phantom_dataset, monkeypatch,
                                                                        augment_unlabeled):
    """``--device cuda`` with strong: the batch thread uploads the windows (and the unlabeled crops at the
    paper's level) through pinned memory and augments them on the device; the step takes the batch as it
    comes (a second copy from the host would raise in strict mode)."""
    cuda = cuda_stand_in.install(monkeypatch)
    manifest = load_manifest(phantom_dataset["train"])
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    config = preset_config("tiny", {"device": "cuda", "augmentation": "strong", "batch_labeled": 2,
                                    "batch_unlabeled": 2, "amp": "fp32", "augment_unlabeled": augment_unlabeled})
    trainer = Trainer(config, len(manifest.classes), labeled, unlabeled, StandInDevice())
    try:
        assert trainer.crops_on_device and trainer.prefetcher is not None
        assert trainer.unlabeled.augmentation == ("strong" if augment_unlabeled else "paper")
        with cuda.strict():
            for _ in range(2):
                terms = trainer.step()
    finally:
        trainer.prefetcher.close()
    assert cuda.pinned and all(name.startswith("semisupseg-batch") for name in cuda.pinned)
    assert all(torch.isfinite(v).all() for v in terms.values())
