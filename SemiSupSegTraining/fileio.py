"""Files in and out: images and labels read and validated, label values, atomic writes.

Reads with SimpleITK: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), Slicer segmentation files (.seg.nrrd),
MetaImage (.mha, .mhd) and DICOM series folders. Arrays are numpy in z, y, x order; the grid (size,
spacing, origin, direction in ITK's LPS convention) travels beside them so that every output can be
written back on the input's exact grid. Every unreadable or invalid file is one sentence
(:class:`~SemiSupSegTraining.errors.InputError`) naming the file. This module does not import torch.
"""

import functools
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .atomicio import atomic_write
from .errors import InputError
from .geometry import Geometry, resample_labels
from .manifest import ClassInfo, class_color


@dataclass
class Volume:
    """A 3D scalar image as a float32 array (z, y, x) and its grid."""

    array: np.ndarray
    geometry: Geometry
    path: str


# --------------------------------------------------------------------------------------------- reading

def read_sitk_image(path: str, what: str) -> sitk.Image:
    if not os.path.exists(path):
        raise InputError(f"The {what} {path} does not exist; check the path.")
    if os.path.isdir(path):
        return _read_dicom_series(path, what)
    if path.lower().endswith((".nii", ".nii.gz")) and not _nifti_magic_ok(path):
        raise InputError(f"The {what} {path} is not a valid NIfTI file (its header lacks the NIfTI magic "
                         f"'n+1'): it is damaged, or an old Analyze file whose orientation cannot be trusted; "
                         f"export the image again as NIfTI.")
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        raise InputError(f"The {what} {path} cannot be read as a medical image (NIfTI, NRRD, MHA or a DICOM "
                         f"folder): {_sitk_reason(e, 200)}; check that the file is complete and of a "
                         f"supported format.") from None
    if path.lower().endswith((".nii", ".nii.gz")) and not _nifti_complete(path):
        raise InputError(f"The {what} {path} is truncated (it holds fewer voxel bytes than its header "
                         f"announces); copy or export the file again.")
    return image


def _nifti_magic_ok(path: str) -> bool:
    """Whether a .nii/.nii.gz header carries the NIfTI-1/2 magic. Without it ITK reads the file as Analyze
    7.5 (a deprecation warning, no orientation): a .nii file without the magic is damaged or mislabelled.
    Unreadable headers pass here; the reader below reports them."""
    import gzip
    import zlib

    try:
        with (gzip.open if path.lower().endswith(".gz") else open)(path, "rb") as f:
            header = f.read(348)
    except (OSError, EOFError, zlib.error):
        return True
    if len(header) < 348:
        return True
    if header[4:8] in (b"n+2\0", b"ni2\0"):  # NIfTI-2 (540-byte header, magic after sizeof_hdr)
        return True
    return header[344:348] in (b"n+1\0", b"ni1\0")


def _nifti_complete(path: str) -> bool:
    """Whether a .nii/.nii.gz file holds all the voxel bytes its header announces.

    ITK's NIfTI reader fills a truncated file's missing voxels with zeros without an error, so the
    length is checked here. Files whose header this does not understand are left to ITK (True).
    """
    import gzip
    import struct
    import zlib

    compressed = path.lower().endswith(".gz")
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            header = f.read(540)
    except (OSError, EOFError, zlib.error):
        return False
    if len(header) < 348:
        return False
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", header[:4])[0]
        if size == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if size == 540 and len(header) == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return True
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return True
    expected = max(offset, 348) + int(np.prod([max(int(d), 1) for d in dims[1:dims[0] + 1]])) * bitpix // 8
    if not compressed:
        return os.path.getsize(path) >= expected
    with open(path, "rb") as f:  # fast path: the gzip trailer holds the uncompressed length mod 2^32
        f.seek(-4, os.SEEK_END)
        if struct.unpack("<I", f.read(4))[0] == expected % 2 ** 32:
            return True
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while total < expected:
                chunk = f.read(1 << 22)
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError, zlib.error):
        return False
    return total >= expected


def _sitk_reason(error: Exception, limit: int = 160) -> str:
    """The last meaningful line of a SimpleITK exception (they span several lines), shortened."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown reason")[:limit]


def largest_dicom_series(folder: str, below: bool = False) -> List[str]:
    """The files of the DICOM series with the most slices in ``folder`` (``below``: in any folder below it
    too): that is the scan, localisers and scouts have few. [] when there is none."""
    reader = sitk.ImageSeriesReader()
    best: List[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        if not below:
            dirnames.clear()
        if not filenames:
            continue
        for series in reader.GetGDCMSeriesIDs(dirpath):
            files = list(reader.GetGDCMSeriesFileNames(dirpath, series))
            if len(files) > len(best):
                best = files
    return best


def read_dicom_files(files: Sequence[str]) -> sitk.Image:
    """One DICOM series from its files; an unreadable one is one sentence naming its folder."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    try:
        return reader.Execute()
    except RuntimeError as e:
        raise InputError(f"The DICOM series in {os.path.dirname(files[0])} cannot be read ({_sitk_reason(e)}); "
                         f"check that its files are complete.") from None


