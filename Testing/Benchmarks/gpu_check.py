"""The first run on a GPU, in one command of about 6 minutes: everything that needs one, measured.

On a machine with one NVIDIA GPU (``python3 Testing/Benchmarks/gpu_check.py --json OUT/gpu-check.json``;
Testing/Benchmarks/gpu_kit.sh prepares the wheels a bare machine lacks and prints the whole command), in
this order, each stage in fresh processes within its share of the budget, a failing stage recorded and the
next one run:

0. **kit** (``--wheels DIR``): the wheels of DIR installed into a folder of their own (``pip install
   --no-index --target``), put on every stage's PYTHONPATH; the versions of what they hold;
1. **gpu tests**: ``pytest -m gpu`` (Testing/Python/test_gpu.py: the card's precision, a step without host
   syncs, sequential against joint gradients, a GPU checkpoint resumed on the CPU, segmentation against
   the CPU's);
2. **training step** at paper scale (bench_train_step.py's step: 2 + 2 crops of 112×112×80 from LA-sized
   phantoms, V-Net + ResNet34-encoder V-Net with 16 base filters), the engine's own settings first (the
   precision it picks, ``sequential_backward=auto``: the backward it chose is recorded), the same with every
   crop at the strong augmentation (augmented on the GPU: whether the batch thread keeps up), then the joint
   backward in channels-last 3D, the sequential backward, and fp32 (TF32 convolutions where cuDNN allows
   them); fp16 only on a card where the engine trains in fp16. Time per step (median), peak GPU memory
   allocated and reserved, 6000 iterations projected;
3. **augmentation**: the strong augmentation's batch (the paper preset's 2 + 2 crops of 112×112×80, every
   crop at ``strong``) drawn as the batch thread draws it, from the same seed: on the CPU (numpy, pinned) and
   on the GPU (the engine's path for CUDA training: windows cut on the host, resampled and augmented on the
   GPU). Seconds a batch each way; both must draw the same parameters (the crop generator's state after them
   equal) and agree on the labels (≥ 99.9 % of voxels), the images' largest difference is recorded;
4. **inference**: a 160×192×88 volume segmented by both paper-scale networks (random weights, batch-norm
   statistics calibrated on the volume): the engine's settings, the output in host memory (MONAI's
   ``buffer_steps``), the CPU's window batch, and fp32. The first call (cuDNN's autotuner) timed apart;
   settings that run the same kernels as the engine's must give its probabilities (|Δp| ≤ 1e-5, or twice
   what it differs from itself run again), the others' largest |Δp| and label agreement are recorded;
5. **train_paper**: ``semisupseg train --preset paper`` on phantoms at the paper's crops, 300 iterations
   (fewer in a short budget): the supervised loss must go down; seconds per iteration;
6. **torchrun** with one process: the paper's method (``method=ours``) over nccl, whose collectives carry
   the semi-supervised terms (the global entropy percentile, the prototypes, L_c).

The JSON (``--json``) is rewritten after every training-step and inference setting and after every stage,
so a run killed at any moment keeps all that finished; a summary table comes at the end. Targets: a
paper-preset step that finishes 6000 iterations within 10 minutes on an H100 (0.1 s a step), and both
networks over a 160×192×88 volume in under a second. A stage past its limit is stopped with its whole
process group and every process it started (torchrun's workers run in sessions of their own).

``--dry-run`` runs the same pipeline on the CPU with tiny sizes (CI runs it through
Testing/Python/test_gpu_check.py so that it cannot rot). Its figures say nothing about speed.
"""

import argparse
import gc
import glob
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchlib  # noqa: E402

SCRIPT = os.path.abspath(__file__)
ROOT = benchlib.ROOT
BUDGET_S = 360.0  # the default: 6 minutes, cuDNN's autotuning included
TARGET_STEP_S = 600.0 / 6000  # 6000 iterations in 10 minutes
TARGET_INFERENCE_S = 1.0
SAME_KERNELS_MAX_DP = 1e-5
#: Each stage's share of the budget; a stage gets its share of the time left when it starts (what an earlier
#: stage did not use goes to the later ones).
SHARES = {"kit": 20, "gpu_tests": 55, "train_step": 105, "augmentation": 25, "inference": 45, "train_paper": 90,
          "torchrun": 45}
#: The strong augmentation's path on the GPU must agree with the CPU's on at least this share of label voxels
#: (nearest neighbour may round the other way where a sample falls half-way between voxels).
AUGMENT_MIN_LABELS_EQUAL = 0.999

PAPER = {"device": "cuda", "patch": (112, 112, 80), "window": (112, 112, 80), "base_filters": 16, "resnet_blocks": (3, 4, 6, 3),
         "shape": (160, 192, 88), "warmup": 3, "steps": 5, "data_samples": 5, "inference_repeats": 3,
         "train_preset": "paper", "train_iterations": 300, "torchrun_preset": "demo", "torchrun_iterations": 20,
         "phantoms": 2, "prefetch": "auto", "augment_batches": 6}
DRY = {"device": "cpu", "patch": (16, 16, 16), "window": (32, 32, 16), "base_filters": 4, "resnet_blocks": (1, 1, 1, 1),
       "shape": (48, 48, 24), "warmup": 1, "steps": 1, "data_samples": 1, "inference_repeats": 1,
       "train_preset": "tiny", "train_iterations": 10, "torchrun_preset": "tiny", "torchrun_iterations": 2,
       "phantoms": 1, "prefetch": True, "augment_batches": 2}  # the CPU takes the batch thread too, so that freeing it is checked

