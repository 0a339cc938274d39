"""Pieces of the SemiSupSeg Slicer module.

``commands``, ``progress``, ``job``, ``cases``, ``labels``, ``install`` and ``interfaces`` are plain Python
(no slicer, no qt) and are tested with pytest; ``nodes``, ``parameter_node``, ``logic`` and ``widget`` run
only inside Slicer.

Importing the package puts the engine (``SemiSupSegTraining``) on ``sys.path``: it sits beside the module
file in an installed extension, one folder up in a source checkout.
"""

import os
import sys

from .engine_path import locate_engine

ENGINE_PARENT = locate_engine(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ENGINE_PARENT and ENGINE_PARENT not in sys.path:
    sys.path.append(ENGINE_PARENT)