def _read_dicom_series(folder: str, what: str) -> sitk.Image:
    files = largest_dicom_series(folder)
    if not files:
        raise InputError(f"The {what} folder {folder} holds no DICOM series; give a folder of DICOM files "
                         f"or an image file.")
    return read_dicom_files(files)


def require_3d_scalar(image: sitk.Image, path: str, what: str) -> None:
    if image.GetDimension() != 3:
        raise InputError(f"The {what} {path} is {image.GetDimension()}D; SemiSupSeg needs a 3D volume.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"The {what} {path} has {image.GetNumberOfComponentsPerPixel()} values per voxel "
                         f"(a 4D, vector or color image); SemiSupSeg needs one scalar 3D volume.")
    if min(image.GetSize()) < 2:
        raise InputError(f"The {what} {path} has size {image.GetSize()}, a single slice; SemiSupSeg needs "
                         f"a 3D volume.")


def read_image(path: str) -> Volume:
    """Reads a 3D scalar image as float32; NaN/inf voxels, 2D and 4D images are refused."""
    image = read_sitk_image(path, "image")
    require_3d_scalar(image, path, "image")
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise InputError(f"The image {path} has {bad} NaN or infinite voxels; fix or re-export the image.")
    return Volume(array, Geometry.of(image), path)


def is_segmentation_file(path: str) -> bool:
    return path.lower().endswith(".seg.nrrd")


def read_segmentation_file(path: str, reference: Optional[Geometry] = None
                           ) -> Tuple[sitk.Image, List[Tuple[str, int]]]:
    """Reads a Slicer ``.seg.nrrd`` into one label image plus its segments as (name, value) in file order.

    Segments may sit in several layers (a 4D file) and the file's grid may be cropped to the segments'
    extent: layers are merged (a later segment wins where two overlap) and, with ``reference``, the label
    map is resampled (nearest neighbour) onto the reference grid, which is lossless for Slicer's sub-grids.
    """
    image = read_sitk_image(path, "segmentation")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    keys = set(reader.GetMetaDataKeys())
    segments = []
    index = 0
    while f"Segment{index}_ID" in keys or f"Segment{index}_Name" in keys:
        def meta(field, default=None, i=index):
            key = f"Segment{i}_{field}"
            return reader.GetMetaData(key) if key in keys else default
        name = meta("Name") or meta("ID") or f"Segment_{index + 1}"
        value = int(meta("LabelValue", str(index + 1)))
        layer = int(meta("Layer", "0"))
        segments.append((name, value, layer))
        index += 1
    if image.GetNumberOfComponentsPerPixel() > 1:
        layers = [sitk.VectorIndexSelectionCast(image, i) for i in range(image.GetNumberOfComponentsPerPixel())]
    elif image.GetDimension() == 4:
        size = list(image.GetSize())
        layers = [sitk.Extract(image, size[:3] + [0], [0, 0, 0, i]) for i in range(size[3])]
    else:
        layers = [image]
    if layers[0].GetDimension() != 3:
        raise InputError(f"The segmentation {path} is not a 3D segmentation; save it again from Slicer.")
    if not segments:  # a plain label map saved with the .seg.nrrd name
        values = np.unique(sitk.GetArrayViewFromImage(layers[0]))
        segments = [(f"Segment_{int(v)}", int(v), 0) for v in values if v != 0]
    merged = np.zeros(sitk.GetArrayViewFromImage(layers[0]).shape, np.int32)
    for order, (_, value, layer) in enumerate(segments, start=1):
        if layer >= len(layers):
            raise InputError(f"The segmentation {path} names layer {layer} but has {len(layers)} layer(s); "
                             f"save it again from Slicer.")
        merged[sitk.GetArrayViewFromImage(layers[layer]) == value] = order
    label = sitk.GetImageFromArray(merged)
    label.CopyInformation(layers[0])
    if reference is not None and Geometry.of(label) != reference:
        label = resample_labels(label, reference, sitk.sitkInt32)
    return label, [(name, order) for order, (name, _, _) in enumerate(segments, start=1)]


def read_label(path: str, classes: List[ClassInfo], reference: Geometry) -> np.ndarray:
    """Reads a label map on ``reference``'s grid and maps its values to class indices 0..K-1 (uint8).

    For a ``.seg.nrrd`` the segments are matched to the classes by name (case-insensitive), else in order.
    """
    if is_segmentation_file(path):
        image, segments = read_segmentation_file(path, reference)
        by_name = {c.name.strip().lower(): c.value for c in classes}
        foreground = [c.value for c in classes[1:]]
        mapping = {}
        for position, (name, order) in enumerate(segments):
            value = by_name.get(name.strip().lower())
            if value is None:
                if position >= len(foreground):
                    raise InputError(f"The segmentation {path} has segment '{name}', which matches no class "
                                     f"({', '.join(c.name for c in classes[1:])}); rename the segment or add "
                                     f"the class.")
                value = foreground[position]
            mapping[order] = value
        raw = sitk.GetArrayFromImage(image)
        values = np.zeros_like(raw)
        for order, value in mapping.items():
            values[raw == order] = value
    else:
        image = read_sitk_image(path, "label")
        require_3d_scalar(image, path, "label")
        problem = reference.mismatch(Geometry.of(image))
        if problem:
            raise InputError(f"The label {path} does not lie on its image's grid ({problem}); resample the "
                             f"label onto the image (e.g. Slicer's Resample Scalar/Vector/DWI Volume with "
                             f"nearest neighbour) or pick the right image.")
        values = sitk.GetArrayFromImage(image)
        if values.dtype.kind == "f":
            require_whole_values(values, path)
            values = values.astype(np.int64)
    return values_to_indices(values, classes, path)


