"""Engine command lines, the engine's environment, and other decisions made without Slicer.

The Slicer module runs the engine as a separate process (``PythonSlicer -m SemiSupSegTraining ...``);
this file builds those command lines. It imports neither slicer nor qt, so it is tested with pytest.
"""

import datetime
import importlib.util
import math
import os
import re
import shutil
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .engine_path import ENGINE_PACKAGE, engine_candidates, locate_engine  # noqa: F401  (re-exported)

# The engine's own lists and its one default (plain Python, no torch): the module keeps no copy of them.
from SemiSupSegTraining.config import DEFAULT_METHOD, DEFAULT_PRESET, preset_method
from SemiSupSegTraining.config import METHODS as ENGINE_METHODS
from SemiSupSegTraining.config import PRESETS as ENGINE_PRESETS


#: Presets of ``train --preset``, in the engine's order.
PRESETS = tuple(ENGINE_PRESETS)
#: The Method control's first choice: the preset's own method (no ``--set method=``).
PRESET_METHOD = "(preset's)"
#: Methods of ``train --set method=...``: the engine's, without the reference code's training (benchmarks only).
METHODS = tuple(m for m in ENGINE_METHODS if m != "reference")
#: The Method control's choices.
METHOD_CHOICES = (PRESET_METHOD,) + METHODS
__all__ = ["DEFAULT_METHOD", "DEFAULT_PRESET", "preset_method"]  # re-exported: the widget shows them

#: Devices of ``--device``.
DEVICES = ("auto", "cuda", "cpu", "mps")
MODALITIES = ("MRI", "CT")

#: What the engine needs beyond what Slicer ships (Slicer ships numpy and SimpleITK; torch comes from the
#: PyTorch extension): import name -> pip requirement.
ENGINE_REQUIREMENTS = {"monai": "monai>=1.2", "scipy": "scipy>=1.7"}
#: What the module itself needs beyond Slicer: psutil, to stop the engine's whole process tree on cancel.
MODULE_REQUIREMENTS = {"psutil": "psutil>=5.9"}
#: The oldest torch the engine runs on: ``torch.amp.GradScaler("cuda")`` (fp16 training on a GPU) is from 2.3.
TORCH_REQUIREMENT = ">=2.3"

MODEL_FILE_NAME = "model.pt"
STOP_FILE_NAME = "stop-request"


def find_python_slicer(which: Callable[[str], Optional[str]] = shutil.which,
                       executable: str = sys.executable, os_name: str = os.name,
                       inside_slicer: bool = False) -> str:
    """The Python that runs the engine: ``PythonSlicer`` inside Slicer, else this Python.

    Slicer puts ``PythonSlicer`` on PATH; next to Slicer's own Python executable is the second place to
    look. Inside Slicer nothing else will do (``sys.executable`` may be Slicer itself, which would open a
    second application): RuntimeError with one sentence. Outside Slicer (tests, scripts) this Python runs it.
    """
    found = which("PythonSlicer")
    if found:
        return found
    name = "PythonSlicer.exe" if os_name == "nt" else "PythonSlicer"
    beside = os.path.join(os.path.dirname(executable), name)
    if os.path.isfile(beside):
        return beside
    if inside_slicer:
        raise RuntimeError(f"{name} was found neither on PATH nor in {os.path.dirname(executable)}: the engine "
                           f"cannot be started; reinstall 3D Slicer.")
    return executable


