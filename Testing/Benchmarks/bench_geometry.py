"""Orientation and spacing: one model, one physical phantom stored in other orientations, spacings
and an oblique direction, segmented with and without the geometry stage; and what the stage costs.

1. **Dice per variant.** Trains the ``demo`` preset (or takes ``--model``) on physical phantoms
   (``phantoms.physical_phantom``: the same anatomy on any grid) stored at 1 mm in the canonical LPS
   orientation, then segments held-out phantoms stored as: the native grid, RAS, coronal LSA, sagittal ASL,
   PIR, an oblique direction (17° about an oblique axis), finer (0.7 mm), anisotropic (0.7×0.7×2.5 mm),
   coarser (1.5 mm) and a sagittal anisotropic stack (2.5×0.7×0.7 mm) — through ``semisupseg segment``'s
   path (``infer.segment_file``, files in and out). Each result is scored on its own grid against the
   phantom's label on that grid. "without the stage" is the same weights in a model file without
   ``geometry`` metadata (as written before the stage): each scan on its own voxel grid.
2. **Cost.** Resampling a large CT (512×512×400 at 0.7×0.7×1.0 mm, float32) to 1 mm and two class
   probability maps back, and only reorienting it (stored PIR), each in a fresh process: seconds and peak
   memory above the resting process.

With ``--parts`` one part runs; ``--json`` then keeps the other part of an existing file. Run by hand
(not in CI), e.g. on two CPU cores about 8 minutes::

    python Testing/Benchmarks/bench_geometry.py --json Testing/Benchmarks/results/geometry.json
    python Testing/Benchmarks/bench_geometry.py --model demo-output/model/model.pt --parts dice --seeds 3
"""

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

SCRIPT = os.path.abspath(__file__)
MIB = benchlib.MIB
# name: (orientation code or "oblique", spacing per physical axis x, y, z in mm)
VARIANTS = {
    "native (LPS, 1 mm)": ("LPS", (1.0, 1.0, 1.0)),
    "RAS": ("RAS", (1.0, 1.0, 1.0)),
    "coronal LSA": ("LSA", (1.0, 1.0, 1.0)),
    "sagittal ASL": ("ASL", (1.0, 1.0, 1.0)),
    "PIR": ("PIR", (1.0, 1.0, 1.0)),
    "oblique (17°)": ("oblique", (1.0, 1.0, 1.0)),
    "finer 0.7 mm": ("LPS", (0.7, 0.7, 0.7)),
    "anisotropic 0.7×0.7×2.5 mm": ("LPS", (0.7, 0.7, 2.5)),
    "coarser 1.5 mm": ("LPS", (1.5, 1.5, 1.5)),
    "sagittal ASL 2.5×0.7×0.7 mm": ("ASL", (2.5, 0.7, 0.7)),
}


def _grid(code, spacing):
    import numpy as np
    import SimpleITK as sitk

    from SemiSupSegTraining.phantoms import phantom_grid

    if code != "oblique":
        return phantom_grid(spacing, code)
    axis = np.array([1.0, 2.0, 3.0]) / np.linalg.norm([1.0, 2.0, 3.0])
    return phantom_grid(spacing, direction=sitk.VersorTransform(tuple(axis), 0.3).GetMatrix())


def _write(folder, name, grid, seed):
    from SemiSupSegTraining.fileio import write_image_atomic, write_label_image
    from SemiSupSegTraining.phantoms import phantom_classes, physical_phantom

    image, label = physical_phantom(grid, seed)
    image_path, label_path = os.path.join(folder, name + ".nii.gz"), os.path.join(folder, name + "-label.nii.gz")
    write_image_atomic(grid.to_image(image), image_path)
    write_label_image(label, phantom_classes(), grid, label_path)
    return image_path, label_path


# ---------------------------------------------------------------------------------------------- children

