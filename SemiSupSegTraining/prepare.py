"""``semisupseg prepare la | pancreas | decathlon``: datasets turned into volumes, a manifest and folds.

For users who have the data the paper was measured on:

- **Left atrium** (2018 Atrial Segmentation Challenge): a folder per case holding ``lgemri.nrrd`` (the
  LGE-MRI) and ``laendo.nrrd`` (the atrium, values 0/255), or the reference code's h5 layout
  (``<case>/mri_norm2.h5`` with datasets ``image``, float32 z-scored, and ``label``, 0/1, both stored in
  x, y, z order and without any geometry). Images are z-scored over the whole volume; by default they keep
  their full size. ``crop_margin`` reproduces the reference preprocessing's crop to the atrium's x/y
  bounding box plus a margin; that crop uses the label, which a new scan does not have, so use it only to
  reproduce the paper's numbers.
- **NIH Pancreas-CT**: a DICOM series per case (``PANCREAS_0001/<study>/<series>/*.dcm``) and label files
  ``label0001.nii.gz``, matched by case number. Images keep their Hounsfield units (the engine applies the
  paper's window -120..240 HU itself because the manifest says ``"modality": "CT"``). By default they are
  cropped as in the paper, around the pancreas plus 25 voxels, which uses the label too.

- **Medical Segmentation Decathlon** tasks (``Task02_Heart``, ``Task07_Pancreas``) and nnU-Net folders,
  read by :mod:`.layouts`: the cases with a label, images as they are, five folds (``prepare_decathlon``).

All write ``images/<case>.nii.gz`` and ``labels/<case>.nii.gz`` (a crop keeps every voxel's physical
position), ``manifest.json`` (all cases, all labeled), ``folds.json`` and per fold ready-to-train manifests
``fold{k}_labeled{n}_train.json`` (only the first n training cases keep their labels visible to training)
and ``fold{k}_test.json``, plus ``prepare.json`` (sources, crop boxes and settings).

Folds are contiguous blocks of the sorted case list in the reference code's pattern: fold 0 holds out the
last ``n // folds`` cases, folds 1, 2, ... the blocks before them from the start; labeled = the first n
training cases. For the 100 left-atrium cases fold 0 is the standard 80/20 split (the reference's test list
differs from the last 20 sorted ids by one case); for the 82 pancreas cases the folds are the reference's
(test blocks of 20, 20, 21, 21). ``fold_lists`` takes the folds from the reference's list files instead.
"""

import argparse
import json
import os
import re
import textwrap
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .config import PANCREAS_OVERLAP
from .fileio import header_reader, read_image, read_sitk_image, require_3d_scalar, write_image_atomic
from .geometry import Geometry, normalize
from .errors import InputError
from .manifest import CaseEntry, ClassInfo, Manifest, default_classes, write_manifest
from .progress import Reporter

LA_IMAGE = "lgemri.nrrd"
LA_LABEL = "laendo.nrrd"
LA_H5 = "mri_norm2.h5"
LA_SPACING = (0.625, 0.625, 0.625)     # the challenge's voxel size; the h5 files store no geometry
LA_MIN_CROP_XY = (112, 112)            # the paper's crop in x/y: the reference widens its box to this
PANCREAS_MIN_CROP = (96, 96, 96)       # the paper's crop for the pancreas
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
FOLDS_FORMAT = "semisupseg-folds"
PREPARE_FORMAT = "semisupseg-prepare"


@dataclass
class SourceCase:
    """One case found in the input: where its image and label come from."""

    id: str
    image: str
    label: str
    kind: str                      # "nrrd", "h5", "dicom" or "file"
    info: Dict[str, object] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ folds