def engine_environment(engine_parent: Optional[str], base_env: Optional[Mapping[str, str]] = None,
                       cpu_only: bool = False) -> Dict[str, str]:
    """Environment variables to add for the engine process (only the changed ones).

    ``engine_parent`` goes first on PYTHONPATH (kept from ``base_env``, the environment the process would
    otherwise get) so that ``-m SemiSupSegTraining`` finds the package even from a source checkout; output
    is unbuffered so that progress lines arrive as they are printed.
    """
    base_env = os.environ if base_env is None else base_env
    updates = {"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    if engine_parent:
        old = base_env.get("PYTHONPATH", "")
        parts = [engine_parent] + [p for p in old.split(os.pathsep) if p and p != engine_parent]
        updates["PYTHONPATH"] = os.pathsep.join(parts)
    if cpu_only:
        updates["CUDA_VISIBLE_DEVICES"] = "-1"
    return updates


def method_argument(choice: Optional[str]) -> Optional[str]:
    """The ``--set method=`` of the Method control's choice: None for the preset's own method."""
    return None if not choice or choice == PRESET_METHOD else choice


def effective_method(preset: str, choice: Optional[str]) -> str:
    """The method a training with this preset and Method choice trains (shown beside the preset)."""
    return method_argument(choice) or preset_method(preset or DEFAULT_PRESET)


#: Image files the engine reads as they are (SimpleITK): a volume loaded from one and not changed since
#: is not written again for a training.
ENGINE_READABLE = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def reusable_volume_file(path: Optional[str], modified_since_read: bool, has_parent_transform: bool) -> bool:
    """Whether the engine can read a volume node's own file instead of an export: a file in a format it
    reads, that exists, that the node was not changed since, and no parent transform (the export ignores
    it too, but a file may hold another one)."""
    return bool(path) and not modified_since_read and not has_parent_transform \
        and path.lower().endswith(ENGINE_READABLE) and os.path.isfile(path)


def same_grid(file_grid: Tuple[Sequence[int], Sequence[float], Sequence[float], Sequence[float]],
              node_grid_ras: Tuple[Sequence[int], Sequence[float], Sequence[float], Sequence[Sequence[float]]],
              tolerance: float = 1e-4) -> bool:
    """Whether a file's grid (size, spacing, origin and row-major direction, in ITK's LPS) is the node's grid
    (dimensions, spacing, origin and IJK-to-RAS direction matrix, in Slicer's RAS): a volume loaded with
    "center" or "ignore orientation" is not on its file's grid, and then its file is not the engine's input."""
    size, spacing, origin, direction = file_grid
    node_size, node_spacing, node_origin, node_directions = node_grid_ras
    flip = (-1.0, -1.0, 1.0)  # RAS -> LPS
    lps_origin = [flip[i] * node_origin[i] for i in range(3)]
    lps_direction = [flip[i] * node_directions[i][j] for i in range(3) for j in range(3)]
    close = all(abs(float(a) - float(b)) <= tolerance * max(1.0, abs(float(b)))
                for a, b in zip(list(spacing) + list(origin) + list(direction),
                                list(node_spacing) + lps_origin + lps_direction))
    return close and [int(v) for v in size] == [int(v) for v in node_size]


def export_cache_name(node_id: str, session: str, *modified_times: int) -> str:
    """The file name of a volume's cached export: it changes whenever the node or its voxels change (their
    modified times, which count up within one Slicer session) and between sessions."""
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", node_id)
    return f"{clean}-{session}-" + "-".join(str(int(t)) for t in modified_times) + ".nrrd"


def _check_choice(value: Optional[str], choices: Sequence[str], what: str) -> None:
    if value is not None and value not in choices:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(choices)}.")


def _check_device(device: Optional[str]) -> None:
    """auto, cuda, cpu, mps, or cuda:N for one GPU of several."""
    if device is not None and not re.fullmatch(r"cuda:\d+", device):
        _check_choice(device, DEVICES, "Device")


