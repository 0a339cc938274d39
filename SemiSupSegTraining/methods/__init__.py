"""The training methods, one file each behind one interface (:class:`.base.Method`), found by name here.

A method is one file with a :class:`~.base.Method` subclass plus one line in :data:`REGISTRY`
(docs/development.md shows one). This file imports no torch: the settings (``config.py``) read the names.
"""

import importlib
from typing import Tuple

#: method name -> "module:Class" in this package (imported only when the method trains)
REGISTRY = {
    "ours": "ours:Ours",
    "supervised": "supervised:Supervised",
    "reference": "supervised:Reference",
    "mean-teacher": "mean_teacher:MeanTeacher",
    "ua-mt": "mean_teacher:UAMT",
    "cps": "cps:CPS",
    "bcp": "bcp:BCP",
}

METHODS: Tuple[str, ...] = tuple(REGISTRY)


def method_class(name: str):
    """The :class:`~.base.Method` subclass registered as ``name`` (KeyError for an unknown name)."""
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def create(config):
    """The method ``config.method`` for the settings ``config``."""
    return method_class(config.method)(config)
