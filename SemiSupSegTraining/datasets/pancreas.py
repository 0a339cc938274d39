"""NIH Pancreas-CT (``semisupseg prepare pancreas``): a DICOM series per case (``PANCREAS_0001/<study>/
<series>/*.dcm``, or image files with the case number in the name) and label files ``label0001.nii.gz``,
matched by number. Images keep their Hounsfield units; by default they are cropped as in the paper."""

import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import SimpleITK as sitk

from ..errors import InputError
from ..fileio import largest_dicom_series, read_dicom_files, read_sitk_image, require_3d_scalar
from ..geometry import Geometry
from ..layouts import split_image_name
from ..manifest import default_classes
from ..progress import Reporter
from .convert import Conversion, ConvertedCase, SourceCase, check_output_folder, convert_cases, cropped_case
from .grids import binary_label, check_label_header, crop_box, header_geometry, read_label_on_grid

PANCREAS_MIN_CROP = (96, 96, 96)       # the paper's crop for the pancreas


def _case_number(name: str) -> Optional[int]:
    digits = re.findall(r"\d+", name)
    return int(digits[-1]) if digits else None


def find_pancreas_cases(images_dir: str, labels_dir: str) -> Tuple[List[SourceCase], List[str]]:
    """(cases, labels without an image). Images: folders named like ``PANCREAS_0001`` anywhere below
    ``images_dir`` (each holding a DICOM series, however deeply nested) or, failing those, its immediate
    sub-folders and image files with a number in the name. Labels: image files with a number in the name
    anywhere below ``labels_dir`` (``label0001.nii.gz``). Matched by number."""
    for folder, option in ((images_dir, "--images"), (labels_dir, "--labels")):
        if not os.path.isdir(folder):
            what = ("DICOM cases (PANCREAS_0001, ...)" if option == "--images" else
                    "label files (label0001.nii.gz, ...)")
            raise InputError(f"The {option} folder {folder} does not exist; give the folder of the {what}.")
    images: Dict[int, Tuple[str, str]] = {}

    def add_image(number: int, path: str, kind: str) -> None:
        if number in images:
            raise InputError(f"Both {images[number][0]} and {path} look like case {number}; keep one of them "
                             f"in the --images folder.")
        images[number] = (path, kind)

    for dirpath, dirnames, _ in os.walk(images_dir):
        dirnames.sort()
        for name in list(dirnames):
            match = re.fullmatch(r"(?i)pancreas[_-]?(\d+)", name)
            if match:
                add_image(int(match.group(1)), os.path.join(dirpath, name), "dicom")
                dirnames.remove(name)                  # its series lies inside
    if not images:
        for name in sorted(os.listdir(images_dir)):
            path = os.path.join(images_dir, name)
            number = _case_number(name.split(".")[0])
            if number is None or name.startswith("."):
                continue
            if os.path.isdir(path):
                add_image(number, path, "dicom")
            elif split_image_name(name)[1]:
                add_image(number, path, "file")
    if not images:
        raise InputError(f"The --images folder {images_dir} holds no case (folders like PANCREAS_0001 with a "
                         f"DICOM series, or image files with the case number in the name); give the "
                         f"Pancreas-CT folder of the NIH download.")
    labels: Dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(labels_dir):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ending = split_image_name(name)
            number = _case_number(stem) if ending else None
            if number is None or name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if number in labels:
                raise InputError(f"Both {labels[number]} and {path} look like the label of case {number}; keep "
                                 f"one of them in the --labels folder.")
            labels[number] = path
    cases = []
    for number in sorted(images):
        path, kind = images[number]
        if number not in labels:
            raise InputError(f"The case {path} (number {number}) has no label in {labels_dir}; add "
                             f"label{number:04d}.nii.gz or move the case out of the --images folder.")
        cases.append(SourceCase(f"PANCREAS_{number:04d}", path, labels[number], kind, {"number": number}))
    orphans = [labels[n] for n in sorted(labels) if n not in images]
    return cases, orphans


