"""The geometry stage: voxel grids, one canonical orientation, the training set's target spacing, and the
way back onto the input's exact grid.

    read (array + grid) → :func:`normalize` → :func:`to_canonical` (orient, resample) → networks
    → :func:`to_grid` (class probabilities back onto the input grid) → argmax → the user's grid

* **Orientation.** Every image and label is brought to ITK's identity direction, ``LPS``
  (index i runs to the left, j to posterior, k to superior; an array (z, y, x) is a stack of axial
  slices) with SimpleITK's ``DICOMOrient``: a permutation and flips of the index axes, exact, no
  interpolation. An oblique scan is reoriented to its *nearest* axis order the same way, and its residual
  rotation is kept, not resampled away: the networks see the scan as acquired (tilted by less than 45°)
  and every voxel value stays untouched, as with MONAI's ``Orientationd``.
* **Spacing.** A model trained with a target spacing sees every scan resampled to it: images with linear
  interpolation in float32 (MONAI's ``Spacingd`` default; the cubic B-spline nnU-Net uses would need a
  float64 coefficient volume, 8 bytes per voxel), labels with ITK's label-linear interpolator (one-hot
  linear, then the most likely label: never a class that is not among the neighbours). The resampled grid
  keeps the scan's centre and physical extent. The target spacing comes from the training set's headers
  with nnU-Net's rule (:func:`target_spacing_rule`).
* **Back.** Class probabilities are resampled (linearly; exactly by nearest neighbour when only the
  orientation changed) onto the input's grid before the argmax, so every output has the input's size,
  origin, spacing and direction.

Model files without ``geometry`` metadata (engine 0.x before this stage) are used on each scan's native
grid, as before. This module does not import torch.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError

CANONICAL_ORIENTATION = "LPS"   # ITK's identity direction
ANISOTROPY_THRESHOLD = 3.0      # nnU-Net: the coarsest axis more than 3x the others is anisotropic
GEOMETRY_TOLERANCE = 1e-3       # relative to the voxel spacing; ITK's own default coordinate tolerance is 1e-6
SPACING_SETTINGS = ("auto", "native")

Spacing = Tuple[float, float, float]


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


@dataclass(frozen=True)
class Geometry:
    """The voxel grid of an image: size and spacing in x, y, z; origin; direction (row-major 3×3)."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @classmethod
    def of(cls, image: Union[sitk.Image, sitk.ImageFileReader]) -> "Geometry":
        """The grid of an image, or of a file whose header a reader has read."""
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    def apply(self, image: sitk.Image) -> sitk.Image:
        """Gives ``image`` (already of this size) this grid."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def to_image(self, array_zyx: np.ndarray) -> sitk.Image:
        if tuple(array_zyx.shape[::-1][:3]) != tuple(self.size):
            raise ValueError(f"array of shape {array_zyx.shape} does not fit a grid of size {self.size}")
        return self.apply(sitk.GetImageFromArray(array_zyx))

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.direction, float).reshape(3, 3)

    def point(self, index_xyz: Sequence[float]) -> np.ndarray:
        """The physical position (mm, LPS) of a (continuous) voxel index x, y, z."""
        return np.asarray(self.origin) + self.matrix @ (np.asarray(index_xyz, float) * np.asarray(self.spacing))

    def points(self) -> np.ndarray:
        """Physical positions of all voxel centres, (z, y, x, 3) in x, y, z order."""
        axes = [np.arange(n, dtype=np.float64) * s for n, s in zip(self.size[::-1], self.spacing[::-1])]
        k, j, i = np.meshgrid(*axes, indexing="ij")
        return np.asarray(self.origin) + np.stack([i, j, k], -1) @ self.matrix.T

    def crop(self, box_zyx: Tuple[slice, slice, slice]) -> "Geometry":
        """The grid of the sub-box ``box_zyx`` (slices in z, y, x with explicit starts and stops)."""
        start = [s.start or 0 for s in box_zyx][::-1]
        stop = [s.stop if s.stop is not None else n for s, n in zip(box_zyx, self.size[::-1])][::-1]
        return Geometry(tuple(int(b - a) for a, b in zip(start, stop)), self.spacing,
                        tuple(float(v) for v in self.point(start)), self.direction)

    def mismatch(self, other: "Geometry") -> Optional[str]:
        """What differs from ``other`` beyond the tolerance, as words, or None."""
        if tuple(self.size) != tuple(other.size):
            return f"size {other.size} instead of {self.size}"
        spacing = np.asarray(self.spacing)
        if np.any(np.abs(spacing - np.asarray(other.spacing)) > GEOMETRY_TOLERANCE * spacing):
            return f"spacing {_fmt(other.spacing)} instead of {_fmt(self.spacing)}"
        if np.any(np.abs(np.asarray(self.origin) - np.asarray(other.origin)) > GEOMETRY_TOLERANCE * spacing.min() * 10):
            return f"origin {_fmt(other.origin)} instead of {_fmt(self.origin)}"
        if np.any(np.abs(np.asarray(self.direction) - np.asarray(other.direction)) > GEOMETRY_TOLERANCE):
            return "another direction (orientation) matrix"
        return None

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}


# ------------------------------------------------------------------------------------------- orientation

_AXIS_OF_LETTER = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def orientation_code(direction: Sequence[float]) -> str:
    """ITK's nearest orientation code of a direction matrix (``LPS`` for the identity), as DICOMOrient sees it."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(float(d) for d in direction))


