"""*Try with demo cases*: the engine's synthetic phantoms as cases, made here, without any download.

Plain Python (numpy, SimpleITK and scipy, which Slicer ships; no torch): tested with pytest.
"""

import os
from typing import Tuple

#: How many demo cases: two labeled, the rest unlabeled (the semi-supervised setting), each 64×64×48 voxels.
DEMO_LABELED, DEMO_UNLABELED = 2, 4
DEMO_PRESET = "demo"
DEMO_STRUCTURE = "left atrium"


def write_demo_cases(folder: str, labeled: int = DEMO_LABELED, unlabeled: int = DEMO_UNLABELED,
                     seed: int = 0) -> Tuple[str, str]:
    """Writes the phantom cases into ``folder`` (``images/``, ``labels/``, ``train.json``); returns (the
    manifest path, the preset that trains them in minutes on a CPU). A folder written before is reused."""
    manifest = os.path.join(folder, "train.json")
    if not os.path.isfile(manifest):
        from SemiSupSegTraining.phantoms import write_phantom_dataset

        manifest = write_phantom_dataset(folder, labeled=labeled, unlabeled=unlabeled, test=0, seed=seed,
                                         extension=".nrrd")[0]
    return manifest, DEMO_PRESET
