"""Whole-volume segmentation speed: the reference procedure against the engine's.

The **reference procedure** is written here as the released reference code tests a case (its
``test_single_case``): windows of 112×112×80 voxels at stride 18×18×4, one window at a time, fp32, autograd
left on, each window's softmax of both networks averaged, and overlapping windows averaged uniformly with a
score map and a count map. **Ours** is the engine's :class:`SemiSupSegTraining.infer.Segmenter` itself
(MONAI ``sliding_window_inference``, Gaussian blending, ``inference_mode``, a batch of windows per forward,
bf16 autocast on CPUs with native bf16; glibc told to keep freed memory, as the command line does), run at
several settings: overlap, window batch, channels_last_3d, and a window as large as the whole volume (the
networks are fully convolutional).

What is measured, each procedure in a fresh child process:

* wall time of the whole-volume segmentation (median of ``--repeats`` runs after a one-window warm-up),
  peak resident memory (VmHWM / ru_maxrss of the child; ``torch.cuda.max_memory_allocated`` on CUDA);
* speed, with the paper-scale networks (``build_networks(2, 16)``: V-Net 9.45 M + ResNet34-encoder V-Net)
  on an LA-sized volume (160×192×88 voxels, x, y, z) with seeded random weights whose batch-norm statistics
  are calibrated on one window of the volume (a paper-scale model cannot be trained on a CPU here);
* agreement, the Dice between the reference's and ours' label maps with TRAINED weights: a demo-scale
  model trained here on phantoms (preset ``demo``, ``--train-iterations``) or ``--model FILE``, on a phantom
  volume scaled by the model's window / 112×112×80, with the reference stride scaled the same way;
* the FLOP floor: FLOPs of one forward of both networks on one window (``FlopCounterMode``), this
  machine's achieved GFLOP/s in fp32 and bf16 on that window (networks as loaded, and with the tuned
  layout: channels_last_3d, batch norm folded into the convolutions), and the floor time of one pass of
  both networks over the volume = (volume voxels / window voxels) × window FLOPs / the best throughput of
  the precision ours runs in.

A CPU detail behind some of the figures (torch 2.13): an fp32 3D convolution with batch 1 and a small
``C × D × H`` (at most 20480, the deep layers of a 112×112×80 window) runs torch's slow vol2col path, also
with channels_last_3d; a batch of two or more windows, or bf16 autocast, always runs oneDNN. The reference
procedure (fp32, batch 1) pays for that; so would the engine in fp32 with one window per pass.

Full run (about 12-15 minutes on 2 quiet cores; CUDA much less)::

    python Testing/Benchmarks/bench_inference.py --json inference.json
    python Testing/Benchmarks/bench_inference.py --device cuda --json inference-cuda.json

Validation run (small networks and volume, one repetition; about a minute)::

    python Testing/Benchmarks/bench_inference.py --quick
"""

import argparse
import copy
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from SemiSupSegTraining.config import DEFAULT_OVERLAP, DEFAULT_WINDOW_BATCH  # noqa: E402

SCRIPT = os.path.abspath(__file__)

TARGET_SPEEDUP = 15.0
TARGET_DICE = 0.99
TARGET_FLOOR_RATIO = 1.5
ENGINE_DEFAULT = {"overlap": DEFAULT_OVERLAP, "window_batch": DEFAULT_WINDOW_BATCH, "channels_last": False,
                  "window": "model", "amp": True, "fold_bn": False}

FULL = {"shape": (160, 192, 88), "base_filters": 16, "window": (112, 112, 80), "stride": (18, 18, 4),
        "repeats": 3, "reference_repeats": 1, "flop_repeats": 3, "train_preset": "demo", "train_iterations": 150,
        "sweep": "full"}
# Small enough for a loaded 2-core machine: it checks that every path runs, not the targets.
QUICK = {"shape": (48, 48, 24), "base_filters": 4, "window": (32, 32, 16), "stride": (8, 8, 4),
         "repeats": 1, "reference_repeats": 1, "flop_repeats": 1, "train_preset": "tiny", "train_iterations": 20,
         "sweep": "quick"}


def zyx(xyz: Sequence[int]) -> Tuple[int, int, int]:
    return (int(xyz[2]), int(xyz[1]), int(xyz[0]))


def xyz_text(size_zyx: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in tuple(size_zyx)[::-1])


# ===================================================================================== the procedures

