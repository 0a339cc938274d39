"""Synthetic "patients" whose variety two labeled cases cannot cover: the benchmark with headroom.

The phantoms of ``SemiSupSegTraining.phantoms`` differ little from case to case, so two labeled cases
already show nearly everything (supervised training gains about 1 Dice point from 20 labeled cases). Here
every case draws its anatomy and its acquisition from wide ranges, as a clinic's scans differ:

Anatomy (shape and topology differ between cases):

* the chamber: an ellipsoid with random radii, rotation and a smooth random deformation of its surface,
  its size varying by a factor of about 2.3 (linear) between the smallest and the largest case;
* 0 to 5 veins leaving it in random directions, straight or bent, of random length and width;
* a neighbouring structure of the chamber's intensity (±10 %), a blob pressed against the chamber with a
  wall of 1-2 voxels or touching it, on a random side: a network that learned "bright = chamber" from
  two cases segments it too; with ``num_classes=3`` it is class 2 (the multi-class variant);
* a bright tube (an aorta-like distractor) and tissue texture.

Acquisition (differs between cases):

* contrast: chamber / tissue ratio from 1.4 to 3, a random gamma;
* a strong multiplicative bias field (exp of a random quadratic, up to about ±45 %);
* resolution: one random axis blurred and sampled 1-3× coarser (slice thickness), then brought back
  to the grid; plus a partial-volume blur of σ 0.5-1.3 voxels;
* noise: Gaussian or Rician, σ 3-18 % of the chamber's intensity;
* artefacts, each with probability 1/3: a ghost (a shifted, faint copy of the image along one axis),
  a band of stripes, an intensity drop-out slab.

All randomness comes from the case's seed. Volumes are 48×48×48 voxels of 1 mm: cheap enough that a
training of this benchmark takes minutes on one CPU core.

Usage::

    from headroom_phantoms import write_headroom_dataset
    train_json, test_json = write_headroom_dataset("data/headroom", labeled=2, unlabeled=18, test=12)
"""

import math
import os
import sys
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO not in sys.path:  # run from a checkout without installing the engine
    sys.path.insert(0, _REPO)

from SemiSupSegTraining.geometry import Geometry# noqa: E402
from SemiSupSegTraining.manifest import ClassInfo  # noqa: E402
from SemiSupSegTraining.phantoms import write_case_dataset  # noqa: E402

SHAPE_ZYX = (48, 48, 48)
CLASS_NAMES = ["chamber", "neighbour"]


