"""The training cases in memory and patch sampling: each case read (``fileio``), normalised and brought to
the networks' grid (``geometry``) once, then cropped every step. This module does not import torch unless
the crops are asked for on a torch device (``PatchSampler(device=...)``).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .augment import host_to_device, LEVELS, paper_augment, StrongAugmentation
from .errors import InputError
from .fileio import read_image, read_label
from .geometry import Geometry, normalize, to_canonical
from .manifest import CaseEntry, ClassInfo, Manifest

MAX_FOREGROUND_SAMPLES = 200_000


@dataclass
class Case:
    """A case ready for training or inference: normalised image, class-index label (or None), grid."""

    id: str
    image: np.ndarray                 # float32 (z, y, x), normalised
    label: Optional[np.ndarray]       # uint8 (z, y, x) class indices 0..K-1, or None when unlabeled
    geometry: Geometry
    image_path: str
    label_path: Optional[str] = None


def load_case(entry: CaseEntry, classes: List[ClassInfo], normalization: str,
              ct_window: Tuple[float, float] = (-120.0, 240.0), with_label: bool = True,
              canonical: bool = False, target_spacing: Optional[Sequence[float]] = None) -> Case:
    """Reads, validates and normalises a case. ``canonical=True`` brings image and label through the
    geometry stage (canonical orientation, and ``target_spacing`` when given); ``Case.geometry`` is then
    the grid the arrays lie on, not the file's."""
    volume = read_image(entry.image)
    label = None
    if with_label and entry.label is not None:
        label = read_label(entry.label, classes, volume.geometry)
    image, grid = normalize(volume.array, normalization, ct_window), volume.geometry
    volume.array = None  # the raw intensities are not needed any more
    if canonical:
        image, new_grid = to_canonical(image, grid, target_spacing)
        if label is not None:
            label = to_canonical(label, grid, target_spacing, label=True)[0]
        grid = new_grid
    return Case(entry.id, image, label, grid, entry.image, entry.label)


def load_training_cases(manifest: Manifest, normalization: str, ct_window: Tuple[float, float],
                        canonical: bool = False, target_spacing: Optional[Sequence[float]] = None
                        ) -> Tuple[List[Case], List[Case]]:
    """Reads every case of the manifest (they stay in memory, already resampled: a training step samples
    crops and never resamples): (labeled, unlabeled). ``canonical``/``target_spacing``: see :func:`load_case`."""
    stage = {"canonical": canonical, "target_spacing": target_spacing}
    labeled = [load_case(e, manifest.classes, normalization, ct_window, **stage) for e in manifest.labeled_cases]
    unlabeled = [load_case(e, manifest.classes, normalization, ct_window, with_label=False, **stage)
                 for e in manifest.unlabeled_cases]
    if not labeled:
        raise InputError(f"Manifest {manifest.path} has no labeled case; give at least one case a 'label'.")
    for case in labeled:
        if not case.label.any():
            raise InputError(f"The label {case.label_path} of case '{case.id}' is empty (all background); "
                             f"draw the structure or mark the case as unlabeled.")
    return labeled, unlabeled


# ----------------------------------------------------------------------------------- patch sampling

