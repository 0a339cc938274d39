"""The built-in demo: synthetic phantoms, a short CPU training, segmentation of held-out phantoms,
a metrics table, ``report.json`` and pictures (overlays and the loss curve)."""

import json
import os
import time
from typing import Dict, List, Optional

import numpy as np

from .atomicio import atomic_write
from .config import preset_config
from .evaluation import evaluate_model, format_table
from .phantoms import write_phantom_dataset
from .progress import Reporter
from .train import train

DEMO_CASES = {"labeled": 4, "unlabeled": 12, "test": 6}


def run_demo(output_dir: str, iterations: Optional[int] = None, device: str = "auto", progress: str = "bar",
             seed: int = 0) -> Dict[str, object]:
    output_dir = os.path.abspath(output_dir)
    say = Reporter(progress)
    started = time.monotonic()
    data_dir = os.path.join(output_dir, "data")
    say.emit("start", "demo", message=f"Writing {sum(DEMO_CASES.values())} synthetic phantoms to {data_dir} "
                                      f"({DEMO_CASES['labeled']} labeled, {DEMO_CASES['unlabeled']} unlabeled, "
                                      f"{DEMO_CASES['test']} held out).")
    train_manifest, test_manifest = write_phantom_dataset(data_dir, seed=seed, **DEMO_CASES)
    overrides = {"device": device, "seed": seed}  # the demo preset trains the paper's method
    if iterations:
        overrides["iterations"] = iterations
    config = preset_config("demo", overrides)
    model_dir = os.path.join(output_dir, "model")
    model_path = train(train_manifest, model_dir, config, progress=progress)
    say.emit("progress", "demo", message="Segmenting the held-out phantoms.")
    shown: List[dict] = []

    def keep_for_pictures(case_id, volume, reference, result):
        if len(shown) < 3:
            shown.append({"id": case_id, "arrays": (volume, reference, result)})

    # The atrium is one connected structure: keep the largest component, as a user would (--keep-largest).
    report = evaluate_model(model_path, test_manifest, device=device, keep_largest=True,
                            output_dir=os.path.join(output_dir, "segmentations"), on_case=keep_for_pictures)
    for picture in shown:
        picture["classes"] = next(c["classes"] for c in report["cases"] if c["id"] == picture["id"])
    pictures = write_overlays(shown, os.path.join(output_dir, "overlays.png"))
    curve = write_loss_curve(os.path.join(model_dir, "log.jsonl"), os.path.join(output_dir, "loss_curve.png"))
    report.update({"seconds": round(time.monotonic() - started, 1), "iterations": config.iterations,
                   "pictures": [p for p in (pictures, curve) if p]})
    with open(os.path.join(output_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    say.emit("done", "demo", message=format_table(report) +
             f"\n\nReport: {os.path.join(output_dir, 'report.json')}\nPictures: {', '.join(report['pictures'])}"
             f"\nTotal time: {report['seconds']:.0f} s")
    return report


def _pyplot():
    """matplotlib's pyplot drawing off screen, or None when matplotlib is not installed (pictures are optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt, fig, path: str) -> str:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return path


def write_overlays(cases: List[dict], path: str) -> Optional[str]:
    """One row per case: axial, coronal and sagittal slices through the reference's centre, reference
    outline in green and prediction in red."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        volume, reference, result = case["arrays"]
        centre = np.argwhere(reference > 0).mean(0).astype(int) if reference.any() else \
            np.array(reference.shape) // 2
        aspect = volume.geometry.spacing[::-1]
        every = slice(None)
        views = (("axial", (centre[0], every, every), aspect[1] / aspect[2]),
                 ("coronal", (every, centre[1], every), aspect[0] / aspect[2]),
                 ("sagittal", (every, every, centre[2]), aspect[0] / aspect[1]))
        for ax, (name, cut, ratio) in zip(row, views):
            ax.imshow(volume.array[cut], cmap="gray", origin="lower", aspect=ratio)
            ax.contour(reference[cut] > 0, [0.5], colors="lime", linewidths=1.2)
            ax.contour(result.labels[cut] > 0, [0.5], colors="red", linewidths=1.0, linestyles="--")
            dice = next(iter(case["classes"].values()))["dice"]
            ax.set_title(f"{case['id']} {name} (Dice {dice:.3f})", fontsize=8)
            ax.axis("off")
    fig.suptitle("green: reference, red dashed: SemiSupSeg", fontsize=9)
    return _save(plt, fig, path)


def write_loss_curve(log_path: str, path: str) -> Optional[str]:
    plt = _pyplot()
    if plt is None:
        return None
    events = [json.loads(line) for line in open(log_path) if line.strip()]
    events = [e for e in events if e.get("losses")]
    if not events:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    iterations = [e["iteration"] for e in events]
    for key in ("loss", "sup_a", "sup_b", "unsup_a", "reg", "contrast_a"):
        if key in events[-1]["losses"]:
            ax.plot(iterations, [e["losses"].get(key, np.nan) for e in events], label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)
