"""Dataset folders as the field lays them out, read into a manifest.

Three layouts are understood:

- **nnU-Net v2** (``Dataset0XX_Name/``): ``imagesTr/CASE_0000.nii.gz`` (``_0000`` is channel 0),
  ``labelsTr/CASE.nii.gz``, ``imagesTs/``, and ``dataset.json`` with ``channel_names``, ``labels`` (name →
  value) and ``file_ending``.
- **Medical Segmentation Decathlon** (``Task02_Heart/``): ``imagesTr/CASE.nii.gz``, ``labelsTr/CASE.nii.gz``,
  ``imagesTs/``, and ``dataset.json`` with ``modality`` and ``labels`` (value → name). nnU-Net v1 task
  folders (the same with ``_0000`` image names) read the same way.
- **A plain folder**: an ``images/`` folder (or ``imagesTr``, ``image``, ``volumes``) with ``labels/``
  (``labelsTr``, ``label``, ``masks``, ``segmentations``) beside it holding label files of the same names,
  or one folder where a label is named like its image plus a suffix such as ``_label``, ``-seg``,
  ``_mask`` or ``.seg.nrrd`` (Slicer's segmentation files).

The files on disk decide which cases there are (as nnU-Net v2 does; a Decathlon ``training`` list is not
needed). The modality follows nnU-Net's rule: a channel named ``CT`` gets the HU window, any other one
(MRI, MR, T2, ADC, ...) the z-score. ``imagesTs/`` holds unlabeled cases, used only when asked
(``use_test_images``). Finding the cases (:func:`find_cases`, :func:`scan_folder`) needs only the standard
library, so that the Slicer module can import it cheaply; :func:`read_folder` also reads the image headers
and the label files (SimpleITK) to check channels and label values and to name the classes.
"""

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import InputError
from .manifest import MODALITIES, CaseEntry, ClassInfo, Manifest, load_manifest

IMAGE_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Name endings that make a file the label of the image with the rest of the name.
LABEL_SUFFIXES = (".seg", "_segmentation", "-segmentation", "_labels", "-labels", "_label", "-label",
                  "_seg", "-seg", "_mask", "-mask", "_gt", "-gt")
IMAGE_FOLDERS = ("images", "imagesTr", "image", "volumes")
LABEL_FOLDERS = ("labels", "labelsTr", "label", "masks", "segmentations")
DATASET_JSON = "dataset.json"
NNUNET_V2, DECATHLON, PLAIN = "nnU-Net v2", "Decathlon", "plain"
_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


@dataclass
class DatasetFolder:
    """The cases found in a folder: every case with a label is labeled; ``imagesTs`` cases have none."""

    folder: str
    layout: str                          # NNUNET_V2, DECATHLON or PLAIN
    cases: List[CaseEntry]
    dataset: Dict[str, object] = field(default_factory=dict)   # dataset.json, when there is one

    @property
    def dataset_json(self) -> str:
        return os.path.join(self.folder, DATASET_JSON)


# ------------------------------------------------------------------------------------------- names

def split_image_name(filename: str) -> Tuple[str, str]:
    """``"case01.nii.gz"`` -> ``("case01", ".nii.gz")``; ``("name", "")`` when not an image file."""
    lower = filename.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext) and len(filename) > len(ext):
            if ext == ".seg.nrrd":  # a Slicer segmentation file: the stem keeps ".seg" for label matching
                return filename[: -len(".nrrd")], ".nrrd"
            return filename[: -len(ext)], filename[-len(ext):]
    return filename, ""


def _label_stem(stem: str) -> Optional[str]:
    """The image stem a label file belongs to (``"case01_label"`` -> ``"case01"``), or None."""
    lower = stem.lower()
    for suffix in LABEL_SUFFIXES:
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def _images_in(folder: str, ending: Optional[str] = None) -> List[Tuple[str, str]]:
    """(stem, path) of the image files in a folder, by name; hidden files (the Decathlon archives' ``._*``
    macOS leftovers) are skipped. ``ending``: only files with this ending (nnU-Net's ``file_ending``)."""
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        if ending is not None:
            if name.lower().endswith(ending.lower()) and len(name) > len(ending):
                out.append((name[: -len(ending)], path))
        elif split_image_name(name)[1]:
            out.append((split_image_name(name)[0], path))
    return out


def _one_per_id(pairs: Sequence[Tuple[str, str]], folder: str) -> Dict[str, str]:
    """{case id: path}; two files for one id (``a.nii.gz`` and ``a.nrrd``) are an error."""
    out: Dict[str, str] = {}
    for case_id, path in pairs:
        if case_id in out:
            raise InputError(f"Case id '{case_id}' appears twice in {folder} ({os.path.basename(out[case_id])} "
                             f"and {os.path.basename(path)}); remove or rename one of them.")
        out[case_id] = path
    return out


