"""``semisupseg prepare la | pancreas | decathlon``: the command line of :mod:`.datasets` (its parser and
its run); the converters, the folds and the outputs they write are described there."""

import argparse
import textwrap
from typing import List, Optional

from .config import PANCREAS_OVERLAP
from .datasets.convert import PROTOCOL
from .datasets.decathlon import prepare_decathlon
from .datasets.la import LA_MIN_CROP_XY, LA_SPACING, prepare_la
from .datasets.pancreas import PANCREAS_MIN_CROP, prepare_pancreas
from .errors import InputError
from .progress import Reporter


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


# Per dataset: its line in the list of datasets, the labeled count of its --help example, its --help text.
_DATASET_HELP = {
    "la": ("2018 Atrial Segmentation Challenge (lgemri.nrrd + laendo.nrrd, or mri_norm2.h5 files)", 8, (
        "Prepare the left-atrium LGE-MRI of the 2018 Atrial Segmentation Challenge.",
        "INPUT holds a folder per case with lgemri.nrrd (image) and laendo.nrrd (label, 0/255), or "
        "the reference code's mri_norm2.h5 (datasets 'image', z-scored, and 'label', 0/1, stored "
        "x,y,z without geometry: written with --spacing, identity direction, origin 0). Images "
        "are z-scored and keep their full size unless --crop-to-label is given. The class is "
        "'left atrium', the modality MRI. Five folds of 80/20 by default: for the 100 training "
        "cases, fold 0 is the standard split (first 80 train, last 20 test; labeled = the first 8 "
        "or 16).")),
    "pancreas": ("NIH Pancreas-CT (a DICOM series per case + label0001.nii.gz files)", 12, (
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
        f"crops; segment and evaluate with --overlap {PANCREAS_OVERLAP}: its windows every 16 voxels.")),
    "decathlon": ("a Medical Segmentation Decathlon task (Task02_Heart, Task07_Pancreas, ...)", 4, (
        "Prepare a Medical Segmentation Decathlon task (or an nnU-Net dataset folder).",
        "TASK_DIR holds imagesTr/, labelsTr/ and dataset.json (its 'labels' name the classes, its "
        "'modality' decides the normalisation: CT the HU window, MRI the z-score). The cases with a "
        "label are the cases; images keep their intensities and full size, labels their values. "
        "Task02_Heart (the left atrium, 20 MRI cases) and Task07_Pancreas (281 CT cases; labels 1 "
        "pancreas, 2 tumour; --merge-tumour makes them one pancreas class as in the paper's NIH "
        "task). Five folds by default.")),
}


def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``prepare`` with the sub-commands ``la``, ``pancreas`` and ``decathlon`` to a ``add_subparsers()`` object."""
    parser = subparsers.add_parser(
        "prepare",
        help="turn the paper's datasets (left atrium, NIH pancreas) or a Decathlon task into volumes, manifests "
             "and folds",
        description=_description("Turn the datasets of the paper into NIfTI volumes, a manifest, fold lists "
                                 "and ready-to-train manifests per fold."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET")
    datasets.required = True
    for name, add_options in (("la", _la_options), ("pancreas", _pancreas_options),
                              ("decathlon", _decathlon_options)):
        p = _dataset_parser(datasets, name)
        add_options(p)
        _progress(p)
    return parser


def _la_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, metavar="DIR",
                   help="the folder with one folder per case (e.g. '2018LA_Seg_Training Set'); searched "
                        "recursively")
    _outputs_and_folds(p, [8, 16], "(default: 8 16, i.e. 10%% and 20%% of 80)", 5, fold_lists="LA")
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


def _pancreas_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, metavar="DIR",
                   help="the folder with the DICOM cases (PANCREAS_0001, ...), e.g. the download's "
                        "Pancreas-CT")
    p.add_argument("--labels", required=True, metavar="DIR", help="the folder with label0001.nii.gz, ...")
    _outputs_and_folds(p, [12], "(default: 12)", 4, fold_lists="Pancreas")
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


def _decathlon_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("task_dir", metavar="TASK_DIR", help="the task folder, e.g. Task02_Heart")
    _outputs_and_folds(p, None, "(e.g. 4 for a fifth of Task02_Heart's 16 training cases per fold)", 5)
    p.add_argument("--merge-tumour", action="store_true",
                   help="Task07_Pancreas: label 2 (tumour) becomes 1 (pancreas), one class as in the paper")


def _dataset_parser(datasets, name: str) -> argparse.ArgumentParser:
    """The sub-command ``prepare NAME``, its --help from ``_DATASET_HELP`` with the outputs and a
    train/evaluate example."""
    summary, example_labeled, paragraphs = _DATASET_HELP[name]
    return datasets.add_parser(name, help=summary, formatter_class=argparse.RawDescriptionHelpFormatter,
                               description=_description(*paragraphs, example_labeled=example_labeled,
                                                        dataset=name))


def _outputs_and_folds(parser: argparse.ArgumentParser, labeled: Optional[List[int]], labeled_note: str,
                       folds: int, fold_lists: Optional[str] = None) -> None:
    """--output, --labeled (``labeled`` None: required), --folds and, with the reference code's dataset name
    ``fold_lists``, --fold-lists: the options every dataset shares."""
    parser.add_argument("--output", required=True, metavar="DIR", help="the folder to write everything into")
    parser.add_argument("--labeled", type=int, nargs="+", default=labeled, required=labeled is None,
                        metavar="N", help=f"labeled cases per fold, one training manifest each {labeled_note}")
    parser.add_argument("--folds", type=int, default=folds, help=f"number of folds (default {folds})")
    if fold_lists is not None:
        parser.add_argument("--fold-lists", metavar="DIR",
                            help="take the folds from train0.list, test0.list, train1.list, ... in DIR (one case "
                                 f"id per line, as the reference code's dataset/{fold_lists}/Flods) instead of "
                                 "contiguous blocks; labeled = the first N lines of each train list; --folds is "
                                 "then ignored")


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
