"""Shared helpers of the engine tests: writing images, DICOM series and Slicer segmentation files with
SimpleITK, tiny model files, smooth random blobs, grid comparisons.

Arrays are numpy in z, y, x order; sizes, spacings and origins are x, y, z (as ITK writes them).
"""

import json
import os
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

# The networks here are tiny: one thread is much faster than several fighting over a busy machine's cores
# (about 14x on a loaded two-core box). SEMISUPSEG_TEST_THREADS sets another count.
torch.set_num_threads(int(os.environ.get("SEMISUPSEG_TEST_THREADS", "1")))

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
#: A right-handed flip of x and y: RAS-style axes seen in ITK's LPS space (negative diagonal).
RAS_FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
#: A left-handed direction (determinant -1): the slice axis runs from head to feet.
Z_FLIPPED = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
ANISOTROPIC = (0.7, 1.3, 2.5)


def oblique_direction(angle: float = 0.4, axis: Sequence[float] = (1.0, 2.0, 3.0)) -> Tuple[float, ...]:
    """A rotation by ``angle`` radians about an oblique axis, as ITK's row-major 3×3 direction."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return tuple(float(v) for v in sitk.VersorTransform(tuple(axis), angle).GetMatrix())


def make_image(array_zyx: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
               origin: Sequence[float] = (0.0, 0.0, 0.0), direction: Sequence[float] = IDENTITY,
               is_vector: bool = False) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx, isVector=is_vector)
    if image.GetDimension() == 3:
        image.SetSpacing(tuple(float(s) for s in spacing))
        image.SetOrigin(tuple(float(o) for o in origin))
        image.SetDirection(tuple(float(d) for d in direction))
    return image


def write_image(array_zyx: np.ndarray, path: str, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                origin: Sequence[float] = (0.0, 0.0, 0.0), direction: Sequence[float] = IDENTITY,
                compress: bool = True) -> str:
    """Writes an array with the given grid; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sitk.WriteImage(make_image(array_zyx, spacing, origin, direction), str(path), compress)
    return str(path)


def write_dicom_series(image: sitk.Image, folder: str, modality: str = "MR") -> str:
    """Writes a 3D image as a DICOM series, one file per slice, with the geometry tags a reader needs."""
    os.makedirs(folder, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    now_time, now_date = time.strftime("%H%M%S"), time.strftime("%Y%m%d")
    d = image.GetDirection()
    series_uid = "2.25." + str(uuid.uuid4().int)  # a UID derived from a UUID: unique per series
    orientation = "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    sx, sy, sz = image.GetSpacing()
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0031": now_time, "0008|0021": now_date, "0008|0008": "DERIVED\\SECONDARY",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": series_uid + ".0", "0020|000e": series_uid, "0008|0060": modality,
            "0020|0037": orientation, "0020|0032": "\\".join(str(v) for v in position),
            "0020|0013": str(k + 1), "0028|0030": f"{sy}\\{sx}", "0018|0050": str(sz),
        }
        for key, value in tags.items():
            slice_k.SetMetaData(key, value)
        writer.SetFileName(os.path.join(folder, f"slice{k:03d}.dcm"))
        writer.Execute(slice_k)
    return folder


def write_seg_nrrd(layers_zyx: List[np.ndarray], segments: List[Dict[str, object]], path: str,
                   spacing: Sequence[float] = (1.0, 1.0, 1.0), origin: Sequence[float] = (0.0, 0.0, 0.0),
                   direction: Sequence[float] = IDENTITY) -> str:
    """A Slicer segmentation file: one layer is a 3D label map, several are a vector (4D) NRRD.

    ``segments`` are dicts with ``name``, ``value`` and ``layer`` (the fields Slicer writes).
    """
    arrays = [np.asarray(a, np.uint8) for a in layers_zyx]
    if len(arrays) == 1:
        image = make_image(arrays[0], spacing, origin, direction)
    else:
        image = make_image(np.stack(arrays, -1), spacing, origin, direction, is_vector=True)
    for i, s in enumerate(segments):
        fields = {"ID": f"Segment_{i + 1}", "Name": s["name"], "LabelValue": str(s["value"]),
                  "Layer": str(s.get("layer", 0)), "Color": "0.5 0.2 0.9"}
        for key, value in fields.items():
            image.SetMetaData(f"Segment{i}_{key}", str(value))
    sitk.WriteImage(image, str(path), True)
    return str(path)


def smooth_blob(shape_zyx: Sequence[int], seed: int, sigma: float = 3.0, quantile: float = 0.75) -> np.ndarray:
    """A random smooth binary mask (a few irregular blobs) covering about ``1 - quantile`` of the volume."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=tuple(shape_zyx)), sigma)
    return field > np.quantile(field, quantile)


def assert_same_grid(image: sitk.Image, reference: sitk.Image, atol: float = 1e-5) -> None:
    """Size, spacing, origin and direction of ``image`` equal ``reference``'s."""
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=atol)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=atol * 10)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=atol)


def classes(*names: str):
    from SemiSupSegTraining.manifest import default_classes

    return default_classes(list(names) or ["organ"])


def make_model_file(path: str, num_classes: int = 2, patch_xyz: Tuple[int, int, int] = (32, 32, 16),
                    base_filters: int = 4, seed: int = 0, normalization: str = "zscore") -> str:
    """A model file of two tiny untrained networks (seconds to build), with the metadata ``train`` writes."""
    from SemiSupSegTraining.modelfile import save_model
    from SemiSupSegTraining.networks import build_networks

    torch.manual_seed(seed)
    net_a, net_b = build_networks(num_classes, base_filters, (1, 1, 1, 1), dropout=0.0)
    names = ["background"] + [f"class {i}" for i in range(1, num_classes)]
    metadata = {
        "classes": [{"value": i, "name": n, "color": [0.2, 0.4, 0.6]} for i, n in enumerate(names)],
        "modality": "MRI" if normalization == "zscore" else "CT",
        "normalization": {"method": normalization, "ct_window": [-120.0, 240.0]},
        "patch_size": list(patch_xyz), "spacing": [1.0, 1.0, 1.0], "preset": "tiny", "overrides": {},
        "networks": {"a": "VNet", "b": "ResVNet", "base_filters": base_filters, "resnet_blocks": [1, 1, 1, 1],
                     "in_channels": 1},
    }
    return save_model(str(path), net_a.state_dict(), net_b.state_dict(), metadata)


def write_manifest_json(path: str, data: object) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def structured_volume(shape_zyx: Sequence[int] = (16, 32, 32), seed: int = 0) -> np.ndarray:
    """An MRI-like float volume with a bright blob, texture and a gradient (no symmetry to hide flips)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(0, 1, s) for s in shape_zyx], indexing="ij")
    volume = 200.0 * smooth_blob(shape_zyx, seed, sigma=2.0, quantile=0.85) + 80.0 * x + 40.0 * y + 20.0 * z
    return (volume + rng.normal(0, 5.0, volume.shape)).astype(np.float32)


def only_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {lines!r}"
    return lines[0]


def read_array(path: str, dtype: Optional[type] = None) -> np.ndarray:
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return array.astype(dtype) if dtype is not None else array