def _channel_named(pairs: Sequence[Tuple[str, str]]) -> bool:
    """Whether image names carry nnU-Net's channel suffixes (``CASE_0000``): all of them do and every case
    has its channel 0, unlike numbered names such as ``scan_0001``, ``scan_0002`` (one case each)."""
    groups: Dict[str, set] = {}
    for stem, _ in pairs:
        match = _CHANNEL.match(stem)
        if match is None:
            return False
        groups.setdefault(match.group(1), set()).add(match.group(2))
    return len(groups) > 1 and all("0000" in g for g in groups.values())


def _channels(pairs: Sequence[Tuple[str, str]], folder: str) -> Dict[str, str]:
    """{case id: channel-0 path} of images named ``CASE_0000``, as nnU-Net names them; an image without a
    channel suffix, a case without its channel 0 and a case with several channels are refused."""
    groups: Dict[str, Dict[str, str]] = {}
    for stem, path in pairs:
        match = _CHANNEL.match(stem)
        if match is None:
            raise InputError(f"The image {path} has no channel suffix: nnU-Net names images CASE_0000"
                             f"{_ending(path)} (channel 0), so rename it to {stem}_0000{_ending(path)}.")
        groups.setdefault(match.group(1), {})[match.group(2)] = path
    out = []
    for case_id, channels in groups.items():
        if "0000" not in channels:
            first = sorted(channels.values())[0]
            raise InputError(f"Case '{case_id}' has {os.path.basename(first)} but no {case_id}_0000"
                             f"{_ending(first)} in {folder}; add its channel 0 or remove the case.")
        if len(channels) > 1:
            raise _multichannel(case_id, channels["0000"], len(channels))
        out.append((case_id, channels["0000"]))
    return _one_per_id(sorted(out), folder)


def _case_images(pairs: Sequence[Tuple[str, str]], folder: str, suffixed: bool) -> Dict[str, str]:
    """{case id: image path}: by channel-0 name when the names carry channel suffixes, else by file name."""
    return _channels(pairs, folder) if suffixed else _one_per_id(pairs, folder)


def _ending(path: str) -> str:
    return split_image_name(os.path.basename(path))[1] or os.path.splitext(path)[1]


def _multichannel(case_id: str, path: str, count: int) -> InputError:
    return InputError(f"Case '{case_id}' ({path}) has {count} channels; SemiSupSeg segments single-channel "
                      f"images, so give a dataset of one channel per case (e.g. only its _0000 images).")


# ------------------------------------------------------------------------------------------ layouts

def _read_dataset_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"The dataset file {path} is not valid JSON ({e}); fix it or remove it.") from None
    if not isinstance(data, dict):
        raise InputError(f"The dataset file {path} is not a JSON object with 'labels'; fix it or remove it.")
    return data


def find_cases(folder: str, use_test_images: bool = False) -> DatasetFolder:
    """The cases of an nnU-Net v2, Decathlon or plain folder (see the module docstring), sorted by id
    (``imagesTs`` cases after the training cases). Only file names and ``dataset.json`` are read."""
    if not os.path.isdir(folder):
        raise InputError(f"{folder} is not a folder; give a dataset folder (nnU-Net, Decathlon, or images/ "
                         f"with labels/).")
    folder = os.path.abspath(folder)
    json_path = os.path.join(folder, DATASET_JSON)
    if os.path.isfile(json_path) and os.path.isdir(os.path.join(folder, "imagesTr")):
        return _find_task_cases(folder, _read_dataset_json(json_path), use_test_images)
    if use_test_images:
        raise InputError(f"The folder {folder} is no nnU-Net or Decathlon folder (imagesTr/ and dataset.json), "
                         f"so it has no test images; leave out --use-test-images.")
    return DatasetFolder(folder, PLAIN, _find_plain_cases(folder))


