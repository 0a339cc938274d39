"""Progress events of long jobs: a bar on a terminal, or one JSON object per line for the Slicer module.

Every event is a dict with ``event`` ("start", "progress", "checkpoint", "validation", "done", "error",
"cancelled") and ``phase`` ("train", "validate", "segment", ...). A training with ``--validate K`` sends
"validation" (the held-out cases' Dice: ``cases``, ``per_class_dice``, ``mean_dice``) before "done".
Progress events carry ``iteration``, ``total``, ``elapsed_s``, ``eta_s`` and, in training, ``losses`` and
``lr``. The JSON mode writes to stdout and flushes each line.
"""

import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional, TextIO

Event = Dict[str, object]


class Reporter:
    """Sends events to a terminal bar (``"bar"``), JSON lines (``"json"``) or nowhere (``"none"``), and to
    an optional callback (the Python API's hook), and keeps a copy in ``log`` when asked."""

    def __init__(self, mode: str = "bar", callback: Optional[Callable[[Event], None]] = None,
                 stream: Optional[TextIO] = None, keep: bool = False):
        if mode not in ("bar", "json", "none"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.callback = callback
        self.stream = stream
        self.log: List[Event] = []
        self.keep = keep
        self._start = time.monotonic()
        self._bar_open = False
        self._last_losses = ""

    def restart_clock(self) -> None:
        self._start = time.monotonic()

    def emit(self, event: str, phase: str, **fields) -> Event:
        record: Event = {"event": event, "phase": phase, **fields}
        if self.keep:
            self.log.append(record)
        if self.callback is not None:
            self.callback(record)
        if self.mode == "json":
            out = self.stream or sys.stdout
            try:
                out.write(json.dumps(record, default=float) + "\n")
                out.flush()
            except (BrokenPipeError, ValueError, OSError):
                # the reader is gone (Slicer quit): go on quietly; the stop file still ends the run cleanly
                if out is sys.stdout:  # later prints would fail the same way
                    sys.stdout = open(os.devnull, "w", encoding="utf-8")
                self.stream = open(os.devnull, "w", encoding="utf-8")
        elif self.mode == "bar":
            self._draw(record)
        return record

    def progress(self, phase: str, iteration: int, total: int, first_iteration: int = 0, **fields) -> Event:
        """A progress event with elapsed time and an ETA from the pace since ``first_iteration``."""
        elapsed = time.monotonic() - self._start
        done = iteration - first_iteration
        eta = elapsed / done * (total - iteration) if done > 0 else None
        return self.emit("progress", phase, iteration=iteration, total=total, elapsed_s=round(elapsed, 2),
                         eta_s=None if eta is None else round(eta, 1), **fields)

    def _draw(self, record: Event) -> None:
        out = self.stream or sys.stderr
        if record["event"] == "progress" and "total" in record:
            losses = record.get("losses") or {}
            if losses:
                self._last_losses = " ".join(f"{k}={v:.3f}" for k, v in list(losses.items())[:4])
            elif not out.isatty():
                return  # a log file gets the lines with losses, not every redraw
            total = max(int(record["total"]), 1)
            done = int(record["iteration"])
            filled = int(30 * done / total)
            eta = record.get("eta_s")
            eta_text = f" eta {_clock(eta)}" if eta is not None else ""
            line = f"{record['phase']:>8} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}{eta_text} " \
                   f"{self._last_losses}"
            if out.isatty():
                out.write(f"\r{line}\x1b[K")
                self._bar_open = True
            else:
                out.write(line + "\n")
        else:
            if self._bar_open:
                out.write("\n")
                self._bar_open = False
            message = record.get("message")
            if message:
                out.write(f"{message}\n")
        out.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"
