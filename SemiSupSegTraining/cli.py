"""``semisupseg train | segment | evaluate | suggest | manifest | demo | prepare | info``: the engine from the command line.

Exit codes: 0 done, 1 unexpected failure, 2 bad input (one sentence on stderr), 3 cancelled (a
checkpoint was written; continue with ``semisupseg train --resume DIR``).
"""

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from typing import List, Optional

from . import __version__
from .config import (CUDA_WINDOW_BATCH, DEFAULT_OVERLAP, DEFAULT_PRESET, DEFAULT_WINDOW_BATCH, list_presets, parse_override,
                     preset_config, preset_method)
from .errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, Cancelled, DistributedError, InputError
from .prepare import add_prepare_parser, run_prepare
from .progress import Reporter


_MANIFEST_HELP = ("the cases: a manifest JSON file, or a dataset folder (nnU-Net v2, a Decathlon task, or images/ "
                  "with labels/ beside them), read as 'semisupseg manifest' does")


def _test_images_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--use-test-images", action="store_true",
                        help="with a dataset folder: its imagesTs/ images join as unlabeled cases")


def _progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="how to show progress: a bar on the terminal (default), one JSON object per "
                             "line on stdout (for the Slicer module and scripts), or nothing")


def _device_argument(parser: argparse.ArgumentParser, default: Optional[str] = "auto", extra: str = "") -> None:
    parser.add_argument("--device", default=default,
                        help=f"auto (CUDA, then Apple MPS, then CPU; default), cuda, cuda:N, mps or cpu{extra}")


def _stride_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stride", type=int, nargs=3, metavar=("SX", "SY", "SZ"),
                        help="step the windows this many voxels along x, y, z instead of --overlap (the paper's "
                             "left atrium: 18 18 4; pancreas: 16 16 16)")


def _overlap(args) -> object:
    """--overlap, or the per-axis overlap that steps the model's windows by --stride."""
    if not args.stride:
        return args.overlap
    from .infer import overlap_for_stride
    from .modelfile import read_metadata

    return overlap_for_stride(read_metadata(args.model)["patch_size"], args.stride)


