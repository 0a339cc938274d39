"""Peak memory of whole-volume segmentation as the volume grows (bounded memory).

Segments synthetic volumes of growing size (64³, 128³, 192³, 256³ by default) with a small model file
(random weights: memory does not depend on what the weights learned) through the same path as
``semisupseg segment`` (:func:`SemiSupSegTraining.infer.segment_file`: read, normalise, sliding windows,
label map written atomically), each size in a fresh child process, and reports the child's peak resident
memory (VmHWM / ru_maxrss) above its resting memory (torch, the engine and the model loaded).

What should hold, and what this shows:

* the networks' activations depend on the window batch and the window size only, not on the volume:
  the intercept of peak memory over voxels stays flat while the volume grows 64-fold;
* what does grow with the volume are the arrays a whole-volume result needs: the normalised image
  (float32; the raw one is released once normalised), the sliding-window output of K float32 class
  channels (plus one for the disagreement when its map is asked for) with MONAI's count map, and the
  uint8 label map (taken slab by slab, no int64 argmax volume). The slope (bytes per voxel) says how many
  such arrays are alive at the peak; ``floor`` lists the unavoidable ones. Peak RSS is noisy by a few tens
  of MiB (allocator arenas), so compare the fit, not single rows.

Figures on a 2-core AMD EPYC (torch 2.13 CPU, window 64³, window batch 4, overlap 0.25), peak RSS above
resting: 64³ 19 MiB, 128³ 178 MiB, 192³ 290 MiB, 256³ 404 MiB; fit 88 MiB + 21.5 B/voxel (before the
bounded-memory changes: 21, 193, 330, 583 MiB; fit 77 MiB + 32.8 B/voxel).

With ``--target-spacing`` the model carries the geometry stage's metadata, so each volume (at
``--spacing``) is resampled to the model's spacing, segmented there, and its class probabilities come back
onto the input grid before the argmax: the bytes per input voxel then hold the resampled image and the
class channels on both grids while they are mapped back (``geometry.to_grid``, one channel at a time).

Run by hand (not in CI), e.g. on two CPU cores about 3 minutes::

    python Testing/Benchmarks/bench_inference_memory.py
    python Testing/Benchmarks/bench_inference_memory.py --sizes 64 128 --json memory.json
    python Testing/Benchmarks/bench_inference_memory.py --extras     # also probability and uncertainty maps
    python Testing/Benchmarks/bench_inference_memory.py --spacing 0.7 0.7 1.0 --target-spacing 1 1 1
"""

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

SCRIPT = os.path.abspath(__file__)
MIB = benchlib.MIB


# ---------------------------------------------------------------------------------------------- child

def child_model(task: Dict[str, Any]) -> Dict[str, Any]:
    """Writes a small model file with random weights (2 classes)."""
    import torch

    from SemiSupSegTraining.modelfile import save_model
    from SemiSupSegTraining.networks import build_networks

    torch.manual_seed(0)
    classes = [{"value": 0, "name": "background", "color": [0, 0, 0]},
               {"value": 1, "name": "structure", "color": [0.9, 0.3, 0.2]}]
    net_a, net_b = build_networks(len(classes), task["base_filters"], (1, 1, 1, 1), 0.0)
    meta = {"classes": classes, "modality": "MRI", "normalization": {"method": "zscore", "ct_window": [-120, 240]},
            "patch_size": list(task["window"]), "spacing": [1.0, 1.0, 1.0], "preset": "benchmark",
            "networks": {"a": "VNet", "b": "ResVNet", "base_filters": task["base_filters"],
                         "resnet_blocks": [1, 1, 1, 1], "in_channels": 1},
            "training": {"iterations": 0}}
    if task.get("target_spacing"):  # a model of the geometry stage: every scan is resampled to this spacing
        meta["geometry"] = {"orientation": "LPS", "target_spacing": list(task["target_spacing"])}
    save_model(task["model"], net_a.state_dict(), net_b.state_dict(), meta)
    return {}


def child_image(task: Dict[str, Any]) -> Dict[str, Any]:
    """Writes a synthetic float32 volume (a bright sphere in noise), uncompressed NIfTI."""
    import numpy as np
    import SimpleITK as sitk

    nx, ny, nz = task["size"]
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 20.0, (nz, ny, nx)).astype(np.float32)
    z, y, x = np.ogrid[:nz, :ny, :nx]
    n = min(nx, ny, nz)
    image[(z - nz / 2) ** 2 + (y - ny / 2) ** 2 + (x - nx / 2) ** 2 < (n / 4) ** 2] += 300.0
    image = sitk.GetImageFromArray(image)
    image.SetSpacing(task["spacing"])
    sitk.WriteImage(image, task["image"])
    return {}