log = benchlib.logger("gpu_check")


# ========================================================================================== children

def _publish(task: Dict[str, Any], result: Dict[str, Any]) -> None:
    """A child's results so far: into its result file, and into the report as the stage in progress (the
    parent waits meanwhile), so that a kill keeps every finished setting."""
    benchlib.write_json(task["result_path"], result)
    path = task.get("report_path")
    if path and os.path.exists(path):
        with open(path) as f:
            report = json.load(f)
        report["stages"][task["stage"]] = dict(result, ok=False, in_progress=True)
        benchlib.write_json(path, report)


def _free_device_memory() -> Dict[str, Any]:
    """Frees what the last setting left (its trainer, the batch thread) and says what is still alive."""
    import torch

    from SemiSupSegTraining.train import Trainer

    gc.collect()
    left = {"trainers_alive": sum(1 for o in gc.get_objects() if type(o) is Trainer),
            "batch_threads_alive": sum(1 for t in threading.enumerate() if t.name.startswith("semisupseg-batch"))}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        left["cuda_allocated_after_mib"] = round(torch.cuda.memory_allocated() / benchlib.MIB, 1)
        torch.cuda.reset_peak_memory_stats()
    return left


def step_settings(device: str) -> List[Dict[str, Any]]:
    """The training-step rows, most wanted first: the engine's own choice (precision by the card,
    ``sequential_backward=auto``), the same with the strong augmentation on every crop, the joint backward in
    channels-last 3D, the sequential backward, fp32. fp16 is measured only where the engine picks it."""
    import torch

    from SemiSupSegTraining.devices import autocast_dtype, precision_name

    engine = precision_name(autocast_dtype(torch.device(device), "auto", training=True))
    rows = [{"name": f"{engine} auto (the engine's)", "amp": "auto", "sequential_backward": "auto"},
            # every crop at strong (on a GPU, augmented there): does the batch thread keep up with the step?
            {"name": f"{engine} auto, strong augmentation", "amp": "auto", "sequential_backward": "auto",
             "augmentation": "strong"}]
    if device.startswith("cuda"):  # a lever not yet taken on GPUs: channels-last 3D for cuDNN
        rows.append({"name": f"{engine} joint channels-last", "amp": "auto", "sequential_backward": False,
                     "channels_last": True})
    rows.append({"name": f"{engine} sequential", "amp": "auto", "sequential_backward": True})
    if engine != "fp32":
        tf32 = (device.startswith("cuda") and torch.backends.cudnn.allow_tf32
                and torch.cuda.get_device_capability(torch.device(device))[0] >= 8)  # Ampere and later
        rows.append({"name": "fp32 joint" + (" (TF32 convolutions)" if tf32 else ""), "amp": "fp32",
                     "sequential_backward": False})
    else:
        rows.append({"name": "fp32 joint", "amp": "fp32", "sequential_backward": False})
    return rows


