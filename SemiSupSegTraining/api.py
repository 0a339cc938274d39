"""The Python API in one place, for scripts and notebooks::

    from SemiSupSegTraining import api

    config = api.preset_config("cpu-fast", {"iterations": 800})
    model = api.train("cases/manifest.json", "runs/la", config)
    api.segment_file(model, "new/patient42.nii.gz", "new/patient42-seg.nii.gz")
    print(api.evaluate_files("new/patient42-seg.nii.gz", "new/patient42-label.nii.gz"))
    print(api.suggest_cases(model, "cases/manifest.json")[0].id)   # the unlabeled case to label next

(Kept out of the package's ``__init__`` so that importing the light modules, as the Slicer module does,
never imports torch.)
"""

from .config import TrainConfig, preset_config
from .fileio import read_image, read_label, Volume, write_label_image
from .geometry import Geometry
from .errors import Cancelled, InputError
from .evaluation import evaluate_files, evaluate_model
from .infer import Segmentation, Segmenter, segment_file
from .manifest import CaseEntry, ClassInfo, Manifest, default_classes, load_manifest, write_manifest
from .metrics import evaluate, summarize
from .modelfile import load_model, read_metadata
from .phantoms import make_phantom, write_phantom_dataset
from .suggest import CaseScore, suggest_cases
from .train import train

__all__ = [
    "TrainConfig", "preset_config", "Geometry", "Volume", "read_image", "read_label", "write_label_image",
    "Cancelled", "InputError", "evaluate_files", "evaluate_model", "Segmentation", "Segmenter", "segment_file",
    "CaseEntry", "ClassInfo", "Manifest", "default_classes", "load_manifest", "write_manifest", "evaluate",
    "summarize", "load_model", "read_metadata", "make_phantom", "write_phantom_dataset", "train", "CaseScore",
    "suggest_cases",
]