def _stop_file_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--stop-file", metavar="PATH",
                        help=f"stop as SIGTERM would when this file appears ({what}; exit code 3); the file is "
                             f"removed then")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semisupseg",
        description="Semi-supervised 3D segmentation: train two networks on a few labeled and many unlabeled "
                    "scans, segment new scans, evaluate.",
        epilog="Exit codes: 0 done, 1 unexpected failure, 2 bad input, 3 training cancelled (resume with "
               "'semisupseg train --resume DIR').")
    parser.add_argument("--version", action="version", version=f"semisupseg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    p = commands.add_parser("train", help="train both networks on the cases of a manifest",
                            description="Train both networks on the cases of a manifest and write DIR/model.pt.")
    p.add_argument("--manifest", help=_MANIFEST_HELP)
    _test_images_argument(p)
    p.add_argument("--output", help="folder for the model file, checkpoints and the training log")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the stopped training in DIR from its last checkpoint (settings and manifest "
                        "come from the checkpoint)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=list_presets(),
                   help=f"settings to start from, each with its method: paper (the paper's networks and "
                        f"method, 112x112x80 crops, 6000 iterations; a GPU job), paper-as-printed (the paper as printed: "
                        f"docs/reproduce-paper.md), cpu-fast (a laptop CPU), demo, "
                        f"pancreas, tiny (tests); default {DEFAULT_PRESET}, which trains {preset_method(DEFAULT_PRESET)} "
                        f"(--set method=NAME trains another)")
    p.add_argument("--iterations", type=int, help="number of training iterations (overrides the preset)")
    _device_argument(p, None, "; with --resume: the device to continue on (default: the one it was started with)")
    p.add_argument("--seed", type=int, help="random seed (overrides the preset; default 0)")
    p.add_argument("--validate", type=int, metavar="K",
                   help="hold the last K labeled cases of the manifest out of training, then segment them with the "
                        "trained model and report their Dice (validation.json, the model file): compare methods "
                        "on your own cases (same as --set validate_cases=K)")
    p.add_argument("--init-model", metavar="FILE",
                   help="start from this model file's weights (retrain after correcting segmentations)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set lr=0.005 --set patch_size=[96,96,64] "
                        "--set use_contrastive=false --set target_spacing=native|auto|0.7,0.7,2.5 (all settings: "
                        "docs/settings.md; a preset's values: 'semisupseg info --preset NAME')")
    _stop_file_argument(p, "checked every iteration: a checkpoint is written")
    _progress_argument(p)

    p = commands.add_parser("segment", help="segment an image with a model file",
                            description="Segment an image; the output has the input's exact grid.")
    p.add_argument("--model", required=True, help="the model file (model.pt) written by 'semisupseg train'")
    p.add_argument("--input", required=True,
                   help="the image: .nii/.nii.gz, .nrrd, .mha/.mhd or a DICOM series folder")
    p.add_argument("--output", required=True,
                   help="the label map to write (.nii.gz, .nrrd, .seg.nrrd for Slicer, .mha)")
    p.add_argument("--probabilities", metavar="FILE", help="also write the probability of foreground (0..1)")
    p.add_argument("--uncertainty", metavar="FILE",
                   help="also write the uncertainty (entropy of the averaged softmax, 0..1)")
    p.add_argument("--disagreement", metavar="FILE",
                   help="also write the disagreement of the two networks (0..1)")
    p.add_argument("--roi", type=int, nargs=6, metavar=("I0", "J0", "K0", "I1", "J1", "K1"),
                   help="segment only this voxel box (start inclusive, end exclusive); outside it is background")
    p.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP,
                   help=f"sliding-window overlap, 0..0.9 (default {DEFAULT_OVERLAP})")
    _stride_argument(p)
    p.add_argument("--window-batch", type=int,
                   help=f"windows per forward pass (default {DEFAULT_WINDOW_BATCH}, {CUDA_WINDOW_BATCH} on a CUDA GPU)")
    p.add_argument("--keep-largest", action="store_true",
                   help="keep only the largest connected component of each class")
    _device_argument(p)
    _stop_file_argument(p, "checked between window batches: nothing is written")
    _progress_argument(p)

    p = commands.add_parser("evaluate", help="Dice, Jaccard, HD95, ASD of a segmentation against a reference",
                            description="Compare a predicted label map with a reference (per class, voxels and "
                                        "mm), or segment and compare every labeled case of a manifest.")
    p.add_argument("--prediction", help="the predicted label map")
    p.add_argument("--reference", help="the reference label map (same grid)")
    p.add_argument("--model", help="with --manifest: segment the manifest's labeled cases with this model")
    p.add_argument("--manifest", help="with --model: the cases to segment and compare (a manifest file or a "
                                      "dataset folder)")
    p.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP,
                   help=f"with --model: sliding-window overlap, 0..0.9 (default {DEFAULT_OVERLAP})")
    _stride_argument(p)
    _device_argument(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")

    p = commands.add_parser("demo", help="train briefly on synthetic phantoms, segment, report metrics and pictures",
                            description="Writes synthetic left-atrium-like phantoms, trains the demo preset on "
                                        "the CPU, segments held-out phantoms, prints a metrics table and writes "
                                        "report.json and PNG pictures into the output folder.")
    p.add_argument("--output", default="demo-output", help="folder for everything (default demo-output)")
    p.add_argument("--iterations", type=int, help="training iterations (default: the demo preset's)")
    p.add_argument("--device", default="cpu", help="cpu (default) or auto, cuda, mps")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _progress_argument(p)

    _add_manifest_parser(commands)
    add_prepare_parser(commands)
    _add_suggest_parser(commands)

    p = commands.add_parser("info", help="show a model file's metadata or a preset's settings")
    p.add_argument("--model", help="a model file")
    p.add_argument("--preset", choices=list_presets(), help="a preset")
    p.add_argument("--write-metadata", action="store_true",
                   help="also write the model's metadata beside it as JSON (model.json), which the Slicer module "
                        "reads without loading torch; model files of this version have it already")
    return parser


# -- suggest (which unlabeled case to label next) ----------------------------------------------------------

def _add_suggest_parser(commands) -> None:
    p = commands.add_parser("suggest", help="rank a manifest's unlabeled cases: which one to label next",
                            description="Segment every unlabeled case of a manifest with a model file and rank "
                                        "them by how much a label would teach (the two networks' "
                                        "disagreement and the model's self-estimated Dice error).")
    p.add_argument("--model", required=True, help="the model file (model.pt) written by 'semisupseg train'")
    p.add_argument("--manifest", required=True, help="whose unlabeled cases are ranked: " + _MANIFEST_HELP)
    _test_images_argument(p)
    p.add_argument("--json", action="store_true", help="print the ranking as JSON instead of a table")
    p.add_argument("--output", metavar="FILE", help="also write the ranking as JSON to FILE")
    _stop_file_argument(p, "checked between cases and window batches: nothing is written")
    _device_argument(p)
    _progress_argument(p)


# -- manifest (a dataset folder written as our manifest) --------------------------------------------------

def _add_manifest_parser(commands) -> None:
    from .manifest import MODALITIES

    p = commands.add_parser(
        "manifest", help="write a manifest from a dataset folder (nnU-Net v2, Decathlon, images/ + labels/)",
        description="Read a dataset folder (an nnU-Net v2 dataset, a Medical Segmentation Decathlon task, or a "
                    "folder of images with labels/ beside them) or a manifest, choose which cases with a label "
                    "stay labeled (the others keep their label hidden, for evaluation), write the manifest "
                    "(paths relative to it) and print a summary.")
    p.add_argument("folder", metavar="FOLDER", help="the dataset folder (or a manifest JSON file)")
    p.add_argument("--output", required=True, metavar="M", help="the manifest JSON file to write")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--labeled", type=int, metavar="N",
                       help="keep N cases labeled: the first N by case id, or N at random with --seed")
    which.add_argument("--labeled-list", metavar="F", help="keep the cases listed in F labeled (one id a line)")
    p.add_argument("--seed", type=int, help="with --labeled: draw the N labeled cases at random with this seed")
    _test_images_argument(p)
    p.add_argument("--modality", choices=MODALITIES,
                   help="MRI (z-score) or CT (HU window): for a plain folder (default MRI), or to override "
                        "dataset.json's channel")