def contiguous_folds(case_ids: Sequence[str], folds: int) -> List[Tuple[List[str], List[str]]]:
    """(train, test) per fold over the sorted ids, in the reference code's pattern: fold 0 holds out the last
    ``n // folds`` cases; folds 1, 2, ... hold out the contiguous blocks before them, from the start (the
    smaller blocks first). The training cases keep the sorted order. For 82 pancreas cases in 4 folds this
    gives the reference's test blocks of 20, 20, 21 and 21 cases."""
    ids = sorted(case_ids)
    n = len(ids)
    last = n // folds
    rest = n - last
    k = folds - 1
    sizes = [rest // k + (1 if i >= k - rest % k else 0) for i in range(k)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    tests = [ids[rest:]] + [ids[starts[i]:starts[i + 1]] for i in range(k)]
    result = []
    for test in tests:
        held_out = set(test)
        result.append(([c for c in ids if c not in held_out], test))
    return result


def read_fold_lists(folder: str, case_ids: Sequence[str]) -> List[Tuple[List[str], List[str]]]:
    """(train, test) per fold from ``train{k}.list`` and ``test{k}.list`` files (k = 0, 1, ...; one case id
    per line, a file extension such as ``.h5`` is ignored), as the reference code ships them. The training
    cases keep the file's order, so the labeled subsets are the first n lines of each train list."""
    known = set(case_ids)
    result = []
    k = 0
    while os.path.isfile(os.path.join(folder, f"test{k}.list")):
        pair = []
        for split in ("train", "test"):
            path = os.path.join(folder, f"{split}{k}.list")
            if not os.path.isfile(path):
                raise InputError(f"The fold-list folder {folder} has test{k}.list but no {split}{k}.list; give "
                                 f"both lists of every fold.")
            with open(path, encoding="utf-8") as f:
                ids = [_safe_id(re.sub(r"\.(h5|nii\.gz|nii|nrrd)$", "", line.strip()))
                       for line in f if line.strip()]
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise InputError(f"The fold list {path} names case '{unknown[0]}', which is not among the "
                                 f"{len(known)} cases found; check that the list belongs to this dataset.")
            pair.append(ids)
        overlap = sorted(set(pair[0]) & set(pair[1]))
        if overlap:
            raise InputError(f"The fold lists train{k}.list and test{k}.list in {folder} share case "
                             f"'{overlap[0]}'; a case cannot be trained and tested in one fold.")
        result.append((pair[0], pair[1]))
        k += 1
    if not result:
        raise InputError(f"The fold-list folder {folder} holds no test0.list; give the folder with train0.list, "
                         f"test0.list, train1.list, ... (e.g. the reference code's dataset/LA/Flods).")
    return result


def make_folds(case_ids: Sequence[str], folds: int, labeled_counts: Sequence[int], dataset: str,
               fold_lists: Optional[str] = None) -> dict:
    """The content of ``folds.json``: per fold the train and test ids and, per labeled count, the first n
    training cases (the labeled subset). ``fold_lists``: a folder of reference-style list files to use
    instead of contiguous blocks (``folds`` is then the number of list pairs)."""
    ids = sorted(case_ids)
    if fold_lists is None:
        if folds < 2:
            raise InputError(f"--folds is {folds}; give at least 2 folds.")
        if len(ids) < folds:
            raise InputError(f"Only {len(ids)} case(s) were found but {folds} folds need at least {folds}; "
                             f"add cases or give fewer --folds.")
        splits = contiguous_folds(ids, folds)
        rule = ("contiguous blocks of the sorted case list: fold 0 tests the last n // folds cases, folds 1.. "
                "the blocks before them from the start; labeled = the first n training cases")
    else:
        splits = read_fold_lists(fold_lists, ids)
        rule = f"the lists in {os.path.abspath(fold_lists)}; labeled = the first n lines of each train list"
    counts = sorted(set(int(n) for n in labeled_counts))
    if not counts or counts[0] < 1:
        raise InputError(f"--labeled {' '.join(str(n) for n in labeled_counts)} must list numbers of at "
                         f"least 1 labeled case per fold.")
    entries = []
    for k, (train, test) in enumerate(splits):
        if counts[-1] > len(train):
            raise InputError(f"--labeled asks for {counts[-1]} labeled cases but fold {k} has only "
                             f"{len(train)} training cases ({len(ids)} cases in {len(splits)} folds); give a "
                             f"smaller --labeled.")
        entries.append({"fold": k, "train": train, "test": test,
                        "labeled": {str(n): train[:n] for n in counts}})
    return {"format": FOLDS_FORMAT, "version": 1, "dataset": dataset, "cases": ids, "rule": rule,
            "folds": entries}


def _write_json_atomic(data: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def write_outputs(output_dir: str, entries: List[CaseEntry], classes: List[ClassInfo], modality: str,
                  dataset: str, description: str, folds: int, labeled_counts: Sequence[int], provenance: dict,
                  fold_lists: Optional[str] = None) -> Dict[str, object]:
    """``manifest.json``, ``folds.json``, the per-fold manifests and ``prepare.json``; returns their paths."""
    by_id = {e.id: e for e in entries}
    fold_data = make_folds(list(by_id), folds, labeled_counts, dataset, fold_lists)
    extra = {"dataset": dataset, "description": description}
    written: Dict[str, object] = {}
    written["manifest"] = write_manifest(
        Manifest(classes, [by_id[i] for i in fold_data["cases"]], modality, extra=dict(extra)),
        os.path.join(output_dir, "manifest.json"))
    for fold in fold_data["folds"]:
        k = fold["fold"]
        manifests = {}
        test_cases = [CaseEntry(i, by_id[i].image, by_id[i].label, True) for i in fold["test"]]
        name = f"fold{k}_test.json"
        write_manifest(Manifest(classes, test_cases, modality,
                                extra=dict(extra, fold=k, split="test")), os.path.join(output_dir, name))
        manifests["test"] = name
        manifests["train"] = {}
        for n, labeled in fold["labeled"].items():
            chosen = set(labeled)
            train_cases = [CaseEntry(i, by_id[i].image, by_id[i].label, i in chosen) for i in fold["train"]]
            name = f"fold{k}_labeled{n}_train.json"
            write_manifest(Manifest(classes, train_cases, modality,
                                    extra=dict(extra, fold=k, split="train", labeled_count=int(n))),
                           os.path.join(output_dir, name))
            manifests["train"][n] = name
        fold["manifests"] = manifests
    written["folds"] = os.path.join(output_dir, "folds.json")
    _write_json_atomic(fold_data, written["folds"])
    written["prepare"] = os.path.join(output_dir, "prepare.json")
    _write_json_atomic(dict({"format": PREPARE_FORMAT, "version": 1, "dataset": dataset}, **provenance),
                       written["prepare"])
    written["fold_manifests"] = fold_data["folds"]
    return written


# ------------------------------------------------------------------------------------ geometry help

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


def _grid_fits(reference: Geometry, geometry: Geometry, label_path: str, image_path: str,
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


def _onto_grid(label: sitk.Image, reference: Geometry, label_path: str, image_path: str,
               trust_voxels: Optional[bool] = None) -> sitk.Image:
    """The label on the image's grid: as is, resampled exactly when its grid is the same voxels in another
    order, or (``trust_voxels``) its voxels placed on the image's grid when only its header differs."""
    fit = _grid_fits(reference, Geometry.of(label), label_path, image_path, trust_voxels)
    if fit == "reordered":
        return sitk.Resample(label, [int(s) for s in reference.size], sitk.Transform(),
                             sitk.sitkNearestNeighbor, list(reference.origin), list(reference.spacing),
                             list(reference.direction), 0, label.GetPixelID())
    return reference.apply(label)   # within tolerance (or trusted): give it the image's exact grid


def _header_geometry(path: str, what: str) -> Geometry:
    """The grid from the file's header only (cheap), for checks before any volume is read."""
    reader = header_reader(path, what)
    if reader.GetDimension() != 3:
        raise InputError(f"The {what} {path} is {reader.GetDimension()}D; SemiSupSeg needs a 3D volume.")
    return Geometry(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                    tuple(reader.GetDirection()))


def binary_label(values: np.ndarray, path: str, allowed: Sequence[int]) -> np.ndarray:
    """A two-valued label (0 and one of ``allowed``) as uint8 0/1; other values are an error."""
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or np.any(values != np.round(values)):
            raise InputError(f"The label {path} has non-integer values; it must hold 0 for background and "
                             f"{' or '.join(str(a) for a in allowed)} for the structure.")
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


def _crop(image: sitk.Image, start: Sequence[int], stop: Sequence[int]) -> sitk.Image:
    """SimpleITK's slicing keeps each voxel's physical position (the origin moves to the box's corner)."""
    return image[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]


def _safe_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"


def _write_case(output_dir: str, case_id: str, image: sitk.Image, label01: sitk.Image) -> CaseEntry:
    image_path = os.path.join(output_dir, "images", f"{case_id}.nii.gz")
    label_path = os.path.join(output_dir, "labels", f"{case_id}.nii.gz")
    write_image_atomic(image, image_path)
    write_image_atomic(label01, label_path)
    return CaseEntry(case_id, os.path.abspath(image_path), os.path.abspath(label_path), True)


def _check_output(output_dir: str, inputs: Sequence[str]) -> str:
    output_dir = os.path.abspath(output_dir)
    for folder in inputs:
        folder = os.path.abspath(folder)
        if output_dir == folder:
            raise InputError(f"The output folder {output_dir} is an input folder; give a separate --output "
                             f"folder so that the originals stay untouched.")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise InputError(f"The output {output_dir} is a file; give a folder for --output.")
    os.makedirs(output_dir, exist_ok=True)
    return output_dir


# ------------------------------------------------------------------------------------- left atrium

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
        case_id = _safe_id(os.path.basename(os.path.normpath(folder)))
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
    """Prepares the left-atrium dataset (see the module docstring); returns the path of ``manifest.json``.

    ``crop_margin`` (voxels, nrrd layout only): crop x/y to the atrium's bounding box plus this margin,
    widened to at least ``min_crop_xy`` (the reference preprocessing draws the margin at random from 10-20
    voxels and widens to 112×112); z stays whole. None (default) keeps the full volume.
    """
    reporter = reporter or Reporter("none")
    output_dir = _check_output(output_dir, [input_dir])
    layout, sources = find_la_cases(input_dir, layout)
    if layout == "h5" and crop_margin is not None:
        raise InputError(f"The {LA_H5} files in {input_dir} are already cropped by the reference code; leave "
                         f"out --crop-to-label, or prepare from the nrrd files.")
    if crop_margin is not None and crop_margin < 0:
        raise InputError(f"--crop-to-label {crop_margin} is negative; give a margin of 0 or more voxels.")
    make_folds([c.id for c in sources], folds, labeled, "left atrium", fold_lists)   # fail early
    # Cheap checks of every case before anything is written.
    for source in sources:
        if layout == "h5":
            _check_h5(source.image)
        else:
            _grid_fits(_header_geometry(source.image, "image"), _header_geometry(source.label, "label"),
                       source.label, source.image, None)
    reporter.emit("start", "prepare", total=len(sources),
                  message=f"Preparing {len(sources)} left-atrium cases ({layout} layout) from {input_dir} "
                          f"into {output_dir}.")
    entries, records = [], []
    for i, source in enumerate(sources):
        if layout == "h5":
            array, raw_label = _read_h5(source.image)
            label01 = binary_label(raw_label, source.label, (1, 255))
            geometry = Geometry(tuple(int(s) for s in array.shape[::-1]), tuple(float(s) for s in h5_spacing),
                                (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
            image = geometry.to_image(array)        # already z-scored by the reference code
        else:
            volume = read_image(source.image)
            geometry = volume.geometry
            label_image = read_sitk_image(source.label, "label")
            require_3d_scalar(label_image, source.label, "label")
            label_image = _onto_grid(label_image, geometry, source.label, source.image)
            label01 = binary_label(sitk.GetArrayFromImage(label_image), source.label, (1, 255))
            image = geometry.to_image(normalize(volume.array, "zscore"))
        start, stop = _la_crop(label01, crop_margin, min_crop_xy)
        label = geometry.to_image(label01)
        entries.append(_write_case(output_dir, source.id, _crop(image, start, stop),
                                   _crop(label, start, stop)))
        records.append({"id": source.id, "image_source": os.path.abspath(source.image),
                        "label_source": os.path.abspath(source.label), "source_size": list(geometry.size),
                        "crop_start": list(start), "crop_stop": list(stop)})
        reporter.progress("prepare", i + 1, len(sources), case=source.id,
                          message=f"prepared {source.id} ({i + 1}/{len(sources)})")
    description = ("2018 Atrial Segmentation Challenge, left atrium; "
                   + ("reference h5 layout (z-scored, cropped by the reference code)" if layout == "h5" else
                      "z-scored " + ("full volumes" if crop_margin is None else
                                     f"and cropped to the label's x/y box + {crop_margin} voxels "
                                     f"(reproduces the paper; uses the label)")))
    provenance = {"layout": layout, "input": os.path.abspath(input_dir),
                  "settings": {"crop_to_label": crop_margin, "min_crop_xy": list(min_crop_xy), "folds": folds,
                               "fold_lists": fold_lists, "labeled": sorted(set(labeled)),
                               "h5_spacing": list(h5_spacing) if layout == "h5" else None},
                  "cases": records}
    written = write_outputs(output_dir, entries, default_classes(["left atrium"]), "MRI", "left atrium",
                            description, folds, labeled, provenance, fold_lists)
    reporter.emit("done", "prepare", manifest=written["manifest"], folds=written["folds"],
                  message=_summary(output_dir, len(entries), written))
    return str(written["manifest"])


# The paper's protocol per dataset beyond the defaults: the pancreas trains on 96³ crops and segments with
# windows every 16 voxels.
PROTOCOL = {"pancreas": (" --preset pancreas", f" and segment with --overlap {PANCREAS_OVERLAP} (the paper's "
                         f"96×96×96 crops, windows every 16 voxels)")}


def _summary(output_dir: str, count: int, written: Dict[str, object], dataset: str = "la") -> str:
    first = written["fold_manifests"][0]
    n = sorted(first["manifests"]["train"], key=int)[0]
    preset, segment = PROTOCOL.get(dataset, ("", ""))
    return (f"Wrote {count} cases, manifest.json, folds.json and {len(written['fold_manifests'])} folds of "
            f"manifests to {output_dir}; train with e.g. 'semisupseg train --manifest "
            f"{os.path.join(output_dir, first['manifests']['train'][n])} --output model-fold0{preset}'{segment}.")


# ----------------------------------------------------------------------------------------- pancreas

def _case_number(name: str) -> Optional[int]:
    digits = re.findall(r"\d+", name)
    return int(digits[-1]) if digits else None


def _image_suffix(name: str) -> Optional[str]:
    lower = name.lower()
    return next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), None)


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
            elif _image_suffix(name):
                add_image(number, path, "file")
    if not images:
        raise InputError(f"The --images folder {images_dir} holds no case (folders like PANCREAS_0001 with a "
                         f"DICOM series, or image files with the case number in the name); give the "
                         f"Pancreas-CT folder of the NIH download.")
    labels: Dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(labels_dir):
        dirnames.sort()
        for name in sorted(filenames):
            suffix = _image_suffix(name)
            number = _case_number(name[: -len(suffix)]) if suffix else None
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
    reader = sitk.ImageSeriesReader()
    best: List[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        if not filenames:
            continue
        for series in reader.GetGDCMSeriesIDs(dirpath):
            files = list(reader.GetGDCMSeriesFileNames(dirpath, series))
            if len(files) > len(best):
                best = files
    if not best:
        raise InputError(f"The case folder {folder} holds no DICOM series; check the download (each case "
                         f"folder holds a study folder with the CT series).")
    reader.SetFileNames(best)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"The DICOM series in {os.path.dirname(best[0])} cannot be read "
                         f"({str(e).strip()[:160]}); check that its files are complete.") from None
    require_3d_scalar(image, folder, "image")
    return image


def prepare_pancreas(images_dir: str, labels_dir: str, output_dir: str, labeled: Sequence[int] = (12,),
                     margin: Optional[int] = 25, min_crop_size: Sequence[int] = PANCREAS_MIN_CROP,
                     folds: int = 4, label_on_image_grid: bool = False, fold_lists: Optional[str] = None,
                     reporter: Optional[Reporter] = None) -> str:
    """Prepares NIH Pancreas-CT (see the module docstring); returns the path of ``manifest.json``.

    Images keep their Hounsfield units and the manifest says ``"modality": "CT"``, so training and
    segmentation apply the paper's window (-120..240 HU, the engine's default ``ct_window``). ``margin``
    (voxels): crop to the pancreas's bounding box plus this margin on every side, widened to at least
    ``min_crop_size`` (x, y, z) where the volume allows; None keeps the full volume. ``label_on_image_grid``
    places a label's voxels on its image's grid when the sizes agree but the label file's header does not.
    """
    reporter = reporter or Reporter("none")
    output_dir = _check_output(output_dir, [images_dir, labels_dir])
    if margin is not None and margin < 0:
        raise InputError(f"--margin {margin} is negative; give 0 or more voxels, or --no-crop.")
    sources, orphans = find_pancreas_cases(images_dir, labels_dir)
    make_folds([c.id for c in sources], folds, labeled, "pancreas", fold_lists)
    for source in sources:
        _header_geometry(source.label, "label")
        if source.kind == "file":
            _grid_fits(_header_geometry(source.image, "image"), _header_geometry(source.label, "label"),
                       source.label, source.image, label_on_image_grid)
    note = f" ({len(orphans)} label file(s) without an image are left out: {', '.join(orphans[:3])}" \
           f"{' ...' if len(orphans) > 3 else ''})" if orphans else ""
    reporter.emit("start", "prepare", total=len(sources),
                  message=f"Preparing {len(sources)} pancreas cases from {images_dir} and {labels_dir} into "
                          f"{output_dir}{note}.")
    entries, records = [], []
    for i, source in enumerate(sources):
        if source.kind == "dicom":
            image = read_dicom_case(source.image)
        else:
            image = read_sitk_image(source.image, "image")
            require_3d_scalar(image, source.image, "image")
        geometry = Geometry.of(image)
        label_image = read_sitk_image(source.label, "label")
        require_3d_scalar(label_image, source.label, "label")
        label_image = _onto_grid(label_image, geometry, source.label, source.image, label_on_image_grid)
        label01 = binary_label(sitk.GetArrayFromImage(label_image), source.label, (1,))
        if margin is None:
            start, stop = (0, 0, 0), tuple(int(s) for s in geometry.size)
        else:
            start, stop = crop_box(label01, (margin,) * 3, min_crop_size)
        entries.append(_write_case(output_dir, source.id, _crop(image, start, stop),
                                   _crop(geometry.to_image(label01), start, stop)))
        records.append({"id": source.id, "image_source": os.path.abspath(source.image),
                        "label_source": os.path.abspath(source.label), "source_size": list(geometry.size),
                        "crop_start": list(start), "crop_stop": list(stop)})
        reporter.progress("prepare", i + 1, len(sources), case=source.id,
                          message=f"prepared {source.id} ({i + 1}/{len(sources)})")
    description = ("NIH Pancreas-CT, pancreas; Hounsfield units (the engine windows -120..240 HU), "
                   + ("full volumes" if margin is None else
                      f"cropped to the label's box + {margin} voxels (reproduces the paper; uses the label)"))
    provenance = {"layout": "dicom", "images": os.path.abspath(images_dir),
                  "labels": os.path.abspath(labels_dir),
                  "settings": {"margin": margin, "min_crop_size": list(min_crop_size), "folds": folds,
                               "fold_lists": fold_lists, "labeled": sorted(set(labeled)),
                               "label_on_image_grid": label_on_image_grid},
                  "labels_without_image": orphans, "cases": records}
    written = write_outputs(output_dir, entries, default_classes(["pancreas"]), "CT", "pancreas", description,
                            folds, labeled, provenance, fold_lists)
    reporter.emit("done", "prepare", manifest=written["manifest"], folds=written["folds"],
                  message=_summary(output_dir, len(entries), written, "pancreas"))
    return str(written["manifest"])


# ---------------------------------------------------------------------------------------- decathlon

def prepare_decathlon(task_dir: str, output_dir: str, labeled: Sequence[int], folds: int = 5,
                      merge_tumour: bool = False, reporter: Optional[Reporter] = None) -> str:
    """Prepares a Medical Segmentation Decathlon task (Task02_Heart, Task07_Pancreas, ...; an nnU-Net
    folder reads the same, see :mod:`.layouts`) into the layout of :func:`prepare_la`; returns the path of
    ``manifest.json``. The cases of ``labelsTr`` are the cases (``imagesTs`` has no labels); images keep their
    intensities (the manifest's modality, from ``dataset.json``, decides the normalisation) and full size;
    labels keep their values. ``merge_tumour``: label 2 (Task07's tumour) becomes 1, one "pancreas" class as
    in the paper's NIH pancreas task."""
    from .layouts import read_folder

    reporter = reporter or Reporter("none")
    output_dir = _check_output(output_dir, [task_dir])
    manifest = read_folder(task_dir)            # the layout, channels and label values are checked here
    sources = [c for c in manifest.cases if c.label is not None]
    if not sources:
        raise InputError(f"The task folder {task_dir} has no labels in labelsTr/; a prepared dataset needs "
                         f"labeled cases to make folds of.")
    classes = manifest.classes
    if merge_tumour:
        if [c.value for c in classes] != [0, 1, 2]:
            raise InputError(f"--merge-tumour merges label 2 (the tumour) into label 1 (the pancreas) of "
                             f"Task07_Pancreas, but {task_dir} has the classes "
                             f"{', '.join(f'{c.value} {c.name}' for c in classes)}; leave it out.")
        classes = classes[:2]
    name = str(manifest.extra.get("dataset") or os.path.basename(os.path.normpath(task_dir)))
    make_folds([c.id for c in sources], folds, labeled, name)       # fail early
    for source in sources:
        _grid_fits(_header_geometry(source.image, "image"), _header_geometry(source.label, "label"),
                   source.label, source.image, None)
    reporter.emit("start", "prepare", total=len(sources),
                  message=f"Preparing {len(sources)} cases of {name} from {task_dir} into {output_dir}.")
    entries, records = [], []
    for i, source in enumerate(sources):
        image = read_sitk_image(source.image, "image")
        require_3d_scalar(image, source.image, "image")
        geometry = Geometry.of(image)
        label_image = read_sitk_image(source.label, "label")
        require_3d_scalar(label_image, source.label, "label")
        values = sitk.GetArrayFromImage(_onto_grid(label_image, geometry, source.label, source.image))
        if merge_tumour:
            values = np.where(values == 2, 1, values)
        entries.append(_write_case(output_dir, source.id, image, geometry.to_image(values.astype(np.uint8))))
        records.append({"id": source.id, "image_source": os.path.abspath(source.image),
                        "label_source": os.path.abspath(source.label), "source_size": list(geometry.size)})
        reporter.progress("prepare", i + 1, len(sources), case=source.id,
                          message=f"prepared {source.id} ({i + 1}/{len(sources)})")
    description = (f"{name} ({manifest.extra.get('layout')} folder), full volumes, original intensities"
                   + ("; label 2 (tumour) merged into 1" if merge_tumour else ""))
    provenance = {"layout": manifest.extra.get("layout"), "input": os.path.abspath(task_dir),
                  "settings": {"folds": folds, "labeled": sorted(set(labeled)), "merge_tumour": merge_tumour},
                  "cases": records}
    written = write_outputs(output_dir, entries, classes, manifest.modality, name, description, folds, labeled,
                            provenance)
    reporter.emit("done", "prepare", manifest=written["manifest"], folds=written["folds"],
                  message=_summary(output_dir, len(entries), written,
                                   "pancreas" if "pancreas" in name.lower() else "decathlon"))
    return str(written["manifest"])


# ---------------------------------------------------------------------------------------------- CLI

_OUTPUTS = ("Writes into OUTPUT: images/<case>.nii.gz and labels/<case>.nii.gz (0 background, 1 structure; a "
            "crop keeps every voxel's physical position), manifest.json (all cases, all labeled), folds.json, "
            "and for each fold K and labeled count N the ready-to-train manifests "
            "fold{K}_labeled{N}_train.json (the fold's training cases; only the first N keep their labels "
            "visible to training) and "
            "fold{K}_test.json (the held-out cases, labeled), plus prepare.json (sources, crop boxes, "
            "settings). "
            "Folds are contiguous blocks of the sorted case list: fold 0 holds out the last cases, folds 1, 2, ... "
            "the blocks before them from the start (or --fold-lists).")


def _description(*paragraphs: str, example_labeled: Optional[int] = None, dataset: str = "la") -> str:
    """Paragraphs wrapped for the terminal, then the outputs and a train/evaluate example."""
    text = "\n\n".join(textwrap.fill(p, 100) for p in paragraphs + (_OUTPUTS,))
    n = example_labeled if example_labeled is not None else "N"
    preset = PROTOCOL[dataset][0] if dataset in PROTOCOL else ""
    overlap = f" --overlap {PANCREAS_OVERLAP}" if dataset == "pancreas" else ""
    return (text + "\n\nTrain and evaluate fold 0:\n"
            f"  semisupseg train --manifest OUTPUT/fold0_labeled{n}_train.json --output model-fold0{preset}\n"
            f"  semisupseg evaluate --model model-fold0/model.pt --manifest OUTPUT/fold0_test.json{overlap}")


def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``prepare`` with the sub-commands ``la``, ``pancreas`` and ``decathlon`` to a ``add_subparsers()`` object."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = subparsers.add_parser(
        "prepare",
        help="turn the paper's datasets (left atrium, NIH pancreas) or a Decathlon task into volumes, manifests "
             "and folds",
        description=_description("Turn the datasets of the paper into NIfTI volumes, a manifest, fold lists "
                                 "and ready-to-train manifests per fold."),
        formatter_class=formatter)
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET")
    datasets.required = True

    p = datasets.add_parser(
        "la", help="2018 Atrial Segmentation Challenge (lgemri.nrrd + laendo.nrrd, or mri_norm2.h5 files)",
        formatter_class=formatter,
        description=_description(
            "Prepare the left-atrium LGE-MRI of the 2018 Atrial Segmentation Challenge.",
            "INPUT holds a folder per case with lgemri.nrrd (image) and laendo.nrrd (label, 0/255), or "
            "the reference code's mri_norm2.h5 (datasets 'image', z-scored, and 'label', 0/1, stored "
            "x,y,z without geometry: written with --spacing, identity direction, origin 0). Images "
            "are z-scored and keep their full size unless --crop-to-label is given. The class is "
            "'left atrium', the modality MRI. Five folds of 80/20 by default: for the 100 training "
            "cases, fold 0 is the standard split (first 80 train, last 20 test; labeled = the first 8 "
            "or 16).", example_labeled=8))
    p.add_argument("--input", required=True, metavar="DIR",
                   help="the folder with one folder per case (e.g. '2018LA_Seg_Training Set'); searched "
                        "recursively")
    p.add_argument("--output", required=True, metavar="DIR", help="the folder to write everything into")
    p.add_argument("--labeled", type=int, nargs="+", default=[8, 16], metavar="N",
                   help="labeled cases per fold, one training manifest each (default: 8 16, i.e. 10%% and 20%% "
                        "of 80)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    _fold_lists(p, "LA")
    p.add_argument("--crop-to-label", type=int, nargs="?", const=15, default=None, metavar="MARGIN",
                   help="crop x/y to the atrium's bounding box + MARGIN voxels (default MARGIN 15; widened to "
                        "at least --min-crop-size), z whole, as the reference preprocessing does (it draws the "
                        "margin at random from 10-20). This uses the label, which a new scan does not have: "
                        "use it only to reproduce the paper's numbers. Default: no crop")
    p.add_argument("--min-crop-size", type=int, nargs=2, default=list(LA_MIN_CROP_XY), metavar=("X", "Y"),
                   help="with --crop-to-label: the smallest x/y size of the crop (default 112 112, the paper's "
                        "training crop)")
    p.add_argument("--layout", choices=("auto", "nrrd", "h5"), default="auto",
                   help="which files to read: auto (nrrd when present, else h5; default), nrrd or h5")
    p.add_argument("--spacing", type=float, nargs=3, default=list(LA_SPACING), metavar=("SX", "SY", "SZ"),
                   help="h5 layout only: the voxel size in mm written into the volumes (default 0.625 0.625 "
                        "0.625, the challenge's)")
    _progress(p)

    p = datasets.add_parser(
        "pancreas", help="NIH Pancreas-CT (a DICOM series per case + label0001.nii.gz files)",
        formatter_class=formatter,
        description=_description(
            "Prepare the NIH Pancreas-CT dataset.",
            "IMAGES holds a folder per case (PANCREAS_0001/<study>/<series>/*.dcm; the series is found "
            "by walking the folder) or image files with the case number in the name; LABELS holds "
            "label0001.nii.gz, ... Cases and labels are matched by number. Each label must lie on its "
            "image's grid (a label stored in another axis order or direction over the same voxels is "
            "resampled exactly). Images keep their Hounsfield units: the manifest says modality CT, so "
            "training and segmentation apply the paper's window -120..240 HU themselves. By default "
            "the volumes are cropped as in the paper, to the pancreas + 25 voxels; that crop uses the "
            "label, which a new scan does not have: it reproduces the paper's numbers, while --no-crop "
            "keeps whole scans for a model meant for new ones. Class 'pancreas'. Four folds by "
            "default; 12 labeled training cases (~20%). Train with --preset pancreas: the paper's 96×96×96 "
            f"crops; segment and evaluate with --overlap {PANCREAS_OVERLAP}: its windows every 16 voxels.",
            example_labeled=12, dataset="pancreas"))
    p.add_argument("--images", required=True, metavar="DIR",
                   help="the folder with the DICOM cases (PANCREAS_0001, ...), e.g. the download's "
                        "Pancreas-CT")
    p.add_argument("--labels", required=True, metavar="DIR", help="the folder with label0001.nii.gz, ...")
    p.add_argument("--output", required=True, metavar="DIR", help="the folder to write everything into")
    p.add_argument("--labeled", type=int, nargs="+", default=[12], metavar="N",
                   help="labeled cases per fold, one training manifest each (default: 12)")
    p.add_argument("--folds", type=int, default=4, help="number of folds (default 4)")
    _fold_lists(p, "Pancreas")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--margin", type=int, default=25,
                      help="crop to the pancreas's bounding box + MARGIN voxels on every side (default 25, the "
                           "paper's; uses the label)")
    crop.add_argument("--no-crop", action="store_true", help="keep the whole scans")
    p.add_argument("--min-crop-size", type=int, nargs=3, default=list(PANCREAS_MIN_CROP),
                   metavar=("X", "Y", "Z"),
                   help="the smallest size of the crop where the scan allows (default 96 96 96, the paper's "
                        "training crop)")
    p.add_argument("--label-on-image-grid", action="store_true",
                   help="when a label has its image's size but another origin, spacing or direction in its "
                        "header, place its voxels on the image's grid anyway (check the overlay in Slicer)")
    _progress(p)

    p = datasets.add_parser(
        "decathlon", help="a Medical Segmentation Decathlon task (Task02_Heart, Task07_Pancreas, ...)",
        formatter_class=formatter,
        description=_description(
            "Prepare a Medical Segmentation Decathlon task (or an nnU-Net dataset folder).",
            "TASK_DIR holds imagesTr/, labelsTr/ and dataset.json (its 'labels' name the classes, its "
            "'modality' decides the normalisation: CT the HU window, MRI the z-score). The cases with a "
            "label are the cases; images keep their intensities and full size, labels their values. "
            "Task02_Heart (the left atrium, 20 MRI cases) and Task07_Pancreas (281 CT cases; labels 1 "
            "pancreas, 2 tumour; --merge-tumour makes them one pancreas class as in the paper's NIH "
            "task). Five folds by default.", example_labeled=4))
    p.add_argument("task_dir", metavar="TASK_DIR", help="the task folder, e.g. Task02_Heart")
    p.add_argument("--output", required=True, metavar="DIR", help="the folder to write everything into")
    p.add_argument("--labeled", type=int, nargs="+", required=True, metavar="N",
                   help="labeled cases per fold, one training manifest each (e.g. 4 for a fifth of "
                        "Task02_Heart's 16 training cases per fold)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--merge-tumour", action="store_true",
                   help="Task07_Pancreas: label 2 (tumour) becomes 1 (pancreas), one class as in the paper")
    _progress(p)
    return parser


def _fold_lists(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--fold-lists", metavar="DIR",
                        help="take the folds from train0.list, test0.list, train1.list, ... in DIR (one case "
                             f"id per line, as the reference code's dataset/{name}/Flods) instead of contiguous "
                             "blocks; labeled = the first N lines of each train list; --folds is then ignored")


def _progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="how to show progress: a bar on the terminal (default), one JSON object per line "
                             "on stdout, or nothing")


def run_prepare(args) -> None:
    """Runs ``semisupseg prepare la|pancreas|decathlon`` from parsed arguments."""
    reporter = Reporter(getattr(args, "progress", "bar"))
    if args.dataset == "la":
        prepare_la(args.input, args.output, labeled=args.labeled, crop_margin=args.crop_to_label,
                   min_crop_xy=args.min_crop_size, folds=args.folds, layout=args.layout,
                   h5_spacing=args.spacing, fold_lists=args.fold_lists, reporter=reporter)
    elif args.dataset == "pancreas":
        prepare_pancreas(args.images, args.labels, args.output, labeled=args.labeled,
                         margin=None if args.no_crop else args.margin, min_crop_size=args.min_crop_size,
                         folds=args.folds, label_on_image_grid=args.label_on_image_grid,
                         fold_lists=args.fold_lists, reporter=reporter)
    elif args.dataset == "decathlon":
        prepare_decathlon(args.task_dir, args.output, labeled=args.labeled, folds=args.folds,
                          merge_tumour=args.merge_tumour, reporter=reporter)
    else:
        raise InputError(f"Unknown dataset {args.dataset!r}; use 'prepare la', 'pancreas' or 'decathlon'.")
