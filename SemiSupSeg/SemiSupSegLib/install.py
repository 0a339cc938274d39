"""The pip arguments the module runs: installs that never touch the torch and numpy Slicer already has.

The PyTorch extension installs torch (a CPU or a CUDA build matched to the driver), Slicer ships numpy; an
unpinned ``pip install monai`` may replace either (monai 1.6 needs torch >= 2.8, so pip would upgrade an
older torch, perhaps to a CUDA build of gigabytes). So every install passes the installed torch and numpy
as pip *constraints* (``-c FILE`` with ``torch==X`` and ``numpy==Y``: pip may not change them, and fails
with a message instead), and asks for a monai range that supports them, read from each release's package
metadata (``Requires-Python``, ``Requires-Dist``). Plain Python, no slicer: tested with pytest.
"""

import os
import sys
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

#: The oldest monai the engine works with.
MONAI_MINIMUM = "1.2"


@dataclass(frozen=True)
class MonaiRelease:
    """What one monai release requires (its wheel's METADATA); ``None``: no bound."""

    version: str
    python_min: str
    torch_min: str
    torch_below: Optional[str] = None
    numpy_min: str = "1.20"
    numpy_below: Optional[str] = None


#: monai releases newest first, from ``pip download --no-deps monai==X`` and their METADATA.
MONAI_RELEASES: Tuple[MonaiRelease, ...] = (
    MonaiRelease("1.6.1", "3.10", "2.8.0", numpy_min="1.24", numpy_below="3.0"),
    MonaiRelease("1.6.0", "3.10", "2.8.0", numpy_min="1.24", numpy_below="3.0"),
    MonaiRelease("1.5.2", "3.9", "2.4.1", numpy_min="1.24", numpy_below="3.0"),
    MonaiRelease("1.5.1", "3.9", "2.4.1", numpy_min="1.24", numpy_below="3.0"),
    MonaiRelease("1.5.0", "3.9", "2.4.1", torch_below="2.7.0", numpy_min="1.24", numpy_below="3.0"),
    MonaiRelease("1.4.0", "3.9", "1.9", numpy_min="1.24", numpy_below="2.0"),
    MonaiRelease("1.3.2", "3.8", "1.9"),
    MonaiRelease("1.3.0", "3.8", "1.9"),
    MonaiRelease("1.2.0", "3.8", "1.9"),
)


def version_tuple(text: str) -> Tuple[int, ...]:
    """``"2.1.0+cu118"`` -> ``(2, 1, 0)``; ``"2.4.0a0"`` -> ``(2, 4, 0)`` (enough for these bounds)."""
    numbers = []
    for part in text.split("+")[0].split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def _fits(release: MonaiRelease, python: str, torch: str, numpy: str) -> bool:
    def within(value: str, low: str, below: Optional[str]) -> bool:
        v = version_tuple(value)
        return v >= version_tuple(low) and (below is None or v < version_tuple(below))

    return (within(python, release.python_min, None) and within(torch, release.torch_min, release.torch_below)
            and within(numpy, release.numpy_min, release.numpy_below))


def monai_requirement(python: str, torch: str, numpy: str,
                      releases: Sequence[MonaiRelease] = MONAI_RELEASES) -> Optional[str]:
    """The monai requirement for this Python, torch and numpy: from the engine's minimum up to the newest
    release that fits (no upper bound when the newest known release fits: the constraints still hold torch
    and numpy); None when no release fits."""
    fitting = [r for r in releases if _fits(r, python, torch, numpy)
               and version_tuple(r.version) >= version_tuple(MONAI_MINIMUM)]
    if not fitting:
        return None
    newest = fitting[0]
    index = list(releases).index(newest)
    if index == 0:
        return f"monai>={MONAI_MINIMUM}"
    return f"monai>={MONAI_MINIMUM},<{releases[index - 1].version}"


def no_monai_message(python: str, torch: str, numpy: str) -> str:
    """The one sentence for a torch that no monai release supports."""
    return (f"No MONAI release supports the installed PyTorch {torch} with numpy {numpy} on Python {python}: "
            f"in the PyTorch Utils module uninstall PyTorch, install it again with the version requirement "
            f"'>=2.4.1' (MONAI 1.5 supports torch 2.4.1 and later), restart Slicer and try again.")


def constraints_text(torch: Optional[str], numpy: Optional[str]) -> str:
    """A pip constraints file that holds torch and numpy at their installed versions (those installed)."""
    return "".join(f"{name}=={version}\n" for name, version in (("torch", torch), ("numpy", numpy)) if version)


def pip_arguments(requirements: Sequence[str], constraints_file: str) -> List[str]:
    """The list for ``slicer.util.pip_install(requirements)`` (Slicer 5.8: a string or a list of pip
    arguments after ``install``)."""
    return list(requirements) + ["-c", constraints_file]


