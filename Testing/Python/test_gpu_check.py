"""Testing/Benchmarks/gpu_check.py's dry run (the GPU check's pipeline on the CPU with tiny sizes), so that
the check is ready when a GPU is: every stage runs and records what the GPU run will report."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_gpu_check_runs_every_stage_on_the_cpu(tmp_path):
    path = str(tmp_path / "gpu-check.json")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "Testing", "Benchmarks", "gpu_check.py"), "--dry-run",
                           "--json", path], capture_output=True, text=True, encoding="utf-8", env=env, cwd=ROOT,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(path) as f:
        report = json.load(f)
    stages = report["stages"]
    assert report["dry_run"] and list(stages) == ["gpu_tests", "train_step", "inference", "train_300", "torchrun"]
    failed = {name: s for name, s in stages.items() if not s["ok"]}
    assert report["ok"] and not failed, failed
    assert stages["gpu_tests"]["counts"].get("skipped", 0) >= 1  # no GPU here: the GPU tests skip, not fail
    steps = {s["name"]: s for s in stages["train_step"]["settings"]}
    assert set(steps) == {"fp32 sequential", "fp32 joint"} and all(s["finite"] for s in steps.values())
    assert [s["labels_equal_to_engine"] for s in stages["inference"]["settings"]] == [1.0, 1.0, 1.0]
    assert len(stages["train_300"]["supervised_loss"]) >= 2 and stages["torchrun"]["backend"] == "gloo"
    assert "| train_step | ok |" in proc.stdout  # the summary table
