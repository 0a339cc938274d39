"""The training crops' augmentation levels (``TrainConfig.augmentation``).

* ``none``: the crop as cut.
* ``paper``: the paper's code's recipe: a random flip per axis and, for a crop square in the axial plane, a
  random number of 90° turns in it (``PatchSampler``; kept bit for bit as it always was).
* ``strong``: nnU-Net v2's training augmentation (``nnUNetTrainer.get_training_transforms``), its families
  and probabilities: rotation up to ±30° about every axis (p 0.2) and scaling by 0.7-1.4 (p 0.2) in one
  resampling of image and label together (label by nearest neighbour); no elastic deformation (off in
  nnU-Net v2 too); Gaussian noise (p 0.1), Gaussian blur (p 0.2), brightness ×0.75-1.25 (p 0.15), contrast
  (p 0.15), simulated low resolution (p 0.25), inverted gamma (p 0.1), gamma (p 0.3), then a flip per axis.
  Built from MONAI's dictionary transforms (a dependency already, so nothing new to install in Slicer).

Every random number comes from the training's crop generator (spatial parameters drawn from it, MONAI's
transforms seeded from it per crop), so a resumed training draws the same crops and every process of a
distributed training (its own generator) draws its own. This module does not hold the crop generator.

Where it runs: on the host by default (numpy in, numpy out); given a torch ``device`` (a CUDA training), the
strong level's resampling, intensity transforms and flips run on that device and the crops stay there as
tensors. The same generator draws in the same order either way (MONAI's noise is drawn with numpy on the
host), so a GPU training draws the augmentation of a CPU training of the same seed.
"""

from typing import Optional, Tuple

import numpy as np

LEVELS = ("none", "paper", "strong")

# nnU-Net v2's spatial family (nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size and
# get_training_transforms, 3D): the probability of a rotation and of a scaling, their ranges.
P_ROTATION, MAX_ANGLE = 0.2, np.pi / 6
P_SCALING, SCALING = 0.2, (0.7, 1.4)


def unlabeled_level(level: str, augment_unlabeled: bool) -> str:
    """The level the unlabeled crops get: ``level`` itself, or (``augment_unlabeled`` false) at most the
    paper's flips and turns, so that only the labeled crops change from the paper's recipe."""
    return level if augment_unlabeled or level != "strong" else "paper"


