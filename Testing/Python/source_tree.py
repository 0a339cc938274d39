"""The repository's Python files as packaging must ship them, and copies of the source tree with an extra
subpackage: the packaging tests build from such a copy, so that a subpackage that does not exist yet is
proven to ship too, without touching the checkout."""

import os
import shutil
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINE = "SemiSupSegTraining"
PROBE = "packaging_probe"   # the extra subpackage, two levels deep


def python_files(folder: str) -> List[str]:
    """Every ``.py`` file below ``folder``, as sorted '/'-separated paths relative to it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        found += [os.path.relpath(os.path.join(dirpath, f), folder).replace(os.sep, "/")
                  for f in filenames if f.endswith(".py")]
    return sorted(found)


def copy_with_probe(destination: str, *names: str) -> str:
    """Copies ``names`` (files and folders of the repository root) into ``destination`` and adds the
    subpackage ``SemiSupSegTraining/packaging_probe/`` with a sub-subpackage; returns ``destination``."""
    os.makedirs(destination, exist_ok=True)
    for name in names:
        source, target = os.path.join(ROOT, name), os.path.join(destination, name)
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(source, target)
    inner = os.path.join(destination, ENGINE, PROBE, "inner")
    os.makedirs(inner)
    for path in (os.path.join(inner, "..", "__init__.py"), os.path.join(inner, "__init__.py"),
                 os.path.join(inner, "step.py")):
        with open(path, "w", encoding="utf-8") as f:
            f.write('"""A subpackage made by a packaging test."""\n')
    return destination