def child_steps(task: Dict[str, Any]) -> Dict[str, Any]:
    """bench_train_step's ``ours`` step for each row of :func:`step_settings`, one after the other here."""
    import bench_train_step

    rows: List[Dict[str, Any]] = []
    result = {"settings": rows, "torch": benchlib.torch_info(task["device"])}
    for setting in step_settings(task["device"]):
        name = setting.pop("name")
        log(f"train_step: {name}")
        try:
            r = bench_train_step.child_step(dict(task, procedure="ours", **setting))
            memory = r["memory"]
            rows.append({"name": name, "precision": r["precision"], "backward": r["backward"],
                         "step_s": r["step"]["median_s"], "steps_s": r["step"]["times_s"],
                         "data_s": r["data"]["median_s"], "warmup_s": r["warmup_times_s"],
                         "finite": r["finite"], "last_losses": r["last_losses"],
                         "cuda_peak_mib": memory["cuda_peak_mib"],
                         "cuda_reserved_peak_mib": memory.get("cuda_reserved_peak_mib"),
                         "peak_rss_mib": memory["peak_rss_mib"],
                         "minutes_6000": round(6000 * r["step"]["median_s"] / 60, 1)})
        except Exception as e:  # out of memory in one setting must not lose the others
            rows.append({"name": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        rows[-1].update(_free_device_memory())
        log(f"train_step: {name}: " + (f"{rows[-1]['step_s']} s a step, {rows[-1]['backward']} backward"
                                       if "step_s" in rows[-1] else rows[-1]["error"]))
        _publish(task, result)
        if len(rows) == task.get("kill_after_settings"):  # a test: the whole check killed at this moment
            os.kill(os.getppid(), signal.SIGKILL)
            os._exit(9)
    return result


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
    from SemiSupSegTraining.devices import precision_name
    from SemiSupSegTraining.geometry import normalize
    from SemiSupSegTraining.infer import Segmenter, window_count
    from SemiSupSegTraining.phantoms import make_phantom

    device = task["device"]
    raw, _ = make_phantom(7, tuple(task["shape"][::-1]))
    image = normalize(raw, "zscore").astype(np.float32)
    model = _model_file(os.path.join(task["workdir"], "paper-random.pt"), task, image)
    sync = benchlib.device_sync(device)
    settings = [("engine", {}), ("output in host memory", {"blend_on_device": False}),
                (f"window batch {DEFAULT_WINDOW_BATCH} (the CPU's)", {"window_batch": DEFAULT_WINDOW_BATCH}),
                ("fp32", {"amp": "fp32"})]
    rows: List[Dict[str, Any]] = []
    result = {"shape_xyz": list(task["shape"]), "settings": rows, "torch": benchlib.torch_info(device)}
    engine_probs, engine_kernels = None, None
    for name, options in settings:
        log(f"inference: {name}")
        try:
            seg = Segmenter(model, device, disagreement=False, **options)
            blend = seg._blending_device(image.shape).type
            first = benchlib.timed(lambda seg=seg: seg.predict(image)[0], 1, sync)  # cuDNN's autotuner
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            run = benchlib.timed(lambda seg=seg: seg.predict(image)[0], task["inference_repeats"], sync)
            probs = run.pop("result")
            kernels = (seg.window_batch, precision_name(seg.amp_dtype))
            row = {"name": name, "first_call_s": first["times_s"][0], "seconds": run["median_s"],
                   "times_s": run["times_s"], "window_batch": seg.window_batch, "precision": kernels[1],
                   "blended_on": blend, "windows": window_count(image.shape, seg.window, seg.overlap),
                   "cuda_peak_mib": benchlib.cuda_peak_mib(device),
                   "cuda_reserved_peak_mib": benchlib.cuda_reserved_peak_mib(device)}
            if engine_probs is None:
                engine_probs, engine_kernels = probs, kernels
            row["same_kernels_as_engine"] = kernels == engine_kernels
            row["max_abs_dp"] = float(np.abs(probs - engine_probs).max())
            # The same setting twice: zero, unless cuDNN's chosen kernels accumulate in a varying order.
            row["repeat_max_dp"] = float(np.abs(probs - first["result"]).max())
            row["labels_equal_to_engine"] = round(float((probs.argmax(0) == engine_probs.argmax(0)).mean()), 6)
            del seg, probs
        except Exception as e:
            row = {"name": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        rows.append(row)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _publish(task, result)
    return result


def child_augmentation(task: Dict[str, Any]) -> Dict[str, Any]:
    """The strong augmentation's batch as the training's batch thread draws it (``Trainer._draw_batch``), on the
    host and on the device (``crops_on_device``), each path from the same seed: the same batches, timed each
    way after one warm-up batch, then compared."""
    import torch

    from SemiSupSegTraining.config import preset_config
    from SemiSupSegTraining.data import load_training_cases
    from SemiSupSegTraining.manifest import load_manifest
    from SemiSupSegTraining.train import Trainer

    device = torch.device(task["device"])
    manifest = load_manifest(task["manifest"])
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    config = preset_config("paper", {"device": task["device"], "patch_size": tuple(task["patch"]),
                                     "base_filters": task["base_filters"], "resnet_blocks": tuple(task["resnet_blocks"]),
                                     "augmentation": "strong", "augment_unlabeled": True, "prefetch": False})
    sync = benchlib.device_sync(task["device"])
    result: Dict[str, Any] = {"patch_xyz": list(task["patch"]), "batch": [config.batch_labeled, config.batch_unlabeled],
                              "batches": task["augment_batches"], "torch_threads": torch.get_num_threads()}
    batches, states = {}, {}
    for path, on_device in (("host", False), ("device", True)):
        log(f"augmentation: {path}")
        trainer = Trainer(config, len(manifest.classes), labeled, unlabeled, device, crops_on_device=on_device)
        result[f"{path}_warmup_s"] = benchlib.timed(trainer._draw_batch, 1, sync)["times_s"][0]
        times, drawn = [], []
        for _ in range(task["augment_batches"]):
            run = benchlib.timed(trainer._draw_batch, 1, sync)
            times += run["times_s"]
            images, labels = run["result"]
            drawn.append((images.float().cpu().numpy(), labels.long().cpu().numpy()))
        batches[path], states[path] = drawn, json.dumps(trainer.rng.bit_generator.state)
        result.update({f"{path}_s": round(float(np.median(times)), 4), f"{path}_times_s": times})
        del trainer, images, labels
        result[f"{path}_left"] = _free_device_memory()
        _publish(task, result)
    pairs = list(zip(batches["host"], batches["device"]))
    result.update({
        "speedup": round(result["host_s"] / max(result["device_s"], 1e-9), 1),
        "same_draws": states["host"] == states["device"],
        "labels_equal": round(float(np.mean([(h[1] == d[1]).mean() for h, d in pairs])), 6),
        "image_max_abs_diff": float(max(np.abs(h[0] - d[0]).max() for h, d in pairs)),
        "image_mean_abs_diff": float(np.mean([np.abs(h[0] - d[0]).mean() for h, d in pairs]))})
    return result


def child_facts(task: Dict[str, Any]) -> Dict[str, Any]:
    """The device as torch sees it, the libraries' versions, TF32, the driver, cuDNN and NCCL."""
    import torch

    facts = benchlib.torch_info(task["device"])
    facts["versions"] = library_versions(("numpy", "scipy", "SimpleITK", "monai", "pytest"))
    if torch.cuda.is_available():
        facts["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        facts["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
        facts["driver"] = _driver_version()
        try:
            version = torch.cuda.nccl.version()
            facts["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        except Exception as e:  # a torch without NCCL
            facts["nccl"] = f"none ({type(e).__name__})"
    return facts


def library_versions(names: Sequence[str]) -> Dict[str, str]:
    """Each module's ``__version__`` where it imports, else why not."""
    versions = {}
    for name in names:
        try:
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except Exception as e:
            versions[name] = f"missing ({type(e).__name__}: {str(e)[:80]})"
    return versions


def _driver_version() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        if out:
            return out.splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None


def child_kit_versions(task: Dict[str, Any]) -> Dict[str, Any]:
    """Every distribution installed in ``task["site"]``: its version and whether its modules import."""
    import importlib.metadata as metadata

    found = {}
    for dist in metadata.distributions(path=[task["site"]]):
        tops = sorted({str(f).split("/")[0].split(".")[0] for f in dist.files or []
                       if not str(f).split("/")[0].endswith((".dist-info", ".data")) and not str(f).startswith("..")})
        imported = library_versions([t for t in tops if t and not t.startswith("_")])
        found[dist.metadata["Name"]] = {"version": dist.version, "modules": imported}
    return {"installed": found, "versions": library_versions(("numpy", "scipy", "SimpleITK", "monai", "pytest"))}


def estimate(sustained_tflops: Sequence[float] = (40.0, 100.0), other_ms: Sequence[float] = (10.0, 20.0)
             ) -> Dict[str, Any]:
    """The paper step's arithmetic, counted by torch's FlopCounterMode on meta tensors (no memory, no GPU):
    both networks forward and backward on 2 + 2 crops of 112×112×80 (the joint backward; the sequential one
    adds Subnet A's forward without gradient). The time is an estimate: the convolutions at an assumed
    sustained rate (``sustained_tflops``: small-channel 3D convolutions fill a small share of an H100's
    tensor cores) plus ``other_ms`` for the memory-bound kernels (batch norm, ReLU, the losses)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from SemiSupSegTraining.networks import build_networks

    patch = PAPER["patch"]
    counts = {}
    with torch.device("meta"):
        nets = build_networks(2, PAPER["base_filters"], PAPER["resnet_blocks"], 0.1)
        crops = torch.randn(4, 1, patch[2], patch[1], patch[0])
    for name, net in zip(("a", "b"), nets):
        with FlopCounterMode(display=False) as forward:
            net(crops)
        with FlopCounterMode(display=False) as both:
            logits, features = net(crops)
            (logits.float().sum() + features.float().sum()).backward()
        counts[name] = {"forward_tflop": forward.get_total_flops() / 1e12,
                        "forward_backward_tflop": both.get_total_flops() / 1e12}
    joint = counts["a"]["forward_backward_tflop"] + counts["b"]["forward_backward_tflop"]
    sequential = joint + counts["a"]["forward_tflop"]
    fastest = joint / max(sustained_tflops) + min(other_ms) / 1000
    slowest = joint / min(sustained_tflops) + max(other_ms) / 1000
    return {"networks": counts, "joint_step_tflop": round(joint, 3), "sequential_step_tflop": round(sequential, 3),
            "assumed_sustained_tflops": list(sustained_tflops), "assumed_other_ms": list(other_ms),
            "step_s": [round(fastest, 4), round(slowest, 4)],
            "minutes_6000": [round(6000 * fastest / 60, 1), round(6000 * slowest / 60, 1)]}


HANDLERS = {"steps": child_steps, "augmentation": child_augmentation, "inference": child_inference,
            "facts": child_facts, "kit": child_kit_versions}


# ================================================================================= running children

class Finished:
    """What a child process left: its exit code (None: stopped at its limit), stdout, stderr's tail."""

    def __init__(self, returncode: Optional[int], stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        self.timed_out = returncode is None

    def tail(self) -> str:
        return (self.stderr or self.stdout or "")[-1500:]


def _descendants(pid: int) -> List[int]:
    """Every process below ``pid`` (from /proc; torchrun's workers sit in sessions of their own, out of reach
    of the launcher's process group)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_process_tree(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the child's process group and every process below it (torchrun's agent then stops its
    workers), SIGKILL to whatever is left after ``grace`` seconds."""
    pids = _descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if sig == signal.SIGTERM:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            pids = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    proc.wait()


def run_process(command: Sequence[str], timeout: float, echo: str = "") -> Finished:
    """Runs ``command`` in its own process group with this root (and the kit's folder) on PYTHONPATH; its
    stderr is echoed line by line (prefixed with ``echo``) and kept; past ``timeout`` the whole tree is
    stopped and what it printed is returned."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", errors="replace", env=env, cwd=ROOT, preexec_fn=os.setpgrp)
    out: List[str] = []
    err: List[str] = []

    def read_out():
        out.extend(proc.stdout)

    def read_err():
        for line in proc.stderr:
            err.append(line)
            if echo:
                sys.stderr.write(echo + line)
                sys.stderr.flush()

    readers = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        returncode: Optional[int] = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process_tree(proc)
        returncode = None
    for reader in readers:
        reader.join(timeout=10)
    return Finished(returncode, "".join(out), "".join(err)[-20000:])


class StageFailed(RuntimeError):
    """A stage's child failed or ran past its limit; ``partial`` holds what it had finished."""

    def __init__(self, message: str, partial: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.partial = partial or {}


def run_child(kind: str, task: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    """``python gpu_check.py --child TASK`` for one of :data:`HANDLERS`; its result, or :class:`StageFailed`
    with the settings it had finished."""
    fd, task_path = tempfile.mkstemp(suffix=".json", prefix=f"task-{kind}-", dir=work)
    result_path = task_path[:-5] + ".result.json"
    with os.fdopen(fd, "w") as f:
        json.dump(dict(task, kind=kind, result_path=result_path), f)
    done = run_process([sys.executable, SCRIPT, "--child", task_path], timeout, echo="  ")
    result = None
    if os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
    if done.returncode == 0 and result is not None:
        return result
    why = (f"stopped after its limit of {timeout:.0f} s" if done.timed_out
           else f"the {kind} child failed (exit {done.returncode}):\n{done.tail()}")
    raise StageFailed(why, result)


def _events(text: str) -> List[Dict[str, Any]]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:  # a line cut short by a stop
                continue
    return events


# ============================================================================================ stages

def stage_kit(s: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    """The wheels of ``--wheels`` installed into a folder of their own, which every later stage (and this
    process) imports from."""
    wheels = sorted(glob.glob(os.path.join(s["wheels"], "*.whl")))
    if not wheels:
        return {"ok": False, "error": f"No wheels in {s['wheels']}: run Testing/Benchmarks/gpu_kit.sh on a machine "
                                      f"with the package index first."}
    site = os.path.join(work, "site")
    done = run_process([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--disable-pip-version-check", "--find-links", s["wheels"],
                        "--target", site] + wheels, timeout)
    if done.returncode != 0:
        return {"ok": False, "wheels": [os.path.basename(w) for w in wheels],
                "error": "pip could not install the wheels: " + done.tail()}
    os.environ["PYTHONPATH"] = site + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    sys.path.insert(0, site)
    importlib.invalidate_caches()
    kit = run_child("kit", {"site": site, "device": s["device"]}, work, timeout)
    installed = kit["installed"]
    broken = {name: d["modules"] for name, d in installed.items()
              if any(v.startswith("missing") for v in d["modules"].values())}
    log("kit: " + ", ".join(f"{name} {d['version']}" for name, d in installed.items()))
    return {"ok": bool(installed) and not broken, "site": site, "wheels": [os.path.basename(w) for w in wheels],
            "installed": installed, "versions": kit["versions"], **({"error": f"does not import: {broken}"} if broken else {})}


def stage_gpu_tests(s: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    done = run_process([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rfEs",
                        os.path.join("Testing", "Python", "test_gpu.py")], timeout)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    ok = done.returncode == 0
    return {"ok": ok, "summary": summary if not done.timed_out else f"stopped after {timeout:.0f} s; {summary}",
            "counts": counts, **({} if ok else {"output": done.stdout[-3000:] + done.stderr[-1000:]})}


def stage_train_step(s: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    from SemiSupSegTraining.phantoms import write_phantom_dataset

    started = time.monotonic()
    manifest, _ = write_phantom_dataset(os.path.join(work, "step-data"), labeled=2, unlabeled=2, test=0, seed=5,
                                        shape_zyx=tuple(s["shape"][::-1]))
    task = {"device": s["device"], "threads": None, "manifest": manifest, "patch": list(s["patch"]),
            "base_filters": s["base_filters"], "resnet_blocks": list(s["resnet_blocks"]), "warmup": s["warmup"],
            "steps": s["steps"], "data_samples": s["data_samples"], "overrides": {"prefetch": s["prefetch"]},
            "report_path": s["report_path"], "stage": "train_step", "kill_after_settings": s["kill_after_settings"]}
    result = run_child("steps", task, work, timeout - (time.monotonic() - started))
    return summarize_steps(result)


def summarize_steps(result: Dict[str, Any]) -> Dict[str, Any]:
    rows = result.get("settings", [])
    engine = rows[0] if rows and "step_s" in rows[0] else None
    done = [r for r in rows if "step_s" in r]
    return {"ok": engine is not None and all(r.get("finite") for r in done) and len(done) == len(rows),
            "settings": rows, "engine_setting": engine and engine["name"],
            "engine_step_s": engine and engine["step_s"], "engine_backward": engine and engine["backward"],
            "target_step_s": TARGET_STEP_S, "target_met": bool(engine) and engine["step_s"] <= TARGET_STEP_S,
            "torch": result.get("torch")}


def stage_augmentation(s: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    started = time.monotonic()
    task = {"device": s["device"], "manifest": _phantoms(s, work), "patch": list(s["patch"]),
            "base_filters": s["base_filters"], "resnet_blocks": list(s["resnet_blocks"]),
            "augment_batches": s["augment_batches"], "report_path": s["report_path"], "stage": "augmentation"}
    return summarize_augmentation(run_child("augmentation", task, work, timeout - (time.monotonic() - started)))


def summarize_augmentation(result: Dict[str, Any]) -> Dict[str, Any]:
    """Both paths measured, the same draws, the labels agreeing (:data:`AUGMENT_MIN_LABELS_EQUAL`)."""
    return dict(result, ok="device_s" in result and "host_s" in result and bool(result.get("same_draws"))
                and result.get("labels_equal", 0.0) >= AUGMENT_MIN_LABELS_EQUAL)


def stage_inference(s: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    task = dict(s, workdir=work, stage="inference")
    return summarize_inference(run_child("inference", task, work, timeout))


def same_kernels_tolerance(engine: Dict[str, Any], row: Dict[str, Any]) -> float:
    """How far a setting that runs the engine's kernels may stray from its probabilities: rounding
    (:data:`SAME_KERNELS_MAX_DP`), or twice what either differs from itself when run again."""
    return max(SAME_KERNELS_MAX_DP, 2 * max(engine.get("repeat_max_dp", 0.0), row.get("repeat_max_dp", 0.0)))


def summarize_inference(result: Dict[str, Any]) -> Dict[str, Any]:
    rows = result.get("settings", [])
    done = [r for r in rows if "seconds" in r]
    engine = rows[0] if rows and "seconds" in rows[0] else None
    strict = [r for r in done if r["same_kernels_as_engine"]]
    return {"ok": engine is not None and len(done) == len(rows)
            and all(r["max_abs_dp"] <= same_kernels_tolerance(engine, r) for r in strict),
            "settings": rows, "engine_s": engine and engine["seconds"],
            "engine_first_call_s": engine and engine["first_call_s"],
            "same_kernels_max_dp": max((r["max_abs_dp"] for r in strict), default=None),
            "other_kernels_max_dp": max((r["max_abs_dp"] for r in done if not r["same_kernels_as_engine"]),
                                        default=None),
            "target_s": TARGET_INFERENCE_S, "target_met": bool(engine) and engine["seconds"] < TARGET_INFERENCE_S}


def _phantoms(s: Dict[str, Any], work: str) -> str:
    from SemiSupSegTraining.phantoms import write_phantom_dataset

    folder = os.path.join(work, "train-data")
    if not os.path.isdir(folder):
        write_phantom_dataset(folder, labeled=s["phantoms"], unlabeled=s["phantoms"], test=0, seed=3,
                              shape_zyx=tuple(s["shape"][::-1]))
    return os.path.join(folder, "train.json")


def _train_command(s: Dict[str, Any], manifest: str, output: str, preset: str, iterations: int) -> List[str]:
    return ["-m", "SemiSupSegTraining", "train", "--manifest", manifest, "--output", output, "--preset", preset,
            "--iterations", str(iterations), "--device", s["device"], "--progress", "json", "--set", "method=ours"]


def loss_went_down(supervised: Sequence[float]) -> bool:
    """The mean of the last third of the logged supervised losses below the mean of the first third."""
    share = len(supervised) // 3
    if share < 1:
        return False
    return float(np.mean(supervised[-share:])) < float(np.mean(supervised[:share]))


def train_iterations(s: Dict[str, Any], timeout: float) -> int:
    """The paper preset's iterations that fit the stage's time: all of them in the default budget, fewer
    (at least a sixth) in a shorter one."""
    full = s["train_iterations"]
    return full if s["dry_run"] else max(full // 6, min(full, int(full * timeout / SHARES["train_paper"])))


def stage_train_paper(s: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    started = time.monotonic()
    manifest = _phantoms(s, work)
    iterations = train_iterations(s, timeout)
    done = run_process([sys.executable] + _train_command(s, manifest, os.path.join(work, "run-paper"),
                                                          s["train_preset"], iterations),
                       timeout - (time.monotonic() - started))
    events = _events(done.stdout)
    logged = [e for e in events if e.get("event") == "progress" and "losses" in e]
    supervised = [e["losses"]["sup_a"] + e["losses"]["sup_b"] for e in logged]
    start = next((e for e in events if e.get("event") == "start"), {})
    pace = None
    if len(logged) >= 2 and logged[-1]["iteration"] > logged[0]["iteration"]:
        pace = (logged[-1]["elapsed_s"] - logged[0]["elapsed_s"]) / (logged[-1]["iteration"] - logged[0]["iteration"])
    down = loss_went_down(supervised)
    reached = logged[-1]["iteration"] if logged else 0
    # The dry run's few tiny iterations need not learn: it checks that the stage runs.
    return {"ok": done.returncode == 0 and (down or s["dry_run"]), "exit_code": done.returncode,
            "iterations": iterations, "iterations_reached": reached, "start_message": start.get("message"),
            "precision": start.get("precision"), "wall_s": round(time.monotonic() - started, 1),
            "seconds_per_iteration": None if pace is None else round(pace, 4),
            "minutes_6000": None if pace is None else round(6000 * pace / 60, 1),
            "supervised_loss": [round(v, 4) for v in supervised], "loss_went_down": down,
            **({} if done.returncode == 0 else {"error": f"stopped after its limit of {timeout:.0f} s"
                                                if done.timed_out else done.tail()})}


def stage_torchrun(s: Dict[str, Any], work: str, timeout: float) -> Dict[str, Any]:
    started = time.monotonic()
    manifest = _phantoms(s, work)
    done = run_process([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
                       + _train_command(s, manifest, os.path.join(work, "run-torchrun"), s["torchrun_preset"],
                                        s["torchrun_iterations"]), timeout - (time.monotonic() - started))
    events = _events(done.stdout)
    start = next((e for e in events if e.get("event") == "start"), {})
    message = start.get("message") or ""
    backend = re.search(r"1 processes \(([^)]*)\)", message)
    finished = any(e.get("event") == "done" for e in events)
    terms = sorted({k for e in events if e.get("event") == "progress" for k in e.get("losses", {})})
    semi = any(k.startswith(("unsup_", "contrast_")) for k in terms)
    expected = "nccl" if s["device"].startswith("cuda") else "gloo"
    return {"ok": done.returncode == 0 and finished and bool(backend) and expected in backend.group(1) and semi,
            "exit_code": done.returncode, "backend": backend.group(1) if backend else None,
            "semi_supervised_terms": semi, "logged_terms": terms, "start_message": message,
            **({} if done.returncode == 0 else {"error": f"stopped after its limit of {timeout:.0f} s"
                                                if done.timed_out else done.tail()})}


STAGES: List[Any] = [("kit", stage_kit), ("gpu_tests", stage_gpu_tests), ("train_step", stage_train_step),
                     ("augmentation", stage_augmentation), ("inference", stage_inference),
                     ("train_paper", stage_train_paper), ("torchrun", stage_torchrun)]
PARTIAL = {"train_step": summarize_steps, "augmentation": summarize_augmentation, "inference": summarize_inference}


# ============================================================================================ parent

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same stages on the CPU with tiny sizes (CI)")
    p.add_argument("--json", help="where to write the results (default: results/gpu-check-<gpu>.json); the "
                                  "log goes to stderr")
    p.add_argument("--wheels", help="a folder of wheels to install first (Testing/Benchmarks/gpu_kit.sh makes it)")
    p.add_argument("--budget", type=float, default=BUDGET_S,
                   help=f"seconds for all stages together (default {BUDGET_S:.0f}); each stage gets its share "
                        f"of what is left, and training runs fewer iterations in a shorter budget")
    p.add_argument("--only", nargs="+", choices=[name for name, _ in STAGES], help="run these stages only")
    p.add_argument("--estimate", action="store_true",
                   help="print the paper step's arithmetic and the time it would take on an H100 (no GPU needed)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--kill-after-settings", type=int, help=argparse.SUPPRESS)  # tests: a kill mid-stage
    return p.parse_args(argv)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def _gpu_facts(device: str, work: str) -> Dict[str, Any]:
    """The device as torch sees it (in a child: the parent stays without CUDA)."""
    try:
        return run_child("facts", {"device": device}, work, 120)
    except StageFailed as e:
        return {"error": str(e)[-1500:]}


def _finish(report: Dict[str, Any], started: float, path: str) -> None:
    report["total_seconds"] = round(time.monotonic() - started, 1)
    report["ok"] = bool(report["stages"]) and all(r.get("ok") for r in report["stages"].values())
    benchlib.write_json(path, report)


def run_stages(args, settings: Dict[str, Any], report: Dict[str, Any], path: str, work: str,
               stages: Sequence[Any], started: float) -> None:
    wanted = [(name, stage) for name, stage in stages
              if (not args.only or name in args.only) and (name != "kit" or settings.get("wheels"))]
    deadline = started + args.budget
    for i, (name, stage) in enumerate(wanted):
        left = deadline - time.monotonic()
        limit = left * SHARES[name] / sum(SHARES[n] for n, _ in wanted[i:])
        if limit < 10:
            report["stages"][name] = {"ok": False, "skipped": f"no time left ({left:.0f} s of {args.budget:.0f})"}
            _finish(report, started, path)
            continue
        log(f"{name} (at most {limit:.0f} s)")
        began = time.monotonic()
        try:
            result = stage(settings, work, limit)
        except StageFailed as e:
            result = dict(PARTIAL[name](e.partial) if name in PARTIAL and e.partial else {}, ok=False,
                          error=str(e)[-1500:])
        except Exception as e:  # one stage's failure must not end the check
            result = {"ok": False, "error": f"{type(e).__name__}: {str(e)[-1500:]}"}
        result["seconds"] = round(time.monotonic() - began, 1)
        report["stages"][name] = result
        log(f"{name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s")
        _finish(report, started, path)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        with open(args.child) as f:
            task = json.load(f)
        benchlib.write_json(task["result_path"], HANDLERS[task["kind"]](task))
        return {}
    if args.estimate:
        result = estimate()
        print(json.dumps(result, indent=2))
        return result
    settings = dict(DRY if args.dry_run else PAPER, dry_run=bool(args.dry_run),
                    wheels=os.path.abspath(args.wheels) if args.wheels else None,
                    kill_after_settings=args.kill_after_settings)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        facts = _gpu_facts(settings["device"], work)
        if not args.dry_run and "gpu" not in facts:
            print("gpu_check: this machine's torch sees no CUDA GPU; run with --dry-run to check the pipeline on "
                  "the CPU.", file=sys.stderr)
            raise SystemExit(2)
        path = os.path.abspath(args.json or os.path.join(HERE, "results", "gpu-check-" + (
            "dry-run" if args.dry_run else _slug(facts.get("gpu", "gpu"))) + ".json"))
        settings["report_path"] = path
        report: Dict[str, Any] = {
            "benchmark": "gpu_check", "command": benchlib.command_line(), "dry_run": bool(args.dry_run),
            "machine": benchlib.machine_info(), "torch": facts, "budget_s": args.budget,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}, "stages": {}}
        _finish(report, started, path)
        log(f"results go to {path} after every setting and stage")
        run_stages(args, settings, report, path, work, STAGES, started)
        if report["stages"].get("kit", {}).get("versions"):  # the libraries as the stages imported them
            report["torch"]["versions"] = report["stages"]["kit"]["versions"]
    _finish(report, started, path)
    print(format_report(report))
    print(f"[gpu_check] results written to {path}", file=sys.stderr)
    return report


# ============================================================================================ report

def _figures(name: str, r: Dict[str, Any], dry_run: bool) -> str:
    f = benchlib.fmt

    def target(text: str, met: Optional[bool]) -> str:
        return "" if dry_run else f" (target {text}: {benchlib.verdict(met)})"

    if name == "kit":
        return ", ".join(f"{n} {d.get('version')}" for n, d in r.get("installed", {}).items()) or "-"
    if name == "gpu_tests":
        return r.get("summary", "-")
    if name == "train_step":
        return (f"engine ({r.get('engine_setting')}, {r.get('engine_backward')} backward): "
                f"{f(r.get('engine_step_s'), 3)} s a step" + target(f"≤ {TARGET_STEP_S} s", r.get("target_met")))
    if name == "augmentation":
        return (f"{'+'.join(map(str, r.get('batch', [])))} strong crops of {'×'.join(map(str, r.get('patch_xyz', [])))}: "
                f"{f(r.get('host_s'), 3)} s a batch on the CPU, {f(r.get('device_s'), 3)} s on the "
                f"{'CPU as the device' if dry_run else 'GPU'}; same draws {r.get('same_draws')}, labels equal "
                f"{r.get('labels_equal')}, image max |Δ| {r.get('image_max_abs_diff')}")
    if name == "inference":
        return (f"{f(r.get('engine_s'), 3)} s a volume (first call {f(r.get('engine_first_call_s'), 1)} s)"
                + target(f"< {TARGET_INFERENCE_S} s", r.get("target_met"))
                + f"; same kernels max |Δp| {r.get('same_kernels_max_dp')}, others {r.get('other_kernels_max_dp')}")
    if name == "train_paper":
        return (f"{r.get('iterations_reached')} of {r.get('iterations')} iterations, "
                f"{f(r.get('seconds_per_iteration'), 3)} s each; supervised loss "
                f"{'down' if r.get('loss_went_down') else 'NOT down'}")
    return f"backend {r.get('backend')}, semi-supervised terms {r.get('semi_supervised_terms')}"


def _stage_row(name: str, s: Dict[str, Any], dry_run: bool) -> List[Any]:
    try:
        figures = _figures(name, s, dry_run)
    except Exception as e:  # the summary never fails on a stage that ended early
        figures = f"(no figures: {type(e).__name__})"
    if "skipped" in s or "error" in s:
        figures += "; " + (s.get("skipped") or str(s["error"]).strip().splitlines()[-1][:120])
    return [name, "ok" if s.get("ok") else "FAILED", benchlib.fmt(s.get("seconds"), 1), figures]


def format_report(r: Dict[str, Any]) -> str:
    f = benchlib.fmt
    t = r.get("torch", {})
    lines = [f"## GPU check{' (dry run on the CPU: tiny sizes, no speed figures)' if r.get('dry_run') else ''}", "",
             f"- command: `{r.get('command')}`",
             f"- machine: {benchlib.describe_machine(r['machine'], t, r['settings']['device'])}"
             + (f", compute capability {t.get('compute_capability')}, {t.get('gpu_memory_gib')} GiB, driver "
                f"{t.get('driver')}, cuDNN {t.get('cudnn')}, NCCL {t.get('nccl')}, TF32 convolutions "
                f"{t.get('tf32_cudnn')}, TF32 matmul {t.get('tf32_matmul')}" if t.get("gpu") else ""),
             f"- libraries: {', '.join(f'{k} {v}' for k, v in (t.get('versions') or {}).items())}",
             f"- total: {r.get('total_seconds')} s (budget {r.get('budget_s', 0):.0f} s)", "",
             benchlib.markdown_table(["stage", "result", "seconds", "figures"],
                                     [_stage_row(name, s, r.get("dry_run", False))
                                      for name, s in r.get("stages", {}).items()])]
    step = r.get("stages", {}).get("train_step", {})
    if step.get("settings"):
        lines += ["", benchlib.markdown_table(
            ["training step", "precision", "backward", "s a step", "data s", "GPU peak MiB (reserved)",
             "6000 iterations (min)"],
            [[s["name"], s.get("precision"), s.get("backward"), f(s.get("step_s"), 3), f(s.get("data_s"), 3),
              f"{f(s.get('cuda_peak_mib'), 0)} ({f(s.get('cuda_reserved_peak_mib'), 0)})",
              f(s.get("minutes_6000"), 1)] if "error" not in s
             else [s["name"], "-", "-", "failed", "-", "-", s["error"][:60]] for s in step["settings"]])]
    inference = r.get("stages", {}).get("inference", {})
    if inference.get("settings"):
        lines += ["", benchlib.markdown_table(
            ["inference", "window batch", "precision", "blended on", "first call s", "seconds",
             "GPU peak MiB (reserved)", "max |Δp| vs engine (vs itself)", "labels = engine's"],
            [[s["name"], s.get("window_batch"), s.get("precision"), s.get("blended_on"), f(s.get("first_call_s"), 2),
              f(s.get("seconds"), 3), f"{f(s.get('cuda_peak_mib'), 0)} ({f(s.get('cuda_reserved_peak_mib'), 0)})",
              f"{s.get('max_abs_dp')} ({s.get('repeat_max_dp')})", s.get("labels_equal_to_engine")] if "error" not in s
             else [s["name"], "-", "-", "-", "-", "failed", "-", "-", s["error"][:60]]
             for s in inference["settings"]])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