def _find_task_cases(folder: str, data: dict, use_test_images: bool) -> DatasetFolder:
    """nnU-Net v2 (``channel_names``) or Decathlon / nnU-Net v1 (``modality``) folders."""
    layout = NNUNET_V2 if "channel_names" in data else DECATHLON
    ending = data.get("file_ending") if layout == NNUNET_V2 else None
    if ending is not None and not isinstance(ending, str):
        raise InputError(f"The dataset file {os.path.join(folder, DATASET_JSON)} has a 'file_ending' that is "
                         f"not text such as \".nii.gz\"; fix it.")
    images_dir = os.path.join(folder, "imagesTr")
    pairs = _images_in(images_dir, ending)
    # nnU-Net names images CASE_0000; the Decathlon names them CASE (nnU-Net v1 task folders: CASE_0000).
    suffixed = layout == NNUNET_V2 or _channel_named(pairs)
    images = _case_images(pairs, images_dir, suffixed)
    labels_dir = os.path.join(folder, "labelsTr")
    labels = _one_per_id(_images_in(labels_dir, ending), labels_dir) if os.path.isdir(labels_dir) else {}
    for case_id, path in labels.items():
        if case_id not in images:
            expected = f"{case_id}_0000{_ending(path)}" if suffixed else os.path.basename(path)
            raise InputError(f"The label {path} has no image {os.path.join(images_dir, expected)}; add the "
                             f"image or remove the label.")
    cases = [CaseEntry(i, images[i], labels.get(i), True) for i in sorted(images)]
    if use_test_images:
        test_dir = os.path.join(folder, "imagesTs")
        if not os.path.isdir(test_dir):
            raise InputError(f"The folder {folder} has no imagesTs/ folder; leave out --use-test-images.")
        tests = _case_images(_images_in(test_dir, ending), test_dir, suffixed)
        for case_id in sorted(tests):
            if case_id in images:
                raise InputError(f"Case id '{case_id}' appears twice, in imagesTr ({images[case_id]}) and "
                                 f"imagesTs ({tests[case_id]}); rename one of them or leave out "
                                 f"--use-test-images.")
            cases.append(CaseEntry(case_id, tests[case_id], None, True))
    if not cases:
        raise InputError(f"The folder {images_dir} holds no images"
                         f"{f' ending in {ending}' if ending else ''}; check the dataset folder.")
    return DatasetFolder(folder, layout, cases, data)


def _find_plain_cases(folder: str) -> List[CaseEntry]:
    image_dir = next((os.path.join(folder, d) for d in IMAGE_FOLDERS if os.path.isdir(os.path.join(folder, d))),
                     None)
    if image_dir is not None:
        pairs = _images_in(image_dir)
        images = _case_images(pairs, image_dir, _channel_named(pairs))
        label_dir = next((os.path.join(folder, d) for d in LABEL_FOLDERS
                          if os.path.isdir(os.path.join(folder, d))), None)
        labels: Dict[str, str] = {}
        if label_dir is not None:
            labels = _one_per_id([(_owner(stem, images), path) for stem, path in _images_in(label_dir)],
                                 label_dir)
            for case_id, path in labels.items():
                if case_id not in images:
                    raise InputError(f"The label {path} has no image of the same name in {image_dir}; add the "
                                     f"image or remove the label.")
        cases = [CaseEntry(i, images[i], labels.get(i), True) for i in sorted(images)]
    else:
        files = _images_in(folder)
        stems = {stem for stem, _ in files}
        labels, images_found = {}, []
        for stem, path in files:
            owner = _label_stem(stem)
            if owner is not None and owner in stems:
                if owner in labels:
                    raise InputError(f"Case '{owner}' has two labels in {folder} ({os.path.basename(labels[owner])}"
                                     f" and {os.path.basename(path)}); remove or rename one of them.")
                labels[owner] = path
            else:
                images_found.append((stem, path))
        images = _one_per_id(images_found, folder)
        cases = [CaseEntry(i, images[i], labels.get(i), True) for i in sorted(images)]
    if not cases:
        raise InputError(f"No image files (.nii.gz, .nii, .nrrd, .mha, .mhd) were found in {folder}; give a "
                         f"dataset folder (nnU-Net, Decathlon, or images/ with labels/).")
    return cases


def _owner(stem: str, images: Dict[str, str]) -> str:
    """The case a file of a labels folder belongs to: the image of its name, else of its name without a
    label suffix ("case01_label") or channel suffix ("case01_0000")."""
    for candidate in (stem, _label_stem(stem), re.sub(r"_0000$", "", stem)):
        if candidate in images:
            return candidate
    return stem


def scan_folder(folder: str) -> List[Tuple[str, str, Optional[str]]]:
    """The cases of a folder as ``(case id, image path, label path or None)``, sorted by id (see
    :func:`find_cases`); what the Slicer module's *Add folder...* lists."""
    return [(c.id, c.image, c.label) for c in find_cases(folder).cases]


# ------------------------------------------------------------------------------- classes and modality

