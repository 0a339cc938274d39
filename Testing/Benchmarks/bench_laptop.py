"""The clinician's two questions on this machine: how long the default preset trains and segments on a
realistically sized MR volume, and how many cases to label (its Dice on phantoms at 2, 4 and 8 labeled).

Stages, each written to the JSON as soon as it ends (a re-run skips the stages already there):

1. ``volume``: two labeled training volumes and one to segment, 576 × 576 × 88 voxels of
   0.625 × 0.625 × 1.25 mm (a left-atrium MRI's grid), made by the phantom generator.
2. ``train``: ``semisupseg train --preset cpu-fast`` on them for ``--time-iterations`` iterations; the CPU
   time per iteration after the first ``--warmup`` (read from /proc at each progress event) times the
   preset's iterations is the training time.
3. ``segment``: ``semisupseg segment`` of the third volume with that model (CPU and wall time of the whole
   command).
4. ``dice-N``: ``cpu-fast`` on N labeled phantoms of 64 × 64 × 48 voxels of 1 mm, scored on 4 held-out ones;
   ``--iterations`` below the preset's 1500 shortens the run with its learning-rate step scaled alike.

Every command runs with ``--threads`` threads (default 1), at the caller's ``nice``. CPU time is reported
because a shared machine stretches the wall time; on a quiet core the two agree. ``--write`` renews the
table in docs/tutorial-command-line.md from the JSON::

    nice -n 10 python Testing/Benchmarks/bench_laptop.py --iterations 500
    python Testing/Benchmarks/bench_laptop.py --write docs/tutorial-command-line.md
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import headline  # noqa: E402
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


def _env(threads: int) -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU time of a running process (Linux /proc), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run(command: List[str], threads: int) -> Dict[str, Any]:
    """Runs ``semisupseg COMMAND``; returns its output, wall and CPU seconds and, for ``--progress json``, each
    progress event's (iteration, wall seconds, CPU seconds of the process so far). CPU time is what a quiet
    machine would take with this many threads: other work on the cores inflates the wall time only."""
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen([sys.executable, "-m", "SemiSupSegTraining"] + command, env=_env(threads), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, events = [], []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("{") and '"event": "progress"' in line:
            event = json.loads(line)
            events.append((int(event["iteration"]), time.perf_counter() - start, _cpu_seconds(process.pid)))
    error = process.stderr.read()
    if process.wait() != 0:
        raise SystemExit(f"semisupseg {' '.join(command)} failed ({process.returncode}):\n{error[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"stdout": "".join(lines), "wall_s": time.perf_counter() - start, "cpu_s": cpu, "events": events}


def per_iteration(events: List[tuple], warmup: int) -> Dict[str, float]:
    """Wall and CPU seconds per iteration after the first ``warmup`` iterations."""
    after = [e for e in events if e[0] >= warmup and e[2] is not None]
    if len(after) < 2:
        raise SystemExit(f"Too few progress events after iteration {warmup} to time an iteration.")
    (i0, w0, c0), (i1, w1, c1) = after[0], after[-1]
    return {"wall_s": (w1 - w0) / (i1 - i0), "cpu_s": (c1 - c0) / (i1 - i0)}


def relative(work: str, path: str) -> str:
    """A path inside the work folder as WORK/..., so that no machine's folders end up in the results."""
    return "WORK/" + os.path.relpath(path, work).replace(os.sep, "/")


def stage_volume(work: str) -> Dict[str, Any]:
    from SemiSupSegTraining.phantoms import phantom_classes, write_case_dataset

    start = time.perf_counter()
    write_case_dataset(os.path.join(work, "realistic"), lambda i: realistic_case(1000 * i), phantom_classes(), "mr",
                       labeled=2, unlabeled=0, test=1)
    return {"cases": "2 labeled for training, 1 to segment", "size_xyz": list(REALISTIC_SIZE),
            "spacing_mm": list(REALISTIC_SPACING), "seconds_to_make": round(time.perf_counter() - start, 1)}


def _command_text(work: str, command: List[str]) -> str:
    return "semisupseg " + " ".join(relative(work, c) if c.startswith(work) else c for c in command)


