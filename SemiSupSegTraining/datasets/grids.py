"""A dataset's cases on their image's grid: header checks before anything is read, a label placed onto its
image's grid (exactly, when it is the same voxels in another axis order), two-valued labels, crop boxes."""

from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..fileio import header_reader, read_sitk_image, require_3d_scalar, require_whole_values
from ..geometry import Geometry, resample_labels


def _affine(g: Geometry) -> Tuple[np.ndarray, np.ndarray]:
    """(3×3 index→physical matrix, origin) of a grid."""
    return np.asarray(g.direction, float).reshape(3, 3) @ np.diag(g.spacing), np.asarray(g.origin, float)


def same_voxel_centres(reference: Geometry, other: Geometry) -> bool:
    """Whether ``other`` has exactly ``reference``'s voxel centres, possibly in another axis order or
    direction (a flipped or permuted but physically identical grid)."""
    a_ref, o_ref = _affine(reference)
    a_oth, o_oth = _affine(other)
    try:
        m = np.linalg.solve(a_ref, a_oth)
        t = np.linalg.solve(a_ref, o_oth - o_ref)
    except np.linalg.LinAlgError:
        return False
    r = np.round(m)
    if np.abs(m - r).max() > 1e-3 or np.abs(t - np.round(t)).max() > 1e-2:
        return False
    if not (np.abs(r).sum(0) == 1).all() or not (np.abs(r).sum(1) == 1).all():
        return False
    corners = np.array([[i, j, k] for i in (0, other.size[0] - 1) for j in (0, other.size[1] - 1)
                        for k in (0, other.size[2] - 1)], float)
    mapped = np.round(corners @ r.T + np.round(t))
    return bool((mapped.min(0) == 0).all() and (mapped.max(0) == np.asarray(reference.size) - 1).all())


def _grid_error(reference: Geometry, geometry: Geometry, problem: str, label_path: str, image_path: str,
                trust_offered: bool) -> InputError:
    hint = ("or, if only the label file's header is wrong (the sizes agree), rerun with --label-on-image-grid "
            "and check the overlay in Slicer" if trust_offered and tuple(geometry.size) == tuple(reference.size)
            else "or pick the label that belongs to this image")
    return InputError(f"The label {label_path} does not lie on the grid of its image {image_path} ({problem}); "
                      f"resample the label onto the image (e.g. in Slicer) {hint}.")


def grid_fits(reference: Geometry, geometry: Geometry, label_path: str, image_path: str,
               trust_voxels: Optional[bool]) -> str:
    """How a label's grid relates to its image's: "same", "reordered" (the same voxels in another axis order
    or direction) or "trusted" (only the header differs and ``trust_voxels``); anything else is an error.
    ``trust_voxels`` None: the command offers no such option (the error does not suggest it)."""
    problem = reference.mismatch(geometry)
    if problem is None:
        return "same"
    if same_voxel_centres(reference, geometry):
        return "reordered"
    if trust_voxels and tuple(geometry.size) == tuple(reference.size):
        return "trusted"
    raise _grid_error(reference, geometry, problem, label_path, image_path, trust_voxels is not None)


def onto_grid(label: sitk.Image, reference: Geometry, label_path: str, image_path: str,
               trust_voxels: Optional[bool] = None) -> sitk.Image:
    """The label on the image's grid: as is, resampled exactly when its grid is the same voxels in another
    order, or (``trust_voxels``) its voxels placed on the image's grid when only its header differs."""
    fit = grid_fits(reference, Geometry.of(label), label_path, image_path, trust_voxels)
    if fit == "reordered":
        return resample_labels(label, reference)
    return reference.apply(label)   # within tolerance (or trusted): give it the image's exact grid


def header_geometry(path: str, what: str) -> Geometry:
    """The grid from the file's header only (cheap), for checks before any volume is read."""
    reader = header_reader(path, what)
    if reader.GetDimension() != 3:
        raise InputError(f"The {what} {path} is {reader.GetDimension()}D; SemiSupSeg needs a 3D volume.")
    return Geometry.of(reader)


def binary_label(values: np.ndarray, path: str, allowed: Sequence[int]) -> np.ndarray:
    """A two-valued label (0 and one of ``allowed``) as uint8 0/1; other values are an error."""
    require_whole_values(values, path, f"it must hold 0 for background and {' or '.join(str(a) for a in allowed)} "
                                       f"for the structure")
    present = [int(v) for v in np.unique(values)]
    unknown = [v for v in present if v != 0 and v not in allowed]
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:8])
        raise InputError(f"The label {path} has value(s) {shown}; it must hold 0 for background and "
                         f"{' or '.join(str(a) for a in allowed)} for the structure, so check that it is the "
                         f"right file.")
    mask = (values != 0).astype(np.uint8)
    if not mask.any():
        raise InputError(f"The label {path} is empty (all background); a case of this dataset needs its "
                         f"structure drawn, so check the file or leave the case out.")
    return mask


def crop_box(mask_zyx: np.ndarray, margin_xyz: Sequence[int], min_size_xyz: Sequence[int],
             axes: Sequence[bool] = (True, True, True)) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    """(start, stop) voxel indices in x, y, z: the mask's bounding box plus ``margin`` on each side, widened
    (centred) to at least ``min_size`` and clipped to the volume; axes with ``axes[i]`` false stay whole."""
    size = mask_zyx.shape[::-1]
    coords = np.argwhere(mask_zyx)[:, ::-1]           # x, y, z
    low, high = coords.min(0), coords.max(0) + 1
    start, stop = [], []
    for i in range(3):
        if not axes[i]:
            start.append(0)
            stop.append(int(size[i]))
            continue
        a = int(low[i]) - int(margin_xyz[i])
        b = int(high[i]) + int(margin_xyz[i])
        short = int(min_size_xyz[i]) - (b - a)
        if short > 0:
            a -= short // 2
            b += short - short // 2
        if a < 0:                                      # shift a box that sticks out, then clip
            b, a = b - a, 0
        if b > size[i]:
            a, b = a - (b - size[i]), int(size[i])
        start.append(max(a, 0))
        stop.append(min(b, int(size[i])))
    return tuple(start), tuple(stop)


def crop(image: sitk.Image, start: Sequence[int], stop: Sequence[int]) -> sitk.Image:
    """SimpleITK's slicing keeps each voxel's physical position (the origin moves to the box's corner)."""
    return image[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]


def read_label_on_grid(label_path: str, reference: Geometry, image_path: str,
                       trust_voxels: Optional[bool] = None) -> sitk.Image:
    """The label file read, checked to be 3D and scalar, and placed on its image's grid (see onto_grid)."""
    label = read_sitk_image(label_path, "label")
    require_3d_scalar(label, label_path, "label")
    return onto_grid(label, reference, label_path, image_path, trust_voxels)


def check_label_header(image_path: str, label_path: str, trust_voxels: Optional[bool] = None) -> None:
    """From both headers only: the label lies on its image's grid (or can be placed there, see grid_fits)."""
    grid_fits(header_geometry(image_path, "image"), header_geometry(label_path, "label"), label_path,
              image_path, trust_voxels)
