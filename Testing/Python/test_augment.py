"""The crops' augmentation levels (SemiSupSegTraining.augment, PatchSampler): the strong level keeps label and
image aligned, lets no padding into the crop, repeats for a seed and differs per process; the settings, old
and new; and a training with the strong level resumes exactly."""

import os
import shutil
import threading

import helpers  # noqa: F401  (one torch thread)
import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandFlipd

from SemiSupSegTraining import augment
from SemiSupSegTraining import train as training
from SemiSupSegTraining.config import preset_config, TrainConfig
from SemiSupSegTraining.data import Case, PatchSampler
from SemiSupSegTraining.errors import Cancelled, InputError
from SemiSupSegTraining.geometry import Geometry
from SemiSupSegTraining.modelfile import read_metadata


def _case(image, label=None):
    geometry = Geometry(tuple(image.shape[::-1]), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    return Case("c", image.astype(np.float32), label, geometry, "c.nii.gz")


def _spatial_only(sampler):
    """The strong level without its intensity transforms (the flips stay): what remains is geometry."""
    sampler.strong.intensity_and_flips = Compose(
        [RandFlipd(("image", "label"), prob=0.5, spatial_axis=axis, allow_missing_keys=True) for axis in range(3)])
    return sampler


def _labels_volume(shape=(48, 48, 48)):
    label = np.zeros(shape, np.uint8)
    label[8:40, 10:38, 6:42] = 1
    label[14:26, 16:30, 14:28] = 2
    label[30:36, 12:20, 30:38] = 3
    return label


@pytest.fixture
def always_rotated_and_scaled(monkeypatch):
    monkeypatch.setattr(augment, "P_ROTATION", 1.0)
    monkeypatch.setattr(augment, "P_SCALING", 1.0)


def test_strong_spatial_transforms_keep_the_label_on_the_image(always_rotated_and_scaled):
    """A volume whose image equals its label: after rotation, scaling and flips the crop's image (bilinear)
    rounds to its label (nearest neighbour) almost everywhere; a label left unrotated would not."""
    label = _labels_volume()
    sampler = _spatial_only(PatchSampler([_case(label.astype(np.float32), label)], (32, 32, 32),
                                         np.random.default_rng(0), foreground_fraction=1.0, augmentation="strong"))
    mismatch = unrotated_mismatch = total = 0
    for _ in range(10):
        images, labels = sampler.sample(2)
        assert labels.dtype == np.int64 and set(np.unique(labels)) <= {0, 1, 2, 3}  # no label made up
        mismatch += int((np.rint(images[:, 0]) != labels).sum())
        unrotated_mismatch += int((np.rint(images[:, 0]) != labels[:, ::-1, ::-1, ::-1]).sum())
        total += labels.size
    assert mismatch / total < 0.005           # only where bilinear and nearest round apart, at edges
    assert unrotated_mismatch / total > 0.05  # the check can see a misplaced label


def test_strong_crops_hold_no_padding(always_rotated_and_scaled):
    """Every crop rotated by up to 30° about each axis and scaled by up to 1.4 reads only voxels of the window
    cut around it: an image of values ≥ 1 gives no 0 (the resampler's padding) anywhere in the crop."""
    rng = np.random.default_rng(1)
    image = 1.0 + rng.random((64, 64, 64)).astype(np.float32)
    sampler = _spatial_only(PatchSampler([_case(image)], (16, 24, 24), np.random.default_rng(2),
                                         augmentation="strong"))
    for _ in range(20):
        crops, labels = sampler.sample(2)
        assert labels is None and crops.shape == (2, 1, 16, 24, 24)
        assert crops.min() >= 1.0 and crops.max() <= 2.0


def test_strong_windows_grow_with_rotation_and_scaling():
    """The window cut around a crop: the crop itself without rotation or scaling; with them, large enough
    (a 30° turn about z of a 32-voxel square reads 32·(cos 30° + sin 30°) ≈ 43.7 voxels), centred (an even
    excess per axis)."""
    strong = augment.StrongAugmentation((16, 32, 32))
    sizes, drawn, rng = [], 0, np.random.default_rng(0)
    for _ in range(2000):
        affine, window = strong.draw_spatial(rng)
        if affine is None:
            assert window == (16, 32, 32)
            continue
        drawn += 1
        assert all((w - p) % 2 == 0 and w >= p for w, p in zip(window, (16, 32, 32)))
        sizes.append(window)
    # Rotation p 0.2 and scaling p 0.2, drawn independently: 1 − 0.8² = 36 % of the crops are resampled.
    assert 0.32 < drawn / 2000 < 0.40
    assert max(max(w[1:]) for w in sizes) >= 44


def test_strong_is_reproducible_for_a_seed_and_differs_per_process():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(40, 48, 48)).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)

    def crops(seed):
        sampler = PatchSampler([_case(image, label)], (16, 32, 32), np.random.default_rng(seed), 0.5, "strong")
        return [sampler.sample(2) for _ in range(6)]

    first, again = crops(0), crops(0)
    for (a, la), (b, lb) in zip(first, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    other_rank = crops(training.rank_seed(0, 1))  # a torchrun process's own stream
    assert any(not np.array_equal(a, b) for (a, _), (b, _) in zip(first, other_rank))


def test_strong_changes_intensities_at_nnunet_rates():
    """Without rotation or scaling drawn, a crop differs from the cut (flips undone by matching) only through
    the intensity transforms, which nnU-Net applies to most but not all crops: 1 − 0.9·0.8·0.85²·0.75·0.9·0.7
    ≈ 75 % change."""
    image = np.random.default_rng(4).normal(size=(24, 24, 24)).astype(np.float32)
    sampler = PatchSampler([_case(image)], (24, 24, 24), np.random.default_rng(5), augmentation="strong")
    changed = 0
    for _ in range(150):
        crop = sampler.sample(1)[0][0, 0]
        flips = [np.flip(image, axes) if axes else image for axes in
                 ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))]
        if not any(np.allclose(crop, f, atol=1e-5) for f in flips):
            changed += 1
    assert 0.6 < changed / 150 < 0.9