def stage_train(work: str, args) -> Dict[str, Any]:
    from SemiSupSegTraining.config import PRESETS

    output = os.path.join(work, "realistic-run")
    command = ["train", "--progress", "json", "--manifest", os.path.join(work, "realistic", "train.json"),
               "--output", output, "--preset", "cpu-fast", "--iterations", str(args.time_iterations), "--device", "cpu"]
    result = run(command, args.threads)
    pace = per_iteration(result["events"], args.warmup)
    iterations = int(PRESETS["cpu-fast"]["iterations"])
    return {"command": _command_text(work, command), "wall_s": round(result["wall_s"], 1),
            "cpu_s": round(result["cpu_s"], 1), "timed_iterations": args.time_iterations - args.warmup,
            "warmup_iterations": args.warmup,
            "cpu_s_per_iteration": round(pace["cpu_s"], 3), "wall_s_per_iteration": round(pace["wall_s"], 3),
            "preset_iterations": iterations,
            "extrapolated_training_min": round(pace["cpu_s"] * iterations / 60, 1)}


def stage_segment(work: str, args) -> Dict[str, Any]:
    command = ["segment", "--progress", "none", "--model", os.path.join(work, "realistic-run", "model.pt"),
               "--input", os.path.join(work, "realistic", "images", "mr002.nii.gz"),
               "--output", os.path.join(work, "realistic-seg.nii.gz"), "--device", "cpu"]
    result = run(command, args.threads)
    return {"command": _command_text(work, command), "wall_s": round(result["wall_s"], 1),
            "cpu_s": round(result["cpu_s"], 1)}


def stage_dice(work: str, labeled: int, args) -> Dict[str, Any]:
    from SemiSupSegTraining.config import PRESETS
    from SemiSupSegTraining.manifest import Manifest, load_manifest, write_manifest
    from SemiSupSegTraining.phantoms import write_phantom_dataset

    folder = os.path.join(work, "phantoms")
    train_path = os.path.join(folder, "train.json")
    if not os.path.exists(train_path):
        write_phantom_dataset(folder, labeled=max(LABELED_COUNTS), unlabeled=0, test=TEST_PHANTOMS, seed=0)
    full = load_manifest(train_path)
    subset = write_manifest(Manifest(full.classes, full.cases[:labeled], full.modality),
                            os.path.join(folder, f"train-{labeled}.json"))
    output = os.path.join(work, f"phantoms-{labeled}-seed{args.seed}")
    preset = PRESETS["cpu-fast"]
    # A shortened run keeps the preset's schedule in proportion (the learning rate falls at the same share).
    lr_step = max(1, round(preset["lr_step"] * args.iterations / preset["iterations"]))
    train = ["train", "--progress", "json", "--manifest", subset, "--output", output, "--preset", "cpu-fast",
             "--iterations", str(args.iterations), "--set", f"lr_step={lr_step}", "--seed", str(args.seed),
             "--device", "cpu"]
    trained = run(train, args.threads)
    evaluate = ["evaluate", "--model", os.path.join(output, "model.pt"), "--manifest",
                os.path.join(folder, "test.json"), "--json", "--device", "cpu"]
    report = json.loads(run(evaluate, args.threads)["stdout"])
    dice = [float(np.mean([m["dice"] for m in case["classes"].values()])) for case in report["cases"]]
    return {"command": _command_text(work, train), "iterations": args.iterations,
            "train_wall_s": round(trained["wall_s"], 1), "train_cpu_s": round(trained["cpu_s"], 1),
            "test_cases": len(dice), "dice_per_case": [round(d, 4) for d in dice],
            "mean_dice": round(float(np.mean(dice)), 4)}


START, END = "<!-- laptop:start -->", "<!-- laptop:end -->"


def dice_key(labeled: int, seed: int) -> str:
    return f"dice-{labeled}" + (f"-seed{seed}" if seed else "")


def _dice_cell(results: Dict[str, Any], labeled: int) -> str:
    """Mean Dice % over the seeds run for this count, each seed's in brackets when there are several."""
    runs = [v for k, v in sorted(results.items()) if k == f"dice-{labeled}" or k.startswith(f"dice-{labeled}-seed")]
    if not runs:
        return "–"
    values = [100 * r["mean_dice"] for r in runs]
    mean = f"{sum(values) / len(values):.1f}"
    return mean if len(values) == 1 else mean + " (" + ", ".join(f"{v:.1f}" for v in values) + ")"


