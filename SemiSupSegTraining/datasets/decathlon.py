"""Medical Segmentation Decathlon tasks and nnU-Net folders (``semisupseg prepare decathlon``), read by
:mod:`..layouts`: the cases with a label, images with their intensities and full size, labels their values."""

import os
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..fileio import read_sitk_image, require_3d_scalar
from ..geometry import Geometry
from ..progress import Reporter
from .convert import Conversion, ConvertedCase, SourceCase, check_output_folder, convert_cases
from .grids import check_label_header, read_label_on_grid


def prepare_decathlon(task_dir: str, output_dir: str, labeled: Sequence[int], folds: int = 5,
                      merge_tumour: bool = False, reporter: Optional[Reporter] = None) -> str:
    """Prepares a Medical Segmentation Decathlon task (Task02_Heart, Task07_Pancreas, ...; an nnU-Net
    folder reads the same, see :mod:`SemiSupSegTraining.layouts`) into the layout of
    :func:`.la.prepare_la`; returns the path of ``manifest.json``. The cases of ``labelsTr`` are the cases
    (``imagesTs`` has no labels); images keep their intensities (the manifest's modality, from
    ``dataset.json``, decides the normalisation) and full size; labels keep their values. ``merge_tumour``:
    label 2 (Task07's tumour) becomes 1, one "pancreas" class as in the paper's NIH pancreas task."""
    from ..layouts import read_folder

    output_dir = check_output_folder(output_dir, [task_dir])
    manifest = read_folder(task_dir)            # the layout, channels and label values are checked here
    cases = [c for c in manifest.cases if c.label is not None]
    if not cases:
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

    def check(source: SourceCase) -> None:
        check_label_header(source.image, source.label)

    def convert(source: SourceCase) -> ConvertedCase:
        image = read_sitk_image(source.image, "image")
        require_3d_scalar(image, source.image, "image")
        geometry = Geometry.of(image)
        values = sitk.GetArrayFromImage(read_label_on_grid(source.label, geometry, source.image))
        if merge_tumour:
            values = np.where(values == 2, 1, values)
        return ConvertedCase(image, geometry.to_image(values.astype(np.uint8)),
                             {"source_size": list(geometry.size)})

    description = (f"{name} ({manifest.extra.get('layout')} folder), full volumes, original intensities"
                   + ("; label 2 (tumour) merged into 1" if merge_tumour else ""))
    provenance = {"layout": manifest.extra.get("layout"), "input": os.path.abspath(task_dir),
                  "settings": {"folds": folds, "labeled": sorted(set(labeled)), "merge_tumour": merge_tumour}}
    conversion = Conversion(
        name, [SourceCase(c.id, c.image, c.label, "file") for c in cases], classes, manifest.modality, check,
        convert, start_message=f"Preparing {len(cases)} cases of {name} from {task_dir} into {output_dir}.",
        description=description, provenance=provenance,
        protocol="pancreas" if "pancreas" in name.lower() else "decathlon")
    return convert_cases(output_dir, conversion, folds, labeled, reporter=reporter)
