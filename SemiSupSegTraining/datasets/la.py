"""The left atrium of the 2018 Atrial Segmentation Challenge (``semisupseg prepare la``): a folder per case
with ``lgemri.nrrd`` and ``laendo.nrrd`` (0/255), or the reference code's ``mri_norm2.h5`` (z-scored,
cropped, stored x, y, z without geometry). Images are z-scored; the crop to the label is optional."""

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..fileio import read_image
from ..geometry import Geometry, normalize
from ..manifest import default_classes
from ..progress import Reporter
from .convert import Conversion, ConvertedCase, SourceCase, check_output_folder, convert_cases, cropped_case
from .folds import safe_id
from .grids import binary_label, check_label_header, crop_box, read_label_on_grid

LA_IMAGE = "lgemri.nrrd"
LA_LABEL = "laendo.nrrd"
LA_H5 = "mri_norm2.h5"
LA_SPACING = (0.625, 0.625, 0.625)     # the challenge's voxel size; the h5 files store no geometry
LA_MIN_CROP_XY = (112, 112)            # the paper's crop in x/y: the reference widens its box to this


def find_la_cases(input_dir: str, layout: str = "auto") -> Tuple[str, List[SourceCase]]:
    """(layout, cases) of a left-atrium folder; ``layout`` is "auto", "nrrd" or "h5". Every folder below
    ``input_dir`` that holds ``lgemri.nrrd``/``laendo.nrrd`` (nrrd) or ``mri_norm2.h5`` (h5) is a case;
    "auto" prefers the nrrd files, which carry the scanner geometry."""
    if layout not in ("auto", "nrrd", "h5"):
        raise InputError(f"--layout is {layout!r}; use auto, nrrd or h5.")
    if not os.path.isdir(input_dir):
        raise InputError(f"The input folder {input_dir} does not exist; give the folder that holds one folder "
                         f"per case (each with {LA_IMAGE} and {LA_LABEL}, or {LA_H5}).")
    nrrd_dirs, h5_dirs = [], []
    for dirpath, dirnames, filenames in os.walk(input_dir):
        dirnames.sort()
        names = set(filenames)
        if LA_IMAGE in names or LA_LABEL in names:
            nrrd_dirs.append(dirpath)
        if LA_H5 in names:
            h5_dirs.append(dirpath)
    if layout == "auto":
        layout = "nrrd" if nrrd_dirs else "h5" if h5_dirs else ""
    folders = nrrd_dirs if layout == "nrrd" else h5_dirs
    if not folders:
        wanted = {"nrrd": f"{LA_IMAGE} and {LA_LABEL}", "h5": LA_H5}.get(layout, f"{LA_IMAGE} and {LA_LABEL}, "
                                                                                  f"or {LA_H5}")
        raise InputError(f"The input folder {input_dir} holds no case folder with {wanted}; give the folder of "
                         f"the 2018 Atrial Segmentation Challenge training set (one folder per case).")
    cases, seen = [], {}
    for folder in folders:
        case_id = safe_id(os.path.basename(os.path.normpath(folder)))
        if case_id in seen:
            raise InputError(f"The case folders {seen[case_id]} and {folder} have the same name '{case_id}'; "
                             f"case names must be unique, so give --input a folder with one set of cases.")
        seen[case_id] = folder
        if layout == "nrrd":
            image, label = os.path.join(folder, LA_IMAGE), os.path.join(folder, LA_LABEL)
            for path, name, other in ((image, LA_IMAGE, LA_LABEL), (label, LA_LABEL, LA_IMAGE)):
                if not os.path.isfile(path):
                    raise InputError(f"The case folder {folder} has {other} but no {name}; every case needs "
                                     f"both the image ({LA_IMAGE}) and its label ({LA_LABEL}), so add the file "
                                     f"or move the folder out of {input_dir}.")
            cases.append(SourceCase(case_id, image, label, "nrrd"))
        else:
            path = os.path.join(folder, LA_H5)
            cases.append(SourceCase(case_id, path, path, "h5"))
    return layout, sorted(cases, key=lambda c: c.id)


def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise InputError("Reading the h5 layout (mri_norm2.h5) needs the h5py package; install it with "
                         "'pip install h5py' (or 'pip install semisupseg[prepare]').") from None
    return h5py


def _check_h5(path: str) -> None:
    h5py = _import_h5py()
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                raise InputError(f"The file {path} has no dataset '{missing[0]}' (it has: "
                                 f"{', '.join(sorted(f.keys())) or 'nothing'}); an {LA_H5} file of the "
                                 f"reference code holds 'image' and 'label', so prepare this case from its "
                                 f"nrrd files.")
            shapes = {k: tuple(f[k].shape) for k in ("image", "label")}
    except OSError as e:
        raise InputError(f"The file {path} cannot be read as HDF5 ({str(e)[:160]}); check that it is complete."
                         ) from None
    if len(shapes["image"]) != 3 or shapes["image"] != shapes["label"]:
        raise InputError(f"The file {path} has an image of shape {shapes['image']} and a label of shape "
                         f"{shapes['label']}; both must be the same 3D shape, so prepare this case from its "
                         f"nrrd files.")