def canonical_axes(direction: Sequence[float]) -> List[Tuple[int, int]]:
    """For each canonical axis (x L, y P, z S): which index axis of the image lies along it, and its sign."""
    found = [(0, 1)] * 3
    for index_axis, letter in enumerate(orientation_code(direction)):
        axis, sign = _AXIS_OF_LETTER[letter]
        found[axis] = (index_axis, sign)
    return found


def canonical_spacing(spacing: Sequence[float], direction: Sequence[float]) -> Spacing:
    """A grid's spacing in the canonical axis order (from a header alone: no voxels needed)."""
    return tuple(float(spacing[i]) for i, _ in canonical_axes(direction))


def canonical_size(size: Sequence[int], direction: Sequence[float]) -> Tuple[int, int, int]:
    return tuple(int(size[i]) for i, _ in canonical_axes(direction))


def _spacing_close(a: Sequence[float], b: Sequence[float]) -> bool:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return bool(np.all(np.abs(a - b) <= GEOMETRY_TOLERANCE * b))


def target_grid(oriented: Geometry, spacing: Sequence[float]) -> Geometry:
    """The grid at ``spacing`` with the oriented grid's direction, centre and (up to a voxel) extent."""
    spacing = np.asarray(spacing, float)
    extent = np.asarray(oriented.size) * np.asarray(oriented.spacing)
    size = np.maximum(1, np.round(extent / spacing)).astype(int)
    centre = oriented.point((np.asarray(oriented.size) - 1) / 2.0)
    origin = centre - oriented.matrix @ ((size - 1) / 2.0 * spacing)
    return Geometry(tuple(int(s) for s in size), tuple(float(s) for s in spacing),
                    tuple(float(o) for o in origin), oriented.direction)


# ------------------------------------------------------------------------------- there and back

def resample(image: sitk.Image, grid: Geometry, interpolator: int, default: float = 0.0) -> sitk.Image:
    """``image`` on ``grid`` (a reference grid in physical space); voxels beyond the image take the nearest
    edge voxel's value, so the rim of the grid is never filled with ``default``."""
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in grid.size])
    f.SetOutputSpacing(grid.spacing)
    f.SetOutputOrigin(grid.origin)
    f.SetOutputDirection(grid.direction)
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(default)
    f.SetOutputPixelType(image.GetPixelID())
    f.SetUseNearestNeighborExtrapolator(True)
    return f.Execute(image)


def resample_labels(image: sitk.Image, grid: Geometry, pixel_type: Optional[int] = None) -> sitk.Image:
    """A label map on ``grid`` by nearest neighbour, 0 beyond the image (no label value is invented);
    ``pixel_type``: the output's SimpleITK pixel type (default: the input's)."""
    return sitk.Resample(image, [int(s) for s in grid.size], sitk.Transform(), sitk.sitkNearestNeighbor,
                         list(grid.origin), list(grid.spacing), list(grid.direction), 0,
                         image.GetPixelID() if pixel_type is None else pixel_type)


