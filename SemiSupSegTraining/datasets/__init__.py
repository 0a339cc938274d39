"""The paper's datasets turned into volumes, a manifest and folds (``semisupseg prepare``, :mod:`..prepare`).

For users who have the data the paper was measured on:

- **Left atrium** (2018 Atrial Segmentation Challenge, :mod:`.la`): a folder per case holding ``lgemri.nrrd``
  (the LGE-MRI) and ``laendo.nrrd`` (the atrium, values 0/255), or the reference code's h5 layout
  (``<case>/mri_norm2.h5`` with datasets ``image``, float32 z-scored, and ``label``, 0/1, both stored in
  x, y, z order and without any geometry). Images are z-scored over the whole volume; by default they keep
  their full size. ``crop_margin`` reproduces the reference preprocessing's crop to the atrium's x/y
  bounding box plus a margin; that crop uses the label, which a new scan does not have, so use it only to
  reproduce the paper's numbers.
- **NIH Pancreas-CT** (:mod:`.pancreas`): a DICOM series per case (``PANCREAS_0001/<study>/<series>/*.dcm``)
  and label files ``label0001.nii.gz``, matched by case number. Images keep their Hounsfield units (the
  engine applies the paper's window -120..240 HU itself because the manifest says ``"modality": "CT"``). By
  default they are cropped as in the paper, around the pancreas plus 25 voxels, which uses the label too.
- **Medical Segmentation Decathlon** tasks (``Task02_Heart``, ``Task07_Pancreas``) and nnU-Net folders
  (:mod:`.decathlon`), read by :mod:`..layouts`: the cases with a label, images as they are, five folds.

Each converter finds its cases and says how one is read; :func:`.convert.convert_cases` runs the rest the
same way for all: cheap checks of every case before anything is written, then per case read, crop and
write. All write ``images/<case>.nii.gz`` and ``labels/<case>.nii.gz`` (a crop keeps every voxel's physical
position), ``manifest.json`` (all cases, all labeled), ``folds.json`` and per fold ready-to-train manifests
``fold{k}_labeled{n}_train.json`` (only the first n training cases keep their labels visible to training)
and ``fold{k}_test.json``, plus ``prepare.json`` (sources, crop boxes and settings).

Folds (:mod:`.folds`) are contiguous blocks of the sorted case list in the reference code's pattern: fold 0
holds out the last ``n // folds`` cases, folds 1, 2, ... the blocks before them from the start; labeled =
the first n training cases. For the 100 left-atrium cases fold 0 is the standard 80/20 split (the
reference's test list differs from the last 20 sorted ids by one case); for the 82 pancreas cases the folds
are the reference's (test blocks of 20, 20, 21, 21). ``fold_lists`` takes the folds from the reference's
list files instead.
"""

from .decathlon import prepare_decathlon
from .folds import contiguous_folds, make_folds, read_fold_lists
from .la import prepare_la
from .pancreas import prepare_pancreas

__all__ = ["contiguous_folds", "make_folds", "prepare_decathlon", "prepare_la", "prepare_pancreas",
           "read_fold_lists"]