def dataset_classes(data: dict, path: str) -> List[ClassInfo]:
    """The classes of a ``dataset.json``'s ``labels``: name → value (nnU-Net v2) or value → name (Decathlon)."""
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"The dataset file {path} has no 'labels' object such as {{\"background\": 0, "
                         f"\"organ\": 1}}; add it.")
    pairs = []
    for key, value in labels.items():
        if isinstance(value, int) and not isinstance(value, bool):
            pairs.append((value, str(key)))
        elif isinstance(value, str) and re.fullmatch(r"\d+", str(key)):
            pairs.append((int(key), value))
        elif isinstance(value, list):
            raise InputError(f"The dataset file {path} defines '{key}' as a region of several labels {value}; "
                             f"SemiSupSeg learns one value per class, so list each label once.")
        else:
            raise InputError(f"The dataset file {path} has the label entry {key!r}: {value!r}; 'labels' maps "
                             f"names to values (nnU-Net v2) or values to names (Decathlon).")
    pairs.sort()
    names = [n.lower() for _, n in pairs]
    if "ignore" in names:
        raise InputError(f"The dataset file {path} has an 'ignore' label (nnU-Net's unannotated voxels), which "
                         f"SemiSupSeg cannot learn from; give the cases full labels and remove it.")
    values = [v for v, _ in pairs]
    if len(set(values)) != len(values):
        raise InputError(f"The dataset file {path} gives two labels the same value; give each its own.")
    if values[0] != 0 or len(values) < 2:
        raise InputError(f"The dataset file {path} must list the background as 0 and at least one structure "
                         f"in 'labels'; fix it.")
    return [ClassInfo(v, n) for v, n in pairs]


def dataset_channels(data: dict, path: str) -> List[str]:
    """The channel names (``channel_names`` in nnU-Net v2, ``modality`` in the Decathlon), in order."""
    channels = data.get("channel_names", data.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise InputError(f"The dataset file {path} has no 'channel_names' (nnU-Net v2) or 'modality' "
                         f"(Decathlon) such as {{\"0\": \"CT\"}}; add it.")
    return [str(channels[k]) for k in sorted(channels, key=lambda k: int(k) if str(k).isdigit() else 0)]


def modality_of(channel: str) -> str:
    """nnU-Net's rule: CT gets the CT normalisation (here the HU window), anything else the z-score."""
    return "CT" if channel.strip().upper() == "CT" else "MRI"


# ----------------------------------------------------------------------------------- reading files

def image_header(path: str) -> Tuple[int, Tuple[int, ...], Tuple[float, ...]]:
    """(channels, size, spacing) from an image file's header only; a 4D image's fourth axis and a vector
    image's values per voxel count as channels."""
    from .fileio import header_reader

    reader = header_reader(path)
    size = tuple(reader.GetSize())
    channels = reader.GetNumberOfComponents() * (size[3] if len(size) > 3 else 1)
    return channels, size[:3], tuple(reader.GetSpacing())[:3]


def label_values(path: str) -> Tuple[List[int], List[str]]:
    """(the values a label file holds, its segment names for a Slicer ``.seg.nrrd``, else [])."""
    import numpy as np
    import SimpleITK as sitk

    from .fileio import (is_segmentation_file, read_segmentation_file, read_sitk_image, require_3d_scalar,
                         require_whole_values)

    if is_segmentation_file(path):
        image, segments = read_segmentation_file(path)
        return sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(image))), [n for n, _ in segments]
    image = read_sitk_image(path, "label")
    require_3d_scalar(image, path, "label")
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind in "ui" and array.size and 0 <= int(array.min()) and int(array.max()) < 1 << 16:
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel()))], []   # fast for label maps
    values = np.unique(array)
    require_whole_values(values, path)
    return [int(v) for v in values], []


def _plain_classes(values_names: Sequence[Tuple[List[int], List[str]]]) -> List[ClassInfo]:
    """Classes of a folder without dataset.json: the values in its label maps, named by the Slicer
    segmentation files' segment names where they have them (segment i is class i)."""
    names: List[str] = []
    values = set()
    for found, segment_names in values_names:
        if segment_names:
            names.extend(n for n in segment_names if n.lower() not in (m.lower() for m in names))
        else:
            values.update(v for v in found if v != 0)
    values.update(range(1, len(names) + 1))
    return [ClassInfo(0, "background")] + [ClassInfo(v, names[v - 1] if v <= len(names) else f"label {v}")
                                           for v in sorted(values)]


