"""Reading the engine's ``--progress json`` lines and turning them into text for the user.

The engine prints one JSON object per line (``{"event": "progress", "iteration": 10, ...}``); anything else
on stdout (warnings, library messages) is not an event and goes to the log as it is.
"""

import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

EVENTS = ("start", "progress", "checkpoint", "validation", "done", "error", "cancelled")


@dataclass
class ProgressEvent:
    """One event of the engine. ``data`` keeps the whole JSON object, fields the common parts."""

    event: str
    phase: Optional[str] = None
    iteration: Optional[int] = None
    total: Optional[int] = None
    losses: Dict[str, float] = field(default_factory=dict)
    lr: Optional[float] = None
    elapsed_s: Optional[float] = None
    eta_s: Optional[float] = None
    message: Optional[str] = None
    data: dict = field(default_factory=dict)

    @property
    def fraction(self) -> Optional[float]:
        """Done part in [0, 1], when the event says how far along the job is."""
        if self.iteration is None or not self.total:
            return None
        return min(max(self.iteration / self.total, 0.0), 1.0)

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    @property
    def validation_dice(self) -> Optional[float]:
        """A ``validation`` event's mean Dice over the held-out cases (``train --validate K``), else None."""
        return _number(self.data.get("mean_dice")) if self.event == "validation" else None


def _number(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _integer(value) -> Optional[int]:
    number = _number(value)
    return None if number is None else int(number)


def parse_line(line: str) -> Optional[ProgressEvent]:
    """The event on one stdout line, or None when the line is not an engine event (then: log it)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        return None
    losses = {}
    raw_losses = data.get("losses")
    if isinstance(raw_losses, dict):
        for name, value in raw_losses.items():
            number = _number(value)
            if number is not None:
                losses[str(name)] = number
    message = data.get("message")
    phase = data.get("phase")
    return ProgressEvent(
        event=data["event"],
        phase=phase if isinstance(phase, str) else None,
        iteration=_integer(data.get("iteration")),
        total=_integer(data.get("total")),
        losses=losses,
        lr=_number(data.get("lr")),
        elapsed_s=_number(data.get("elapsed_s")),
        eta_s=_number(data.get("eta_s")),
        message=message if isinstance(message, str) else None,
        data=data,
    )


def format_duration(seconds: Optional[float]) -> str:
    """``"45 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``; empty when unknown."""
    if seconds is None or seconds < 0 or not math.isfinite(seconds):
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


#: The engine's training terms, in the order they are shown (others follow in their own order).
LOSS_ORDER = ("loss", "sup_a", "sup_b", "unsup_a", "unsup_b", "reg", "contrast_a", "contrast_b")
#: Numbers that the engine reports with the losses but that are not losses (kept in the history, not shown).
NOT_LOSSES = ("reliable_fraction", "mdiff_voxels", "lambda_c", "lambda_u")


def loss_names(names) -> List[str]:
    """The loss names among ``names``: the known terms in :data:`LOSS_ORDER` first, statistics left out."""
    names = [n for n in names if n not in NOT_LOSSES]
    known = [n for n in LOSS_ORDER if n in names]
    return known + [n for n in names if n not in known]


def format_losses(losses: Dict[str, float], max_items: int = 4) -> str:
    """``"loss 0.412, sup_a 0.210, sup_b 0.198, unsup_a 0.051"``: the total first, then the terms."""
    return ", ".join(f"{name} {losses[name]:.3f}" for name in loss_names(losses)[:max_items])


_PHASE_WORDS = {"train": "Training", "validate": "Validating", "segment": "Segmenting", "suggest": "Scoring cases"}
_UNIT_WORDS = {"train": "iteration", "segment": "window", "suggest": "case"}


def describe(event: ProgressEvent) -> str:
    """One line for the status label, e.g. ``"Training: iteration 120/2000 · ETA 3 min 20 s · loss 0.412"``."""
    phase = _PHASE_WORDS.get(event.phase or "", "Working")
    if event.event == "start":
        device = event.get("device")
        where = f" on {device}" if isinstance(device, str) else ""
        return event.message or f"{phase}{where}: starting"
    if event.event == "progress":
        unit = _UNIT_WORDS.get(event.phase or "", "step")
        parts = [f"{phase}: {unit} {event.iteration}/{event.total}"
                 if event.total else f"{phase}: {unit} {event.iteration}"]
        eta = format_duration(event.eta_s)
        if eta:
            parts.append(f"ETA {eta}")
        losses = format_losses(event.losses)
        if losses:
            parts.append(losses)
        return " · ".join(parts)
    if event.event == "checkpoint":
        return f"{phase}: checkpoint saved"
    if event.event == "validation":
        cases = event.get("cases")
        count = f" on {len(cases)} held-out case(s)" if isinstance(cases, list) else ""
        dice = event.validation_dice
        return event.message or (f"Validation{count}: mean Dice {dice:.3f}" if dice is not None else "Validation")
    if event.event == "done":
        return f"{phase}: done"
    if event.event == "error":
        return event.message or f"{phase}: failed"
    if event.event == "cancelled":
        return event.message or f"{phase}: cancelled"
    return event.message or event.event


class LossHistory:
    """Losses per iteration of a training, for a loss curve."""

    def __init__(self):
        self.iterations: List[int] = []
        self.series: Dict[str, List[float]] = {}

    def add(self, event: ProgressEvent) -> bool:
        """Records a training progress event's losses; returns whether it had any."""
        if event.event != "progress" or event.iteration is None or not event.losses:
            return False
        row = len(self.iterations)
        self.iterations.append(event.iteration)
        for name, value in event.losses.items():
            # a loss that appears late gets NaN for the earlier rows, so all columns stay equally long
            self.series.setdefault(name, [float("nan")] * row).append(value)
        for values in self.series.values():
            if len(values) < row + 1:
                values.append(float("nan"))
        return True

    def __len__(self) -> int:
        return len(self.iterations)

    def clear(self) -> None:
        self.iterations.clear()
        self.series.clear()