def child_dice(task: Dict[str, Any]) -> Dict[str, Any]:
    import numpy as np
    import SimpleITK as sitk
    import torch

    from SemiSupSegTraining.config import preset_config
    from SemiSupSegTraining.infer import segment_file
    from SemiSupSegTraining.manifest import CaseEntry, Manifest, write_manifest
    from SemiSupSegTraining.metrics import overlap
    from SemiSupSegTraining.modelfile import load_trusted_data, read_metadata, save_model
    from SemiSupSegTraining.phantoms import phantom_classes, phantom_grid
    from SemiSupSegTraining.train import train

    work = task["work"]
    model = task.get("model")
    started = time.perf_counter()
    if not model:
        entries = []
        for i in range(task["labeled"] + task["unlabeled"]):
            image, label = _write(work, f"train{i:02d}", phantom_grid(), i)
            entries.append(CaseEntry(f"train{i:02d}", image, label, labeled=i < task["labeled"]))
        manifest = write_manifest(Manifest(phantom_classes(), entries, "MRI"), os.path.join(work, "train.json"))
        config = preset_config("demo", {"iterations": task["iterations"], "device": "cpu"})
        model = train(manifest, os.path.join(work, "run"), config, progress="none")
    train_s = time.perf_counter() - started
    data = load_trusted_data(model)
    older = os.path.join(work, "without-stage.pt")
    save_model(older, data["weights_a"], data["weights_b"],
               {k: v for k, v in data["metadata"].items() if k != "geometry"})
    rows = {}
    for name, (code, spacing) in VARIANTS.items():
        grid = _grid(code, spacing)
        scores = {"with": [], "without": [], "seconds_with": []}
        for seed in range(1000, 1000 + task["seeds"]):
            image_path, label_path = _write(work, "test", grid, seed)
            reference = sitk.GetArrayFromImage(sitk.ReadImage(label_path)) == 1
            for key, path in (("with", model), ("without", older)):
                output = os.path.join(work, f"seg-{key}.nii.gz")
                start = time.perf_counter()
                segment_file(path, image_path, output, device="cpu")
                if key == "with":
                    scores["seconds_with"].append(time.perf_counter() - start)
                result = sitk.ReadImage(output)
                assert result.GetSize() == grid.size  # on the input's own grid
                scores[key].append(overlap(sitk.GetArrayFromImage(result) == 1, reference)["dice"])
        rows[name] = {"orientation": code, "spacing": list(spacing), "size": list(grid.size),
                      "dice_with_stage": round(float(np.mean(scores["with"])), 4),
                      "dice_without_stage": round(float(np.mean(scores["without"])), 4),
                      "dice_with_stage_per_seed": [round(d, 4) for d in scores["with"]],
                      "segment_seconds": round(float(np.mean(scores["seconds_with"])), 2)}
        print(f"{name}: {rows[name]['dice_with_stage']:.4f} with, {rows[name]['dice_without_stage']:.4f} without",
              flush=True)
    return {"rows": rows, "train_seconds": round(train_s, 1), "geometry": read_metadata(model).get("geometry"),
            "model": "trained here" if not task.get("model") else task["model"],
            "torch": benchlib.torch_info("cpu"), "threads": torch.get_num_threads()}


def child_cost(task: Dict[str, Any]) -> Dict[str, Any]:
    """Resamples a large volume (float32) to the canonical grid and two probability channels back."""
    import numpy as np
    import SimpleITK as sitk

    from SemiSupSegTraining import geometry
    from SemiSupSegTraining.geometry import Geometry

    size = tuple(task["size"])
    direction = sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(task["orientation"])
    grid = Geometry(size, tuple(task["spacing"]), (0.0, 0.0, 0.0), direction)
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 1.0, size[::-1]).astype(np.float32)
    rest = benchlib.rss_now_mib()
    benchlib.reset_peak_memory()
    start = time.perf_counter()
    canonical, canonical_grid = geometry.to_canonical(image, grid, task["target"])
    there = time.perf_counter() - start
    probabilities = np.stack([canonical, 1.0 - canonical])  # stands for the K = 2 class channels
    del canonical
    before_back = benchlib.rss_now_mib()
    start = time.perf_counter()
    back = geometry.to_grid(probabilities, canonical_grid, grid)
    back_s = time.perf_counter() - start
    peak = benchlib.peak_memory()["peak_rss_mib"]
    voxels = int(np.prod(size))
    return {"size": list(size), "spacing": task["spacing"], "orientation": task["orientation"],
            "target": task["target"], "canonical_size": list(canonical_grid.size), "voxels": voxels,
            "to_canonical_s": round(there, 2), "back_s": round(back_s, 2), "back_shape": list(back.shape),
            "rest_mib": round(rest, 1), "before_back_mib": round(before_back, 1), "peak_mib": peak,
            "peak_bytes_per_input_voxel": round((peak - rest) * MIB / voxels, 1)}


