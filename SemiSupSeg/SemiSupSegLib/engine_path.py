"""Where the engine package lies, so that the module can put it on ``sys.path`` before anything imports it.

This file imports nothing of the engine: ``SemiSupSegLib/__init__.py`` runs it first.
"""

import os
from typing import List, Optional

ENGINE_PACKAGE = "SemiSupSegTraining"


def engine_candidates(module_dir: str) -> List[str]:
    """Folders that may hold the ``SemiSupSegTraining`` package, best first.

    Installed extension: the package sits beside ``SemiSupSeg.py`` (qt-scripted-modules). Source checkout
    loaded with the Extension Wizard: it sits in the repository root, one level up.
    """
    module_dir = os.path.abspath(module_dir)
    return [module_dir, os.path.dirname(module_dir)]


def locate_engine(module_dir: str) -> Optional[str]:
    """The folder that contains the ``SemiSupSegTraining`` package (to put on sys.path / PYTHONPATH)."""
    for folder in engine_candidates(module_dir):
        if os.path.isfile(os.path.join(folder, ENGINE_PACKAGE, "__init__.py")):
            return folder
    return None
