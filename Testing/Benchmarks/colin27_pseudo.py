"""Pseudo-subjects made from ONE real brain MRI: the Colin27 T1 template and its AAL labels.

Variety comes only from augmentation, so a score on these cases says how well a method learns the deep
grey structures of one real brain under realistic acquisition changes, not how it generalises across
people. Every report that uses them must say so.

Source: the Debian/Ubuntu package ``mricron-data`` (``apt-get install -y mricron-data``), which ships
``templates/ch2.nii.gz`` (Colin27 T1, 181×217×181, 1 mm) and ``templates/aal.nii.gz`` (116 manually drawn
regions on the same grid, names in ``aal.nii.txt``).

Target: three classes plus background, left and right merged per structure: caudate (AAL 71/72),
putamen (73/74), thalamus (77/78).

Each pseudo-subject is made, all from its seed, by:

1. a random smooth deformation: a small random affine (rotation up to ±8°, scale ±8 %, shift ±6 mm)
   composed with a random displacement field (white noise on a 4 mm grid, Gaussian-smoothed with
   σ = 12 mm, scaled to a peak displacement of 3-6 mm), applied with SimpleITK's
   ``DisplacementFieldTransform`` / ``Resample`` (linear for the T1, nearest neighbour for the labels)
   onto a 1 mm grid around the deep grey structures;
2. a smooth multiplicative bias field (exp of a random quadratic polynomial, about ±25 %);
3. a contrast change: the intensities (scaled to 0..1 by their 99.5th percentile) raised to a random
   gamma in [0.7, 1.4];
4. an anisotropic acquisition: blur with a Gaussian whose FWHM equals the target spacing per axis, then
   resampling to the target spacing (default 1.5 × 1.5 × 2 mm, size 64 × 64 × 40, a 96 × 96 × 80 mm field
   of view centred on the structures); labels by nearest neighbour from the 1 mm deformed labels;
5. Rician noise (σ 2-5 % of the 99th intensity percentile) and a random global intensity scale.

Usage::

    from colin27_pseudo import write_colin27_dataset
    train_json, test_json = write_colin27_dataset("data/colin27", labeled=2, unlabeled=18, test=8)
"""

import functools
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO not in sys.path:  # run from a checkout without installing the engine
    sys.path.insert(0, _REPO)

from SemiSupSegTraining.geometry import Geometry# noqa: E402
from SemiSupSegTraining.errors import InputError  # noqa: E402
from SemiSupSegTraining.manifest import ClassInfo  # noqa: E402
from SemiSupSegTraining.phantoms import write_case_dataset  # noqa: E402

TEMPLATE_DIRS = ("/usr/share/mricron/templates", "/usr/share/mricron")
T1_NAMES = ("ch2.nii.gz", "ch2bet.nii.gz")
AAL_NAME = "aal.nii.gz"
# class name → AAL label values (left, right)
STRUCTURES: Dict[str, Tuple[int, int]] = {"caudate": (71, 72), "putamen": (73, 74), "thalamus": (77, 78)}
INSTALL_HINT = "apt-get update && apt-get install -y mricron-data"


def colin27_classes() -> List[ClassInfo]:
    return [ClassInfo(0, "background")] + [ClassInfo(i + 1, name) for i, name in enumerate(STRUCTURES)]


def find_colin27(template_dir: Optional[str] = None) -> Tuple[str, str]:
    """Paths of the Colin27 T1 and the AAL atlas; one clear sentence if mricron-data is missing."""
    folders = (template_dir,) if template_dir else TEMPLATE_DIRS
    for folder in folders:
        aal = os.path.join(folder, AAL_NAME)
        for name in T1_NAMES:
            t1 = os.path.join(folder, name)
            if os.path.exists(t1) and os.path.exists(aal):
                return t1, aal
    raise InputError(f"The Colin27 T1 (ch2.nii.gz) and AAL atlas (aal.nii.gz) were not found in "
                     f"{' or '.join(folders)}; install them with '{INSTALL_HINT}' (the Debian/Ubuntu package "
                     f"mricron-data).")


@functools.lru_cache(maxsize=2)
def _load_source(template_dir: Optional[str] = None) -> Tuple[sitk.Image, sitk.Image, np.ndarray]:
    """(T1 as float32, merged 4-class label map as uint8, physical centre of the structures)."""
    t1_path, aal_path = find_colin27(template_dir)
    t1 = sitk.Cast(sitk.ReadImage(t1_path), sitk.sitkFloat32)
    aal = sitk.ReadImage(aal_path)
    if Geometry.of(t1).mismatch(Geometry.of(aal)):
        raise InputError(f"{aal_path} does not lie on the grid of {t1_path}; reinstall mricron-data.")
    raw = sitk.GetArrayFromImage(aal)
    merged = np.zeros(raw.shape, np.uint8)
    for index, values in enumerate(STRUCTURES.values(), start=1):
        merged[np.isin(raw, values)] = index
    labels = sitk.GetImageFromArray(merged)
    labels.CopyInformation(aal)
    lo, hi = np.argwhere(merged > 0).min(0), np.argwhere(merged > 0).max(0)
    centre_zyx = (lo + hi) / 2.0
    centre = np.array(labels.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre_zyx[::-1]]))
    return t1, labels, centre