def train_command(python: str, manifest: Optional[str] = None, output: Optional[str] = None,
                  preset: Optional[str] = None, iterations: Optional[int] = None,
                  device: Optional[str] = None, init_model: Optional[str] = None,
                  resume: Optional[str] = None, progress: str = "json", stop_file: Optional[str] = None,
                  validate: int = 0, method: Optional[str] = None) -> List[str]:
    """``python -m SemiSupSegTraining train ...``; either ``manifest`` and ``output`` or ``resume``.
    ``stop_file``: the engine stops cleanly (checkpoint, exit code 3) once this file exists. ``validate``: hold
    the last that many labeled cases out of training and report their Dice (a resumed training keeps its own).
    ``method``: what trains (``--set method=...``); a resumed training keeps its own."""
    _check_choice(preset, PRESETS, "Preset")
    method = method_argument(method)
    _check_choice(method, METHODS, "Method")
    _check_device(device)
    command = [python, "-m", ENGINE_PACKAGE, "train"]
    if resume:
        if manifest or init_model:
            raise ValueError("A resumed training takes its cases and model from its folder: give only resume.")
        command += ["--resume", str(resume)]
    else:
        if not manifest or not output:
            raise ValueError("A training needs a manifest and an output folder.")
        command += ["--manifest", str(manifest), "--output", str(output)]
        if preset:
            command += ["--preset", preset]
        if init_model:
            command += ["--init-model", str(init_model)]
        if validate and int(validate) > 0:
            command += ["--validate", str(int(validate))]
        if method:
            command += ["--set", f"method={method}"]
    if iterations is not None and int(iterations) > 0:
        command += ["--iterations", str(int(iterations))]
    if device:
        command += ["--device", device]
    return command + _tail(progress, stop_file)


def _tail(progress: str, stop_file: Optional[str]) -> List[str]:
    return ["--progress", progress] + (["--stop-file", str(stop_file)] if stop_file else [])


def stop_file_in(folder: str) -> str:
    """Where a job's stop request goes: in its own temporary folder, never in the user's model folder."""
    return os.path.join(folder, STOP_FILE_NAME)


def segment_command(python: str, model: str, input_path: str, output: str,
                    probabilities: Optional[str] = None, uncertainty: Optional[str] = None,
                    device: Optional[str] = None, roi: Optional[Sequence[int]] = None,
                    keep_largest: bool = False, progress: str = "json", stop_file: Optional[str] = None) -> List[str]:
    """``python -m SemiSupSegTraining segment ...``; ``roi`` is (i0, j0, k0, i1, j1, k1), end exclusive."""
    _check_device(device)
    command = [python, "-m", ENGINE_PACKAGE, "segment", "--model", str(model), "--input", str(input_path),
               "--output", str(output)]
    if probabilities:
        command += ["--probabilities", str(probabilities)]
    if uncertainty:
        command += ["--uncertainty", str(uncertainty)]
    if device:
        command += ["--device", device]
    if roi is not None:
        roi = [int(v) for v in roi]
        if len(roi) != 6 or any(roi[a + 3] <= roi[a] for a in range(3)):
            raise ValueError(f"The region of interest {roi} must be i0 j0 k0 i1 j1 k1 with each end after its start.")
        command += ["--roi"] + [str(v) for v in roi]
    if keep_largest:
        command.append("--keep-largest")
    return command + _tail(progress, stop_file)


def suggest_command(python: str, model: str, manifest: str, device: Optional[str] = None, progress: str = "json",
                    stop_file: Optional[str] = None) -> List[str]:
    """``python -m SemiSupSegTraining suggest ...``: the ranking arrives in the ``done`` event."""
    _check_device(device)
    command = [python, "-m", ENGINE_PACKAGE, "suggest", "--model", str(model), "--manifest", str(manifest)]
    if device:
        command += ["--device", device]
    return command + _tail(progress, stop_file)


