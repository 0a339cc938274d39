"""What limits the semi-supervised terms: pseudo labels against the hidden labels of the unlabeled training cases.

Run by hand after ``bench_accuracy.py`` (it reads the runs' model files; the test cases are never used)::

    python Testing/Benchmarks/diagnose_pseudo_labels.py --out benchmark-accuracy --dataset headroom \\
        --methods supervised,ours,mean-teacher,cps --seeds 0,1,2

For every model file and every UNLABELED training case (the benchmark keeps their labels on disk, hidden from
training), whole-volume softmax of each network, then, with the engine's own functions:

* Dice of each network's argmax, and of their averaged softmax (what segments), against the hidden label
  (mean over the foreground classes; what the pseudo labels of L_u would be worth at the end of training);
* the entropy filter (``reliable_mask_per_class``, 80 % per pseudo class) on the pair's better network: the
  pseudo label's accuracy on reliable and on unreliable voxels; of the voxels it calls foreground, the share
  truly of that class (precision) among the reliable and among the unreliable ones; of the truly foreground
  voxels, the share called background among the reliable (errors L_u teaches with full weight) and among the
  unreliable ones (which L_c pulls toward the background prototype);
* M_diff (``disagreement_mask`` at the final T = 0.95): its size, and how often network a / b is right there.

Numbers are per case, averaged over cases and then reported per run and per method (mean over seeds).
"""

import argparse
import json
import os
import sys
from typing import Dict, List

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (HERE, REPO):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402

from SemiSupSegTraining import losses  # noqa: E402
from SemiSupSegTraining.config import zyx  # noqa: E402
from SemiSupSegTraining.data import load_case# noqa: E402
from SemiSupSegTraining.manifest import load_manifest  # noqa: E402
from SemiSupSegTraining.metrics import overlap  # noqa: E402
from SemiSupSegTraining.modelfile import load_model  # noqa: E402


def network_probs(model_path: str, images: List[np.ndarray]):
    net_a, net_b, meta = load_model(model_path)
    window = zyx(meta["patch_size"])
    out = []
    with torch.inference_mode():
        for image in images:
            x = torch.from_numpy(image)[None, None].float()
            out.append([sliding_window_inference(x, window, 2, lambda w, n=net: torch.softmax(n(w)[0], 1),
                                                 overlap=0.25, mode="gaussian")[0] for net in (net_a, net_b)])
    return out, meta


def dice(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the foreground classes (one class: the binary Dice)."""
    # overlap only: evaluate() would also compute surface distances, which nothing here reads
    return float(np.mean([overlap(prediction == v, truth == v)["dice"] for v in range(1, num_classes)]))


def _share(what: torch.Tensor, where: torch.Tensor) -> float:
    return float(what[where].float().mean()) if where.any() else float("nan")


def diagnose_case(pa: torch.Tensor, pb: torch.Tensor, label: np.ndarray, num_classes: int) -> Dict[str, float]:
    truth = torch.from_numpy(label.astype(np.int64))
    la, lb = pa.argmax(0), pb.argmax(0)
    dice_a, dice_b = dice(la.numpy(), label, num_classes), dice(lb.numpy(), label, num_classes)
    dice_mean = dice(((pa + pb) / 2).argmax(0).numpy(), label, num_classes)
    best_probs, pseudo = (pa, la) if dice_a >= dice_b else (pb, lb)
    entropy = losses.voxel_entropy(best_probs[None])
    reliable = losses.reliable_mask_per_class(entropy, pseudo[None], 0.8, num_classes)[0]
    right = pseudo == truth
    fg_truth = truth > 0
    mdiff = losses.disagreement_mask(pa[None], pb[None], 0.95)[0]
    return {
        "dice_a": dice_a, "dice_b": dice_b, "dice_both": dice_mean, "dice_best": max(dice_a, dice_b),
        "reliable_accuracy": float(right[reliable].float().mean()),
        "unreliable_accuracy": float(right[~reliable].float().mean()) if (~reliable).any() else float("nan"),
        "reliable_missed_foreground": float((fg_truth & reliable & (pseudo == 0)).sum() /
                                            max(int(fg_truth.sum()), 1)),
        "foreground_reliable_share": float((reliable & (pseudo > 0)).sum() / max(int((pseudo > 0).sum()), 1)),
        # of the voxels the pseudo label calls foreground, the share truly of that class: reliable / unreliable
        "reliable_fg_precision": _share(right, reliable & (pseudo > 0)),
        "unreliable_fg_precision": _share(right, ~reliable & (pseudo > 0)),
        # of the truly foreground voxels, the share the pseudo label calls background among the unreliable ones
        "unreliable_missed_foreground": float((fg_truth & ~reliable & (pseudo == 0)).sum() /
                                              max(int(fg_truth.sum()), 1)),
        "mdiff_voxels": int(mdiff.sum()),
        "mdiff_a_right": float((la == truth)[mdiff].float().mean()) if mdiff.any() else float("nan"),
        "mdiff_b_right": float((lb == truth)[mdiff].float().mean()) if mdiff.any() else float("nan"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="bench_accuracy.py's output folder")
    parser.add_argument("--dataset", default="headroom")
    parser.add_argument("--fraction", default="10pct")
    parser.add_argument("--methods", default="supervised,ours,mean-teacher,cps")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    manifest = load_manifest(os.path.join(args.out, "data", args.dataset, f"train-{args.fraction}.json"))
    cases = [load_case(entry, manifest.classes, "zscore", (-120.0, 240.0)) for entry in
             manifest.unlabeled_cases]
    images, labels = [c.image for c in cases], [c.label for c in cases]
    report: Dict[str, Dict[str, Dict[str, float]]] = {}
    for method in args.methods.split(","):
        for seed in args.seeds.split(","):
            model = os.path.join(args.out, "runs", args.dataset, args.fraction, method, f"seed{seed}", "model.pt")
            if not os.path.exists(model):
                continue
            probs, meta = network_probs(model, images)
            rows = [diagnose_case(pa, pb, label, len(meta["classes"])) for (pa, pb), label in zip(probs, labels)]
            summary = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
            report.setdefault(method, {})[seed] = summary
            print(f"{method:13s} seed{seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