def _random_transform(rng: np.random.Generator, centre: np.ndarray, fov_mm: np.ndarray,
                      max_displacement: Tuple[float, float] = (3.0, 6.0), field_spacing: float = 4.0,
                      field_sigma_mm: float = 12.0) -> sitk.Transform:
    """Output (pseudo-subject) physical points → Colin27 physical points."""
    affine = sitk.AffineTransform(3)
    affine.SetCenter([float(c) for c in centre])
    angles = np.deg2rad(rng.uniform(-8.0, 8.0, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    matrix = rz @ ry @ rx @ np.diag(rng.uniform(0.92, 1.08, 3))
    affine.SetMatrix([float(v) for v in matrix.ravel()])
    affine.SetTranslation([float(v) for v in rng.uniform(-6.0, 6.0, 3)])

    # Displacement field on a coarse grid covering the field of view with a margin.
    extent = fov_mm + 40.0
    size = np.ceil(extent / field_spacing).astype(int) + 1                      # x, y, z
    noise = rng.normal(size=(3,) + tuple(size[::-1]))                           # component, z, y, x
    smooth = np.stack([ndimage.gaussian_filter(c, field_sigma_mm / field_spacing, mode="reflect")
                       for c in noise], -1)
    peak = float(np.linalg.norm(smooth, axis=-1).max())
    smooth *= rng.uniform(*max_displacement) / max(peak, 1e-9)
    field = sitk.GetImageFromArray(smooth.astype(np.float64), isVector=True)
    field.SetSpacing([field_spacing] * 3)
    field.SetOrigin([float(v) for v in centre - (size - 1) * field_spacing / 2.0])
    displacement = sitk.DisplacementFieldTransform(field)  # takes the field image over

    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(displacement)  # applied first: output point + displacement, then the affine
    return composite


def _grid(centre: np.ndarray, size_xyz: np.ndarray, spacing_xyz: np.ndarray,
          direction: Tuple[float, ...]) -> Geometry:
    """A grid of ``size_xyz`` voxels centred on the physical point ``centre``."""
    d = np.array(direction).reshape(3, 3)
    origin = centre - d @ ((size_xyz - 1) * spacing_xyz / 2.0)
    return Geometry(tuple(int(s) for s in size_xyz), tuple(float(s) for s in spacing_xyz),
                    tuple(float(o) for o in origin), tuple(float(v) for v in direction))


def _resample(image: sitk.Image, grid: Geometry, transform: sitk.Transform, interpolator, pixel) -> sitk.Image:
    return sitk.Resample(image, list(grid.size), transform, interpolator, list(grid.origin), list(grid.spacing),
                         list(grid.direction), 0, pixel)


def make_pseudo_subject(seed: int, size_xyz: Tuple[int, int, int] = (64, 64, 40),
                        spacing_xyz: Tuple[float, float, float] = (1.5, 1.5, 2.0),
                        template_dir: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, Geometry]:
    """(image float32 (z, y, x), label uint8 class indices 0..3, grid) of one pseudo-subject."""
    rng = np.random.default_rng(seed)
    t1, labels, centre = _load_source(template_dir)
    size, spacing = np.array(size_xyz, float), np.array(spacing_xyz, float)
    fov = size * spacing
    direction = t1.GetDirection()
    centre = centre + rng.uniform(-5.0, 5.0, 3)  # the structures are not always in the middle
    transform = _random_transform(rng, centre, fov)

    # 1. Deformed image and labels on a 1 mm grid over the field of view.
    fine = _grid(centre, np.ceil(fov).astype(int), np.ones(3), direction)
    image = sitk.GetArrayFromImage(_resample(t1, fine, transform, sitk.sitkLinear, sitk.sitkFloat32))
    label = _resample(labels, fine, transform, sitk.sitkNearestNeighbor, sitk.sitkUInt8)

    # 2. Bias field and 3. contrast (gamma).
    axes = [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in image.shape]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    a = rng.uniform(-0.12, 0.12, 9)
    bias = np.exp(a[0] * x + a[1] * y + a[2] * z + a[3] * x * y + a[4] * y * z + a[5] * x * z
                  + a[6] * x * x + a[7] * y * y + a[8] * z * z)
    scale = float(np.percentile(image, 99.5)) or 1.0
    image = np.clip(image * bias / scale, 0.0, None) ** rng.uniform(0.7, 1.4)

    # 4. Anisotropic acquisition: blur to the target resolution (FWHM = spacing), then resample.
    sigma_zyx = spacing[::-1] / 2.3548  # in 1 mm voxels
    image = ndimage.gaussian_filter(image.astype(np.float32), sigma_zyx)
    coarse = _grid(centre, size.astype(int), spacing, direction)
    blurred = fine.to_image(image.astype(np.float32))
    identity = sitk.Transform(3, sitk.sitkIdentity)
    image = sitk.GetArrayFromImage(_resample(blurred, coarse, identity, sitk.sitkLinear, sitk.sitkFloat32))
    label_array = sitk.GetArrayFromImage(_resample(label, coarse, identity, sitk.sitkNearestNeighbor,
                                                   sitk.sitkUInt8))

    # 5. Rician noise and a global intensity scale.
    sigma = rng.uniform(0.02, 0.05) * float(np.percentile(image, 99))
    real = image + rng.normal(0.0, sigma, image.shape)
    imaginary = rng.normal(0.0, sigma, image.shape)
    image = np.sqrt(real ** 2 + imaginary ** 2) * rng.uniform(300.0, 1200.0)
    return image.astype(np.float32), label_array.astype(np.uint8), coarse


def write_colin27_dataset(folder: str, labeled: int = 2, unlabeled: int = 18, test: int = 8, seed: int = 0,
                          size_xyz: Tuple[int, int, int] = (64, 64, 40),
                          spacing_xyz: Tuple[float, float, float] = (1.5, 1.5, 2.0),
                          template_dir: Optional[str] = None,
                          extension: str = ".nii.gz") -> Tuple[str, Optional[str]]:
    """Writes ``labeled + unlabeled + test`` pseudo-subjects of the ONE Colin27 brain and two manifests,
    ``train.json`` (the first ``labeled`` cases labeled; the others keep their label files, hidden from
    training with ``labeled: false``) and ``test.json``; returns their paths (test is None when 0).

    Raises :class:`InputError` with the apt-get command when mricron-data is not installed.
    """
    find_colin27(template_dir)  # fail before writing anything
    extra = {"description": "pseudo-subjects of ONE real subject (Colin27 T1 + AAL), augmented"}
    return write_case_dataset(folder, lambda i: make_pseudo_subject(seed * 1000 + i, size_xyz, spacing_xyz, template_dir),
                              colin27_classes(), "colin27pseudo", labeled, unlabeled, test, extension, extra)


def write_preview(image: np.ndarray, label: np.ndarray, grid: Geometry, path: str, title: str = "") -> str:
    """Axial, coronal and sagittal slices through the structures' centre with the labels' outlines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = np.argwhere(label > 0).mean(0).astype(int)
    sz, sy, sx = grid.spacing[::-1]
    every = slice(None)
    views = (("axial", (centre[0], every, every), sy / sx), ("coronal", (every, centre[1], every), sz / sx),
             ("sagittal", (every, every, centre[2]), sz / sy))
    colors = ["#ff5533", "#33bbff", "#77ee44"]
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.5))
    for col, (name, cut, ratio) in enumerate(views):
        for row in range(2):
            ax = axes[row, col]
            ax.imshow(image[cut], cmap="gray", origin="lower", aspect=ratio)
            if row == 1:
                for k, color in enumerate(colors, start=1):
                    if (label[cut] == k).any():
                        ax.contour(label[cut] == k, [0.5], colors=color, linewidths=1.0)
            ax.set_title(f"{name}{' + labels' if row else ''}", fontsize=8)
            ax.axis("off")
    fig.suptitle((title + "\n" if title else "") + "red: caudate, blue: putamen, green: thalamus", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write Colin27 pseudo-subjects (one real subject, augmented).")
    parser.add_argument("folder")
    parser.add_argument("--labeled", type=int, default=2)
    parser.add_argument("--unlabeled", type=int, default=18)
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", action="store_true", help="also write preview.png of the first case")
    args = parser.parse_args()
    try:
        paths = write_colin27_dataset(args.folder, args.labeled, args.unlabeled, args.test, args.seed)
    except InputError as e:
        sys.exit(str(e))
    print("\n".join(p for p in paths if p))
    if args.preview:
        img, lab, geo = make_pseudo_subject(args.seed * 1000)
        print(write_preview(img, lab, geo, os.path.join(args.folder, "preview.png"), "colin27pseudo000"))