def read_folder(folder: str, use_test_images: bool = False, modality: Optional[str] = None) -> Manifest:
    """A dataset folder as a manifest: its cases (:func:`find_cases`), classes (``dataset.json``'s labels, or
    the label files' values) and modality (``dataset.json``'s channel; ``modality`` overrides it, and is the
    only source for a plain folder, default MRI). Every image's header is read (a case with several channels
    is refused) and every label file once (values that ``dataset.json`` does not list are refused)."""
    if modality is not None and modality not in MODALITIES:
        raise InputError(f"The modality is {modality!r}; use one of {', '.join(MODALITIES)}.")
    found = find_cases(folder, use_test_images)
    extra: Dict[str, object] = {"layout": found.layout}
    channels = ["image"]
    if found.layout != PLAIN:
        channels = dataset_channels(found.dataset, found.dataset_json)
        if len(channels) > 1:
            raise _multichannel(found.cases[0].id, found.cases[0].image, len(channels))
        if isinstance(found.dataset.get("name"), str):
            extra["dataset"] = found.dataset["name"]
    for case in found.cases:
        count = image_header(case.image)[0]
        if count > 1:
            raise _multichannel(case.id, case.image, count)
    labelled = [c for c in found.cases if c.label is not None]
    if found.layout == PLAIN:
        classes = _plain_classes([label_values(c.label) for c in labelled])
        if len(classes) < 2:
            raise InputError(f"No label file in {found.folder} holds a structure (none found, or all background); "
                             f"add labels (labels/ beside images/, or files named like case01_label.nii.gz).")
    else:
        classes = dataset_classes(found.dataset, found.dataset_json)
        known = {c.value for c in classes}
        for case in labelled:
            unknown = [v for v in label_values(case.label)[0] if v not in known]
            if unknown:
                raise InputError(f"The label {case.label} holds value(s) {', '.join(map(str, unknown[:8]))}, "
                                 f"which {found.dataset_json} does not list in its 'labels' "
                                 f"({', '.join(f'{c.value} {c.name}' for c in classes)}); add them to "
                                 f"dataset.json or fix the label.")
    chosen = modality or (modality_of(channels[0]) if found.layout != PLAIN else "MRI")
    return Manifest(classes=classes, cases=found.cases, modality=chosen, path=found.folder, extra=extra)


def load_cases(path: str, use_test_images: bool = False, modality: Optional[str] = None) -> Manifest:
    """What ``--manifest`` names: a manifest JSON file, or a dataset folder (:func:`read_folder`)."""
    if os.path.isdir(path):
        return read_folder(path, use_test_images, modality)
    if use_test_images:
        raise InputError(f"--use-test-images takes the imagesTs/ of a dataset folder, and {path} is a manifest "
                         f"file; leave it out or give the folder.")
    manifest = load_manifest(path)
    if modality is not None:
        manifest.modality = modality
    return manifest


def summary_rows(manifest: Manifest) -> List[Tuple[str, str]]:
    """The one-table summary ``semisupseg manifest`` prints: cases, labeled, unlabeled, classes, modality and
    the voxel spacings seen (from the image headers)."""
    labeled = [c.id for c in manifest.labeled_cases]
    unlabeled = manifest.unlabeled_cases
    hidden = sum(1 for c in unlabeled if c.label is not None)
    tests = sum(1 for c in unlabeled if c.label is None and os.path.basename(os.path.dirname(c.image)) == "imagesTs")
    parts = [f"{hidden} with a hidden label"] if hidden else []
    parts += [f"{tests} from imagesTs"] if tests else []
    parts += [f"{len(unlabeled) - hidden - tests} without a label"] if len(unlabeled) - hidden - tests else []
    spacings: Dict[Tuple[float, ...], int] = {}
    for case in manifest.cases:
        spacing = tuple(round(s, 2) for s in image_header(case.image)[2])
        spacings[spacing] = spacings.get(spacing, 0) + 1
    shown = sorted(spacings.items(), key=lambda item: -item[1])
    spacing_text = "; ".join(f"{' x '.join(f'{s:g}' for s in spacing)} mm ({n})" for spacing, n in shown[:4])
    if len(shown) > 4:
        spacing_text += f"; {len(shown) - 4} more"
    names = ", ".join(labeled[:6]) + (f", ... ({len(labeled) - 6} more)" if len(labeled) > 6 else "")
    return [("cases", str(len(manifest.cases))),
            ("labeled", f"{len(labeled)}" + (f": {names}" if labeled else "")),
            ("unlabeled", f"{len(unlabeled)}" + (f" ({', '.join(parts)})" if parts else "")),
            ("classes", ", ".join(f"{c.value} {c.name}" for c in manifest.classes)),
            ("modality", f"{manifest.modality} ({'HU window' if manifest.modality == 'CT' else 'z-score'})"),
            ("spacings", spacing_text)]