def to_canonical(array_zyx: np.ndarray, grid: Geometry, spacing: Optional[Sequence[float]], label: bool = False
                 ) -> Tuple[np.ndarray, Geometry]:
    """An image (float32) or a label map (integers) in the canonical orientation and, when ``spacing`` is
    given (x, y, z), at that spacing: (array (z, y, x), its grid)."""
    image = grid.to_image(array_zyx)
    oriented = sitk.DICOMOrient(image, CANONICAL_ORIENTATION)
    del image
    oriented_grid = Geometry.of(oriented)
    if spacing is None or _spacing_close(oriented_grid.spacing, spacing):
        return sitk.GetArrayFromImage(oriented), oriented_grid
    new_grid = target_grid(oriented_grid, spacing)
    resampled = resample(oriented, new_grid, sitk.sitkLabelLinear if label else sitk.sitkLinear)
    del oriented
    return sitk.GetArrayFromImage(resampled), new_grid


def to_grid(channels: np.ndarray, source: Geometry, target: Geometry, out: Optional[np.ndarray] = None
            ) -> np.ndarray:
    """Float maps (C, z, y, x) or (z, y, x) on ``source`` resampled onto ``target``, one channel at a time
    (float32; linear, or — when the grids share their voxel centres, i.e. only the orientation changed —
    nearest neighbour, which is then exact; as fast as ``DICOMOrient`` and without its intermediate copy)."""
    single = channels.ndim == 3
    channels = channels[None] if single else channels
    shape = (channels.shape[0],) + tuple(target.size[::-1])
    out = np.empty(shape, np.float32) if out is None else out
    aligned = _spacing_close(canonical_spacing(source.spacing, source.direction),
                             canonical_spacing(target.spacing, target.direction)) and np.allclose(
        _corners(source), _corners(target), atol=GEOMETRY_TOLERANCE * min(source.spacing))
    interpolator = sitk.sitkNearestNeighbor if aligned else sitk.sitkLinear
    for c in range(channels.shape[0]):
        image = source.to_image(np.ascontiguousarray(channels[c], dtype=np.float32))
        moved = resample(image, target, interpolator)
        del image
        out[c] = sitk.GetArrayViewFromImage(moved)
        del moved
    return out[0] if single else out


def _corners(grid: Geometry) -> np.ndarray:
    """The grid's 8 corner voxel centres, sorted (the same set for two orderings of one grid)."""
    last = np.asarray(grid.size) - 1
    corners = [grid.point((i, j, k)) for i in (0, last[0]) for j in (0, last[1]) for k in (0, last[2])]
    return np.array(sorted(map(tuple, np.round(corners, 4))))


# ------------------------------------------------------------------------------------ target spacing

def parse_target_spacing(value: Any) -> Union[str, Spacing]:
    """The ``target_spacing`` setting: "auto", "native", or three spacings x, y, z in mm ([x, y, z] or
    "X,Y,Z"). One clear sentence otherwise."""
    if isinstance(value, str) and value.strip().lower() in SPACING_SETTINGS:
        return value.strip().lower()
    parts = value.replace("x", ",").replace("×", ",").split(",") if isinstance(value, str) else value
    try:
        spacing = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        spacing = ()
    if len(spacing) != 3 or not all(np.isfinite(s) and 0.01 <= s <= 100.0 for s in spacing):
        raise InputError(f"target_spacing is {value!r}; use auto (the training set's spacing, as nnU-Net "
                         f"chooses it), native (each scan's own grid) or three spacings in mm, e.g. "
                         f"--set target_spacing=0.7,0.7,2.5.")
    return spacing


