"""Which unlabeled case to label next: rank a manifest's unlabeled cases by how much a label would teach.

The score of a case is the model's own estimate of how wrong it is there, from the two networks that
segment it (the same inference as ``semisupseg segment``):

* **self-estimated Dice error** ``1 - E``, with ``E = 2 Σ_{x∈M} p(x) / (|M| + Σ_x p(x))`` per structure:
  the Dice the predicted mask ``M`` would reach against a label drawn from the model's own averaged
  probabilities ``p``. Confident voxels add nothing; uncertain voxels inside the structure and on its border
  do, and so does a structure the model half-sees.
* **dual-network disagreement** ``D = Σ_x TV(x) / Σ_x p_fg(x)``: the total-variation distance between the two
  networks' softmax outputs summed over the volume, over the predicted (soft) structure volume. For one
  structure this is exactly ``1 - fuzzy Dice(p_a, p_b)`` between the two networks' foreground maps, so
  false positives of either network anywhere count too.

``score = (1 - E + min(D, 1)) / 2``, 0..1. Both terms are ratios to the structure's own (soft) volume, the
way Dice is: a large and a small structure with the same relative border uncertainty score alike, and the
far background, confidently empty, contributes nothing (a plain mean of the uncertainty over the volume
would rank cases by how large their structure is). A case where the model finds no structure at all
scores 1 on both terms: since every case of a manifest shows the structure, that is a case the model cannot
segment. Why these two: where the two networks disagree or are unsure is exactly where the paper's
pseudo labels are unreliable, so a label there replaces the worst supervision the training would get.
"""

import json
import os
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from .atomicio import write_text_atomic
from .errors import Cancelled, InputError
from .infer import Segmenter
from .layouts import load_cases
from .progress import Reporter
from .runfolder import StopRequest

_EPS = 1e-6  # keeps an empty prediction's ratios finite


@dataclass
class CaseScore:
    id: str
    image: str
    score: float              # 0..1, higher: a label teaches more
    dice_error: float         # 1 - self-estimated Dice, mean over the structures
    disagreement: float       # 1 - fuzzy Dice of the two networks (clipped at 1)
    predicted_voxels: int     # voxels of the predicted structures
    rank: int = 0

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def score_probabilities(probabilities: np.ndarray, labels: np.ndarray, disagreement: np.ndarray
                        ) -> Dict[str, float]:
    """The score's terms from a segmentation: averaged softmax (K, z, y, x), labels (z, y, x) and the two
    networks' total-variation distance (z, y, x). See the module docstring."""
    errors = []
    for k in range(1, probabilities.shape[0]):
        p = probabilities[k]
        mask = labels == k
        expected_dice = 2.0 * float(p[mask].sum(dtype=np.float64)) / (
            float(mask.sum()) + float(p.sum(dtype=np.float64)) + _EPS)
        errors.append(1.0 - expected_dice)
    dice_error = float(np.mean(errors)) if errors else 0.0
    foreground = float((1.0 - probabilities[0]).sum(dtype=np.float64))
    spread = float(disagreement.sum(dtype=np.float64))
    # Less than one voxel of structure: the model found none (both terms 1, see the module docstring).
    disagree = 1.0 if foreground < 1.0 else min(spread / foreground, 1.0)
    return {"score": 0.5 * (dice_error + disagree), "dice_error": dice_error, "disagreement": disagree,
            "predicted_voxels": int((labels > 0).sum())}


def suggest_cases(model_path: str, manifest_path: str, device: str = "auto", reporter: Optional[Reporter] = None,
                  stop_file: Optional[str] = None, segmenter_factory: Callable[..., Segmenter] = Segmenter,
                  use_test_images: bool = False) -> List[CaseScore]:
    """Scores every unlabeled case of the manifest (a file or a dataset folder, whose imagesTs/ cases join
    with ``use_test_images``) with the model; returns them best first (rank 1 = label this one next). One progress event per case; the ``done`` event carries the ranking. When
    ``stop_file`` appears, sends a ``cancelled`` event and raises :class:`Cancelled`."""
    from .fileio import read_image

    reporter = reporter or Reporter("none")
    manifest = load_cases(manifest_path, use_test_images)
    cases = manifest.unlabeled_cases
    if not cases:
        raise InputError(f"The manifest {manifest_path} has no unlabeled cases: there is nothing to suggest; "
                         f"add cases without a label (or untick 'labeled').")
    segmenter = segmenter_factory(model_path, device, disagreement=True,
                                  on_message=lambda text: reporter.emit("warning", "suggest", message=text))
    reporter.emit("start", "suggest", total=len(cases), device=str(segmenter.device),
                  message=f"Scoring {len(cases)} unlabeled cases on {segmenter.device}.")
    reporter.restart_clock()
    stop = StopRequest(stop_file=stop_file)

    def check_stop(*_) -> None:
        if stop.requested:
            stop.consume()
            raise Cancelled(f"Stop requested ({stop_file}).")

    scores = []
    try:
        for index, case in enumerate(cases, 1):
            check_stop()
            result = segmenter.segment(read_image(case.image), on_window_batch=check_stop, release_input=True)
            terms = score_probabilities(result.probabilities, result.labels, result.disagreement)
            scores.append(CaseScore(case.id, case.image, **terms))
            reporter.progress("suggest", index, len(cases), case=case.id, score=round(terms["score"], 4))
    except Cancelled:
        reporter.emit("cancelled", "suggest", message=f"Cancelled after {len(scores)} of {len(cases)} cases.")
        raise
    scores.sort(key=lambda s: -s.score)
    for rank, s in enumerate(scores, 1):
        s.rank = rank
    reporter.emit("done", "suggest", ranking=[s.to_dict() for s in scores],
                  message=f"Label {scores[0].id} next (score {scores[0].score:.3f}).")
    return scores


def format_ranking(scores: List[CaseScore]) -> str:
    """A plain-text table, best first."""
    width = max([len("case")] + [len(s.id) for s in scores])
    lines = [f"{'rank':>4}  {'case':<{width}}  {'score':>6}  {'dice err':>8}  {'disagree':>8}  {'voxels':>8}"]
    for s in scores:
        lines.append(f"{s.rank:>4}  {s.id:<{width}}  {s.score:6.3f}  {s.dice_error:8.3f}  {s.disagreement:8.3f}  "
                     f"{s.predicted_voxels:>8}")
    return "\n".join(lines)


def ranking_json(scores: List[CaseScore], model_path: str, manifest_path: str, path: Optional[str] = None) -> str:
    """The ranking as JSON text; also written to ``path`` (atomically) when given."""
    text = json.dumps({"model": model_path, "manifest": manifest_path, "ranking": [s.to_dict() for s in scores]},
                      indent=2)
    if path:
        try:
            write_text_atomic(path, text + "\n")
        except OSError as e:
            raise InputError(f"Cannot write the ranking to {path} ({e.strerror or e}); choose a file in a folder "
                             f"you can write to.") from None
    return text


def check_output_path(path: str) -> None:
    """Before any case is scored: the folder of ``path`` exists (it is created) and takes files."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise InputError(f"Cannot create the folder {folder} for the ranking {path} ({e.strerror or e}); choose "
                         f"another --output.") from None
    if not os.access(folder, os.W_OK):
        raise InputError(f"Cannot write into the folder {folder} for the ranking {path}; choose another --output.")
