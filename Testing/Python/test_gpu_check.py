"""Testing/Benchmarks/gpu_check.py's dry run (the GPU check's pipeline on the CPU with tiny sizes), so that
the check is ready when a GPU is: the kit's install step from a folder of wheels, every stage, the results
written after every setting (a kill keeps them), stopped stages taken down with every process they started,
and a summary that never fails on a stage that ended early."""

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(ROOT, "Testing", "Benchmarks")
CHECK = os.path.join(BENCHMARKS, "gpu_check.py")
sys.path.insert(0, BENCHMARKS)
import gpu_check  # noqa: E402


def _probe_wheel(folder) -> str:
    """A one-module wheel (what gpu_kit.sh downloads, in miniature)."""
    files = {"gpu_kit_probe/__init__.py": b'__version__ = "1.0"\n',
             "gpu_kit_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: gpu-kit-probe\nVersion: 1.0\n",
             "gpu_kit_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}

    def digest(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{n},{digest(d)},{len(d)}\n" for n, d in files.items()) + "gpu_kit_probe-1.0.dist-info/RECORD,,\n"
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "gpu_kit_probe-1.0-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("gpu_kit_probe-1.0.dist-info/RECORD", record)
    return path


def _check(*args, timeout=500):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, CHECK, "--dry-run", *args], capture_output=True, text=True,
                          encoding="utf-8", env=env, cwd=ROOT, timeout=timeout)


def test_the_gpu_check_runs_every_stage_on_the_cpu(tmp_path):
    path = str(tmp_path / "out" / "gpu-check.json")
    _probe_wheel(str(tmp_path / "kit"))
    proc = _check("--wheels", str(tmp_path / "kit"), "--json", path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(path) as f:
        report = json.load(f)
    stages = report["stages"]
    assert report["dry_run"] and list(stages) == ["kit", "gpu_tests", "train_step", "augmentation", "inference",
                                                  "train_paper", "torchrun"]
    failed = {name: s for name, s in stages.items() if not s["ok"]}
    assert report["ok"] and not failed, failed
    assert stages["kit"]["installed"] == {"gpu-kit-probe": {"version": "1.0", "modules": {"gpu_kit_probe": "1.0"}}}
    assert stages["gpu_tests"]["counts"].get("skipped", 0) >= 1  # no GPU here: the GPU tests skip, not fail
    steps = {s["name"]: s for s in stages["train_step"]["settings"]}
    assert list(steps) == ["fp32 auto (the engine's)", "fp32 auto, strong augmentation", "fp32 sequential",
                           "fp32 joint"]
    assert [s["backward"] for s in steps.values()] == ["sequential", "sequential", "sequential", "joint"]
    # every setting's trainer and batch thread gone before the next one
    assert all(s["finite"] and s["trainers_alive"] == 0 and s["batch_threads_alive"] == 0 for s in steps.values())
    # The strong augmentation's device path (here the CPU as the device) draws the host path's crops exactly.
    augmentation = stages["augmentation"]
    assert augmentation["batch"] == [2, 2] and len(augmentation["device_times_s"]) == 2 and augmentation["host_s"] > 0
    assert augmentation["same_draws"] and augmentation["labels_equal"] == 1.0 and augmentation["image_max_abs_diff"] == 0.0
    assert augmentation["device_left"]["trainers_alive"] == 0
    inference = stages["inference"]["settings"]
    assert [s["name"] for s in inference] == ["engine", "output in host memory", "window batch 2 (the CPU's)",
                                              "fp32"]
    assert all(s["max_abs_dp"] <= gpu_check.SAME_KERNELS_MAX_DP for s in inference if s["same_kernels_as_engine"])
    assert all(s["first_call_s"] > 0 for s in inference)
    assert len(stages["train_paper"]["supervised_loss"]) >= 2
    assert stages["torchrun"]["backend"] == "gloo" and stages["torchrun"]["semi_supervised_terms"]
    assert "| train_step | ok |" in proc.stdout and "gpu-kit-probe 1.0" in proc.stdout  # the summary table


def test_a_kill_in_the_middle_of_a_stage_keeps_the_settings_that_finished(tmp_path):
    """The whole check killed (SIGKILL) right after the first training-step setting: that row is in the
    JSON already."""
    path = str(tmp_path / "gpu-check.json")
    proc = _check("--only", "train_step", "--json", path, "--kill-after-settings", "1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    with open(path) as f:
        stage = json.load(f)["stages"]["train_step"]
    assert stage["in_progress"] and not stage["ok"]
    assert [s["name"] for s in stage["settings"]] == ["fp32 auto (the engine's)"] and stage["settings"][0]["step_s"] > 0


def test_a_stage_past_its_limit_is_stopped_with_every_process_it_started():
    """Like torchrun's workers: a grandchild in a session of its own, which the process group does not reach."""
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True); "
            "print(p.pid, flush=True); time.sleep(300)")
    started = time.monotonic()
    done = gpu_check.run_process([sys.executable, "-c", code], timeout=5)
    assert done.timed_out and time.monotonic() - started < 30
    grandchild = int(done.stdout.split()[0])
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{grandchild}") or open(f"/proc/{grandchild}/stat").read().split()[2] == "Z"


