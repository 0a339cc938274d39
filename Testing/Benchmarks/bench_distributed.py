"""Training steps per second with 1 and with several processes (``torchrun``, gloo on a CPU, nccl on GPUs).

Each configuration runs ``semisupseg train`` as a user would (the same command under ``torchrun
--standalone --nproc-per-node N`` for N > 1) on synthetic phantoms, with JSON progress; the pace is taken
from rank 0's progress events between iteration ``--warmup`` and the last one (so reading the cases and
the first iterations do not count). Every process trains ``batch_labeled + batch_unlabeled`` crops, so the
global batch grows with the processes: the table gives steps per second and crops per second, and the
scaling efficiency (crops per second against N × those of one process).

On a CPU the processes share its cores: ``--threads`` sets each process's torch threads (default: the cores
divided among the processes, so that every configuration uses the whole CPU once).

    python Testing/Benchmarks/bench_distributed.py --json Testing/Benchmarks/results/distributed.json
    python Testing/Benchmarks/bench_distributed.py --device cuda --processes 1 2 4 --preset paper
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

ROOT = benchlib.ROOT


def run_one(manifest: str, folder: str, processes: int, threads: int, args) -> Dict[str, Any]:
    """One training; its pace from the progress events of rank 0."""
    command = [sys.executable, "-m", "SemiSupSegTraining", "train", "--manifest", manifest, "--output", folder,
               "--preset", args.preset, "--device", args.device, "--iterations", str(args.iterations),
               "--set", "checkpoint_every=100000", "--set", "checkpoint_minutes=0", "--progress", "json"]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(processes)] + command[1:]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    elapsed = {e["iteration"]: e["elapsed_s"] for e in events if e["event"] == "progress"}
    first, last = args.warmup, args.iterations
    steps_per_s = (last - first) / (elapsed[last] - elapsed[first])
    config = json.load(open(os.path.join(folder, "config.json")))
    crops = processes * (config["batch_labeled"] + config["batch_unlabeled"])
    return {"processes": processes, "threads_per_process": threads, "global_batch_crops": crops,
            "steps_per_s": round(steps_per_s, 4), "crops_per_s": round(steps_per_s * crops, 3),
            "timed_iterations": last - first, "wall_s": round(wall, 1)}


def format_report(report: Dict[str, Any]) -> str:
    rows = report["runs"]
    base = rows[0]["crops_per_s"] / rows[0]["processes"]
    lines = [f"Command: `{report['command']}`", "", f"Machine: {report['machine_text']}", "",
             f"Preset {report['settings']['preset']}, {report['settings']['timed_iterations']} timed iterations "
             f"after {report['settings']['warmup']}.", "",
             "| processes | threads each | global batch (crops) | steps/s | crops/s | scaling efficiency |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        efficiency = r["crops_per_s"] / (base * r["processes"])
        lines.append(f"| {r['processes']} | {r['threads_per_process']} | {r['global_batch_crops']} | "
                     f"{r['steps_per_s']:.3f} | {r['crops_per_s']:.2f} | {efficiency:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    p.add_argument("--preset", default="demo", help="training preset (default demo: 48×48×32 crops)")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl; one GPU per process)")
    p.add_argument("--iterations", type=int, default=25, help="iterations per run (default 25)")
    p.add_argument("--warmup", type=int, default=5, help="iterations not timed (default 5)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: cores / processes)")
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    from SemiSupSegTraining.phantoms import write_phantom_dataset

    machine = benchlib.machine_info()
    runs: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as work:
        manifest, _ = write_phantom_dataset(os.path.join(work, "cases"), labeled=2, unlabeled=4, test=0)
        for n in args.processes:
            threads = args.threads or max(1, (os.cpu_count() or 1) // n)
            runs.append(run_one(manifest, os.path.join(work, f"run{n}"), n, threads, args))
    text = (f"{machine['cpu']} ({machine['cpu_count']} logical CPUs; {', '.join(machine['cpu_flags'])}), "
            f"torch {metadata.version('torch')}, device {args.device}"
            f"; load average {machine.get('load_average_1min')} when the run started")
    report = {"benchmark": "bench-distributed", "command": "python " + " ".join(
        [os.path.relpath(os.path.abspath(__file__), ROOT)] + list(argv if argv is not None else sys.argv[1:])),
        "machine": machine, "machine_text": text, "torch": metadata.version("torch"),
        "settings": {"preset": args.preset, "device": args.device, "iterations": args.iterations,
                     "warmup": args.warmup, "timed_iterations": args.iterations - args.warmup},
        "runs": runs}
    print(format_report(report))
    benchlib.write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