def target_spacing_rule(spacings: Sequence[Sequence[float]], sizes: Optional[Sequence[Sequence[int]]] = None
                        ) -> Spacing:
    """nnU-Net's target spacing of a training set (spacings and sizes in the canonical axis order x, y, z).

    The median spacing per axis. When the data are anisotropic — the coarsest median axis more than 3× the
    coarser of the other two, and (with ``sizes``) that axis also more than 3× shorter in voxels — the
    coarse axis takes the 10th percentile of its spacings instead (never finer than the other axes): fewer
    interpolated slices between the acquired ones.
    """
    spacings = np.asarray(spacings, float).reshape(-1, 3)
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    anisotropic = target[worst] > ANISOTROPY_THRESHOLD * max(target[a] for a in others)
    if anisotropic and sizes is not None:
        median_size = np.median(np.asarray(sizes, float).reshape(-1, 3), axis=0)
        anisotropic = median_size[worst] * ANISOTROPY_THRESHOLD < min(median_size[a] for a in others)
    if anisotropic:
        coarse = float(np.percentile(spacings[:, worst], 10))
        target[worst] = max(coarse, max(target[a] for a in others))
    return tuple(float(s) for s in target)


@dataclass
class Fingerprint:
    """The spacings and sizes (canonical axis order) of a set of images, read from their headers."""

    spacings: np.ndarray   # (N, 3) x, y, z in mm
    sizes: np.ndarray      # (N, 3)

    def to_dict(self) -> Dict[str, Any]:
        return {"cases": int(len(self.spacings)),
                "median_spacing": [round(float(s), 6) for s in np.median(self.spacings, 0)],
                "min_spacing": [round(float(s), 6) for s in self.spacings.min(0)],
                "max_spacing": [round(float(s), 6) for s in self.spacings.max(0)]}


def fingerprint(grids: Sequence[Geometry]) -> Fingerprint:
    """The training set's spacings and sizes, from its images' grids (``fileio.read_headers``)."""
    return Fingerprint(np.array([canonical_spacing(g.spacing, g.direction) for g in grids], float),
                       np.array([canonical_size(g.size, g.direction) for g in grids], int))


def resolve_target_spacing(setting: Any, prints: Fingerprint) -> Optional[Spacing]:
    """The spacing the networks train at: None for "native", the rule for "auto", else the given one."""
    value = parse_target_spacing(setting)
    if value == "native":
        return None
    if value == "auto":
        return target_spacing_rule(prints.spacings, prints.sizes)
    return value


def training_spacing(setting: Any, grids: Sequence[Geometry]) -> Tuple[Optional[Spacing], Dict[str, Any]]:
    """The spacing a training set is resampled to (None: native grids) and the model file's ``geometry``
    metadata, from its images' grids (``fileio.read_headers``)."""
    prints = fingerprint(grids)
    spacing = resolve_target_spacing(setting, prints)
    return spacing, model_geometry(spacing, setting, prints)


def model_geometry(target_spacing: Optional[Sequence[float]], setting: Any, prints: Fingerprint) -> Dict[str, Any]:
    """The model file's ``geometry`` metadata."""
    return {"orientation": CANONICAL_ORIENTATION,
            "target_spacing": None if target_spacing is None else [float(s) for s in target_spacing],
            "target_spacing_setting": setting if isinstance(setting, str) else [float(s) for s in setting],
            "fingerprint": prints.to_dict()}


def geometry_of_model(meta: Dict[str, Any]) -> Optional[Tuple[str, Optional[Spacing]]]:
    """(orientation, target spacing or None) of a model file's metadata (checked by ``modelfile``), or None
    for an older model file: native grids, no reorientation, exactly as before."""
    geometry = meta.get("geometry")
    if not isinstance(geometry, dict):
        return None
    spacing = geometry.get("target_spacing")
    return geometry["orientation"], None if spacing is None else parse_target_spacing(spacing)


# ------------------------------------------------------------------------------------- normalisation

def normalization_for(modality: str, override: Optional[str] = None) -> str:
    return override or ("window" if modality == "CT" else "zscore")


def normalize(array: np.ndarray, method: str, ct_window: Tuple[float, float] = (-120.0, 240.0)) -> np.ndarray:
    """MRI: z-score over the volume. CT: clip to the HU window and scale it to 0..1 (the paper: -120..240)."""
    array = array.astype(np.float32, copy=False)
    if method == "window":
        low, high = ct_window
        return ((np.clip(array, low, high) - low) / (high - low)).astype(np.float32)
    if method == "zscore":
        std = float(array.std())
        return ((array - float(array.mean())) / (std if std > 1e-8 else 1.0)).astype(np.float32)
    raise ValueError(f"unknown normalisation {method!r}")
