"""A corpus of bad inputs, the messy files that clinical work produces, each written into a folder on demand.

Every entry builds its bad file(s) in a folder and returns the ``semisupseg`` command line that meets them,
the path that the one-line error must name, and the outputs that must not appear. The good pieces it
needs (a model file, an image and its label) come from the caller, see :class:`Good`.

Used by ``test_bad_input.py``; run ``python bad_inputs.py FOLDER`` to write the whole corpus for a look.
"""

import gzip
import json
import os
import pickle
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import numpy as np
import SimpleITK as sitk
import torch

MARKER_NAME = "MARKER"


@dataclass
class Good:
    """Valid inputs the entries start from: a model file, and an image with its label (same grid)."""

    model: str
    image: str
    label: str


@dataclass
class Entry:
    """One bad input: the command that meets it, the path the error must name, outputs that must not exist."""

    argv: List[str]
    bad_path: str
    outputs: List[str] = field(default_factory=list)
    marker: str = ""  # a file that appears only if code from the bad file ran


class PickleBomb:
    """Unpickling this calls ``os.system(command)``: what a malicious model file would do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


# ------------------------------------------------------------------------------------------- helpers

def _write(array: np.ndarray, path: str, spacing=(1.0, 1.0, 1.0), is_vector: bool = False) -> str:
    image = sitk.GetImageFromArray(array, isVector=is_vector)
    if image.GetDimension() == 3:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, path)
    return path


def _read(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def _segment(folder: str, good: Good, image: str, model: str = "") -> Entry:
    out = os.path.join(folder, "out")
    outputs = [os.path.join(out, "seg.nii.gz"), os.path.join(out, "prob.nii.gz")]
    argv = ["segment", "--model", model or good.model, "--input", image, "--output", outputs[0],
            "--probabilities", outputs[1], "--device", "cpu"]
    return Entry(argv, model or image, outputs + [out])


def _manifest(folder: str, cases: List[dict], name: str = "manifest.json") -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump({"format": "semisupseg-manifest", "version": 1, "modality": "MRI",
                   "classes": [{"value": 0, "name": "background"}, {"value": 1, "name": "left atrium"}],
                   "cases": cases}, f)
    return path


def _train(folder: str, manifest: str, bad_path: str) -> Entry:
    out = os.path.join(folder, "out")
    argv = ["train", "--manifest", manifest, "--output", out, "--preset", "tiny", "--device", "cpu"]
    return Entry(argv, bad_path, [out])


def _train_with_label(folder: str, good: Good, label: str) -> Entry:
    image = shutil.copy(good.image, os.path.join(folder, "image.nii.gz"))
    manifest = _manifest(folder, [{"id": "case1", "image": image, "label": label}])
    return _train(folder, manifest, label)


def _model_payload(good: Good) -> dict:
    return torch.load(good.model, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------- entries

def _first_half(data: bytes, path: str) -> str:
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def truncated_nifti(folder: str, good: Good) -> Entry:
    """A compressed NIfTI cut off halfway (an interrupted copy or download)."""
    data = open(good.image, "rb").read()
    return _segment(folder, good, _first_half(data, os.path.join(folder, "truncated.nii.gz")))


def truncated_nifti_uncompressed(folder: str, good: Good) -> Entry:
    """An uncompressed NIfTI whose voxel data stops halfway."""
    with gzip.open(good.image, "rb") as f:
        data = f.read()
    return _segment(folder, good, _first_half(data, os.path.join(folder, "truncated.nii")))


def wrong_magic(folder: str, good: Good) -> Entry:
    """A .nii file whose header magic ("n+1") is wrong: not a NIfTI file, whatever its name says."""
    with gzip.open(good.image, "rb") as f:
        data = bytearray(f.read())
    data[344:348] = b"xyz\0"
    path = os.path.join(folder, "wrong_magic.nii")
    with open(path, "wb") as f:
        f.write(bytes(data))
    return _segment(folder, good, path)


def not_an_image(folder: str, good: Good) -> Entry:
    """A text file saved with an image's name."""
    path = os.path.join(folder, "notes.nrrd")
    with open(path, "w") as f:
        f.write("patient notes, not an image\n")
    return _segment(folder, good, path)