@pytest.mark.parametrize("keep", ["nothing", "partial"])
def test_the_summary_never_fails_on_a_stage_that_ended_early(keep):
    stopped = {"ok": False, "error": "stopped after its limit of 90 s", "seconds": 90.0}
    stages = {name: dict(stopped) for name, _ in gpu_check.STAGES}
    if keep == "partial":  # what a stopped child left: the first setting only, or a failed one
        stages["train_step"] = dict(gpu_check.summarize_steps({"settings": [{"name": "bf16 auto", "error": "OOM"}]}),
                                    **stopped)
        engine = {"name": "engine", "seconds": 0.5, "first_call_s": 9.0, "same_kernels_as_engine": True,
                  "max_abs_dp": 0.0}
        stages["inference"] = dict(gpu_check.summarize_inference({"settings": [engine]}), **stopped)
        stages["train_paper"] = {"ok": False, "iterations": 300, "seconds": 90.0}
    report = {"dry_run": False, "command": "x", "machine": {"cpu": "cpu", "cpu_count": 16},
              "torch": {"gpu": "NVIDIA H100 80GB HBM3"}, "settings": {"device": "cuda"}, "stages": stages}
    text = gpu_check.format_report(report)
    assert text.count("FAILED") == len(gpu_check.STAGES) and "stopped after its limit" in text


def test_the_kits_command_is_one_the_check_accepts():
    with open(os.path.join(BENCHMARKS, "gpu_kit.sh")) as f:
        script = f.read()
    command = re.findall(r'python3 Testing/Benchmarks/gpu_check\.py ([^|]*) 2>&1 \|', script)[0]
    args = gpu_check.parse_args(command.replace('\\"', "").replace("$OUTPUT", "out").split())
    assert args.wheels == ".whl" and args.json == "out/gpu-check.json" and args.budget == gpu_check.BUDGET_S
    assert "tee \\\"$OUTPUT/gpu-check.log\\\"" in script


def test_the_estimate_counts_both_networks_and_the_sequential_replay():
    """docs/performance.md's estimate: 2.58 TFLOP a joint step; the sequential backward adds A's forward."""
    result = gpu_check.estimate(sustained_tflops=(50.0,), other_ms=(0.0,))
    a, b = result["networks"]["a"], result["networks"]["b"]
    assert result["joint_step_tflop"] == pytest.approx(a["forward_backward_tflop"] + b["forward_backward_tflop"], abs=1e-3)
    assert result["sequential_step_tflop"] == pytest.approx(result["joint_step_tflop"] + a["forward_tflop"], abs=1e-3)
    assert result["joint_step_tflop"] == pytest.approx(2.58, abs=0.01)
    assert result["step_s"][0] == pytest.approx(result["joint_step_tflop"] / 50.0, abs=1e-4)


@pytest.mark.parametrize("repeat, host, ok", [(0.0, 0.0, True), (0.0, 1e-3, False), (2e-3, 3e-3, True),
                                              (2e-3, 5e-3, False)])
def test_settings_with_the_engines_kernels_agree_with_it_as_well_as_it_agrees_with_itself(repeat, host, ok):
    """cuDNN may pick kernels that accumulate in a varying order: the engine run twice then differs by
    ``repeat``; the output blended in host memory may differ by twice that, never more (the CPU's window
    batch runs other kernels: recorded, not judged)."""
    def row(name, dp, same=True):
        return {"name": name, "seconds": 0.5, "first_call_s": 5.0, "same_kernels_as_engine": same,
                "max_abs_dp": dp, "repeat_max_dp": repeat}

    result = gpu_check.summarize_inference({"settings": [row("engine", 0.0), row("output in host memory", host),
                                                         row("window batch 2", 0.2, same=False)]})
    assert result["ok"] is ok and result["other_kernels_max_dp"] == 0.2