def read_dicom_case(folder: str) -> sitk.Image:
    """The largest DICOM series found anywhere below ``folder`` (localisers and scouts have few slices)."""
    files = largest_dicom_series(folder, below=True)
    if not files:
        raise InputError(f"The case folder {folder} holds no DICOM series; check the download (each case "
                         f"folder holds a study folder with the CT series).")
    image = read_dicom_files(files)
    require_3d_scalar(image, folder, "image")
    return image


def prepare_pancreas(images_dir: str, labels_dir: str, output_dir: str, labeled: Sequence[int] = (12,),
                     margin: Optional[int] = 25, min_crop_size: Sequence[int] = PANCREAS_MIN_CROP,
                     folds: int = 4, label_on_image_grid: bool = False, fold_lists: Optional[str] = None,
                     reporter: Optional[Reporter] = None) -> str:
    """Prepares NIH Pancreas-CT (see :mod:`SemiSupSegTraining.datasets`); returns the path of ``manifest.json``.

    Images keep their Hounsfield units and the manifest says ``"modality": "CT"``, so training and
    segmentation apply the paper's window (-120..240 HU, the engine's default ``ct_window``). ``margin``
    (voxels): crop to the pancreas's bounding box plus this margin on every side, widened to at least
    ``min_crop_size`` (x, y, z) where the volume allows; None keeps the full volume. ``label_on_image_grid``
    places a label's voxels on its image's grid when the sizes agree but the label file's header does not.
    """
    output_dir = check_output_folder(output_dir, [images_dir, labels_dir])
    if margin is not None and margin < 0:
        raise InputError(f"--margin {margin} is negative; give 0 or more voxels, or --no-crop.")
    sources, orphans = find_pancreas_cases(images_dir, labels_dir)

    def check(source: SourceCase) -> None:
        header_geometry(source.label, "label")
        if source.kind == "file":
            check_label_header(source.image, source.label, label_on_image_grid)

    def convert(source: SourceCase) -> ConvertedCase:
        if source.kind == "dicom":
            image = read_dicom_case(source.image)
        else:
            image = read_sitk_image(source.image, "image")
            require_3d_scalar(image, source.image, "image")
        geometry = Geometry.of(image)
        label_image = read_label_on_grid(source.label, geometry, source.image, label_on_image_grid)
        label01 = binary_label(sitk.GetArrayFromImage(label_image), source.label, (1,))
        if margin is None:
            start, stop = (0, 0, 0), tuple(int(s) for s in geometry.size)
        else:
            start, stop = crop_box(label01, (margin,) * 3, min_crop_size)
        return cropped_case(image, label01, geometry, start, stop)

    note = f" ({len(orphans)} label file(s) without an image are left out: {', '.join(orphans[:3])}" \
           f"{' ...' if len(orphans) > 3 else ''})" if orphans else ""
    description = ("NIH Pancreas-CT, pancreas; Hounsfield units (the engine windows -120..240 HU), "
                   + ("full volumes" if margin is None else
                      f"cropped to the label's box + {margin} voxels (reproduces the paper; uses the label)"))
    provenance = {"layout": "dicom", "images": os.path.abspath(images_dir),
                  "labels": os.path.abspath(labels_dir),
                  "settings": {"margin": margin, "min_crop_size": list(min_crop_size), "folds": folds,
                               "fold_lists": fold_lists, "labeled": sorted(set(labeled)),
                               "label_on_image_grid": label_on_image_grid},
                  "labels_without_image": orphans}
    conversion = Conversion(
        "pancreas", sources, default_classes(["pancreas"]), "CT", check, convert,
        start_message=f"Preparing {len(sources)} pancreas cases from {images_dir} and {labels_dir} into "
                      f"{output_dir}{note}.",
        description=description, provenance=provenance, protocol="pancreas")
    return convert_cases(output_dir, conversion, folds, labeled, fold_lists, reporter)