def install_plan(missing: Sequence[str], python: str, torch: str, numpy: str
                 ) -> Tuple[List[str], Optional[str]]:
    """(requirements to install, or [] with the sentence why not): ``missing`` are pip requirements of
    :func:`commands.missing_requirements`; a plain ``monai`` requirement is replaced by the range that
    supports the installed torch and numpy."""
    out = []
    for requirement in missing:
        if requirement.split(">")[0].split("=")[0].split("<")[0].strip().lower() == "monai":
            chosen = monai_requirement(python, torch, numpy)
            if chosen is None:
                return [], no_monai_message(python, torch, numpy)
            requirement = chosen
        out.append(requirement)
    return out, None


def installed_versions(version_of: Optional[Callable[[str], str]] = None) -> Mapping[str, Optional[str]]:
    """The installed versions of torch and numpy (None when missing), read from package metadata (no import)."""
    if version_of is None:
        from importlib.metadata import version as version_of
    found = {}
    for name in ("torch", "numpy"):
        try:
            found[name] = version_of(name)
        except Exception:  # PackageNotFoundError
            found[name] = None
    return found


def python_version() -> str:
    return ".".join(str(v) for v in sys.version_info[:3])


def write_constraints(folder: str, torch: Optional[str], numpy: Optional[str]) -> str:
    """Writes the constraints file into ``folder`` and returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "constraints.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(constraints_text(torch, numpy))
    return path


def check_unchanged(before: Mapping[str, Optional[str]], after: Mapping[str, Optional[str]]) -> Optional[str]:
    """After installing: one sentence when torch or numpy changed after all, else None."""
    changed = [f"{name} {before[name]} -> {after.get(name)}" for name in before if before[name] != after.get(name)]
    if not changed:
        return None
    return (f"Installing the engine's packages changed {', '.join(changed)}; restart Slicer, and if PyTorch no "
            f"longer works reinstall it with the PyTorch Utils module.")


def check_torch(version: Optional[str], minimum: str) -> Optional[str]:
    """One sentence when torch is missing or older than ``minimum`` (``">=2.3"`` or ``"2.3"``), else None."""
    minimum = minimum.lstrip(">= ")
    if version is None:
        return ("PyTorch is not installed: install the 'PyTorch' extension in the Extensions Manager, restart "
                "Slicer and try again.")
    if version_tuple(version) < version_tuple(minimum):
        return (f"PyTorch {version} is too old for SemiSupSeg (it needs {minimum} or later): in the PyTorch Utils "
                f"module uninstall it and install it again with the version requirement '>={minimum}'.")
    return None


def platform_refusal(system: str, machine: str, torch_installed: Optional[str]) -> Optional[str]:
    """One sentence, before any download, where no torch this module runs on can be installed: PyTorch
    publishes no macOS x86_64 (Intel Mac) wheels after 2.2.2, below the 2.3 the engine needs. None elsewhere,
    or where a torch is installed already (its version is checked then)."""
    if torch_installed is None and system == "Darwin" and machine.lower() in ("x86_64", "amd64", "i386"):
        return ("PyTorch 2.3 or later, which this module needs, is not published for Intel Macs (the last "
                "macOS x86_64 release is 2.2.2): use a Mac with Apple silicon and the arm64 Slicer, or train "
                "on Windows or Linux and segment there.")
    return None


def offline_message(requirements: Sequence[str], error: BaseException) -> str:
    """One sentence for a failed pip install: what to fetch by hand on a connected machine."""
    return (f"Installing {', '.join(requirements)} failed ({str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__}). "
            f"Without a network connection, download these wheels on a connected machine "
            f"(pip download {' '.join(requirements)} --python-version {python_version()} --only-binary=:all:), "
            f"copy them here and run slicer.util.pip_install(['--no-index', '--find-links', FOLDER] + "
            f"{list(requirements)!r}) in Slicer's Python console.")


#: What the Dependencies section lists: package -> where it comes from.
DEPENDENCIES = (("torch", "the PyTorch extension"), ("numpy", "Slicer"), ("SimpleITK", "Slicer"),
                ("monai", "pip, on first use"), ("scipy", "Slicer or pip"), ("psutil", "pip, on first use"))


def dependency_lines(version_of: Optional[Callable[[str], str]] = None) -> List[str]:
    """One line per package of :data:`DEPENDENCIES`: its installed version, or "not installed" and where it
    comes from (package metadata only: nothing is imported)."""
    if version_of is None:
        from importlib.metadata import version as version_of
    lines = []
    for name, source in DEPENDENCIES:
        try:
            lines.append(f"{name} {version_of(name)}")
        except Exception:  # PackageNotFoundError
            lines.append(f"{name}: not installed ({source})")
    return lines