def empty_image_file(folder: str, good: Good) -> Entry:
    path = os.path.join(folder, "empty.nii.gz")
    open(path, "wb").close()
    return _segment(folder, good, path)


def missing_image(folder: str, good: Good) -> Entry:
    return _segment(folder, good, os.path.join(folder, "no_such_scan.nii.gz"))


def image_2d(folder: str, good: Good) -> Entry:
    """One slice saved alone: a 2D image."""
    path = _write(_read(good.image)[8], os.path.join(folder, "slice.nii.gz"))
    return _segment(folder, good, path)


def image_4d(folder: str, good: Good) -> Entry:
    """A time series (4D): two volumes stacked."""
    volume = _read(good.image)
    path = _write(np.stack([volume, volume]), os.path.join(folder, "timeseries.nii.gz"))
    return _segment(folder, good, path)


def color_image(folder: str, good: Good) -> Entry:
    """An RGB volume (3 values per voxel), e.g. a screenshot stack."""
    volume = _read(good.image)
    path = _write(np.stack([volume] * 3, -1), os.path.join(folder, "color.nrrd"), is_vector=True)
    return _segment(folder, good, path)


def nan_voxels(folder: str, good: Good) -> Entry:
    """NaN voxels (a failed reconstruction or a masked export). NRRD keeps them; ITK's NIfTI reader turns
    NaN and infinity into 0 on reading, so a NIfTI file cannot show them to the engine."""
    volume = _read(good.image).astype(np.float32)
    volume[4, 5:9, 5:9] = np.nan
    path = _write(volume, os.path.join(folder, "nan.nrrd"))
    return _segment(folder, good, path)


def label_other_geometry(folder: str, good: Good) -> Entry:
    """A label map with twice the image's spacing: it belongs to another scan (or was resampled)."""
    label = _write(_read(good.label), os.path.join(folder, "label_other_grid.nii.gz"), spacing=(2.0, 2.0, 2.0))
    return _train_with_label(folder, good, label)


def label_other_size(folder: str, good: Good) -> Entry:
    label = _write(_read(good.label)[:, :, :-4].copy(), os.path.join(folder, "label_cropped.nii.gz"))
    return _train_with_label(folder, good, label)


def label_values_outside_classes(folder: str, good: Good) -> Entry:
    """Value 7 in the label, but the manifest names only 0 and 1."""
    array = _read(good.label).astype(np.uint8)
    array[0, :4, :4] = 7
    label = _write(array, os.path.join(folder, "label_value7.nii.gz"))
    return _train_with_label(folder, good, label)


def label_non_integer(folder: str, good: Good) -> Entry:
    """A label map of fractions (an interpolated or probability map saved as the label)."""
    array = _read(good.label).astype(np.float32) * 0.5
    label = _write(array, os.path.join(folder, "label_fractions.nii.gz"))
    return _train_with_label(folder, good, label)


def all_zero_label(folder: str, good: Good) -> Entry:
    """The only labeled case has an empty label: nothing to learn from."""
    label = _write(np.zeros_like(_read(good.label)), os.path.join(folder, "label_empty.nii.gz"))
    return _train_with_label(folder, good, label)


def manifest_missing_files(folder: str, good: Good) -> Entry:
    missing = os.path.join(folder, "images", "case9.nii.gz")
    manifest = _manifest(folder, [{"id": "case9", "image": missing, "label": good.label}])
    return _train(folder, manifest, missing)


def manifest_not_json(folder: str, good: Good) -> Entry:
    path = os.path.join(folder, "manifest.json")
    with open(path, "w") as f:
        f.write("cases:\n  - image: case1.nii.gz\n")  # YAML, not JSON
    return _train(folder, path, path)


def manifest_wrong_shape(folder: str, good: Good) -> Entry:
    """Valid JSON, but a list of paths instead of the manifest object."""
    path = os.path.join(folder, "manifest.json")
    with open(path, "w") as f:
        json.dump([good.image], f)
    return _train(folder, path, path)