def _read_h5(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(image float32, label) in z, y, x order (the file stores x, y, z)."""
    h5py = _import_h5py()
    with h5py.File(path, "r") as f:
        image = np.asarray(f["image"][()], dtype=np.float32).transpose(2, 1, 0)
        label = np.asarray(f["label"][()]).transpose(2, 1, 0)
    if not np.isfinite(image).all():
        raise InputError(f"The image in {path} has NaN or infinite voxels; prepare this case from its nrrd "
                         f"files.")
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def _la_crop(label01_zyx: np.ndarray, margin: Optional[int], min_xy: Sequence[int]):
    shape = label01_zyx.shape[::-1]
    if margin is None:
        return (0, 0, 0), tuple(int(s) for s in shape)
    return crop_box(label01_zyx, (margin, margin, 0), (min_xy[0], min_xy[1], 0), axes=(True, True, False))


def prepare_la(input_dir: str, output_dir: str, labeled: Sequence[int] = (8, 16),
               crop_margin: Optional[int] = None, min_crop_xy: Sequence[int] = LA_MIN_CROP_XY,
               folds: int = 5, layout: str = "auto", h5_spacing: Sequence[float] = LA_SPACING,
               fold_lists: Optional[str] = None, reporter: Optional[Reporter] = None) -> str:
    """Prepares the left-atrium dataset (see :mod:`SemiSupSegTraining.datasets`); returns the path of
    ``manifest.json``.

    ``crop_margin`` (voxels, nrrd layout only): crop x/y to the atrium's bounding box plus this margin,
    widened to at least ``min_crop_xy`` (the reference preprocessing draws the margin at random from 10-20
    voxels and widens to 112×112); z stays whole. None (default) keeps the full volume.
    """
    output_dir = check_output_folder(output_dir, [input_dir])
    layout, sources = find_la_cases(input_dir, layout)
    if layout == "h5" and crop_margin is not None:
        raise InputError(f"The {LA_H5} files in {input_dir} are already cropped by the reference code; leave "
                         f"out --crop-to-label, or prepare from the nrrd files.")
    if crop_margin is not None and crop_margin < 0:
        raise InputError(f"--crop-to-label {crop_margin} is negative; give a margin of 0 or more voxels.")

    def check(source: SourceCase) -> None:
        if layout == "h5":
            _check_h5(source.image)
        else:
            check_label_header(source.image, source.label)

    def convert(source: SourceCase) -> ConvertedCase:
        if layout == "h5":
            array, raw_label = _read_h5(source.image)
            label01 = binary_label(raw_label, source.label, (1, 255))
            geometry = Geometry(tuple(int(s) for s in array.shape[::-1]), tuple(float(s) for s in h5_spacing),
                                (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
            image = geometry.to_image(array)        # already z-scored by the reference code
        else:
            volume = read_image(source.image)
            geometry = volume.geometry
            label_image = read_label_on_grid(source.label, geometry, source.image)
            label01 = binary_label(sitk.GetArrayFromImage(label_image), source.label, (1, 255))
            image = geometry.to_image(normalize(volume.array, "zscore"))
        start, stop = _la_crop(label01, crop_margin, min_crop_xy)
        return cropped_case(image, label01, geometry, start, stop)

    description = ("2018 Atrial Segmentation Challenge, left atrium; "
                   + ("reference h5 layout (z-scored, cropped by the reference code)" if layout == "h5" else
                      "z-scored " + ("full volumes" if crop_margin is None else
                                     f"and cropped to the label's x/y box + {crop_margin} voxels "
                                     f"(reproduces the paper; uses the label)")))
    provenance = {"layout": layout, "input": os.path.abspath(input_dir),
                  "settings": {"crop_to_label": crop_margin, "min_crop_xy": list(min_crop_xy), "folds": folds,
                               "fold_lists": fold_lists, "labeled": sorted(set(labeled)),
                               "h5_spacing": list(h5_spacing) if layout == "h5" else None}}
    conversion = Conversion(
        "left atrium", sources, default_classes(["left atrium"]), "MRI", check, convert,
        start_message=f"Preparing {len(sources)} left-atrium cases ({layout} layout) from {input_dir} into "
                      f"{output_dir}.",
        description=description, provenance=provenance)
    return convert_cases(output_dir, conversion, folds, labeled, fold_lists, reporter)
