"""The first run on a GPU, in one command: everything that needs one, measured, within 8 minutes.

On a machine with one NVIDIA GPU (``python Testing/Benchmarks/gpu_check.py``), in this order, each stage
in fresh processes, each with a time limit, a failing stage recorded and the next one run:

1. **gpu tests**: ``pytest -m gpu`` (Testing/Python/test_gpu.py: the card's precision, a step without host
   syncs, sequential against joint gradients, a GPU checkpoint resumed on the CPU, segmentation against
   the CPU's);
2. **training step** at paper scale (bench_train_step.py's step: 2 + 2 crops of 112×112×80 from LA-sized
   phantoms, V-Net + ResNet34-encoder V-Net with 16 base filters): each precision the card supports, with
   the sequential and the joint backward; time per step (median), peak GPU memory, and 6000 iterations
   projected;
3. **inference**: a 160×192×88 volume segmented by both paper-scale networks (random weights, batch-norm
   statistics calibrated on the volume) with the engine's settings on the device, with the output in host
   memory (MONAI's ``buffer_steps``), and with the CPU's window batch; the labels of the three compared;
4. **300 iterations** of the paper preset (``semisupseg train --preset paper``) on phantoms at the paper's
   crops: the supervised loss must go down; seconds per iteration;
5. **torchrun** with one process: the distributed path (nccl for the GPU's tensors) for 20 iterations.

One JSON (``--json``; default ``Testing/Benchmarks/results/gpu-check-<gpu>.json``, written after each
stage, so a run cut short keeps what it measured) and a summary table at the end. Targets (issue 25): a
paper-preset step that finishes 6000 iterations within 10 minutes (0.1 s a step), and both networks over a
160×192×88 volume in under a second.

``--dry-run`` runs the same pipeline on the CPU with tiny sizes (well under a minute; CI runs it through
Testing/Python/test_gpu_check.py so that it cannot rot). Its figures say nothing about speed.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchlib  # noqa: E402

SCRIPT = os.path.abspath(__file__)
ROOT = benchlib.ROOT
BUDGET_S = 480.0
TARGET_STEP_S = 600.0 / 6000  # 6000 iterations in 10 minutes
TARGET_INFERENCE_S = 1.0

PAPER = {"device": "cuda", "patch": (112, 112, 80), "window": (112, 112, 80), "base_filters": 16, "resnet_blocks": (3, 4, 6, 3),
         "shape": (160, 192, 88), "warmup": 3, "steps": 5, "data_samples": 5, "inference_repeats": 3,
         "train_preset": "paper", "train_iterations": 300, "torchrun_preset": "demo", "torchrun_iterations": 20,
         "phantoms": 2,
         # seconds each stage may take at most (the whole run stays within BUDGET_S)
         "limits": {"gpu_tests": 90, "train_step": 170, "inference": 60, "train_300": 150, "torchrun": 60}}
DRY = {"device": "cpu", "patch": (16, 16, 16), "window": (32, 32, 16), "base_filters": 4, "resnet_blocks": (1, 1, 1, 1),
       "shape": (48, 48, 24), "warmup": 1, "steps": 1, "data_samples": 1, "inference_repeats": 1,
       "train_preset": "tiny", "train_iterations": 10, "torchrun_preset": "tiny", "torchrun_iterations": 2,
       "phantoms": 1,
       "limits": {"gpu_tests": 60, "train_step": 60, "inference": 60, "train_300": 60, "torchrun": 60}}

log = benchlib.logger("gpu_check")


# ========================================================================================== children

def supported_precisions(device: str) -> List[str]:
    """What the device trains in: on CUDA bf16 from compute capability 8.0, fp16 from 5.3 (tensor cores
    from 7.0), fp32 always; the CPU trains in fp32 (devices.precision_for)."""
    import torch

    if not device.startswith("cuda"):
        return ["fp32"]
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return (["bf16"] if major >= 8 else []) + (["fp16"] if (major, minor) >= (5, 3) else []) + ["fp32"]


def child_steps(task: Dict[str, Any]) -> Dict[str, Any]:
    """bench_train_step's ``ours`` step for each precision × backward, one after the other in this process."""
    import torch

    import bench_train_step

    results = []
    precisions = supported_precisions(task["device"])
    runs = [(amp, procedure, None) for amp in precisions for procedure in ("ours", "ours-joint")]
    if task["device"].startswith("cuda"):  # a lever not yet taken on GPUs: channels-last 3D for cuDNN
        runs.append((precisions[0], "ours-joint", True))
    for amp, procedure, channels_last in runs:
        name = f"{amp} {'sequential' if procedure == 'ours' else 'joint'}{' channels-last' if channels_last else ''}"
        try:
            r = bench_train_step.child_step(dict(task, procedure=procedure, amp=amp, channels_last=channels_last))
            results.append({"name": name, "precision": r["precision"], "step_s": r["step"]["median_s"],
                            "data_s": r["data"]["median_s"], "warmup_s": r["warmup_times_s"],
                            "finite": r["finite"], "cuda_peak_mib": r["memory"]["cuda_peak_mib"],
                            "peak_rss_mib": r["memory"]["peak_rss_mib"],
                            "minutes_6000": round(6000 * r["step"]["median_s"] / 60, 1)})
        except Exception as e:  # out of memory in one setting must not lose the others
            results.append({"name": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"settings": results, "torch": benchlib.torch_info(task["device"])}


def _model_file(path: str, task: Dict[str, Any], image: np.ndarray) -> str:
    """Seeded random networks whose batch-norm statistics come from the volume's central window (so that
    the activations stay in range), saved as a model file."""
    import torch

    from SemiSupSegTraining.modelfile import save_model
    from SemiSupSegTraining.networks import build_networks

    torch.manual_seed(0)
    nets = build_networks(2, task["base_filters"], tuple(task["resnet_blocks"]), dropout=0.0)
    window = tuple(int(s) for s in task["window"][::-1])
    start = [max((s - w) // 2, 0) for s, w in zip(image.shape, window)]
    device = torch.device(task["device"])
    crop = torch.from_numpy(image[tuple(slice(a, a + w) for a, w in zip(start, window))].copy())[None, None]
    with torch.no_grad():
        for net in nets:
            for m in net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.momentum = None  # a cumulative average: one pass sets the statistics
            net.to(device).train()(crop.to(device))
            net.cpu()
    metadata = {"classes": [{"value": 0, "name": "background", "color": [0, 0, 0]},
                            {"value": 1, "name": "phantom", "color": [1.0, 0.8, 0.2]}],
                "modality": "MRI", "normalization": {"method": "zscore", "ct_window": [-120.0, 240.0]},
                "patch_size": list(task["window"]), "spacing": [1.0, 1.0, 1.0], "preset": "paper", "overrides": {},
                "networks": {"a": "VNet", "b": "ResVNet", "base_filters": task["base_filters"],
                             "resnet_blocks": list(task["resnet_blocks"]), "in_channels": 1}}
    return save_model(path, nets[0].state_dict(), nets[1].state_dict(), metadata)


def child_inference(task: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    from SemiSupSegTraining.config import DEFAULT_WINDOW_BATCH
    from SemiSupSegTraining.geometry import normalize
    from SemiSupSegTraining.devices import precision_name
    from SemiSupSegTraining.infer import Segmenter, window_count
    from SemiSupSegTraining.phantoms import make_phantom

    device = task["device"]
    raw, _ = make_phantom(7, tuple(task["shape"][::-1]))
    image = normalize(raw, "zscore").astype(np.float32)
    model = _model_file(os.path.join(task["workdir"], "paper-random.pt"), task, image)
    sync = benchlib.device_sync(device)
    settings = [("engine (on the device)", {}), ("output in host memory", {"blend_on_device": False}),
                (f"window batch {DEFAULT_WINDOW_BATCH} (the CPU's)", {"window_batch": DEFAULT_WINDOW_BATCH})]
    results, labels = [], {}
    for name, options in settings:
        seg = Segmenter(model, device, disagreement=False, **options)
        seg.predict(image)  # warm-up: cuDNN's autotuner, oneDNN's kernels
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        run = benchlib.timed(lambda seg=seg: seg.predict(image)[0], task["inference_repeats"], sync)
        labels[name] = run.pop("result").argmax(0)
        results.append({"name": name, "seconds": run["median_s"], "times_s": run["times_s"],
                        "window_batch": seg.window_batch, "precision": precision_name(seg.amp_dtype),
                        "windows": window_count(image.shape, seg.window, seg.overlap),
                        "cuda_peak_mib": benchlib.cuda_peak_mib(device)})
    first = labels[settings[0][0]]
    for r in results:
        r["labels_equal_to_engine"] = round(float((labels[r["name"]] == first).mean()), 6)
    return {"shape_xyz": list(task["shape"]), "settings": results, "torch": benchlib.torch_info(device)}


HANDLERS = {"steps": child_steps, "inference": child_inference}


# ============================================================================================ stages

def _run(command: Sequence[str], timeout: float, cwd: str = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run(list(command), capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env=env, cwd=cwd)


def _events(text: str) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _tail(proc: subprocess.CompletedProcess) -> str:
    return (proc.stderr or proc.stdout or "")[-1500:]


def stage_gpu_tests(s: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    proc = _run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                 os.path.join("Testing", "Python", "test_gpu.py")], timeout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    return {"ok": proc.returncode == 0, "summary": summary, "counts": counts,
            **({} if proc.returncode == 0 else {"output": proc.stdout[-3000:]})}


def stage_train_step(s: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    from SemiSupSegTraining.phantoms import write_phantom_dataset

    manifest, _ = write_phantom_dataset(os.path.join(work, "step-data"), labeled=2, unlabeled=2, test=0, seed=5,
                                        shape_zyx=tuple(s["shape"][::-1]))
    result = benchlib.run_child(SCRIPT, {
        "kind": "steps", "device": s["device"], "threads": None, "manifest": manifest, "patch": list(s["patch"]),
        "base_filters": s["base_filters"], "resnet_blocks": list(s["resnet_blocks"]), "warmup": s["warmup"],
        "steps": s["steps"], "data_samples": s["data_samples"]}, work, timeout=timeout)
    done = [r for r in result["settings"] if "step_s" in r]
    best = min(done, key=lambda r: r["step_s"]) if done else None
    return {"ok": bool(done) and all(r.get("finite") for r in done), "settings": result["settings"],
            "fastest": best and best["name"], "fastest_step_s": best and best["step_s"],
            "target_step_s": TARGET_STEP_S, "target_met": bool(best) and best["step_s"] <= TARGET_STEP_S,
            "torch": result["torch"]}


def stage_inference(s: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    result = benchlib.run_child(SCRIPT, dict(s, kind="inference", workdir=work, limits=None), work, timeout=timeout)
    engine = result["settings"][0]
    agree = min(r["labels_equal_to_engine"] for r in result["settings"])
    return {"ok": agree >= 0.999, "settings": result["settings"], "engine_s": engine["seconds"],
            "labels_agree_min": agree, "target_s": TARGET_INFERENCE_S,
            "target_met": engine["seconds"] < TARGET_INFERENCE_S}


def _phantoms(s: Dict[str, Any], work: str) -> str:
    from SemiSupSegTraining.phantoms import write_phantom_dataset

    folder = os.path.join(work, "train-data")
    if not os.path.isdir(folder):
        write_phantom_dataset(folder, labeled=s["phantoms"], unlabeled=s["phantoms"], test=0, seed=3,
                              shape_zyx=tuple(s["shape"][::-1]))
    return os.path.join(folder, "train.json")


def _train_command(s: Dict[str, Any], manifest: str, output: str, preset: str, iterations: int) -> List[str]:
    return ["-m", "SemiSupSegTraining", "train", "--manifest", manifest, "--output", output, "--preset", preset,
            "--iterations", str(iterations), "--device", s["device"], "--progress", "json"]


def loss_went_down(supervised: Sequence[float]) -> bool:
    """The mean of the last third of the logged supervised losses below the mean of the first third."""
    share = len(supervised) // 3
    if share < 1:
        return False
    return float(np.mean(supervised[-share:])) < float(np.mean(supervised[:share]))


def stage_train_300(s: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    manifest = _phantoms(s, work)
    started = time.perf_counter()
    proc = _run([sys.executable] + _train_command(s, manifest, os.path.join(work, "run-300"), s["train_preset"],
                                                   s["train_iterations"]), timeout)
    wall = time.perf_counter() - started
    events = _events(proc.stdout)
    logged = [e for e in events if e["event"] == "progress" and "losses" in e]
    supervised = [e["losses"]["sup_a"] + e["losses"]["sup_b"] for e in logged]
    start = next((e for e in events if e["event"] == "start"), {})
    pace = None
    if len(logged) >= 2:
        pace = (logged[-1]["elapsed_s"] - logged[0]["elapsed_s"]) / (logged[-1]["iteration"] - logged[0]["iteration"])
    down = loss_went_down(supervised)
    # The dry run's few tiny iterations need not learn: it checks that the stage runs.
    return {"ok": proc.returncode == 0 and (down or s["dry_run"]), "exit_code": proc.returncode, "wall_s": round(wall, 1),
            "iterations": s["train_iterations"], "start_message": start.get("message"),
            "seconds_per_iteration": None if pace is None else round(pace, 4),
            "minutes_6000": None if pace is None else round(6000 * pace / 60, 1),
            "supervised_loss": [round(v, 4) for v in supervised], "loss_went_down": down,
            **({} if proc.returncode == 0 else {"error": _tail(proc)})}


def stage_torchrun(s: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    manifest = _phantoms(s, work)
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
                + _train_command(s, manifest, os.path.join(work, "run-torchrun"), s["torchrun_preset"],
                                 s["torchrun_iterations"]), timeout)
    events = _events(proc.stdout)
    start = next((e for e in events if e["event"] == "start"), {})
    message = start.get("message") or ""
    backend = re.search(r"1 processes \(([^)]*)\)", message)
    done = any(e["event"] == "done" for e in events)
    expected = "nccl" if s["device"].startswith("cuda") else "gloo"
    return {"ok": proc.returncode == 0 and done and bool(backend) and expected in backend.group(1),
            "exit_code": proc.returncode, "backend": backend.group(1) if backend else None,
            "start_message": message, **({} if proc.returncode == 0 else {"error": _tail(proc)})}


STAGES: List[Any] = [("gpu_tests", stage_gpu_tests), ("train_step", stage_train_step),
                     ("inference", stage_inference), ("train_300", stage_train_300), ("torchrun", stage_torchrun)]


# ============================================================================================ parent

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same stages on the CPU with tiny sizes (CI)")
    p.add_argument("--json", help="where to write the results (default: results/gpu-check-<gpu>.json)")
    p.add_argument("--only", nargs="+", choices=[name for name, _ in STAGES], help="run these stages only")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def _gpu_facts(device: str, work: str) -> Dict[str, Any]:
    """The device as torch sees it (in a child: the parent stays without CUDA)."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import benchlib; "
            "print(json.dumps(benchlib.torch_info(sys.argv[2])))")
    proc = _run([sys.executable, "-c", code, HERE, device], 120)
    if proc.returncode != 0:
        return {"error": _tail(proc)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_stages(args, settings: Dict[str, Any], report: Dict[str, Any], path: str, work: str,
               stages: Sequence[Any], deadline: float) -> None:
    for name, stage in stages:
        if args.only and name not in args.only:
            continue
        left = deadline - time.monotonic()
        limit = min(settings["limits"][name], left)
        if limit < 10:
            report["stages"][name] = {"ok": False, "skipped": f"no time left ({left:.0f} s of {BUDGET_S:.0f})"}
            continue
        log(f"{name} (at most {limit:.0f} s)")
        started = time.monotonic()
        try:
            result = stage(settings, work, limit)
        except subprocess.TimeoutExpired:
            result = {"ok": False, "error": f"stopped after its limit of {limit:.0f} s"}
        except benchlib.ChildFailed as e:
            result = {"ok": False, "error": str(e)[-1500:]}
        result["seconds"] = round(time.monotonic() - started, 1)
        report["stages"][name] = result
        log(f"{name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s")
        benchlib.write_json(path, report)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        benchlib.child_main(args.child, HANDLERS)
        return {}
    settings = dict(DRY if args.dry_run else PAPER, dry_run=bool(args.dry_run))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        facts = _gpu_facts(settings["device"], work)
        if not args.dry_run and "gpu" not in facts:
            print("gpu_check: this machine's torch sees no CUDA GPU; run with --dry-run to check the pipeline on "
                  "the CPU.", file=sys.stderr)
            raise SystemExit(2)
        path = args.json or os.path.join(HERE, "results", "gpu-check-" + (
            "dry-run" if args.dry_run else _slug(facts.get("gpu", "gpu"))) + ".json")
        report: Dict[str, Any] = {
            "benchmark": "gpu_check", "command": benchlib.command_line(), "dry_run": bool(args.dry_run),
            "machine": benchlib.machine_info(), "torch": facts, "budget_s": BUDGET_S,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}, "stages": {}}
        run_stages(args, settings, report, path, work, STAGES, started + BUDGET_S)
    report["total_seconds"] = round(time.monotonic() - started, 1)
    report["ok"] = all(r["ok"] for r in report["stages"].values())
    benchlib.write_json(path, report)
    print(format_report(report))
    print(f"[gpu_check] results written to {path}", file=sys.stderr)
    return report


def _figures(name: str, r: Dict[str, Any], dry_run: bool) -> str:
    if "skipped" in r or "error" in r and name not in ("train_300", "torchrun"):
        return r.get("skipped") or r["error"].strip().splitlines()[-1][:120]
    f = benchlib.fmt

    def target(text: str, met: bool) -> str:
        return "" if dry_run else f" (target {text}: {benchlib.verdict(met)})"

    if name == "gpu_tests":
        return r["summary"]
    if name == "train_step":
        return (f"fastest {r['fastest']}: {f(r['fastest_step_s'], 3)} s a step"
                + target(f"≤ {TARGET_STEP_S} s", r["target_met"]))
    if name == "inference":
        return (f"{f(r['engine_s'], 3)} s a volume" + target(f"< {TARGET_INFERENCE_S} s", r["target_met"])
                + f"; labels agree ≥ {r['labels_agree_min']}")
    if name == "train_300":
        return (f"{r['iterations']} iterations, {f(r['seconds_per_iteration'], 3)} s each; supervised loss "
                f"{'down' if r['loss_went_down'] else 'NOT down'}" + ("" if r["exit_code"] == 0 else
                                                                        f"; exit {r['exit_code']}"))
    return f"backend {r['backend']}, exit {r['exit_code']}"


def format_report(r: Dict[str, Any]) -> str:
    f = benchlib.fmt
    t = r["torch"]
    lines = [f"## GPU check{' (dry run on the CPU: tiny sizes, no speed figures)' if r['dry_run'] else ''}", "",
             f"- command: `{r['command']}`",
             f"- machine: {benchlib.describe_machine(r['machine'], t, r['settings']['device'])}"
             + (f", compute capability {t.get('compute_capability')}, {t.get('gpu_memory_gib')} GiB, "
                f"cuDNN {t.get('cudnn')}" if t.get("gpu") else ""),
             f"- total: {r['total_seconds']} s (budget {r['budget_s']:.0f} s)", "",
             benchlib.markdown_table(["stage", "result", "seconds", "figures"],
                                     [[name, "ok" if s["ok"] else "FAILED", f(s.get("seconds"), 1), _figures(name, s, r["dry_run"])]
                                      for name, s in r["stages"].items()])]
    step = r["stages"].get("train_step", {})
    if step.get("settings"):
        lines += ["", benchlib.markdown_table(
            ["training step", "precision", "s a step", "data s", "GPU peak MiB", "6000 iterations (min)"],
            [[s["name"], s.get("precision", "-"), f(s.get("step_s"), 3), f(s.get("data_s"), 3),
              f(s.get("cuda_peak_mib"), 0), f(s.get("minutes_6000"), 1)] if "error" not in s
             else [s["name"], "-", "failed", "-", "-", s["error"][:60]] for s in step["settings"]])]
    inference = r["stages"].get("inference", {})
    if inference.get("settings"):
        lines += ["", benchlib.markdown_table(
            ["inference", "window batch", "precision", "seconds", "GPU peak MiB", "labels = engine's"],
            [[s["name"], s["window_batch"], s["precision"], f(s["seconds"], 3), f(s["cuda_peak_mib"], 0),
              s["labels_equal_to_engine"]] for s in inference["settings"]])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