def host_to_device(array: np.ndarray, device, dtype=np.float32):
    """``array`` as a torch tensor of ``dtype`` on ``device``. To a CUDA device through pinned memory, so that the
    copy is queued on the stream behind the work ahead of it instead of making this thread wait for that work."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def paper_augment(image: np.ndarray, label: Optional[np.ndarray], rng: np.random.Generator):
    """The paper's code's recipe on a (z, y, x) crop: a flip per axis with p 0.5, then 0-3 turns of 90° in the
    axial plane when the crop is square there (turns keep its shape)."""
    for axis in range(3):
        if rng.random() < 0.5:
            image = np.flip(image, axis)
            label = np.flip(label, axis) if label is not None else None
    if image.shape[1] == image.shape[2]:
        turns = int(rng.integers(4))
        image = np.rot90(image, turns, axes=(1, 2))
        label = np.rot90(label, turns, axes=(1, 2)) if label is not None else None
    return image, label


class StrongAugmentation:
    """nnU-Net v2's augmentation of a crop of ``patch`` voxels (z, y, x). :meth:`draw_spatial` picks the
    rotation and scaling and says how large a window around the crop they read; :meth:`apply` maps that
    window to the crop in one resampling, then applies the intensity transforms and the flips. ``device``: None
    (the host, numpy crops) or the torch device that resamples and returns the crops as tensors."""

    def __init__(self, patch: Tuple[int, int, int], device=None):
        # MONAI (and torch) load here, not with the module: the other levels keep data.py free of torch.
        from monai.transforms import (
            Compose,
            RandAdjustContrastd,
            RandFlipd,
            RandGaussianNoised,
            RandGaussianSmoothd,
            RandScaleIntensityd,
            RandScaleIntensityFixedMeand,
            RandSimulateLowResolutiond,
        )

        self.patch = tuple(int(p) for p in patch)
        self.device = device
        both = ("image", "label")
        self.intensity_and_flips = Compose([
            RandGaussianNoised("image", prob=0.1, mean=0.0, std=0.1),
            RandGaussianSmoothd("image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.2),
            RandScaleIntensityd("image", factors=0.25, prob=0.15),                     # brightness ×0.75-1.25
            RandScaleIntensityFixedMeand("image", factors=0.25, preserve_range=True, prob=0.15),  # contrast
            RandSimulateLowResolutiond("image", zoom_range=(0.5, 1.0), prob=0.25),
            RandAdjustContrastd("image", gamma=(0.7, 1.5), invert_image=True, retain_stats=True, prob=0.1),
            RandAdjustContrastd("image", gamma=(0.7, 1.5), retain_stats=True, prob=0.3),
            *(RandFlipd(both, prob=0.5, spatial_axis=axis, allow_missing_keys=True) for axis in range(3)),
        ])

    def draw_spatial(self, rng: np.random.Generator) -> Tuple[Optional[np.ndarray], Tuple[int, int, int]]:
        """(affine from crop to window voxel offsets or None for neither rotation nor scaling, window size
        z, y, x). The window holds every voxel the rotated, scaled crop reads (plus one for interpolation),
        and exceeds the crop by an even count per axis so that both share their centre."""
        from monai.transforms.utils import create_rotate, create_scale

        rotate = rng.random() < P_ROTATION
        scale = rng.random() < P_SCALING
        angles = rng.uniform(-MAX_ANGLE, MAX_ANGLE, 3) if rotate else None
        factor = float(rng.uniform(*SCALING)) if scale else None
        if not (rotate or scale):
            return None, self.patch
        affine = np.eye(4)
        if rotate:
            affine = affine @ create_rotate(3, tuple(float(a) for a in angles))
        if scale:
            affine = affine @ create_scale(3, (factor,) * 3)
        half = (np.array(self.patch) - 1) / 2.0
        reach = np.abs(affine[:3, :3]) @ half
        window = []
        for size, extent in zip(self.patch, reach):
            needed = max(size, int(np.ceil(2 * extent)) + 2)
            window.append(needed + (needed - size) % 2)
        return affine, tuple(window)

    def apply(self, image: np.ndarray, label: Optional[np.ndarray], affine: Optional[np.ndarray],
              rng: np.random.Generator):
        """``image``/``label``: the window (z, y, x) of :meth:`draw_spatial` (the crop itself when ``affine`` is
        None); returns the augmented crop, image float32 and label of the label's dtype: numpy arrays, or
        tensors on ``device`` when one was given."""
        import torch
        from monai.transforms import Affined

        data = {"image": self._tensor(image)[None]}
        if label is not None:
            data["label"] = self._tensor(label)[None]
        if affine is not None:
            keys = tuple(data)
            # The window holds every voxel read: zeros never enter (a test checks it), they would show a bug.
            data = Affined(keys, affine=affine, spatial_size=self.patch, mode=("bilinear", "nearest")[:len(keys)],
                           padding_mode="zeros")(data)
        self.intensity_and_flips.set_random_state(seed=int(rng.integers(2 ** 31)))
        data = self.intensity_and_flips(data)
        if self.device is not None:
            return self._device_tensors(data, label)
        out_image = np.asarray(torch.as_tensor(data["image"])[0], dtype=np.float32)
        out_label = None
        if label is not None:
            out_label = np.rint(np.asarray(torch.as_tensor(data["label"])[0])).astype(label.dtype)
        return out_image, out_label

    def _tensor(self, array: np.ndarray):
        import torch

        if self.device is None:
            return torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))
        return host_to_device(array, self.device)

    @staticmethod
    def _device_tensors(data, label: Optional[np.ndarray]):
        """The transforms' output as plain tensors where it lies: what :meth:`apply` returns on the host, as
        tensors (the label rounded to the label's dtype there, with no copy to the host)."""
        import torch

        out_image = data["image"].as_subclass(torch.Tensor)[0].to(torch.float32)
        out_label = None
        if label is not None:
            label_dtype = torch.from_numpy(np.zeros(0, label.dtype)).dtype
            out_label = torch.round(data["label"].as_subclass(torch.Tensor)[0]).to(label_dtype)
        return out_image, out_label