def require_whole_values(values: np.ndarray, path: str,
                         rule: str = "a label map holds whole class values such as 0, 1, 2") -> None:
    """A label's values must be whole numbers: a float label file may hold 1.0, never 0.5 or NaN."""
    if values.dtype.kind == "f" and (not np.isfinite(values).all() or np.any(values != np.round(values))):
        raise InputError(f"The label {path} has non-integer values; {rule}.")


def values_to_indices(values: np.ndarray, classes: List[ClassInfo], path: str) -> np.ndarray:
    """Label values → class indices; values outside the classes are an error naming them."""
    class_values = np.array([c.value for c in classes])
    present = np.unique(values)
    unknown = [int(v) for v in present if v not in class_values]
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise InputError(f"The label {path} has value(s) {shown}, which are not among the classes "
                         f"({', '.join(f'{c.value}={c.name}' for c in classes)}); add them to the manifest's "
                         f"classes or fix the label.")
    lookup = np.zeros(int(max(class_values.max(), present.max())) + 1, np.uint8)
    lookup[class_values] = np.arange(len(class_values), dtype=np.uint8)
    return lookup[values.astype(np.int64)]


def indices_to_values(indices: np.ndarray, classes: List[ClassInfo]) -> np.ndarray:
    """Class indices → the classes' label values (uint8 when they fit, else int16)."""
    values = np.array([c.value for c in classes])
    dtype = np.uint8 if values.min() >= 0 and values.max() < 256 else np.int16
    return values.astype(dtype)[indices]


def header_reader(path: str, what: str = "image") -> sitk.ImageFileReader:
    """A SimpleITK reader that has read the file's header only (cheap); unreadable files are one sentence."""
    if not os.path.isfile(path):
        raise InputError(f"The {what} {path} does not exist; check the path.")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"The {what} {path} cannot be read ({_sitk_reason(e)}); check that the file is "
                         f"complete and of a supported format.") from None
    return reader


def read_header(path: str) -> Geometry:
    """An image's grid from its header only (a DICOM folder is read whole: GDCM orders and measures its
    slices)."""
    if os.path.isdir(path):
        return Geometry.of(read_sitk_image(path, "image"))
    try:
        reader = header_reader(path)
    except InputError:
        return Geometry.of(read_sitk_image(path, "image"))  # its own, more specific, error message
    if reader.GetDimension() != 3:
        return Geometry.of(read_sitk_image(path, "image"))
    return Geometry.of(reader)


@functools.lru_cache(maxsize=4096)
def _header(path: str, modified: float) -> Geometry:
    return read_header(path)


def read_headers(paths: Sequence[str]) -> List[Geometry]:
    """The grids of many images, each header read once while its file is unchanged."""
    return [_header(p, os.path.getmtime(p)) for p in paths]


# --------------------------------------------------------------------------------------------- writing

def write_label_image(indices_zyx: np.ndarray, classes: List[ClassInfo], geometry: Geometry, path: str) -> None:
    """Writes class indices as the classes' label values on ``geometry`` (atomically)."""
    image = geometry.to_image(indices_to_values(indices_zyx, classes))
    if path.lower().endswith(".seg.nrrd"):
        _set_segment_metadata(image, classes)
    write_image_atomic(image, path)


def _set_segment_metadata(image: sitk.Image, classes: List[ClassInfo]) -> None:
    """Slicer's segmentation-file fields, so that Slicer loads the label map with names and colors."""
    for i, c in enumerate(classes[1:]):
        color = " ".join(f"{v:.4f}" for v in class_color(classes, i + 1))
        for key, value in (("ID", f"Segment_{c.value}"), ("Name", c.name), ("LabelValue", str(c.value)),
                           ("Layer", "0"), ("Color", color)):
            image.SetMetaData(f"Segment{i}_{key}", value)


def write_image_atomic(image: sitk.Image, path: str) -> None:
    """Writes ``image`` with :func:`.atomicio.atomic_write`: no half-written outputs.

    The file keeps its own name inside the temporary folder, so that formats of two files (``.mhd`` with
    its ``.raw``/``.zraw`` data file) refer to their data file by its final name.
    """
    try:
        atomic_write(path, lambda tmp: sitk.WriteImage(image, tmp, useCompression=True))
    except RuntimeError as e:
        raise InputError(f"Cannot write {path} ({_sitk_reason(e)}); check the folder and the file "
                         f"extension (.nii.gz, .nrrd, .seg.nrrd, .mha).") from None
