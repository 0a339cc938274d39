"""One semi-supervised training iteration: the engine's ``Trainer.step`` against a reference-style step.

Both procedures train the same two networks (``build_networks``: V-Net + ResNet34-encoder V-Net, 16 base
filters at paper scale) from the same seed on the same batches (``Trainer.next_batch``: 2 labeled + 2
unlabeled crops of 112×112×80 voxels from LA-sized phantoms), each in a fresh child process.

* **ours**: ``Trainer.step`` of ``SemiSupSegTraining/train.py`` with every term of Eq. 3 (L_s, L_u, L_reg,
  L_c with gradient), as ``semisupseg train`` runs it: the precision the engine picks (fp32 on a CPU, AMP on
  CUDA), channels-last weights on a CPU, one network back-propagated at a time (``sequential_backward``),
  and glibc told to keep freed memory (``devices.keep_freed_memory``, which the command line calls).
  ``--ablation`` adds ours with the joint backward and ours with glibc's default settings.
* **reference-style**: the released reference code's iteration (docs/method.md, its reference facts), written here: fp32,
  PyTorch's default memory layout and allocator; CE
  on logits + Dice on the foreground channel for the labeled crops; its labeled-data correction (squared
  error where exactly one network is confident, weight 0.5); the unlabeled terms on detached softmax
  outputs: pseudo label = union of both networks' foreground, the entropy percentile computed with numpy
  on the host for each network, cross-entropy applied to probabilities, prototypes and the contrastive
  term under ``no_grad``; two backward passes, two SGD steps and the per-iteration ``.item()`` logging.
  (The reference feeds each network its own augmented view; here both see the same batch, so the data
  cost is the same for both procedures.)

Reported: time per step (median of ``--steps`` after ``--warmup`` steps; the step includes drawing its
batch), the data time (``Trainer.next_batch`` timed on its own) against the step time, and peak resident
memory (VmHWM / ru_maxrss of each child; ``torch.cuda.max_memory_allocated`` on CUDA).

Full run (paper scale; about 6-8 minutes on 2 quiet cores, 15 with ``--ablation``; up to 13 GB of memory
per child)::

    python Testing/Benchmarks/bench_train_step.py --json train_step.json
    python Testing/Benchmarks/bench_train_step.py --ablation --json train_step.json
    python Testing/Benchmarks/bench_train_step.py --device cuda --json train_step-cuda.json

Validation run (48×48×32 crops, 8 base filters, two timed steps; about a minute)::

    python Testing/Benchmarks/bench_train_step.py --quick

The augmentation levels (``augment.py``): ``--levels paper,none,strong`` also times ``--level-method`` (ours,
or e.g. supervised) at each of those levels (``ours`` itself is ours at the default, ``paper``); ``draw`` is
the cost of drawing one batch on its own (``Trainer._draw_batch``), which the batch thread overlaps with the
step where a core is free; the CPU seconds per step (every thread, and the step's own thread) are beside the
wall time, which on a busy machine measures the other jobs too::

    python Testing/Benchmarks/bench_train_step.py --quick --threads 1 --levels none,strong --steps 12
    python Testing/Benchmarks/bench_train_step.py --quick --threads 1 --levels paper,strong \
        --level-method supervised --steps 12
"""

import argparse
import math
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

SCRIPT = os.path.abspath(__file__)
TARGET_SPEEDUP = 1.5

FULL = {"patch": (112, 112, 80), "base_filters": 16, "resnet_blocks": (3, 4, 6, 3), "shape": (160, 192, 88),
        "warmup": 2, "steps": 5, "data_samples": 10}
QUICK = {"patch": (48, 48, 32), "base_filters": 8, "resnet_blocks": (3, 4, 6, 3), "shape": (64, 72, 40),
         "warmup": 1, "steps": 2, "data_samples": 4}


# ================================================================================ reference-style step

def reference_dice_loss(score, target):
    """The reference code's binary Dice loss on the foreground probability (squared sums)."""
    target = target.float()
    smooth = 1e-5
    overlap = (score * target).sum()
    return 1.0 - (2.0 * overlap + smooth) / ((score * score).sum() + (target * target).sum() + smooth)