def child_segment(task: Dict[str, Any]) -> Dict[str, Any]:
    import numpy as np
    import torch

    from SemiSupSegTraining.infer import Segmenter, segment_file

    # Warm up once on a tiny volume so that lazily allocated library state (oneDNN primitives, allocator
    # pools) counts as resting memory, then measure from the resting point.
    warm = Segmenter(task["model"], "cpu", task["overlap"], task["window_batch"])
    warm.predict(np.zeros(tuple(task["window"])[::-1], np.float32))
    del warm
    rest = benchlib.rss_now_mib()
    reset = benchlib.reset_peak_memory()
    extras = task.get("extras")
    out = task["output"]
    start = time.perf_counter()
    segment_file(task["model"], task["image"], out + ".nii.gz",
                 probabilities_path=out + "-prob.nii.gz" if extras else None,
                 uncertainty_path=out + "-unc.nii.gz" if extras else None,
                 device="cpu", overlap=task["overlap"], window_batch=task["window_batch"])
    seconds = time.perf_counter() - start
    peak = benchlib.peak_memory()
    return {"rest_mib": round(rest, 1), "peak_mib": peak["peak_rss_mib"], "peak_reset": reset,
            "seconds": round(seconds, 2), "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------------- parent

def _fit(xs: List[float], ys: List[float]):
    """Least-squares line y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["64", "128", "192", "256"],
                        help="volumes: an edge length (a cube) or X,Y,Z voxels, e.g. 512,512,400")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0], metavar=("X", "Y", "Z"),
                        help="the volumes' spacing in mm (default 1 1 1)")
    parser.add_argument("--target-spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                        help="give the model this target spacing: each volume is resampled there and its "
                             "class probabilities back (the geometry stage); default: an older model file "
                             "that segments on the native grid")
    parser.add_argument("--window", type=int, nargs=3, default=[64, 64, 64], help="the model's window (x y z)")
    parser.add_argument("--base-filters", type=int, default=4, help="the networks' base filters (small model)")
    parser.add_argument("--window-batch", type=int, default=4)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--extras", action="store_true", help="also write probability and uncertainty maps")
    parser.add_argument("--json", help="write the figures as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        benchlib.child_main(args.child, {"model": child_model, "image": child_image, "segment": child_segment})
        return 0

    machine = benchlib.machine_info()
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
        model = os.path.join(work, "model.pt")
        benchlib.run_child(SCRIPT, {"kind": "model", "model": model, "window": args.window,
                                    "base_filters": args.base_filters, "target_spacing": args.target_spacing}, work)
        for text in args.sizes:
            shape = [int(v) for v in text.split(",")] if "," in text else [int(text)] * 3
            size = "×".join(map(str, shape)) if len(set(shape)) > 1 else f"{shape[0]}³"
            image = os.path.join(work, f"image{text.replace(',', 'x')}.nii")
            benchlib.run_child(SCRIPT, {"kind": "image", "size": shape, "spacing": args.spacing, "image": image},
                               work)
            result = benchlib.run_child(SCRIPT, {
                "kind": "segment", "model": model, "image": image,
                "output": os.path.join(work, f"seg{text.replace(',', 'x')}"),
                "window": args.window, "window_batch": args.window_batch, "overlap": args.overlap,
                "extras": args.extras}, work)
            os.remove(image)
            voxels = shape[0] * shape[1] * shape[2]
            grown = result["peak_mib"] - result["rest_mib"]
            result.update(size=size, voxels=voxels, grown_mib=round(grown, 1),
                          bytes_per_voxel=round(grown * MIB / voxels, 1))
            results.append(result)
            rows.append([size, f"{voxels / 1e6:.2f}", benchlib.fmt(result["rest_mib"], 0),
                         benchlib.fmt(result["peak_mib"], 0), benchlib.fmt(grown, 0),
                         benchlib.fmt(result["bytes_per_voxel"], 1), benchlib.fmt(result["seconds"], 1)])
            print(f"{size}: peak {result['peak_mib']:.0f} MiB (resting {result['rest_mib']:.0f} MiB), "
                  f"{result['seconds']:.1f} s", flush=True)
    intercept, slope = _fit([r["voxels"] for r in results], [r["grown_mib"] * MIB for r in results])
    classes = 2
    # Alive while the windows run (the raw image is released once normalised; the disagreement channel is
    # blended only when its map is asked for): the floor of this design, in bytes per voxel.
    floor = {"normalised image (float32)": 4, f"blended output, {classes} class channels (float32)": 4 * classes,
             "MONAI's count map (float32)": 4, "label map (uint8)": 1}
    report = {
        "command": benchlib.command_line(), "machine": machine,
        "settings": {"window": args.window, "base_filters": args.base_filters, "window_batch": args.window_batch,
                     "overlap": args.overlap, "extras": args.extras, "spacing": args.spacing,
                     "target_spacing": args.target_spacing},
        "results": results,
        "fit": {"slope_bytes_per_voxel": round(slope, 1), "intercept_mib": round(intercept / MIB, 1)},
        "floor_bytes_per_voxel": floor,
    }
    print()
    print(f"{machine['cpu']} ({machine['cpu_count']} logical CPUs), window {tuple(args.window)}, window batch "
          f"{args.window_batch}, overlap {args.overlap}{', with probability and uncertainty maps' if args.extras else ''}, "
          f"spacing {tuple(args.spacing)}, "
          + (f"resampled to {tuple(args.target_spacing)} and back" if args.target_spacing else "native grid"))
    print(benchlib.markdown_table(["volume", "Mvoxels", "resting MiB", "peak MiB", "grown MiB", "B/voxel", "s"],
                                  rows))
    print(f"\nfit: peak - resting = {intercept / MIB:.0f} MiB + {slope:.1f} B/voxel × voxels; the whole-volume "
          f"arrays need at least {sum(floor.values())} B/voxel ({', '.join(f'{k} {v}' for k, v in floor.items())}).")
    benchlib.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
