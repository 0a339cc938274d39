"""The clinician's two questions on this machine: how long the default preset trains and segments on a
realistically sized MR volume, and how many cases to label (its Dice on phantoms at 2, 4 and 8 labeled).

Stages, each written to the JSON as soon as it ends (a re-run skips the stages already there):

1. ``volume``: two labeled training volumes and one test volume of 576 × 576 × 88 voxels at
   0.625 × 0.625 × 1.25 mm (a left-atrium MR's grid), made by the phantom generator.
2. ``train``: ``semisupseg train --preset cpu-fast`` on them for ``--time-iterations`` iterations; the time
   per iteration after the first ``--warmup`` (from the progress events) times the preset's iterations
   gives the extrapolated training time.
3. ``segment``: ``semisupseg segment`` of the test volume with that model (wall clock of the command).
4. ``dice-N``: ``cpu-fast`` with N labeled phantoms (64 × 64 × 48 at 1 mm), ``--iterations`` iterations,
   scored on 4 held-out phantoms.

Every command runs with ``OMP_NUM_THREADS`` threads (``--threads``, default 1) and at the caller's ``nice``::

    nice -n 10 python Testing/Benchmarks/bench_laptop.py --json Testing/Benchmarks/results/laptop.json
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, machine_info  # noqa: E402

REALISTIC_SIZE = (576, 576, 88)             # x, y, z voxels
REALISTIC_SPACING = (0.625, 0.625, 1.25)     # mm
LABELED_COUNTS = (2, 4, 8)
TEST_PHANTOMS = 4


def write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".part", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(path + ".part", path)


def realistic_case(seed: int, slab: int = 8):
    """(image, label, grid) of one phantom on the realistic grid, made slab by slab along z (the phantom is
    defined in millimetres, so each slab samples the same anatomy) to keep memory near one volume."""
    from SemiSupSegTraining.geometry import Geometry
    from SemiSupSegTraining.phantoms import physical_phantom

    extent = [n * s for n, s in zip(REALISTIC_SIZE, REALISTIC_SPACING)]
    origin = [-(n - 1) / 2.0 * s for n, s in zip(REALISTIC_SIZE, REALISTIC_SPACING)]
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    images, labels = [], []
    for z0 in range(0, REALISTIC_SIZE[2], slab):
        depth = min(slab, REALISTIC_SIZE[2] - z0)
        part = Geometry((REALISTIC_SIZE[0], REALISTIC_SIZE[1], depth), REALISTIC_SPACING,
                        (origin[0], origin[1], origin[2] + z0 * REALISTIC_SPACING[2]), identity)
        image, label = physical_phantom(part, seed + z0, extent_mm=extent)
        images.append(image)
        labels.append(label)
    grid = Geometry(REALISTIC_SIZE, REALISTIC_SPACING, tuple(origin), identity)
    return np.concatenate(images), np.concatenate(labels), grid


def run(command: List[str], threads: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "SemiSupSegTraining"] + command, env=env, cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"semisupseg {' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def seconds_per_iteration(progress_lines: str, warmup: int) -> float:
    """The mean time of the iterations after ``warmup`` from ``--progress json`` training events."""
    points = []
    for line in progress_lines.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("event") == "progress" and event.get("phase") == "train":
            points.append((int(event["iteration"]), float(event["elapsed_s"])))
    after = [p for p in points if p[0] >= warmup]
    if len(after) < 2:
        raise SystemExit(f"Too few progress events after iteration {warmup} to time an iteration: {points[-5:]}")
    (i0, t0), (i1, t1) = after[0], after[-1]
    return (t1 - t0) / (i1 - i0)


def stage_volume(work: str) -> Dict[str, Any]:
    from SemiSupSegTraining.phantoms import phantom_classes, write_case_dataset

    start = time.perf_counter()
    train, test = write_case_dataset(os.path.join(work, "realistic"), lambda i: realistic_case(1000 * i),
                                     phantom_classes(), "mr", labeled=2, unlabeled=0, test=1)
    return {"train_manifest": train, "test_manifest": test, "size_xyz": list(REALISTIC_SIZE),
            "spacing_mm": list(REALISTIC_SPACING), "seconds_to_make": round(time.perf_counter() - start, 1)}


def stage_train(work: str, results: Dict[str, Any], args) -> Dict[str, Any]:
    from SemiSupSegTraining.config import PRESETS

    output = os.path.join(work, "realistic-run")
    command = ["train", "--progress", "json", "--manifest", results["volume"]["train_manifest"], "--output", output,
               "--preset", "cpu-fast", "--iterations", str(args.time_iterations), "--device", "cpu"]
    start = time.perf_counter()
    result = run(command, args.threads)
    per_iteration = seconds_per_iteration(result.stdout + result.stderr, args.warmup)
    iterations = int(PRESETS["cpu-fast"]["iterations"])
    return {"command": "semisupseg " + " ".join(command), "wall_s": round(time.perf_counter() - start, 1),
            "timed_iterations": args.time_iterations - args.warmup, "seconds_per_iteration": round(per_iteration, 3),
            "preset_iterations": iterations, "extrapolated_training_min": round(per_iteration * iterations / 60, 1),
            "model": os.path.join(output, "model.pt")}


def stage_segment(work: str, results: Dict[str, Any], args) -> Dict[str, Any]:
    from SemiSupSegTraining.manifest import load_manifest

    case = load_manifest(results["volume"]["test_manifest"]).cases[0]
    output = os.path.join(work, "realistic-seg.nii.gz")
    command = ["segment", "--progress", "none", "--model", results["train"]["model"], "--input", case.image,
               "--output", output, "--device", "cpu"]
    start = time.perf_counter()
    run(command, args.threads)
    return {"command": "semisupseg " + " ".join(command), "wall_s": round(time.perf_counter() - start, 1)}


def stage_dice(work: str, labeled: int, args) -> Dict[str, Any]:
    from SemiSupSegTraining.manifest import Manifest, load_manifest, write_manifest
    from SemiSupSegTraining.phantoms import write_phantom_dataset

    folder = os.path.join(work, "phantoms")
    train_path = os.path.join(folder, "train.json")
    if not os.path.exists(train_path):
        write_phantom_dataset(folder, labeled=max(LABELED_COUNTS), unlabeled=0, test=TEST_PHANTOMS, seed=0)
    full = load_manifest(train_path)
    subset = write_manifest(Manifest(full.classes, full.cases[:labeled], full.modality),
                            os.path.join(folder, f"train-{labeled}.json"))
    output = os.path.join(work, f"phantoms-{labeled}")
    train = ["train", "--progress", "none", "--manifest", subset, "--output", output, "--preset", "cpu-fast",
             "--iterations", str(args.iterations), "--device", "cpu"]
    start = time.perf_counter()
    run(train, args.threads)
    train_s = time.perf_counter() - start
    evaluate = ["evaluate", "--model", os.path.join(output, "model.pt"), "--manifest",
                os.path.join(folder, "test.json"), "--json", "--device", "cpu"]
    report = json.loads(run(evaluate, args.threads).stdout)
    dice = [float(np.mean([m["dice"] for m in case["classes"].values()])) for case in report["cases"]]
    return {"command": "semisupseg " + " ".join(train), "iterations": args.iterations, "train_wall_s": round(train_s, 1),
            "test_cases": len(dice), "dice_per_case": [round(d, 4) for d in dice], "mean_dice": round(float(np.mean(dice)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(ROOT, "Testing", "Benchmarks", "results", "laptop.json"))
    parser.add_argument("--work", default=os.path.join(ROOT, "laptop-bench"), help="folder for volumes and models")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-iterations", type=int, default=40, help="iterations timed on the realistic volume")
    parser.add_argument("--warmup", type=int, default=10, help="first iterations left out of the timing")
    parser.add_argument("--iterations", type=int, default=1500, help="iterations of each Dice run (cpu-fast: 1500)")
    parser.add_argument("--stages", default="volume,train,segment,dice", help="the stages to run")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    results: Dict[str, Any] = {}
    if os.path.exists(args.json):
        with open(args.json, encoding="utf-8") as f:
            results = json.load(f)
    results.setdefault("machine", machine_info())
    results["threads"] = args.threads
    wanted = args.stages.split(",")
    steps = [("volume", lambda: stage_volume(args.work)), ("train", lambda: stage_train(args.work, results, args)),
             ("segment", lambda: stage_segment(args.work, results, args))]
    if "dice" in wanted:
        wanted += [f"dice-{n}" for n in LABELED_COUNTS]
    steps += [(f"dice-{n}", lambda n=n: stage_dice(args.work, n, args)) for n in LABELED_COUNTS]
    for name, step in steps:
        if name not in wanted or name in results:
            continue
        print(f"{name} ...", flush=True)
        results[name] = step()
        write_json_atomic(args.json, results)
        print(json.dumps(results[name]), flush=True)


if __name__ == "__main__":
    main()