def reference_prototype_distance(candidates, prototype):
    """Mean Euclidean distance between L2-normalised feature columns (C, n) and (C, m), as the reference."""
    import torch
    import torch.nn.functional as F

    x = F.normalize(candidates, dim=0).t().unsqueeze(0)
    y = F.normalize(prototype, dim=0).t().unsqueeze(0)
    return torch.cdist(x, y).mean()


def reference_unlabeled(probs_x, probs_y, features_x, percent: float = 20.0):
    """The reference's unlabeled terms for networks X (whose features build the prototypes) and Y.

    ``probs_*`` are DETACHED softmax outputs on the unlabeled crops, so the returned cross-entropies carry
    no gradient (as in the reference). Returns (CE of X, CE of Y, contrastive term)."""
    import torch
    import torch.nn.functional as F

    voxels = probs_x[:, 0].numel()  # batch × space
    pred_x = probs_x.argmax(1)
    pred_y = probs_y.argmax(1)
    target = pred_x | pred_y  # binary only: the union of both networks' foreground
    with torch.no_grad():
        unreliable = None
        for probs in (probs_x, probs_y):
            entropy = -(probs * torch.log(probs + 1e-10)).sum(1)
            threshold = np.percentile(entropy.detach().cpu().numpy().ravel(), percent)  # host sync
            high = entropy >= float(threshold)
            unreliable = high if unreliable is None else unreliable & high
        target[unreliable] = 2
        flat = target.reshape(-1)
        feats = features_x.transpose(0, 1).reshape(features_x.shape[1], -1)
        proto_fg = feats[:, flat == 1].mean(1, keepdim=True)
        proto_bg = feats[:, flat == 0].mean(1, keepdim=True)
        cand_fg = feats[:, (flat == 2) & (pred_x.reshape(-1) == 1)]
        cand_bg = feats[:, (flat == 2) & (pred_x.reshape(-1) == 0)]
        keep = cand_fg.shape[1] // 100
        pick_fg = torch.randperm(cand_fg.shape[1], device=feats.device)[:keep]
        pick_bg = torch.randperm(cand_bg.shape[1], device=feats.device)[:keep]
        contrast = (reference_prototype_distance(cand_fg[:, pick_fg], proto_fg)
                    + reference_prototype_distance(cand_bg[:, pick_bg], proto_bg)
                    + reference_prototype_distance(proto_fg, proto_bg))
        weight = voxels / (flat != 2).sum().clamp_min(1)
    # cross-entropy applied to probabilities (softmax twice), voxels marked 2 ignored
    ce_x = weight * F.cross_entropy(probs_x, target, ignore_index=2)
    ce_y = weight * F.cross_entropy(probs_y, target, ignore_index=2)
    return ce_x, ce_y, contrast


