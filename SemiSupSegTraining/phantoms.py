"""Synthetic left-atrium-like cases for the demo, tests and benchmarks.

Each phantom is an MRI-like volume: a bright ellipsoidal chamber with thin tubular protrusions (the
pulmonary veins), set in a body with smooth tissue texture, plus unlabeled bright distractors (a
descending-aorta-like tube and a ventricle-like blob) so that a network must learn shape, not only
brightness; then a smooth multiplicative bias field, blur and noise. With ``num_classes=3`` the
aorta becomes class 2. All randomness comes from the seed.
"""

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .fileio import write_image_atomic, write_label_image
from .geometry import Geometry
from .geometry import canonical_axes
from .manifest import CaseEntry, ClassInfo, Manifest, write_manifest

CLASS_NAMES = ["left atrium", "aorta"]


def _segment_distance(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance of each point (N, 3) to the segment start→end."""
    direction = end - start
    t = np.clip(((points - start) @ direction) / max(float(direction @ direction), 1e-9), 0.0, 1.0)
    return np.linalg.norm(points - (start + t[:, None] * direction), axis=1)


def make_phantom(seed: int, shape_zyx: Tuple[int, int, int] = (48, 64, 64), num_classes: int = 2,
                 noise: float = 0.1) -> Tuple[np.ndarray, np.ndarray]:
    """(image float32, label uint8 class indices) of shape ``shape_zyx``."""
    rng = np.random.default_rng(seed)
    shape = np.array(shape_zyx)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    points = grid.reshape(-1, 3)
    scale = shape.min() / 48.0

    # Body and tissue texture.
    body = (((grid - shape / 2) / (shape / 2 * np.array([1.3, 0.95, 0.95]))) ** 2).sum(-1) < 1.0
    texture = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 3.0)
    texture /= texture.std() + 1e-6
    image = np.where(body, 0.35 + 0.06 * texture, 0.05).astype(np.float32)

    # The chamber: an ellipsoid with random radii and rotation near the centre.
    centre = shape / 2 + rng.uniform(-0.12, 0.12, 3) * shape
    radii = rng.uniform([7.0, 9.0, 9.0], [10.0, 14.0, 14.0]) * scale
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    local = (points - centre) @ rotation
    atrium = ((local / radii) ** 2).sum(-1) < 1.0

    # Veins: 2-4 thin tubes leaving the chamber outwards.
    for _ in range(rng.integers(2, 5)):
        direction = rng.normal(size=3)
        direction[0] *= 0.5
        direction /= np.linalg.norm(direction)
        start = centre + direction * radii.min() * 0.6
        end = centre + direction * (radii.max() + rng.uniform(6, 11) * scale)
        atrium |= _segment_distance(points, start, end) < rng.uniform(1.3, 2.2) * scale
    atrium = atrium.reshape(shape)

    # Distractors: an aorta-like tube along z and a ventricle-like blob below the chamber.
    aorta_xy = centre[1:] + rng.choice([-1, 1], 2) * rng.uniform(13, 18, 2) * scale
    aorta = np.linalg.norm(grid[..., 1:] - aorta_xy, axis=-1) < rng.uniform(3.0, 4.0) * scale
    aorta &= body & ~ndimage.binary_dilation(atrium, iterations=2)
    ventricle_centre = centre + np.array([-radii[0] - 6 * scale, rng.uniform(-6, 6), rng.uniform(-6, 6)])
    ventricle = (((grid - ventricle_centre) / (np.array([5.0, 9.0, 9.0]) * scale)) ** 2).sum(-1) < 1.0
    ventricle &= body & ~ndimage.binary_dilation(atrium | aorta, iterations=2)

    image[atrium] = 1.0
    image[aorta] = rng.uniform(0.85, 1.0)
    image[ventricle] = rng.uniform(0.7, 0.85)

    # Scanner effects: bias field, partial volume blur, noise.
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    a = rng.uniform(-0.25, 0.25, 6)
    bias = np.exp(a[0] * z + a[1] * y + a[2] * x + a[3] * x * y + a[4] * z * z + a[5] * y * y)
    image = ndimage.gaussian_filter(image * bias, 0.7)
    image = image + rng.normal(0, noise, image.shape).astype(np.float32)
    image = (image * 400.0 + 100.0).astype(np.float32)  # an MRI-like intensity range

    label = atrium.astype(np.uint8)
    if num_classes >= 3:
        label[aorta] = 2
    return image, label


def phantom_grid(spacing: Sequence[float] = (1.0, 1.0, 1.0), orientation: str = "LPS",
                 extent_mm: Sequence[float] = (64.0, 64.0, 48.0), centre: Sequence[float] = (0.0, 0.0, 0.0),
                 direction: Optional[Sequence[float]] = None) -> Geometry:
    """A voxel grid covering the box ``extent_mm`` (x, y, z in LPS) around ``centre``: ``spacing`` is given
    per physical axis (x, y, z), ``orientation`` is an ITK code ("LPS", "RAS", "PIR"...) or ``direction``
    any direction matrix (an oblique one is sized by its nearest axes)."""
    if direction is None:
        direction = sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(orientation)
    axes = canonical_axes(direction)  # physical axis c lies along index axis axes[c][0]
    size, index_spacing = [0] * 3, [0.0] * 3
    for c, (i, _) in enumerate(axes):
        index_spacing[i] = float(spacing[c])
        size[i] = max(2, int(round(extent_mm[c] / spacing[c])))
    matrix = np.asarray(direction, float).reshape(3, 3)
    origin = np.asarray(centre, float) - matrix @ ((np.asarray(size) - 1) / 2.0 * np.asarray(index_spacing))
    return Geometry(tuple(size), tuple(index_spacing), tuple(float(o) for o in origin),
                    tuple(float(d) for d in direction))


def _soft(signed_distance: np.ndarray, width: float = 0.6) -> np.ndarray:
    """0..1 partial-volume weight of an edge (inside where the signed distance in mm is negative)."""
    return 1.0 / (1.0 + np.exp(np.clip(signed_distance / width, -50, 50)))


def physical_phantom(grid: Geometry, seed: int, extent_mm: Sequence[float] = (64.0, 64.0, 48.0),
                     centre: Sequence[float] = (0.0, 0.0, 0.0), noise: float = 0.1
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """One left-atrium-like phantom defined in physical space (mm), sampled on any ``grid``: (image float32,
    label uint8 (z, y, x)). The same seed gives the same anatomy on every grid — other orientations,
    spacings, oblique directions — so a segmentation on each grid can be scored against its own label.
    The chamber, veins and distractors of :func:`make_phantom`, with soft (partial-volume) edges, a smooth
    texture and bias field, and noise per voxel."""
    rng = np.random.default_rng(seed)
    half = np.asarray(extent_mm, float) / 2.0
    p = grid.points().reshape(-1, 3) - np.asarray(centre, float)

    body = ((p / (half * np.array([0.95, 0.95, 1.3]))) ** 2).sum(-1) < 1.0
    waves = rng.normal(size=(6, 3)) * (2 * np.pi / 14.0)
    phases = rng.uniform(0, 2 * np.pi, 6)
    texture = np.cos(p @ waves.T + phases).sum(-1) / np.sqrt(3.0)
    image = np.where(body, 0.35 + 0.06 * texture, 0.05)

    chamber_centre = rng.uniform(-0.12, 0.12, 3) * 2 * half
    radii = rng.uniform([9.0, 9.0, 7.0], [14.0, 14.0, 10.0])
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    local = (p - chamber_centre) @ rotation
    atrium = (np.sqrt(((local / radii) ** 2).sum(-1)) - 1.0) * radii.min()  # signed distance, roughly
    for _ in range(rng.integers(2, 5)):
        direction = rng.normal(size=3)
        direction[2] *= 0.5
        direction /= np.linalg.norm(direction)
        start = chamber_centre + direction * radii.min() * 0.6
        end = chamber_centre + direction * (radii.max() + rng.uniform(6, 11))
        atrium = np.minimum(atrium, _segment_distance(p, start, end) - rng.uniform(2.0, 3.0))
    aorta_xy = chamber_centre[:2] + rng.choice([-1, 1], 2) * rng.uniform(15, 19, 2)
    aorta = np.linalg.norm(p[:, :2] - aorta_xy, axis=-1) - rng.uniform(3.0, 4.0)
    aorta = np.where(body & (atrium > 2.0), aorta, 10.0)
    ventricle_centre = chamber_centre + np.array([rng.uniform(-6, 6), rng.uniform(-6, 6), -radii[2] - 6])
    ventricle = (np.sqrt((((p - ventricle_centre) / np.array([9.0, 9.0, 5.0])) ** 2).sum(-1)) - 1.0) * 5.0
    ventricle = np.where(body & (atrium > 2.0) & (aorta > 2.0), ventricle, 10.0)

    for distance, level in ((ventricle, rng.uniform(0.7, 0.85)), (aorta, rng.uniform(0.85, 1.0)), (atrium, 1.0)):
        weight = _soft(distance)
        image = image * (1 - weight) + level * weight
    a = rng.uniform(-0.25, 0.25, 6)
    q = p / half
    bias = np.exp(a[0] * q[:, 2] + a[1] * q[:, 1] + a[2] * q[:, 0] + a[3] * q[:, 0] * q[:, 1]
                  + a[4] * q[:, 2] ** 2 + a[5] * q[:, 1] ** 2)
    shape = tuple(grid.size[::-1])
    image = (image * bias).reshape(shape)
    image = image + np.random.default_rng(seed + 7919).normal(0, noise, shape)
    return (image * 400.0 + 100.0).astype(np.float32), (atrium < 0).reshape(shape).astype(np.uint8)


def phantom_classes(num_classes: int = 2) -> List[ClassInfo]:
    return [ClassInfo(0, "background")] + [ClassInfo(i + 1, CLASS_NAMES[i]) for i in range(num_classes - 1)]


def write_phantom_dataset(folder: str, labeled: int = 2, unlabeled: int = 6, test: int = 4, seed: int = 0,
                          shape_zyx: Tuple[int, int, int] = (48, 64, 64),
                          spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0), num_classes: int = 2,
                          extension: str = ".nii.gz") -> Tuple[str, Optional[str]]:
    """Writes phantom cases and two manifests: ``train.json`` (labeled + unlabeled) and ``test.json``
    (held-out cases with labels, for evaluation). Returns their paths (test is None when ``test`` is 0)."""
    geometry = Geometry(tuple(int(s) for s in shape_zyx[::-1]), tuple(float(s) for s in spacing),
                        (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return write_case_dataset(folder, lambda i: (*make_phantom(seed * 1000 + i, shape_zyx, num_classes), geometry),
                              phantom_classes(num_classes), "phantom", labeled, unlabeled, test, extension)


def write_case_dataset(folder: str, make_case: Callable[[int], Tuple[np.ndarray, np.ndarray, Geometry]],
                       classes: List[ClassInfo], prefix: str, labeled: int, unlabeled: int, test: int,
                       extension: str = ".nii.gz", extra: Optional[dict] = None) -> Tuple[str, Optional[str]]:
    """Writes case ``i`` = ``make_case(i)`` (image, label, grid) for ``i`` in 0 … labeled + unlabeled + test
    as ``images/<prefix>NNN`` and ``labels/<prefix>NNN`` and two manifests: ``train.json`` (the first
    ``labeled`` cases labeled; the unlabeled ones keep their label files on disk, hidden from training, for
    later evaluation) and ``test.json`` (held-out cases with labels). Returns their paths (test is None when
    ``test`` is 0)."""
    entries: Dict[str, List[CaseEntry]] = {"train": [], "test": []}
    for i in range(labeled + unlabeled + test):
        image, label, grid = make_case(i)
        split = "train" if i < labeled + unlabeled else "test"
        case_id = f"{prefix}{i:03d}"
        image_path = os.path.join(folder, "images", case_id + extension)
        label_path = os.path.join(folder, "labels", case_id + extension)
        write_image_atomic(grid.to_image(image), image_path)
        write_label_image(label, classes, grid, label_path)
        entries[split].append(CaseEntry(case_id, image_path, label_path, labeled=split == "test" or i < labeled))
    train = write_manifest(Manifest(classes, entries["train"], "MRI", extra=dict(extra or {})),
                           os.path.join(folder, "train.json"))
    test_path = None
    if entries["test"]:
        test_path = write_manifest(Manifest(classes, entries["test"], "MRI", extra=dict(extra or {})),
                                   os.path.join(folder, "test.json"))
    return train, test_path