def reference_predict(net_a, net_b, image: np.ndarray, window: Sequence[int], stride: Sequence[int],
                      num_classes: int, device: str) -> Tuple[np.ndarray, int]:
    """The reference code's test procedure (its ``test_single_case``), in z, y, x order.

    Pads a volume smaller than the window with zeros; places windows every ``stride`` voxels (the last one
    flush with the far edge); runs each window through both networks one at a time, in fp32 with autograd
    on (the reference code does not wrap its test in ``no_grad``); averages the two softmax outputs, adds
    them to a score map and 1 to a count map; divides; argmax. Returns (labels, number of windows).
    """
    import torch

    shape = image.shape
    pads = [max(0, w - s) for w, s in zip(window, shape)]
    padded = any(pads)
    if padded:
        image = np.pad(image, [(p // 2, p - p // 2) for p in pads], mode="constant", constant_values=0)
    full = image.shape
    steps = [math.ceil((s - w) / st) + 1 for s, w, st in zip(full, window, stride)]
    score = np.zeros((num_classes,) + full, dtype=np.float32)
    count = np.zeros(full, dtype=np.float32)
    for i in range(steps[0]):
        z = min(stride[0] * i, full[0] - window[0])
        for j in range(steps[1]):
            y = min(stride[1] * j, full[1] - window[1])
            for k in range(steps[2]):
                x = min(stride[2] * k, full[2] - window[2])
                box = (slice(z, z + window[0]), slice(y, y + window[1]), slice(x, x + window[2]))
                patch = torch.from_numpy(image[box][None, None].astype(np.float32)).to(device)
                prob_a = torch.softmax(net_a(patch)[0], dim=1).cpu().data.numpy()[0]
                prob_b = torch.softmax(net_b(patch)[0], dim=1).cpu().data.numpy()[0]
                score[(slice(None),) + box] += (prob_a + prob_b) / 2
                count[box] += 1
    score /= count[None]
    labels = np.argmax(score, axis=0).astype(np.uint8)
    if padded:
        labels = labels[tuple(slice(p // 2, p // 2 + s) for p, s in zip(pads, shape))]
    return labels, int(np.prod(steps))


def volume_window(shape_zyx: Sequence[int], multiple: int = 16) -> Tuple[int, int, int]:
    """The smallest window the networks accept (sizes divisible by 16) that holds the whole volume."""
    return tuple(int(-(-s // multiple) * multiple) for s in shape_zyx)


def make_segmenter(model: str, device: str, config: Dict[str, Any], shape_zyx: Sequence[int]):
    """The engine's Segmenter at ``config``: channels_last_3d and the window size are applied on top of it
    (``window`` = "model": the model's patch size, the engine's behaviour; "volume": one window over all)."""
    import torch

    from SemiSupSegTraining.infer import Segmenter

    class BenchSegmenter(Segmenter):
        channels_last = False

        def _predictor(self, windows):
            if self.channels_last:
                windows = windows.contiguous(memory_format=torch.channels_last_3d)
            return super()._predictor(windows)

    seg = BenchSegmenter(model, device=device, overlap=config["overlap"], window_batch=config["window_batch"],
                         amp=config["amp"])
    if config.get("fold_bn"):
        seg.net_a, seg.net_b = fold_batch_norm(seg.net_a), fold_batch_norm(seg.net_b)
    if config["window"] == "volume":
        seg.window = volume_window(shape_zyx)
    if config["channels_last"]:
        seg.channels_last = True
        seg.net_a = seg.net_a.to(memory_format=torch.channels_last_3d)
        seg.net_b = seg.net_b.to(memory_format=torch.channels_last_3d)
    return seg


def fold_batch_norm(net):
    """Folds every eval-mode BatchNorm3d into the (transposed) convolution before it: the same function with
    one pass over the data less per layer (exact up to float rounding)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    convs = (torch.nn.Conv3d, torch.nn.ConvTranspose3d)
    for module in net.modules():
        names = list(module._modules)
        for first, second in zip(names, names[1:]):  # Sequential: conv, norm, relu
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, convs) and isinstance(norm, torch.nn.BatchNorm3d):
                module._modules[first] = fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, torch.nn.ConvTranspose3d))
                module._modules[second] = torch.nn.Identity()
        for conv_name, norm_name in (("conv1", "norm1"), ("conv2", "norm2")):  # residual blocks
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if isinstance(conv, torch.nn.Conv3d) and isinstance(norm, torch.nn.BatchNorm3d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(module, norm_name, torch.nn.Identity())
    return net


def ours_predict(seg, image: np.ndarray) -> np.ndarray:
    probs, _ = seg.predict(image)
    return probs.argmax(0).astype(np.uint8)


def ours_windows(seg, shape_zyx: Sequence[int]) -> int:
    from SemiSupSegTraining.infer import window_count

    return window_count(shape_zyx, seg.window, seg.overlap)


def warm_up_ours(seg) -> float:
    """One forward of a full window batch (oneDNN builds its kernels for these shapes); returns seconds."""
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        seg._predictor(torch.zeros((seg.window_batch, 1) + tuple(seg.window), device=seg.device))
    sync = benchlib.device_sync(str(seg.device))
    if sync:
        sync()
    return round(time.perf_counter() - start, 3)


def config_name(config: Dict[str, Any]) -> str:
    if config["window"] == "volume":
        text = "window = whole volume"
    else:
        text = f"overlap {config['overlap']}, batch {config['window_batch']}"
    text += ", channels_last" if config["channels_last"] else ""
    text += ", BN folded" if config.get("fold_bn") else ""
    text += "" if config["amp"] else ", fp32 (no autocast)"
    return text


def sweep_configs(kind: str) -> List[Dict[str, Any]]:
    def cfg(overlap, batch, cl=False, window="model", amp=True, fold=False):
        return {"overlap": overlap, "window_batch": batch, "channels_last": cl, "window": window, "amp": amp,
                "fold_bn": fold}

    if kind == "default":
        return [dict(ENGINE_DEFAULT)]
    if kind == "quick":
        return [dict(ENGINE_DEFAULT), cfg(0.5, 4), cfg(0.5, 1, window="volume", fold=True)]
    configs = [cfg(o, b, cl) for o in (0.5, 0.25) for b in (4, 2, 1) for cl in (False, True)]
    configs += [cfg(0.5, 1, cl, window="volume") for cl in (False, True)]
    configs += [cfg(0.5, 4, fold=True), cfg(0.25, 4, True, fold=True), cfg(0.5, 1, True, window="volume", fold=True)]
    configs.append(cfg(0.5, 4, amp=False))
    return configs


def config_key(config: Dict[str, Any]) -> str:
    return (f"window={config['window']} overlap={config['overlap']} batch={config['window_batch']} "
            f"channels_last={config['channels_last']} amp={config['amp']} fold_bn={config.get('fold_bn', False)}")


# ========================================================================================= children

def _load_image(path: str) -> np.ndarray:
    return np.load(path).astype(np.float32)


def _memory(device: str, rss_before: Optional[float]) -> Dict[str, Any]:
    peak = benchlib.peak_memory()
    peak["rss_before_mib"] = None if rss_before is None else round(rss_before, 1)
    peak["cuda_peak_mib"] = benchlib.cuda_peak_mib(device)
    return peak


def child_setup(task: Dict[str, Any]) -> Dict[str, Any]:
    """Builds the paper-scale networks (seeded random weights, batch-norm statistics calibrated on the
    volume's central window), saves them as a model file, counts FLOPs and measures conv throughput."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from SemiSupSegTraining.modelfile import save_model
    from SemiSupSegTraining.networks import build_networks, count_parameters

    device = task["device"]
    torch.manual_seed(task["seed"])
    net_a, net_b = build_networks(2, task["base_filters"], dropout=0.0)
    window = tuple(task["window_zyx"])
    image = _load_image(task["volume"])
    pads = [max(0, w - s) for w, s in zip(window, image.shape)]
    image = np.pad(image, [(p // 2, p - p // 2) for p in pads])
    starts = [(s - w) // 2 for s, w in zip(image.shape, window)]
    crop = image[tuple(slice(a, a + w) for a, w in zip(starts, window))]
    x = torch.from_numpy(np.ascontiguousarray(crop))[None, None]
    with torch.no_grad():
        for net in (net_a, net_b):
            for m in net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.momentum = None  # cumulative average: after one batch, exactly its statistics
                    m.reset_running_stats()
            net.train()
            net(x)
            net.eval()
    meta = {"classes": [{"value": 0, "name": "background"}, {"value": 1, "name": "left atrium"}],
            "modality": "MRI", "normalization": {"method": "zscore", "ct_window": [-120.0, 240.0]},
            "patch_size": list(window[::-1]), "preset": None,
            "networks": {"a": "VNet", "b": "ResVNet", "base_filters": task["base_filters"],
                         "resnet_blocks": [3, 4, 6, 3], "in_channels": 1},
            "note": "benchmark weights: seeded random, batch norm calibrated on one window; speed only"}
    save_model(task["model_path"], net_a.state_dict(), net_b.state_dict(), meta)

    net_a, net_b, x = net_a.to(device), net_b.to(device), x.to(device)
    flops = {}
    for name, net in (("a", net_a), ("b", net_b)):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        flops[name] = int(counter.get_total_flops())

    info = benchlib.torch_info(device)
    sync = benchlib.device_sync(device)
    dtypes = ["float32"]
    if info["engine_inference_dtype"] != "float32":
        dtypes.append(info["engine_inference_dtype"])
    # The floor uses the networks as the engine loads them; the tuned layout (channels_last_3d, batch norm
    # folded into the convolutions) is measured beside them for information.
    tuned = [fold_batch_norm(copy.deepcopy(n)).to(memory_format=torch.channels_last_3d) for n in (net_a, net_b)]
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    throughput = {}
    for layout, nets, inputs in (("", (net_a, net_b), x), (" channels_last+folded", tuned, x_cl)):
        for dtype in dtypes:
            cast = getattr(torch, dtype)

            def forward(cast=cast, nets=nets, inputs=inputs):
                with torch.autocast(device_type=torch.device(device).type, dtype=cast,
                                    enabled=cast != torch.float32):
                    for net in nets:
                        net(inputs)

            with torch.inference_mode():
                forward()  # warm-up
                run = benchlib.timed(forward, task["repeats"], sync)
            run.pop("result")
            run["gflop_per_s"] = round((flops["a"] + flops["b"]) / run["median_s"] / 1e9, 2)
            throughput[dtype + layout] = run
    return {"torch": info, "flops_per_window": flops, "throughput": throughput,
            "parameters": {"a": count_parameters(net_a), "b": count_parameters(net_b)}}


def child_reference(task: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    from SemiSupSegTraining.modelfile import load_model

    device = task["device"]
    net_a, net_b, meta = load_model(task["model"], device)
    image = _load_image(task["volume"])
    window, stride = tuple(task["window_zyx"]), tuple(task["stride_zyx"])
    num_classes = len(meta["classes"])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = benchlib.rss_now_mib()  # model and image loaded; the warm-up window is part of the work
    start = time.perf_counter()
    warm = torch.zeros((1, 1) + window, device=device)
    torch.softmax(net_a(warm)[0], 1).cpu()
    torch.softmax(net_b(warm)[0], 1).cpu()
    warm_s = round(time.perf_counter() - start, 3)
    del warm
    run = benchlib.timed(lambda: reference_predict(net_a, net_b, image, window, stride, num_classes, device),
                         task["repeats"], benchlib.device_sync(device))
    labels, windows = run.pop("result")
    np.save(task["labels_out"], labels)
    return dict(run, windows=windows, warm_up_s=warm_s, memory=_memory(device, rss_before))


def child_ours(task: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    from SemiSupSegTraining.devices import keep_freed_memory

    keep_freed_memory()  # as the engine's command line does
    device = task["device"]
    image = _load_image(task["volume"])
    seg = make_segmenter(task["model"], device, task["config"], image.shape)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = benchlib.rss_now_mib()
    warm_s = warm_up_ours(seg)
    run = benchlib.timed(lambda: ours_predict(seg, image), task["repeats"], benchlib.device_sync(device))
    np.save(task["labels_out"], run.pop("result"))
    return dict(run, windows=ours_windows(seg, image.shape), window_zyx=list(seg.window), warm_up_s=warm_s,
                autocast=str(seg.amp_dtype).replace("torch.", "") if seg.amp_dtype else "float32",
                memory=_memory(device, rss_before))


def child_agreement(task: Dict[str, Any]) -> Dict[str, Any]:
    """Trains a demo-scale model on phantoms (or takes ``task['model']``), then segments a phantom volume
    scaled like the paper-scale one with the reference procedure and with every configuration."""
    import torch

    from SemiSupSegTraining.config import preset_config
    from SemiSupSegTraining.geometry import normalize
    from SemiSupSegTraining.modelfile import load_model, read_metadata
    from SemiSupSegTraining.phantoms import make_phantom, write_phantom_dataset
    from SemiSupSegTraining.train import train

    device = task["device"]
    model = task.get("model")
    trained = None
    if model:
        window = zyx(read_metadata(model)["patch_size"])
    else:
        window = zyx(preset_config(task["preset"]).patch_size)
    ratio = [w / p for w, p in zip(window, zyx(task["paper_window"]))]
    shape = tuple(max(w, int(round(s * r))) for w, s, r in zip(window, zyx(task["paper_shape"]), ratio))
    stride = tuple(max(1, int(round(s * r))) for s, r in zip(zyx(task["paper_stride"]), ratio))
    if not model:
        start = time.perf_counter()
        folder = os.path.join(task["workdir"], "agreement")
        manifest, _ = write_phantom_dataset(os.path.join(folder, "phantoms"), labeled=4, unlabeled=8, test=0,
                                            seed=3, shape_zyx=shape)
        config = preset_config(task["preset"], {"iterations": task["iterations"], "device": device,
                                        "checkpoint_every": task["iterations"]})
        model = train(manifest, os.path.join(folder, "model"), config, progress="none")
        trained = {"preset": task["preset"], "iterations": task["iterations"], "seconds": round(time.perf_counter() - start, 1),
                   "labeled": 4, "unlabeled": 8, "phantom_shape_xyz": list(shape[::-1])}
        if task.get("save_model"):
            import shutil

            shutil.copyfile(model, task["save_model"])
    meta = read_metadata(model)
    num_classes = len(meta["classes"])
    raw, truth = make_phantom(4242, shape, num_classes=min(num_classes, 3))
    norm = meta["normalization"]
    image = normalize(raw, norm["method"], tuple(norm.get("ct_window", (-120.0, 240.0))))

    net_a, net_b, _ = load_model(model, device)
    start = time.perf_counter()
    ref_labels, ref_windows = reference_predict(net_a, net_b, image, window, stride, num_classes, device)
    out = {"model": task.get("model") or "trained here", "training": trained, "window_zyx": list(window),
           "shape_zyx": list(shape), "stride_zyx": list(stride),
           "reference": {"seconds": round(time.perf_counter() - start, 3), "windows": ref_windows,
                         "dice_vs_truth": benchlib.dice(ref_labels, truth, num_classes),
                         "foreground_voxels": int((ref_labels > 0).sum())},
           "truth_foreground_voxels": int((truth > 0).sum()), "configs": []}
    del net_a, net_b
    for config in task["configs"]:
        seg = make_segmenter(model, device, config, image.shape)
        warm_up_ours(seg)
        start = time.perf_counter()
        labels = ours_predict(seg, image)
        out["configs"].append({"key": config_key(config), "seconds": round(time.perf_counter() - start, 3),
                               "windows": ours_windows(seg, image.shape),
                               "dice_vs_reference": benchlib.dice(labels, ref_labels, num_classes),
                               "dice_vs_truth": benchlib.dice(labels, truth, num_classes)})
        del seg
        torch.cuda.empty_cache() if device.startswith("cuda") else None
    return out


HANDLERS = {"setup": child_setup, "reference": child_reference, "ours": child_ours, "agreement": child_agreement}


# ============================================================================================ parent

log = benchlib.logger("bench_inference")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = benchlib.speed_parser(__doc__, "validation run: 8-filter networks, 48×48×32 windows, a 64×72×36 volume, one repetition")
    p.add_argument("--model", help="a trained model file for the agreement Dice (default: train a demo-scale one)")
    p.add_argument("--save-model", help="keep the demo-scale model trained for the agreement Dice here")
    p.add_argument("--train-iterations", type=int, help="iterations of the agreement model (full 150, quick 30)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="volume size (full 160 192 88)")
    p.add_argument("--repeats", type=int, help="timed runs of each of our settings (full 3)")
    p.add_argument("--reference-repeats", type=int, help="timed runs of the reference procedure (1)")
    p.add_argument("--sweep", choices=("full", "quick", "default"),
                   help="settings to try: full = overlap 0.5/0.25 × batch 4/2/1 × channels_last off/on, the "
                        "whole-volume window and fp32; quick = the engine's defaults, overlap 0.5 with 4 windows "
                        "a pass, and the whole-volume window; default = the engine's defaults only")
    p.add_argument("--threads", type=int, help="torch threads in each child (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        benchlib.child_main(args.child, HANDLERS)
        return {}
    settings = dict(QUICK if args.quick else FULL)
    for key in ("shape", "repeats", "reference_repeats", "train_iterations", "sweep"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = tuple(value) if isinstance(value, list) else value
    return benchlib.run_and_report("bench-inference", run_all, format_report, args, settings)


def run_all(args, settings: Dict[str, Any], machine: Dict[str, Any], work: str) -> Dict[str, Any]:
    from SemiSupSegTraining.geometry import normalize
    from SemiSupSegTraining.phantoms import make_phantom

    device = args.device
    shape, window, stride = zyx(settings["shape"]), zyx(settings["window"]), zyx(settings["stride"])
    common = {"device": device, "threads": args.threads}
    log(f"phantom volume {xyz_text(shape)} (x×y×z)")
    raw, _ = make_phantom(args.seed + 7, shape)
    volume = os.path.join(work, "volume.npy")
    np.save(volume, normalize(raw, "zscore"))
    model = os.path.join(work, "speed-model.pt")

    log(f"networks with {settings['base_filters']} base filters: FLOPs and conv throughput")
    setup = benchlib.run_child(SCRIPT, dict(common, kind="setup", seed=args.seed, volume=volume, model_path=model,
                                            base_filters=settings["base_filters"], window_zyx=window,
                                            repeats=settings["flop_repeats"]), work)
    log("throughput: " + ", ".join(f"{k} {v['gflop_per_s']} GFLOP/s" for k, v in setup["throughput"].items()))

    log(f"reference procedure (windows {xyz_text(window)}, stride {xyz_text(stride)})")
    ref_labels = os.path.join(work, "reference.npy")
    reference = benchlib.run_child(SCRIPT, dict(common, kind="reference", model=model, volume=volume,
                                                window_zyx=window, stride_zyx=stride, labels_out=ref_labels,
                                                repeats=settings["reference_repeats"]), work)
    log(f"reference: {reference['median_s']} s, {reference['windows']} windows")
    reference_map = np.load(ref_labels)

    configs = sweep_configs(settings["sweep"])
    ours = []
    failed = []
    for i, config in enumerate(configs):
        labels_out = os.path.join(work, f"ours{i}.npy")
        try:
            result = benchlib.run_child(SCRIPT, dict(common, kind="ours", model=model, volume=volume,
                                                     config=config, labels_out=labels_out,
                                                     repeats=settings["repeats"]), work)
        except benchlib.ChildFailed as e:  # one setting (e.g. out of memory) must not lose the others
            failed.append({"config": config, "name": config_name(config), "error": str(e)[-1500:]})
            log(f"ours ({config_name(config)}) FAILED: {str(e).strip().splitlines()[-1]}")
            continue
        result.update(config=config, key=config_key(config), name=config_name(config),
                      dice_vs_reference_random_weights=benchlib.dice(np.load(labels_out), reference_map, 2))
        ours.append(result)
        log(f"ours ({result['name']}): {result['median_s']} s, {result['windows']} windows")

    log("agreement with trained weights" + (f" ({args.model})" if args.model else
                                            f" (training preset {settings['train_preset']}, "
                                            f"{settings['train_iterations']} iterations)"))
    try:
        agreement = benchlib.run_child(SCRIPT, dict(common, kind="agreement", model=args.model,
                                                    save_model=args.save_model,
                                                    iterations=settings["train_iterations"],
                                                    preset=settings["train_preset"], paper_shape=settings["shape"],
                                                    paper_window=settings["window"],
                                                    paper_stride=settings["stride"], configs=configs, workdir=work),
                                       work)
    except benchlib.ChildFailed as e:
        log(f"agreement FAILED: {str(e).strip().splitlines()[-1]}")
        agreement = {"error": str(e)[-1500:], "configs": [], "reference": {}, "shape_zyx": None}
    report = analyse(args, settings, machine, setup, reference, ours, agreement)
    report["failed"] = failed
    return report


def analyse(args, settings, machine, setup, reference, ours, agreement) -> Dict[str, Any]:
    shape, window = zyx(settings["shape"]), zyx(settings["window"])
    flops_window = setup["flops_per_window"]["a"] + setup["flops_per_window"]["b"]
    volume_flops = float(np.prod(shape)) / float(np.prod(window)) * flops_window
    engine_dtype = setup["torch"]["engine_inference_dtype"]
    # The floor for a precision: the best throughput measured for it (as loaded, or tuned layout).
    best = {}
    for key, run in setup["throughput"].items():
        dtype = key.split()[0]
        best[dtype] = max(best.get(dtype, 0.0), run["gflop_per_s"])
    floor_s = {dtype: volume_flops / (gflops * 1e9) for dtype, gflops in best.items()}
    agree = {c["key"]: c for c in agreement["configs"]}
    for result in ours:
        dtype = result["autocast"] if result["autocast"] in floor_s else "float32"
        result["speedup"] = round(reference["median_s"] / result["median_s"], 2)
        result["floor_ratio"] = round(result["median_s"] / floor_s[dtype], 2)
        result["floor_dtype"] = dtype
        trained = agree.get(result["key"], {})
        result["dice_vs_reference_trained"] = trained.get("dice_vs_reference")
        result["dice_vs_truth_trained"] = trained.get("dice_vs_truth")
        result["is_engine_default"] = result["config"] == ENGINE_DEFAULT
    default = next((r for r in ours if r["is_engine_default"]), None)
    eligible = [r for r in ours if (r["dice_vs_reference_trained"] or 0.0) >= TARGET_DICE]
    best = min(eligible, key=lambda r: r["median_s"]) if eligible else None

    def targets_for(result):
        if result is None:
            return None
        dice = result["dice_vs_reference_trained"]
        return {"speedup": result["speedup"], "speedup_met": result["speedup"] >= TARGET_SPEEDUP,
                "dice": dice, "dice_met": None if dice is None else dice >= TARGET_DICE,
                "floor_ratio": result["floor_ratio"], "floor_met": result["floor_ratio"] <= TARGET_FLOOR_RATIO}

    recommendation = None
    if best is not None and default is not None and best is not default:
        gain = default["median_s"] / best["median_s"]
        recommendation = {"setting": best["name"], "config": best["config"], "seconds": best["median_s"],
                          "default_seconds": default["median_s"], "gain_over_default": round(gain, 2),
                          "clearly_better": gain >= 1.15}
    return {
        "benchmark": "inference", "command": benchlib.command_line(), "quick": bool(args.quick),
        "machine": machine, "torch": setup["torch"], "device": args.device,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "weights": {
            "speed": f"seeded random weights, {settings['base_filters']} base filters (V-Net "
                     f"{setup['parameters']['a'] / 1e6:.2f} M + ResVNet {setup['parameters']['b'] / 1e6:.2f} M "
                     f"parameters), batch norm calibrated on one window of the volume",
            "agreement": (f"model file {args.model}" if args.model else
                          f"model of preset '{settings['train_preset']}' trained here for "
                          f"{settings['train_iterations']} iterations on phantoms"),
        },
        "flop_floor": {"flops_per_window": setup["flops_per_window"], "window_zyx": list(window),
                       "volume_zyx": list(shape), "volume_flops": volume_flops,
                       "throughput": setup["throughput"], "floor_seconds": {k: round(v, 3) for k, v in floor_s.items()},
                       "engine_dtype": engine_dtype},
        "reference": reference, "ours": ours, "agreement": agreement,
        "engine_default": None if default is None else default["key"],
        "fastest_with_agreement": None if best is None else best["key"],
        "targets": {"speedup_min": TARGET_SPEEDUP, "dice_min": TARGET_DICE, "floor_ratio_max": TARGET_FLOOR_RATIO,
                    "engine_default": targets_for(default), "fastest": targets_for(best)},
        "recommendation": recommendation,
    }


def format_report(r: Dict[str, Any]) -> str:
    f = benchlib.fmt
    s = r["settings"]
    ref, floor, agr = r["reference"], r["flop_floor"], r["agreement"]
    lines = [f"## Inference benchmark{' (quick validation run: small networks and volume)' if r['quick'] else ''}",
             "", f"- command: `{r['command']}`",
             f"- machine: {benchlib.describe_machine(r['machine'], r['torch'], r['device'])}",
             f"- engine's autocast for inference here: {r['torch']['engine_inference_dtype']}",
             f"- volume {xyz_text(floor['volume_zyx'])} voxels (x×y×z, phantom), model window "
             f"{xyz_text(floor['window_zyx'])}, reference stride {'×'.join(map(str, s['stride']))}",
             f"- weights for time, memory and the random-weights Dice: {r['weights']['speed']}",
             (f"- weights for the agreement Dice (trained): {r['weights']['agreement']}; phantom volume "
              f"{xyz_text(agr['shape_zyx'])}, window {xyz_text(agr['window_zyx'])}, reference stride "
              f"{xyz_text(agr['stride_zyx'])}; reference Dice vs phantom truth "
              f"{f(agr['reference']['dice_vs_truth'], 3)}" if not agr.get("error") else
              f"- agreement run FAILED, no trained-weights Dice: {agr['error'].strip().splitlines()[-1]}"), ""]
    rows = [["reference: stride, uniform average, fp32, autograd, batch 1", ref["windows"],
             f"{f(ref['median_s'])} (n={len(ref['times_s'])})", "1.00", "", f(ref["memory"]["peak_rss_mib"], 0),
             f(_delta(ref), 0), "1", "1", f(agr["reference"].get("dice_vs_truth"), 3)]]
    for o in r["ours"]:
        name = ("**engine default**: " if o["is_engine_default"] else "") + o["name"]
        if o["key"] == r["fastest_with_agreement"]:
            name += " (fastest with Dice ≥ 0.99)"
        rows.append([f"ours: {name}", o["windows"], f"{f(o['median_s'])} (n={len(o['times_s'])})",
                     f(o["speedup"]), f"{f(o['floor_ratio'])} ({o['floor_dtype']})",
                     f(o["memory"]["peak_rss_mib"], 0), f(_delta(o), 0),
                     f(o["dice_vs_reference_trained"], 4), f(o["dice_vs_reference_random_weights"], 4),
                     f(o["dice_vs_truth_trained"], 3)])
    headers = ["procedure", "windows", "time s", "speed-up vs reference", "× FLOP floor", "peak RSS MiB",
               "RSS added MiB", "Dice vs reference (trained)", "Dice vs reference (random weights)",
               "Dice vs truth (trained)"]
    if r["device"].startswith("cuda"):
        headers.append("CUDA peak MiB")
        rows[0].append(f(ref["memory"]["cuda_peak_mib"], 0))
        for row, o in zip(rows[1:], r["ours"]):
            row.append(f(o["memory"]["cuda_peak_mib"], 0))
    lines += [benchlib.markdown_table(headers, rows), ""]

    fw = floor["flops_per_window"]
    trow = [["FLOPs per window, V-Net + ResVNet", f"{fw['a'] / 1e9:.4g} + {fw['b'] / 1e9:.4g} GFLOP"]]
    for dtype, t in floor["throughput"].items():
        trow.append([f"throughput {dtype} (both nets, one window, median of {len(t['times_s'])})",
                     f"{t['gflop_per_s']} GFLOP/s ({f(t['median_s'], 3)} s per window)"])
    trow.append(["one pass of both networks over the volume (volume / window voxels × window FLOPs)",
                 f"{floor['volume_flops'] / 1e9:.4g} GFLOP"])
    for dtype, sec in floor["floor_seconds"].items():
        trow.append([f"floor time at the best {dtype} throughput", f"{f(sec)} s"])
    lines += [benchlib.markdown_table(["FLOP floor", "value"], trow), ""]

    trows = []
    for label, t in (("engine default", r["targets"]["engine_default"]),
                     ("fastest with Dice ≥ 0.99", r["targets"]["fastest"])):
        if t is None:
            trows.append([label, "no such setting", "", ""])
            continue
        trows.append([label, f"{f(t['speedup'])}× ({benchlib.verdict(t['speedup_met'])})",
                      f"{f(t['dice'], 4)} ({benchlib.verdict(t['dice_met'])})",
                      f"{f(t['floor_ratio'])}× ({benchlib.verdict(t['floor_met'])})"])
    lines += [benchlib.markdown_table(["setting", f"speed-up ≥ {TARGET_SPEEDUP:g}×", f"agreement Dice ≥ {TARGET_DICE}",
                                       f"time ≤ {TARGET_FLOOR_RATIO}× FLOP floor"], trows), ""]
    rec = r["recommendation"]
    for failure in r.get("failed", []):
        lines.append(f"FAILED: ours ({failure['name']}): {failure['error'].strip().splitlines()[-1]}")
    if r["fastest_with_agreement"] is None:
        lines.append("No setting reached agreement Dice ≥ 0.99 with the trained weights.")
    elif rec is None:
        lines.append("The engine's default setting is the fastest one with agreement Dice ≥ 0.99.")
    else:
        lines.append(f"Fastest setting with agreement Dice ≥ 0.99: {rec['setting']}, {f(rec['seconds'])} s against "
                     f"{f(rec['default_seconds'])} s for the engine's default ({f(rec['gain_over_default'])}× "
                     f"faster{'' if rec['clearly_better'] else '; within noise'}).")
    if r["quick"]:
        lines.append("Quick run: small networks and volume; the figures validate the script, not the targets.")
    lines.append(f"Benchmark wall time: {f(r['total_seconds'], 0)} s.")
    return "\n".join(lines)


def _delta(result: Dict[str, Any]) -> Optional[float]:
    mem = result["memory"]
    if mem.get("rss_before_mib") is None:
        return None
    return mem["peak_rss_mib"] - mem["rss_before_mib"]


if __name__ == "__main__":
    main()