class PatchSampler:
    """Random crops of a fixed size (z, y, x) from cases held in memory.

    Labeled crops are centred on a voxel of a random foreground class with probability
    ``foreground_fraction`` (classes drawn uniformly, so small structures are seen as often as large ones);
    other crops are uniform. Volumes smaller than a crop are padded (image with its minimum, label with 0).
    ``augmentation``: one of :data:`augment.LEVELS`. ``device``: None, the crops as numpy arrays in host
    memory; a torch device, the crops as tensors on it: the window is cut on the host, the strong level's
    resampling and transforms run on the device (the other levels' crops are copied there), with the same
    draws from ``rng`` in the same order.
    """

    def __init__(self, cases: List[Case], patch_zyx: Tuple[int, int, int], rng: np.random.Generator,
                 foreground_fraction: float = 0.5, augmentation: str = "none", device=None):
        if augmentation not in LEVELS:
            raise InputError(f"augmentation is {augmentation!r}; use one of {', '.join(LEVELS)}.")
        self.patch = tuple(int(p) for p in patch_zyx)
        self.rng = rng
        self.foreground_fraction = foreground_fraction
        self.augmentation = augmentation
        self.device = device
        self.strong = StrongAugmentation(self.patch, device) if augmentation == "strong" else None
        self.images, self.labels, self.class_voxels = [], [], []
        for case in cases:
            image, label = self._pad(case.image, case.label)
            self.images.append(image)
            self.labels.append(label)
            self.class_voxels.append(self._class_voxels(label))

    def _pad(self, image: np.ndarray, label: Optional[np.ndarray]):
        short = [max(0, p - s) for p, s in zip(self.patch, image.shape)]
        if not any(short):
            return image, label
        widths = [(d // 2, d - d // 2) for d in short]
        image = np.pad(image, widths, constant_values=float(image.min()))
        if label is not None:
            label = np.pad(label, widths, constant_values=0)
        return image, label

    def _class_voxels(self, label: Optional[np.ndarray]) -> Dict[int, np.ndarray]:
        if label is None:
            return {}
        voxels = {}
        for k in np.unique(label):
            if k == 0:
                continue
            coords = np.argwhere(label == k).astype(np.int32)
            if len(coords) > MAX_FOREGROUND_SAMPLES:  # bounds memory; the crop centre needs no more
                coords = coords[self.rng.choice(len(coords), MAX_FOREGROUND_SAMPLES, replace=False)]
            voxels[int(k)] = coords
        return voxels

    def _corner(self, index: int, centred_on_foreground: bool) -> Tuple[int, ...]:
        shape = self.images[index].shape
        if centred_on_foreground and self.class_voxels[index]:
            classes = list(self.class_voxels[index])
            coords = self.class_voxels[index][classes[self.rng.integers(len(classes))]]
            centre = coords[self.rng.integers(len(coords))]
            return tuple(int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch, shape))
        return tuple(int(self.rng.integers(0, s - p + 1)) for p, s in zip(self.patch, shape))

    def sample(self, count: int):
        """``count`` crops: images (count, 1, z, y, x) float32 and labels (count, z, y, x) int64 or None; numpy
        arrays, or tensors on ``device`` when one was given."""
        images, labels = [], []
        for _ in range(count):
            i = int(self.rng.integers(len(self.images)))
            fg = self.labels[i] is not None and self.rng.random() < self.foreground_fraction
            corner = self._corner(i, fg)
            if self.strong is not None:
                image, label = self._strong_crop(i, corner)
            else:
                window = tuple(slice(c, c + p) for c, p in zip(corner, self.patch))
                image = self.images[i][window]
                label = self.labels[i][window] if self.labels[i] is not None else None
                if self.augmentation == "paper":
                    image, label = paper_augment(image, label, self.rng)
            images.append(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
            if label is not None:
                labels.append(np.ascontiguousarray(label) if isinstance(label, np.ndarray) else label)
        if self.device is not None:
            return self._on_device(images, labels, count)
        stacked_labels = np.stack(labels).astype(np.int64) if len(labels) == count else None
        return np.stack(images)[:, None], stacked_labels

    def _on_device(self, images: list, labels: list, count: int):
        """:meth:`sample`'s stacks on ``device``: the strong level's crops are there already; the others are
        stacked on the host and copied."""
        import torch

        if self.strong is not None:
            stacked_labels = torch.stack(labels).to(torch.int64) if len(labels) == count else None
            return torch.stack(images)[:, None], stacked_labels
        stacked_labels = (host_to_device(np.stack(labels), self.device, labels[0].dtype).to(torch.int64)
                          if len(labels) == count else None)
        return host_to_device(np.stack(images)[:, None], self.device), stacked_labels

    def _strong_crop(self, index: int, corner: Tuple[int, ...]):
        """The crop at ``corner`` through :class:`StrongAugmentation`: a window large enough for the drawn
        rotation and scaling is cut around it (moved inside the volume where the volume is large enough, so
        that no padding enters the field of view; edge voxels repeated only where the volume is smaller than
        the window), then resampled to the crop."""
        affine, window = self.strong.draw_spatial(self.rng)
        image, label = self.images[index], self.labels[index]
        slices, pads = [], []
        for c, p, w, s in zip(corner, self.patch, window, image.shape):
            start = c - (w - p) // 2
            if w <= s:
                start = min(max(start, 0), s - w)
            slices.append(slice(max(start, 0), min(start + w, s)))
            pads.append((max(0, -start), max(0, start + w - s)))
        image = image[tuple(slices)]
        label = label[tuple(slices)] if label is not None else None
        if any(a or b for a, b in pads):
            image = np.pad(image, pads, mode="edge")
            label = np.pad(label, pads, mode="edge") if label is not None else None
        return self.strong.apply(image, label, affine, self.rng)