def _manifest(args) -> None:
    from .layouts import load_cases, summary_rows
    from .manifest import choose_labeled, write_manifest

    if args.seed is not None and args.labeled is None:
        raise InputError("--seed draws the labeled cases at random: give --labeled N with it.")
    output = os.path.abspath(args.output)
    if os.path.isdir(output):
        raise InputError(f"The output {output} is a folder; give the manifest file to write, e.g. "
                         f"{os.path.join(args.output, 'manifest.json')}.")
    manifest = load_cases(args.folder, args.use_test_images, args.modality)
    inputs = {os.path.abspath(p) for c in manifest.cases for p in (c.image, c.label) if p}
    if output in inputs or output == os.path.abspath(os.path.join(args.folder, "dataset.json")):
        raise InputError(f"The output {output} is one of the dataset's own files; give another --output.")
    ids = None
    if args.labeled_list:
        try:
            with open(args.labeled_list, encoding="utf-8") as f:
                ids = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"The labeled list {args.labeled_list} cannot be read ({e}); give a text file with "
                             f"one case id a line.") from None
    manifest = choose_labeled(manifest, args.labeled, ids, args.seed)
    write_manifest(manifest, output)
    layout = manifest.extra.get("layout", "") if os.path.isdir(args.folder) else "manifest"
    rows = [("manifest", output), ("source", f"{args.folder} ({layout} layout)")]
    rows += summary_rows(manifest)
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def _suggest(args) -> None:
    from .suggest import check_output_path, format_ranking, ranking_json, suggest_cases

    if args.output:
        check_output_path(args.output)  # before minutes of scoring, not after
    scores = suggest_cases(args.model, args.manifest, device=args.device, use_test_images=args.use_test_images, reporter=Reporter(args.progress),
                           stop_file=args.stop_file)
    text = ranking_json(scores, args.model, args.manifest, args.output)
    if args.progress != "json":  # in JSON mode the ranking is in the "done" event
        print(text if args.json else format_ranking(scores))


def _train(args) -> None:
    from .train import train

    if args.resume:  # only how it runs may change (config.RUN_SETTINGS)
        if args.validate is not None:
            raise InputError("A resumed training holds out the cases its folder records; drop --validate.")
        run = dict(parse_override(s) for s in args.set)
        if args.device is not None:
            run["device"] = args.device
        train(None, args.resume, progress=args.progress, resume=True, stop_file=args.stop_file, run_settings=run)
        return
    if not args.manifest or not args.output:
        raise InputError("Give --manifest and --output (or --resume DIR to continue a stopped training).")
    overrides = dict(parse_override(s) for s in args.set)
    for key, setting in (("iterations", "iterations"), ("seed", "seed"), ("validate", "validate_cases")):
        if getattr(args, key) is not None:
            overrides[setting] = getattr(args, key)
    overrides["device"] = args.device or "auto"
    config = preset_config(args.preset, overrides)
    from .layouts import load_cases

    train(load_cases(args.manifest, args.use_test_images), args.output, config, progress=args.progress,
          init_model=args.init_model, stop_file=args.stop_file)


