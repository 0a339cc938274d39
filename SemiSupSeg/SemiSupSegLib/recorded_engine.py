"""A stand-in for the engine process: it replays progress lines recorded from the real engine.

The quick self-test (ctest, build machines without torch or a network) runs the module's whole path —
export, command line, process, progress lines, stop file, import into the scene — with this process in
place of ``PythonSlicer -m SemiSupSegTraining``. It takes the engine's command lines, replays
``Resources/Testing/recorded-engine.json`` (lines of a real tiny run) with the paths of this run filled in,
honours ``--stop-file`` like the engine (a ``cancelled`` event with a checkpoint, exit code 3), and writes
the files the module reads: ``model.pt`` (a placeholder, not a model) with its real ``model.json``, a
segmentation (a threshold of the input, with SimpleITK, which Slicer ships) and an uncertainty map.

:class:`ReplayRunner` is the job runner that starts it instead of the engine. Plain Python.
"""

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from .job import SubprocessRunner

MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDING = os.path.join(MODULE_DIR, "Resources", "Testing", "recorded-engine.json")
ENGINE_PACKAGE = "SemiSupSegTraining"
EXIT_CANCELLED = 3


def replay_command(command: Sequence[str], delay_s: float = 0.05) -> List[str]:
    """``[python, "-m", "SemiSupSegTraining", sub, ...]`` -> the same Python running :func:`main` with
    ``--delay s sub ...`` (importing this package puts the engine on ``sys.path``)."""
    command = list(command)
    if command[1:3] != ["-m", ENGINE_PACKAGE]:
        raise ValueError(f"Not an engine command line: {' '.join(command)}")
    code = (f"import sys; sys.path.insert(0, {MODULE_DIR!r}); "
            f"from SemiSupSegLib.recorded_engine import main; sys.exit(main())")
    return [command[0], "-c", code, "--delay", str(delay_s)] + command[3:]


class ReplayRunner(SubprocessRunner):
    """Starts the replay instead of the engine (same runner otherwise: UTF-8, environment, no console)."""

    def __init__(self, base_env: Optional[Dict[str, str]] = None, delay_s: float = 0.05):
        super().__init__(base_env)
        self.delay_s = delay_s

    def start(self, command, env_updates, cwd, sink):
        return super().start(replay_command(command, delay_s=self.delay_s), env_updates, cwd, sink)


def _fill(value, places: Dict[str, str]):
    if isinstance(value, str):
        for key, text in places.items():
            value = value.replace("{" + key + "}", text)
        return value
    if isinstance(value, list):
        return [_fill(v, places) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, places) for k, v in value.items()}
    return value


def _say(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _classes(manifest_path: str) -> list:
    with open(manifest_path, encoding="utf-8") as f:
        return json.load(f)["classes"]


def _write_model(folder: str, classes: list) -> str:
    from SemiSupSegTraining.modelinfo import write_metadata  # the engine's package, no torch

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.pt")
    with open(path, "wb") as f:
        f.write(b"recorded engine: a placeholder, not a model\n")
    write_metadata(path, {"classes": classes, "preset": "tiny", "format": "semisupseg-model"})
    return path


def _train(args, recording, delay_s: float) -> int:
    folder = args.output or args.resume
    if args.resume:
        with open(os.path.join(folder, "classes.json"), encoding="utf-8") as f:
            classes = json.load(f)
    else:
        classes = _classes(args.manifest)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "classes.json"), "w", encoding="utf-8") as f:
            json.dump(classes, f)
    places = {"output": folder}
    events = [_fill(e, places) for e in recording["train"]]
    # a longer training than the recording (a test of Cancel) runs on until it is stopped
    endless = args.iterations is not None and int(args.iterations) > int(events[0].get("total") or 0)

    def stopped() -> bool:
        return bool(args.stop_file) and os.path.exists(args.stop_file)

    for event in events[:-1]:
        if stopped():
            break
        _say(event)
        time.sleep(delay_s)
    while endless and not stopped():
        time.sleep(delay_s)
    if stopped():
        with open(os.path.join(folder, "checkpoint.pt"), "wb") as f:
            f.write(b"recorded engine: a placeholder checkpoint\n")
        _say(_fill(recording["cancelled"], places))
        return EXIT_CANCELLED
    _write_model(folder, classes)
    _say(events[-1])
    return 0


def _segment(args, recording, delay_s: float) -> int:
    import SimpleITK as sitk

    image = sitk.ReadImage(args.input)
    statistics = sitk.StatisticsImageFilter()
    statistics.Execute(image)
    sitk.WriteImage(sitk.Cast(image > statistics.GetMean() + statistics.GetSigma(), sitk.sitkUInt8), args.output)
    if args.uncertainty:
        sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32) * 0.0, args.uncertainty)
    places = {"input": args.input, "segmentation": args.output, "uncertainty": args.uncertainty or ""}
    for event in recording["segment"]:
        _say(_fill(event, places))
        time.sleep(delay_s)
    return 0


def _suggest(args, recording, delay_s: float) -> int:
    with open(args.manifest, encoding="utf-8") as f:
        cases = [c for c in json.load(f)["cases"] if not c.get("label") or c.get("labeled") is False]
    events = [dict(e) for e in recording["suggest"]]
    template = events[-1]["ranking"][0]
    events[-1]["ranking"] = [dict(template, id=c["id"], image=c["image"], score=1.0 / (rank + 1), rank=rank + 1)
                             for rank, c in enumerate(cases)]
    for event in events:
        _say(event)
        time.sleep(delay_s)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--recording", default=RECORDING)
    parser.add_argument("command", choices=("train", "segment", "suggest"))
    for option in ("manifest", "output", "resume", "iterations", "model", "input", "uncertainty", "stop-file"):
        parser.add_argument("--" + option)
    args, _ = parser.parse_known_args(argv)
    with open(args.recording, encoding="utf-8") as f:
        recording = json.load(f)
    return {"train": _train, "segment": _segment, "suggest": _suggest}[args.command](args, recording, args.delay)