def test_none_cuts_the_crop_as_it_is():
    image = np.arange(8 * 10 * 12, dtype=np.float32).reshape(8, 10, 12)
    sampler = PatchSampler([_case(image)], (4, 6, 6), np.random.default_rng(0), augmentation="none")
    for crop in sampler.sample(5)[0][:, 0]:
        z, y, x = np.unravel_index(int(crop[0, 0, 0]), image.shape)
        np.testing.assert_array_equal(crop, image[z:z + 4, y:y + 6, x:x + 6])


def test_the_unlabeled_crops_level():
    assert augment.unlabeled_level("strong", True) == "strong"
    assert augment.unlabeled_level("strong", False) == "paper"  # only the labeled crops change
    assert augment.unlabeled_level("paper", False) == "paper"
    assert augment.unlabeled_level("none", False) == "none"


def test_settings_old_and_new():
    """``augment`` (older settings files and checkpoints) still reads: true is the paper's level, false none."""
    assert TrainConfig.from_dict({"augment": True}).augmentation == "paper"
    assert TrainConfig.from_dict({"augment": False}).augmentation == "none"
    assert TrainConfig.from_dict({"augment": False, "augmentation": "strong"}).augmentation == "strong"
    assert "augment" not in TrainConfig().to_dict() and TrainConfig().augmentation is None  # the method's own
    assert preset_config("demo", {"augmentation": "strong"}).to_dict()["augmentation"] == "strong"
    with pytest.raises(InputError, match="augmentation is 'heavy'; use one of paper, strong, none"):
        TrainConfig.from_dict({"augmentation": "heavy"})
    with pytest.raises(InputError, match="use one of none, paper, strong"):
        PatchSampler([], (16, 16, 16), np.random.default_rng(0), augmentation="heavy")


def test_each_method_trains_at_its_own_level_unless_told(phantom_dataset):
    """The rule of docs/benchmarks.md: labels alone at strong, every other method (the reference code's
    training included) at the paper's level; the setting overrides it."""
    from SemiSupSegTraining.data import load_training_cases
    from SemiSupSegTraining.manifest import load_manifest

    manifest = load_manifest(phantom_dataset["train"])
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    for method, setting, level in (("supervised", None, "strong"), ("reference", None, "paper"),
                                   ("ours", None, "paper"), ("supervised", "paper", "paper"), ("ours", "none", "none")):
        config = preset_config("tiny", {"device": "cpu", "method": method, "augmentation": setting})
        assert config.augmentation == level  # resolved: the run folder and the model file record the level
        trainer = training.Trainer(config, len(manifest.classes), labeled, unlabeled, torch.device("cpu"))
        assert trainer.labeled.augmentation == level, (method, setting)
        assert (trainer.prefetcher is not None) == (level == "strong")  # the batch thread on a CPU: for strong
        if trainer.prefetcher is not None:
            trainer.prefetcher.close()


# ------------------------------------------------------------------------------------ exact resume

def _strong_config():
    return preset_config("tiny", {"iterations": 6, "device": "cpu", "checkpoint_every": 2, "augmentation": "strong",
                                  "augment_unlabeled": True})


def test_a_strong_training_resumes_exactly(phantom_dataset, tmp_path):
    """Stopped after iteration 3 and resumed: the same weights, bit for bit, as the uninterrupted run (the
    strong level's crops come from the checkpointed generator, drawn on the batch thread)."""
    straight = training.train(phantom_dataset["train"], str(tmp_path / "straight"), _strong_config(),
                              progress="none")
    stopped = str(tmp_path / "stopped")
    stop = threading.Event()

    def on_event(event):
        if event["event"] == "progress" and event["iteration"] == 3:
            stop.set()

    with pytest.raises(Cancelled):
        training.train(phantom_dataset["train"], stopped, _strong_config(), progress="none", callback=on_event,
                       cancel_event=stop)
    resumed = training.train(None, stopped, progress="none", resume=True)
    weights = [torch.load(p, map_location="cpu", weights_only=True) for p in (straight, resumed)]
    for net in ("weights_a", "weights_b"):
        for name, tensor in weights[0][net].items():
            assert torch.equal(tensor, weights[1][net][name]), f"{net}.{name} differs"
    assert read_metadata(resumed)["config"]["augmentation"] == "strong"  # the model file records the level
    assert os.path.exists(os.path.join(stopped, training.CHECKPOINT_NAME))
    shutil.rmtree(stopped)