def table(results: Dict[str, Any]) -> str:
    """The tutorial's short table: time to train and to segment, Dice by labeled cases; machine and commands."""
    train, segment = results["train"], results["segment"]
    dice = [results.get(f"dice-{n}") for n in LABELED_COUNTS]
    done = [d for d in dice if d]
    size = " × ".join(str(n) for n in results["volume"]["size_xyz"])
    spacing = " × ".join(f"{s:g}" for s in results["volume"]["spacing_mm"])
    flags = ", ".join(f for f in results["machine"].get("cpu_flags", []) if f.startswith("avx512"))
    rows = ["| question | answer | measured how |", "|---|---|---|",
            f"| how long does `cpu-fast` train? | **{train['extrapolated_training_min']:.0f} min** "
            f"({train['preset_iterations']} iterations × {train['cpu_s_per_iteration']:.2f} s) | "
            f"{train['timed_iterations']} iterations timed after the first "
            f"{train['warmup_iterations']} on 2 labeled {size} volumes, times the preset's iterations |",
            f"| how long does segmenting one volume take? | **{segment['cpu_s']:.0f} s** | the whole "
            f"`semisupseg segment` command: start, reading, windows, writing |"]
    if done:
        iterations = done[0]["iterations"]
        cells = " / ".join(_dice_cell(results, n) for n in LABELED_COUNTS)
        seeds = sum(1 for k in results if k.startswith(f"dice-{LABELED_COUNTS[0]}"))
        counts = " / ".join(str(n) for n in LABELED_COUNTS)
        rows.append(f"| Dice % with {counts} labeled cases | **{cells}** | phantoms of 64 × 64 × 48 voxels, "
                    f"{iterations} iterations" + ("" if iterations == train["preset_iterations"] else
                                                  f" (`cpu-fast` shortened from {train['preset_iterations']}, "
                                                  "its schedule scaled)") + (", one training each (seed 0)" if seeds == 1 else f", mean of {seeds} seeds (each in brackets)")
                    + f", {done[0]['test_cases']} test phantoms |")
    machine = (f"One thread of a {results['machine']['cpu_count']}-core {results['machine']['cpu']}"
               + (f" ({flags})" if flags else "") + f", torch CPU; the volume {size} voxels of {spacing} mm "
               "(a left-atrium MRI's grid) made by the phantom generator. Times are CPU time: on a machine "
               "shared with other jobs the wall time is longer, on a quiet core about the same.")
    return "\n".join(rows + ["", machine, "", "```console",
                              "nice -n 10 python Testing/Benchmarks/bench_laptop.py --iterations "
                              f"{done[0]['iterations'] if done else 1500}", "```"])


def current_block(text: str) -> str:
    return headline.current_block(text, (START, END))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(ROOT, "Testing", "Benchmarks", "results", "laptop.json"))
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "semisupseg-laptop-bench"),
                        help="folder for the volumes and models (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-iterations", type=int, default=40, help="iterations timed on the realistic volume")
    parser.add_argument("--warmup", type=int, default=10, help="first iterations left out of the timing")
    parser.add_argument("--iterations", type=int, default=1500,
                        help="iterations of each Dice run (cpu-fast: 1500; fewer scale its schedule)")
    parser.add_argument("--seed", type=int, default=0, help="the Dice runs' seed (default 0; others add runs)")
    parser.add_argument("--stages", default="volume,train,segment,dice", help="the stages to run")
    parser.add_argument("--write", metavar="DOC", help="only renew the table between its markers in DOC "
                                                        "(docs/tutorial-command-line.md) from --json")
    args = parser.parse_args()
    if args.write:
        with open(args.json, encoding="utf-8") as f:
            block = table(json.load(f))
        with open(args.write, encoding="utf-8") as f:
            text = headline.replace_block(f.read(), block, (START, END))
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(text)
        return
    os.makedirs(args.work, exist_ok=True)
    results: Dict[str, Any] = {}
    if os.path.exists(args.json):
        with open(args.json, encoding="utf-8") as f:
            results = json.load(f)
    results.setdefault("machine", machine_info())
    results["threads"] = args.threads
    wanted = args.stages.split(",")
    steps = [("volume", lambda: stage_volume(args.work)), ("train", lambda: stage_train(args.work, args)),
             ("segment", lambda: stage_segment(args.work, args))]
    if "dice" in wanted:
        wanted += [dice_key(n, args.seed) for n in LABELED_COUNTS]
    steps += [(dice_key(n, args.seed), lambda n=n: stage_dice(args.work, n, args)) for n in LABELED_COUNTS]
    for name, step in steps:
        if name not in wanted or name in results:
            continue
        print(f"{name} ...", flush=True)
        results[name] = step()
        write_json_atomic(args.json, results)
        print(json.dumps(results[name]), flush=True)


if __name__ == "__main__":
    main()