def _segment(args) -> None:
    from .infer import segment_file

    segment_file(args.model, args.input, args.output, args.probabilities, args.uncertainty, args.disagreement,
                 device=args.device, overlap=_overlap(args), window_batch=args.window_batch, roi=args.roi,
                 keep_largest=args.keep_largest, reporter=Reporter(args.progress), stop_file=args.stop_file)


def _evaluate(args) -> None:
    from .evaluation import evaluate_files, evaluate_model, format_table
    from .metrics import summarize
    from .modelfile import classes_of, read_metadata

    if args.prediction and args.reference:
        classes = classes_of(read_metadata(args.model)) if args.model else None
        result = evaluate_files(args.prediction, args.reference, classes)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            case = {"id": os.path.basename(args.prediction)[:13], "classes": result["classes"]}
            print(format_table({"cases": [case], "mean": summarize([result["classes"]])}))
        return
    if args.model and args.manifest:
        report = evaluate_model(args.model, args.manifest, device=args.device, overlap=_overlap(args))
        print(json.dumps(report, indent=2) if args.json else format_table(report))
        return
    raise InputError("Give --prediction and --reference, or --model and --manifest.")


def _info(args) -> None:
    if args.model:
        from .modelfile import read_metadata
        meta = read_metadata(args.model)
        if args.write_metadata:
            from .modelinfo import write_metadata
            write_metadata(args.model, meta)
        print(json.dumps(meta, indent=2))
    elif args.preset:
        print(json.dumps(preset_config(args.preset).to_dict(), indent=2))
    else:
        raise InputError("Give --model FILE or --preset NAME.")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("train", "segment", "evaluate", "demo", "suggest"):
        from .devices import keep_freed_memory

        keep_freed_memory()  # the engine's process: large tensors are reused, not page-faulted in again
    handlers = {"train": _train, "segment": _segment, "evaluate": _evaluate, "info": _info, "suggest": _suggest,
                "manifest": _manifest, "prepare": run_prepare,
                "demo": lambda a: __import__("SemiSupSegTraining.demo", fromlist=["run_demo"]).run_demo(
                    a.output, a.iterations, a.device, a.progress, a.seed)}
    json_mode = getattr(args, "progress", None) == "json"
    with _terminate_as_interrupt(), _quiet_itk():
        try:
            handlers[args.command](args)
            return EXIT_OK
        except InputError as e:
            _report_error(str(e), EXIT_BAD_INPUT, json_mode)
            return EXIT_BAD_INPUT
        except Cancelled:
            return EXIT_CANCELLED
        except KeyboardInterrupt:
            _report_error("Stopped by the user.", EXIT_CANCELLED, json_mode)
            return EXIT_CANCELLED
        except DistributedError as e:
            _report_error(str(e), EXIT_FAILED, json_mode)
            return EXIT_FAILED
        except MemoryError as e:
            _report_error(str(e) or "Out of memory; use a smaller preset or patch size, or a machine with more "
                                   "memory.", EXIT_FAILED, json_mode)
            return EXIT_FAILED
        except Exception as e:  # a bug: the traceback is for the report, the last line for the user
            traceback.print_exc()
            _report_error(f"Unexpected failure ({type(e).__name__}: {e}); please report it with the lines "
                          f"above.", EXIT_FAILED, json_mode)
            return EXIT_FAILED


@contextlib.contextmanager
def _quiet_itk():
    """ITK prints its warnings (e.g. "... is Analyze file and it's deprecated") straight to stderr, several
    lines each; the engine checks what matters itself and says it in one sentence."""
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (how the Slicer module and job systems stop a process) raises KeyboardInterrupt, so that
    temporary files are removed on the way out; training installs its own handler that checkpoints first."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _report_error(message: str, code: int, json_mode: bool) -> None:
    message = " ".join(str(message).split())  # always one line, whatever a library put into it
    if code == EXIT_BAD_INPUT and os.environ.get("RANK", "0") != "0":
        return  # torchrun: rank 0 says it once, not every process
    if json_mode:
        print(json.dumps({"event": "error", "message": message, "exit_code": code}), flush=True)
    print(f"semisupseg: error: {message}", file=sys.stderr, flush=True)
