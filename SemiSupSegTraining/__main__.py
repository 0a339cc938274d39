"""``python -m SemiSupSegTraining ...`` (also how the Slicer module runs the engine: ``PythonSlicer -m``)."""

import sys

from .cli import main

sys.exit(main())