def roi_index_box(corners_ijk: Sequence[Sequence[float]], dimensions: Sequence[int],
                  margin: int = 0) -> Optional[Tuple[int, int, int, int, int, int]]:
    """The voxel index box (i0, j0, k0, i1, j1, k1; end exclusive) that covers points given in continuous
    IJK coordinates (e.g. the 8 corners of a region of interest), clipped to the image.

    Voxel ``n`` covers ``[n - 0.5, n + 0.5]``; a voxel is in the box when any part of it is. Returns None
    when the region misses the image.
    """
    box = []
    for axis in range(3):
        values = [float(p[axis]) for p in corners_ijk]
        start = int(math.floor(min(values) + 0.5)) - margin
        end = int(math.ceil(max(values) + 0.5)) + margin
        start, end = max(start, 0), min(end, int(dimensions[axis]))
        if end <= start:
            return None
        box.append((start, end))
    return (box[0][0], box[1][0], box[2][0], box[0][1], box[1][1], box[2][1])


def missing_requirements(find_spec: Callable[[str], object] = importlib.util.find_spec,
                         requirements: Optional[Mapping[str, str]] = None) -> List[str]:
    """pip requirements (of the engine and the module) that this Python lacks; torch is left to the PyTorch
    extension."""
    if requirements is None:
        requirements = dict(ENGINE_REQUIREMENTS, **MODULE_REQUIREMENTS)
    missing = []
    for module, requirement in requirements.items():
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(requirement)
    return missing


def new_run_folder(model_folder: str, now: Optional[datetime.datetime] = None) -> str:
    """A fresh folder for one training inside the model folder: ``<model folder>/run-YYYYmmdd-HHMMSS``."""
    now = now or datetime.datetime.now()
    base = os.path.join(model_folder, now.strftime("run-%Y%m%d-%H%M%S"))
    path, n = base, 2
    while os.path.exists(path):
        path = f"{base}-{n}"
        n += 1
    return path


def model_file_in(folder: str) -> str:
    """The model file that ``train --output folder`` writes."""
    return os.path.join(folder, MODEL_FILE_NAME)


def default_model_folder(app_local_data: Optional[str], home: str) -> str:
    """Where models go unless the user chooses a folder: ``<app local data>/SemiSupSeg/models`` (Slicer's own
    per-user data folder: local, never Documents, which on Windows is often redirected to a cloud-synced
    folder where replacing a checkpoint by a rename can fail); the home folder when Qt gives none."""
    return os.path.join(app_local_data or os.path.join(home, ".semisupseg"), "SemiSupSeg", "models")


def imported_model_folder(model_folder: str, source: str, now: Optional[datetime.datetime] = None) -> str:
    """A fresh folder in the model folder for a model file someone gave you: ``imported-<name>-YYYYmmdd-HHMMSS``."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(os.path.basename(source))[0]).strip("_") or "model"
    now = now or datetime.datetime.now()
    base = os.path.join(model_folder, f"imported-{stem}-" + now.strftime("%Y%m%d-%H%M%S"))
    path, n = base, 2
    while os.path.exists(path):
        path = f"{base}-{n}"
        n += 1
    return path


def device_problem(device: str, torch_version: Optional[str], system: str, machine: str,
                   has_nvidia_driver: bool) -> Optional[str]:
    """One sentence when the chosen device cannot be there, known before a job starts (from the platform, the
    installed torch build and the NVIDIA driver's ``nvidia-smi``, without importing torch); None otherwise
    (``auto`` always works: the engine falls back to the CPU)."""
    if device.startswith("cuda"):
        if system == "Darwin":
            return "CUDA does not exist on macOS: choose the device auto, mps or cpu."
        if torch_version and "+cpu" in torch_version:
            return (f"The installed PyTorch {torch_version} is a CPU build: choose the device auto or cpu, or "
                    f"reinstall PyTorch with CUDA in the PyTorch Utils module.")
        if not has_nvidia_driver:
            return "No NVIDIA driver was found on this computer (no nvidia-smi): choose the device auto or cpu."
    if device == "mps" and (system != "Darwin" or machine.lower() not in ("arm64", "aarch64")):
        return "Apple's MPS exists only on Macs with Apple silicon: choose the device auto or cpu."
    return None