# ----------------------------------------------------------------------------------------------- parent

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model file to use instead of training one")
    parser.add_argument("--iterations", type=int, default=200, help="training iterations (preset demo)")
    parser.add_argument("--labeled", type=int, default=4)
    parser.add_argument("--unlabeled", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2, help="held-out phantoms per variant")
    parser.add_argument("--parts", nargs="+", choices=("dice", "cost"), default=["dice", "cost"],
                        help="what to measure: the Dice table, the resampling cost of a large CT (default both)")
    parser.add_argument("--json", help="write the figures as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        benchlib.child_main(args.child, {"dice": child_dice, "cost": child_cost})
        return 0

    machine = benchlib.machine_info()
    report: Dict[str, Any] = {"command": benchlib.command_line(), "machine": machine}
    with tempfile.TemporaryDirectory(prefix="bench-geometry-") as work:
        dice = None
        if "dice" in args.parts:
            dice = benchlib.run_child(SCRIPT, {"kind": "dice", "work": work, "model": args.model,
                                               "iterations": args.iterations, "labeled": args.labeled,
                                               "unlabeled": args.unlabeled, "seeds": args.seeds}, work)
            report["dice"] = dice
        costs = []
        if "cost" in args.parts:
            ct = {"size": [512, 512, 400], "spacing": [0.7, 0.7, 1.0]}
            for orientation, target in (("LPS", [1.0, 1.0, 1.0]), ("PIR", None)):
                spacing = ct["spacing"] if orientation == "LPS" else [0.7, 1.0, 0.7]  # PIR: i along y, j along z
                size = ct["size"] if orientation == "LPS" else [512, 400, 512]
                costs.append(benchlib.run_child(SCRIPT, {"kind": "cost", "size": size, "spacing": spacing,
                                                         "orientation": orientation, "target": target}, work))
        report["cost"] = costs
    print(f"\n{machine['cpu']} ({machine['cpu_count']} logical CPUs; load average "
          f"{machine.get('load_average_1min')} when the run started)")
    if dice:
        print(f"torch {dice['torch']['torch']}, {dice['threads']} threads; model: {dice['model']} (training "
              f"{dice['train_seconds']} s); target spacing {dice['geometry'] and dice['geometry']['target_spacing']}")
        rows = [[name, "×".join(f"{s:g}" for s in r["spacing"]), "×".join(str(s) for s in r["size"]),
                 benchlib.fmt(100 * r["dice_with_stage"], 1), benchlib.fmt(100 * r["dice_without_stage"], 1),
                 benchlib.fmt(r["segment_seconds"], 1)] for name, r in dice["rows"].items()]
        print(benchlib.markdown_table(["stored as", "spacing mm", "voxels", "Dice % with the stage",
                                       "Dice % without (native voxel grid)", "segment s"], rows))
    if costs:
        print()
        print(benchlib.markdown_table(
            ["CT 512×512×400, 0.7×0.7×1.0 mm", "canonical grid", "to canonical s", "2 channels back s",
             "peak MiB above resting", "B per input voxel"],
            [[f"{c['orientation']} → {c['target'] or 'reorient only'}", "×".join(map(str, c["canonical_size"])),
              benchlib.fmt(c["to_canonical_s"], 1), benchlib.fmt(c["back_s"], 1),
              benchlib.fmt(c["peak_mib"] - c["rest_mib"], 0), benchlib.fmt(c["peak_bytes_per_input_voxel"], 1)]
             for c in costs]))
    if args.json and os.path.exists(args.json):  # keep the part this run did not measure, with its command
        import json

        with open(args.json) as f:
            previous = json.load(f)
        for part in {"dice", "cost"} - set(args.parts):
            if part in previous:
                report[part] = previous[part]
                report[f"{part}_measured_by"] = previous.get(f"{part}_measured_by", previous["command"])
    for part in args.parts:
        report[f"{part}_measured_by"] = report["command"]
    benchlib.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