def _segment_distance(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance of each point (N, 3) to the segment start→end."""
    direction = end - start
    t = np.clip(((points - start) @ direction) / max(float(direction @ direction), 1e-9), 0.0, 1.0)
    return np.linalg.norm(points - (start + t[:, None] * direction), axis=1)


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma)
    return field / (np.abs(field).max() + 1e-6)


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def make_anatomy(rng: np.random.Generator, shape: np.ndarray):
    """Boolean masks (chamber with veins, neighbour, distractor tube, body) of ``shape`` (z, y, x)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    points = grid.reshape(-1, 3)
    body = (((grid - shape / 2) / (shape / 2 * 0.97)) ** 2).sum(-1) < 1.0

    size = rng.uniform(0.85, 1.8)                        # the case's scale: 2.1× between extremes
    radii = np.array([5.0, 6.5, 6.5]) * size * rng.uniform(0.8, 1.2, 3)
    centre = shape / 2 + rng.uniform(-0.12, 0.12, 3) * shape
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    local = (points - centre) @ rotation
    radius = np.sqrt(((local / radii) ** 2).sum(-1))
    bumps = _smooth_noise(rng, tuple(shape), 4.0).reshape(-1)  # a lumpy, non-ellipsoidal surface
    chamber = radius < 1.0 + 0.25 * bumps

    for _ in range(int(rng.integers(0, 6))):             # veins: topology differs between cases
        direction = _unit(rng)
        start = centre + direction * radii.min() * 0.5
        middle = centre + direction * (radii.max() + rng.uniform(2, 6))
        bend = _unit(rng) * rng.uniform(0, 4)
        end = middle + direction * rng.uniform(2, 7) + bend
        width = rng.uniform(1.0, 2.3)
        chamber |= _segment_distance(points, start, middle) < width
        chamber |= _segment_distance(points, middle, end) < width * 0.85
    chamber = chamber.reshape(tuple(shape)) & body

    # The neighbour: a blob of the chamber's intensity pressed against it, with a wall of 0-2 voxels.
    side = _unit(rng)
    n_radii = np.array([4.5, 6.0, 6.0]) * rng.uniform(0.6, 1.4) * rng.uniform(0.8, 1.2, 3)
    n_rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    distance_to_chamber = ndimage.distance_transform_edt(~chamber)
    along = np.clip(((grid - centre) @ side), 0, None)
    surface = centre + side * (along[chamber].max() if chamber.any() else radii.max())
    wall = int(rng.integers(0, 3))
    n_centre = surface + side * (n_radii.min() + wall + 0.5)
    n_local = (points - n_centre) @ n_rotation
    neighbour = (((n_local / n_radii) ** 2).sum(-1) < 1.0 + 0.3 * _smooth_noise(rng, tuple(shape), 4.0).reshape(-1))
    neighbour = neighbour.reshape(tuple(shape)) & body & (distance_to_chamber > wall)

    # A bright tube along a random axis, away from both.
    axis = int(rng.integers(0, 3))
    others = [a for a in range(3) if a != axis]
    offset = centre[others] + rng.choice([-1, 1], 2) * rng.uniform(12, 17, 2)
    tube = np.linalg.norm(grid[..., others] - offset, axis=-1) < rng.uniform(2.0, 3.5)
    tube &= body & ~ndimage.binary_dilation(chamber | neighbour, iterations=2)
    return chamber, neighbour, tube, body


def acquire(rng: np.random.Generator, chamber, neighbour, tube, body) -> np.ndarray:
    """The scan of an anatomy: contrast, texture, bias, resolution, blur, artefacts, noise."""
    shape = chamber.shape
    tissue = rng.uniform(0.25, 0.5)
    bright = tissue * rng.uniform(1.4, 3.0)
    texture = _smooth_noise(rng, shape, 2.0)
    image = np.where(body, tissue * (1.0 + 0.25 * texture), 0.03 * tissue).astype(np.float32)
    image[chamber] = bright * (1.0 + 0.05 * texture[chamber])
    image[neighbour] = bright * rng.uniform(0.55, 0.7) * (1.0 + 0.05 * texture[neighbour])
    image[tube] = bright * rng.uniform(0.8, 1.15)
    image = np.clip(image / image.max(), 0, None) ** rng.uniform(0.6, 1.6)

    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    a = rng.uniform(-0.35, 0.35, 7)
    image *= np.exp(a[0] * z + a[1] * y + a[2] * x + a[3] * x * y + a[4] * z * z + a[5] * y * y + a[6] * x * z)

    # Resolution: a thick-slice axis (blur and sample coarser, then back), then partial-volume blur.
    axis, factor = int(rng.integers(0, 3)), rng.uniform(1.0, 3.0)
    sigmas = [0.0, 0.0, 0.0]
    sigmas[axis] = 0.425 * factor
    image = ndimage.gaussian_filter(image, sigmas)
    if factor > 1.2:
        zoom = [1.0, 1.0, 1.0]
        zoom[axis] = 1.0 / factor
        coarse = ndimage.zoom(image, zoom, order=1)
        image = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=1)[
            :shape[0], :shape[1], :shape[2]]
    image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.3))

    peak = float(np.percentile(image[chamber], 50)) if chamber.any() else float(image.max())
    if rng.random() < 0.25:  # ghost: a faint shifted copy along one axis
        image = image + rng.uniform(0.1, 0.3) * np.roll(image, int(rng.integers(8, 20)), axis=int(rng.integers(0, 3)))
    if rng.random() < 0.25:  # stripes across a band
        along = int(rng.integers(0, 3))
        coord = np.arange(shape[along]).reshape([-1 if i == along else 1 for i in range(3)])
        image = image * (1.0 + 0.12 * np.sin(coord * rng.uniform(0.8, 2.0)))
    if rng.random() < 0.25:  # signal drop-out in a slab
        along, start = int(rng.integers(0, 3)), int(rng.integers(0, shape[0] - 8))
        slab = [slice(None)] * 3
        slab[along] = slice(start, start + int(rng.integers(3, 8)))
        image[tuple(slab)] *= rng.uniform(0.4, 0.7)
    sigma = math.exp(rng.uniform(math.log(0.03), math.log(0.45))) * peak  # log-uniform: clean to very noisy
    if rng.random() < 0.5:
        image = image + rng.normal(0, sigma, shape)
    else:  # Rician: magnitude of a complex signal with noise in both parts
        image = np.sqrt((image + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    return (image * rng.uniform(300, 1500)).astype(np.float32)


def make_headroom_case(seed: int, num_classes: int = 2,
                       shape_zyx: Tuple[int, int, int] = SHAPE_ZYX) -> Tuple[np.ndarray, np.ndarray]:
    """(image float32, label uint8) of one synthetic patient; class 2 is the neighbour when num_classes=3."""
    rng = np.random.default_rng(seed)
    chamber, neighbour, tube, body = make_anatomy(rng, np.array(shape_zyx))
    image = acquire(rng, chamber, neighbour, tube, body)
    label = chamber.astype(np.uint8)
    if num_classes >= 3:
        label[neighbour] = 2
    return image, label


def headroom_classes(num_classes: int = 2) -> List[ClassInfo]:
    return [ClassInfo(0, "background")] + [ClassInfo(i + 1, CLASS_NAMES[i]) for i in range(num_classes - 1)]


def write_headroom_dataset(folder: str, labeled: int = 2, unlabeled: int = 18, test: int = 12, seed: int = 0,
                           num_classes: int = 2, extension: str = ".nii.gz") -> Tuple[str, Optional[str]]:
    """Writes the cases and two manifests, ``train.json`` (the first ``labeled`` cases labeled; the others
    keep their label files, hidden from training) and ``test.json``; returns their paths."""
    geometry = Geometry(tuple(int(s) for s in SHAPE_ZYX[::-1]), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    extra = {"description": "synthetic patients with varying anatomy and acquisition (headroom benchmark)"}
    return write_case_dataset(folder, lambda i: (*make_headroom_case(seed * 1000 + i, num_classes), geometry),
                              headroom_classes(num_classes), "patient", labeled, unlabeled, test, extension, extra)