def reference_step(trainer, iteration: int) -> Dict[str, float]:
    """One iteration as the released reference code runs it (fp32), on ``trainer``'s networks and data."""
    import torch
    import torch.nn.functional as F

    images, labels = trainer.next_batch()
    n = labels.shape[0]
    nets = (trainer.net_a, trainer.net_b)
    for net in nets:
        net.train()
    outputs = [net(images) for net in nets]
    supervised, dice_terms, soft = [], [], []
    for logits, _ in outputs:
        probs = torch.softmax(logits, 1)
        soft.append(probs)
        ce = F.cross_entropy(logits[:n], labels)
        dice = reference_dice_loss(probs[:n, 1], labels == 1)
        supervised.append((ce, dice))
        dice_terms.append(dice)
    a_wins = bool(dice_terms[0] < dice_terms[1])  # host sync, as the reference
    confident = []
    for probs in soft:
        prob, pred = probs[:n].max(1)
        confident.append((pred == 1) & (prob >= 0.6))
    mask = (confident[0] ^ confident[1]).to(torch.int32)
    losses = []
    for (ce, dice), probs in zip(supervised, soft):
        mse = (probs[:n, 1] - labels.float()) ** 2
        mistake = (mask * mse).sum() / (mask.sum() + 1e-16)
        losses.append(ce + dice + 0.5 * mistake)
    unlabeled = [p[n:].clone().detach() for p in soft]
    ramp = 0.1 * math.exp(-5.0 * (1.0 - min(iteration // 150, 40) / 40.0) ** 2)
    if a_wins:  # the loser's features build the prototypes, and the loser gets the contrastive term
        ce_b, ce_a, contrast = reference_unlabeled(unlabeled[1], unlabeled[0], outputs[1][1][n:])
        total = [losses[0] + ce_a, losses[1] + ce_b + ramp * contrast]
    else:
        ce_a, ce_b, contrast = reference_unlabeled(unlabeled[0], unlabeled[1], outputs[0][1][n:])
        total = [losses[0] + ce_a + ramp * contrast, losses[1] + ce_b]
    for opt in trainer.optimizers:
        opt.zero_grad()
    for loss in total:
        loss.backward()
    for opt in trainer.optimizers:
        opt.step()
    # the reference logs these every iteration (each .item() is a host sync on a GPU)
    logged = {"loss_a": total[0].item(), "loss_b": total[1].item(), "ce_a": supervised[0][0].item(),
              "dice_a": supervised[0][1].item(), "ce_b": supervised[1][0].item(), "dice_b": supervised[1][1].item(),
              "contrast": contrast.item()}
    return logged


# ========================================================================================== children

def child_step(task: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    from SemiSupSegTraining.config import preset_config
    from SemiSupSegTraining.data import load_training_cases
    from SemiSupSegTraining.geometry import normalization_for
    from SemiSupSegTraining.devices import keep_freed_memory
    from SemiSupSegTraining.manifest import load_manifest
    from SemiSupSegTraining.train import Trainer

    device = task["device"]
    procedure = task["procedure"]
    if procedure != "reference" and procedure != "ours-default-allocator":
        keep_freed_memory()  # as the engine's command line does
    manifest = load_manifest(task["manifest"])
    config = preset_config("paper", dict({"patch_size": task["patch"], "base_filters": task["base_filters"],
                                          "resnet_blocks": task["resnet_blocks"], "device": device, "seed": 0,
                                          "sequential_backward": task.get("sequential_backward",
                                                                          procedure != "ours-joint"),
                                          "amp": task.get("amp", "auto"),
                                          "augmentation": task.get("augmentation", "paper"),
                                          "method": task.get("method", "ours")},
                                         **task.get("overrides", {})))
    labeled, unlabeled = load_training_cases(manifest, normalization_for(manifest.modality, config.normalization),
                                             config.ct_window)
    trainer = Trainer(config, len(manifest.classes), labeled, unlabeled, torch.device(device))
    if procedure == "reference" or task.get("channels_last") is not None:
        # PyTorch's default layout, as the reference code runs; or the layout asked for (gpu_check.py)
        layout = torch.channels_last_3d if task.get("channels_last") else torch.contiguous_format
        trainer.memory_format = layout
        for module in list(trainer.networks()) + list(trainer.projectors or []):
            module.to(memory_format=layout)
    if procedure == "ours-bf16":
        trainer.amp_dtype = torch.bfloat16
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = benchlib.rss_now_mib()
    sync = benchlib.device_sync(device)
    last: Dict[str, Any] = {}

    def step():
        nonlocal last
        if procedure == "reference":
            last = reference_step(trainer, trainer.iteration)
            trainer.iteration += 1
        else:
            last = trainer.step()

    warm = benchlib.timed(step, task["warmup"], sync) if task["warmup"] else {"times_s": []}
    # CPU seconds as well as wall time: on a machine that other jobs keep busy, wall time measures them too.
    cpu_before, thread_before = time.process_time(), time.thread_time()
    run = benchlib.timed(step, task["steps"], sync)
    run["cpu_s_per_step"] = round((time.process_time() - cpu_before) / task["steps"], 4)          # every thread
    run["main_thread_cpu_s_per_step"] = round((time.thread_time() - thread_before) / task["steps"], 4)
    run.pop("result")
    data = benchlib.timed(trainer.next_batch, task["data_samples"], sync)
    data.pop("result")
    if trainer.prefetcher is not None:
        trainer.prefetcher.reset()  # the thread's pending draw done: the generator is free for this one
    draw = benchlib.timed(trainer._draw_batch, task["data_samples"], sync)
    draw.pop("result")
    values = {k: float(v) for k, v in last.items()}
    if trainer.prefetcher is not None:  # its thread holds the trainer: the next child_step here needs the memory
        trainer.prefetcher.close()
    return {"procedure": procedure, "backward": "sequential" if trainer.sequential_backward else "joint", "warmup_times_s": warm["times_s"], "step": run, "data": data,
            "draw": draw, "augmentation": config.augmentation, "batch_thread": trainer.prefetcher is not None,
            "precision": "float32" if trainer.amp_dtype is None or procedure == "reference"
            else str(trainer.amp_dtype).replace("torch.", ""),
            "last_losses": {k: round(v, 5) for k, v in values.items()},
            "finite": bool(all(math.isfinite(v) for k, v in values.items() if k != "contrast")),
            "memory": dict(benchlib.peak_memory(), rss_before_mib=None if rss_before is None else round(rss_before, 1),
                           cuda_peak_mib=benchlib.cuda_peak_mib(device),
                           cuda_reserved_peak_mib=benchlib.cuda_reserved_peak_mib(device)),
            "torch": benchlib.torch_info(device)}


HANDLERS = {"step": child_step}


# ============================================================================================ parent

log = benchlib.logger("bench_train_step")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = benchlib.speed_parser(__doc__, "validation run: 48×48×32 crops, 8 base filters, 1 warm-up and 2 timed steps")
    p.add_argument("--warmup", type=int, help="untimed steps first (full 2)")
    p.add_argument("--steps", type=int, help="timed steps (full 5)")
    p.add_argument("--ablation", action="store_true",
                   help="also time ours with the joint backward and ours with glibc's default allocator settings")
    p.add_argument("--with-bf16", action="store_true",
                   help="also time ours with bf16 autocast forced on (the engine keeps CPU training in fp32)")
    p.add_argument("--threads", type=int, help="torch threads in each child (default: torch's choice)")
    p.add_argument("--levels", default="", help="also time --level-method with these augmentation levels, e.g. "
                                                "none,strong (ours itself: paper)")
    p.add_argument("--level-method", default="ours", help="the method --levels times (default ours)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        benchlib.child_main(args.child, HANDLERS)
        return {}
    settings = dict(QUICK if args.quick else FULL)
    for key in ("warmup", "steps"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    return benchlib.run_and_report("bench-train-step", run_all, format_report, args, settings)


def level_settings(procedure: str) -> Dict[str, str]:
    """``METHOD-aug-LEVEL`` (``--levels``): that method and augmentation level; others: ours at ``paper``."""
    method, _, level = procedure.partition("-aug-")
    return {"method": method, "augmentation": level} if level else {"method": "ours", "augmentation": "paper"}


def run_all(args, settings: Dict[str, Any], machine: Dict[str, Any], work: str) -> Dict[str, Any]:
    from SemiSupSegTraining.phantoms import write_phantom_dataset

    shape = tuple(settings["shape"])
    log(f"writing 2 labeled + 2 unlabeled phantoms of {'×'.join(map(str, shape))} voxels")
    manifest, _ = write_phantom_dataset(os.path.join(work, "data"), labeled=2, unlabeled=2, test=0, seed=5,
                                        shape_zyx=shape[::-1])
    procedures = (["reference", "ours"] + (["ours-joint", "ours-default-allocator"] if args.ablation else [])
                  + (["ours-bf16"] if args.with_bf16 else [])
                  + [f"{args.level_method}-aug-{level}" for level in args.levels.split(",") if level])
    results = {}
    for procedure in procedures:
        log(f"{procedure}: {settings['warmup']} warm-up + {settings['steps']} timed steps")
        results[procedure] = benchlib.run_child(SCRIPT, {
            "kind": "step", "procedure": procedure, "device": args.device, "threads": args.threads,
            "manifest": manifest, "patch": list(settings["patch"]), "base_filters": settings["base_filters"],
            "resnet_blocks": list(settings["resnet_blocks"]), "warmup": settings["warmup"],
            "steps": settings["steps"], "data_samples": settings["data_samples"],
            **level_settings(procedure)}, work)
        log(f"{procedure}: {results[procedure]['step']['median_s']} s per step")
    ref, ours = results["reference"], results["ours"]
    speedup = ref["step"]["median_s"] / ours["step"]["median_s"]
    peak_ours, peak_ref = ours["memory"]["peak_rss_mib"], ref["memory"]["peak_rss_mib"]
    memory_key = "cuda_peak_mib" if args.device.startswith("cuda") else "peak_rss_mib"
    return {
        "benchmark": "train_step", "command": benchlib.command_line(), "quick": bool(args.quick),
        "machine": machine, "torch": ours["torch"], "device": args.device,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "results": results,
        "speedup": round(speedup, 3),
        "targets": {"speedup_min": TARGET_SPEEDUP, "speedup_met": speedup >= TARGET_SPEEDUP,
                    "memory_key": memory_key,
                    "memory_met": ours["memory"][memory_key] <= ref["memory"][memory_key],
                    "peak_rss_ratio": round(peak_ours / peak_ref, 3) if peak_ref else None},
    }


def format_report(r: Dict[str, Any]) -> str:
    f = benchlib.fmt
    s = r["settings"]
    lines = [f"## Training-step benchmark{' (quick validation run: small crops and networks)' if r['quick'] else ''}",
             "", f"- command: `{r['command']}`",
             f"- machine: {benchlib.describe_machine(r['machine'], r['torch'], r['device'])}",
             f"- one iteration: both networks ({s['base_filters']} base filters, ResVNet blocks "
             f"{tuple(s['resnet_blocks'])}), 2 labeled + 2 unlabeled crops of {'×'.join(map(str, s['patch']))} "
             f"voxels from phantoms of {'×'.join(map(str, s['shape']))}; median of {s['steps']} steps after "
             f"{s['warmup']} warm-up", ""]
    names = {"reference": "reference-style (fp32, host percentile, unlabeled terms without gradient)",
             "ours": "ours: Trainer.step, all terms with gradient",
             "ours-joint": "ours with the joint backward (sequential_backward=false)",
             "ours-default-allocator": "ours with glibc's default allocator settings",
             "ours-bf16": "ours with bf16 autocast forced (experiment)",
             **{key: "{}, augmentation {}".format(*key.split("-aug-")) for key in r["results"] if "-aug-" in key}}
    ref = r["results"]["reference"]
    rows = []
    cuda = r["device"].startswith("cuda")
    for key, res in r["results"].items():
        step, data = res["step"]["median_s"], res["data"]["median_s"]
        mem = res["memory"]
        row = [names[key], res["precision"], f(step, 3), f(ref["step"]["median_s"] / step),
               f(data, 3), f"{100.0 * data / step:.1f}%", f(step - data, 3),
               f(res["draw"]["median_s"], 3) if "draw" in res else "n/a", f(res["step"].get("cpu_s_per_step"), 3),
               f(res["step"].get("main_thread_cpu_s_per_step"), 3), f(mem["peak_rss_mib"], 0),
               f(mem["peak_rss_mib"] - mem["rss_before_mib"], 0) if mem.get("rss_before_mib") else "n/a",
               "yes" if res["finite"] else "**NO**"]
        if cuda:
            row.append(f(mem["cuda_peak_mib"], 0))
        rows.append(row)
    headers = ["procedure", "precision", "step s", "speed-up vs reference", "data s (next_batch)",
               "data / step", "compute s", "draw s (one batch)", "CPU s / step", "main thread CPU s / step",
               "peak RSS MiB", "RSS added MiB", "losses finite"]
    if cuda:
        headers.append("CUDA peak MiB")
    lines += [benchlib.markdown_table(headers, rows), ""]
    t = r["targets"]
    ours_mem = r["results"]["ours"]["memory"][t["memory_key"]]
    ref_mem = ref["memory"][t["memory_key"]]
    lines += [benchlib.markdown_table(
        ["target", "value", "verdict"],
        [[f"ours ≥ {TARGET_SPEEDUP:g}× faster than the reference-style step", f"{f(r['speedup'])}×",
          benchlib.verdict(t["speedup_met"])],
         [f"ours' peak memory ≤ the reference's ({t['memory_key']})", f"{f(ours_mem, 0)} vs {f(ref_mem, 0)} MiB",
          benchlib.verdict(t["memory_met"])]]), ""]
    if r["quick"]:
        lines.append("Quick run: small crops and networks; the figures validate the script, not the targets.")
    lines.append(f"Benchmark wall time: {f(r['total_seconds'], 0)} s.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