def resume_without_checkpoint(folder: str, good: Good) -> Entry:
    """``--resume`` of a folder that holds no checkpoint."""
    run = os.path.join(folder, "run")
    os.makedirs(run)
    return Entry(["train", "--resume", run], run, [os.path.join(run, "model.pt")])


def model_other_version(folder: str, good: Good) -> Entry:
    """A model file written by a future engine (format version 99)."""
    payload = _model_payload(good)
    payload["metadata"]["format_version"] = 99
    payload["metadata"]["engine_version"] = "9.0.0"
    path = os.path.join(folder, "future_model.pt")
    torch.save(payload, path)
    return _segment(folder, good, good.image, model=path)


def model_absurd_networks(folder: str, good: Good) -> Entry:
    """Metadata asking for networks of 100 000 base filters (terabytes): refused before anything is built."""
    payload = _model_payload(good)
    payload["metadata"]["networks"]["base_filters"] = 100_000
    path = os.path.join(folder, "absurd_model.pt")
    torch.save(payload, path)
    return _segment(folder, good, good.image, model=path)


def model_truncated(folder: str, good: Good) -> Entry:
    data = open(good.model, "rb").read()
    path = os.path.join(folder, "cut_model.pt")
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return _segment(folder, good, good.image, model=path)


def model_from_another_program(folder: str, good: Good) -> Entry:
    """A plain PyTorch state dict (another tool's weights): loads safely, but is no SemiSupSeg model."""
    path = os.path.join(folder, "other_program.pt")
    torch.save({"conv.weight": torch.zeros(2, 2)}, path)
    return _segment(folder, good, good.image, model=path)


def _pickle_entry(folder: str, good: Good, path: str, use_torch: bool) -> Entry:
    marker = os.path.join(folder, MARKER_NAME)
    payload = {"metadata": PickleBomb(f"touch {marker}"), "weights_a": {}, "weights_b": {}}
    if use_torch:
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    entry = _segment(folder, good, good.image, model=path)
    entry.marker = marker
    return entry


def model_pickle_payload_torch(folder: str, good: Good) -> Entry:
    """torch.save of an object whose unpickling runs ``touch MARKER`` (a malicious model file)."""
    return _pickle_entry(folder, good, os.path.join(folder, "evil_model.pt"), use_torch=True)


def model_pickle_payload_plain(folder: str, good: Good) -> Entry:
    """The same payload as a plain pickle file (torch's legacy format path)."""
    return _pickle_entry(folder, good, os.path.join(folder, "evil_model.pkl"), use_torch=False)


CORPUS: Dict[str, Callable[[str, Good], Entry]] = {f.__name__: f for f in (
    truncated_nifti, truncated_nifti_uncompressed, wrong_magic, not_an_image, empty_image_file, missing_image,
    image_2d, image_4d, color_image, nan_voxels,
    label_other_geometry, label_other_size, label_values_outside_classes, label_non_integer, all_zero_label,
    manifest_missing_files, manifest_not_json, manifest_wrong_shape, resume_without_checkpoint,
    model_other_version, model_absurd_networks, model_truncated, model_from_another_program,
    model_pickle_payload_torch, model_pickle_payload_plain,
)}


def build(name: str, folder: str, good: Good) -> Entry:
    """Writes entry ``name``'s files into ``folder`` (created) and returns what meets them."""
    os.makedirs(folder, exist_ok=True)
    return CORPUS[name](os.path.abspath(folder), good)


if __name__ == "__main__":  # writes the whole corpus for a look: python bad_inputs.py FOLDER
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from helpers import make_model_file

    from SemiSupSegTraining.phantoms import write_phantom_dataset

    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "bad-inputs")
    write_phantom_dataset(os.path.join(root, "good"), labeled=1, unlabeled=0, test=0, shape_zyx=(16, 32, 32))
    good = Good(make_model_file(os.path.join(root, "good", "model.pt")),
                os.path.join(root, "good", "images", "phantom000.nii.gz"),
                os.path.join(root, "good", "labels", "phantom000.nii.gz"))
    for entry_name in CORPUS:
        print(entry_name, " ".join(build(entry_name, os.path.join(root, entry_name), good).argv))
