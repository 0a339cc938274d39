"""Puts the Slicer module's folder on sys.path so that tests can import its plain-Python pieces
(``SemiSupSegLib.commands``, ``.progress``, ``.job``, ``.cases``, ``.labels``) without Slicer."""

import os
import sys

_MODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "SemiSupSeg")
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)


# ----------------------------------------------------------------------------- engine test fixtures
# (The engine's shared helpers live in helpers.py beside this file.)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    """A model file of two tiny untrained networks (2 classes, 32×32×16 windows, z-score)."""
    from helpers import make_model_file

    return make_model_file(str(tmp_path_factory.mktemp("tiny_model") / "model.pt"))


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory):
    """Three small phantoms: one labeled and one unlabeled training case, one test case."""
    from SemiSupSegTraining.phantoms import write_phantom_dataset

    folder = tmp_path_factory.mktemp("phantoms")
    train_manifest, test_manifest = write_phantom_dataset(str(folder), labeled=1, unlabeled=1, test=1,
                                                          shape_zyx=(16, 32, 32))
    return {"folder": str(folder), "train": train_manifest, "test": test_manifest}


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, phantom_dataset):
    """``semisupseg train --preset tiny --iterations 2`` on the phantoms: its exit code and folder."""
    from SemiSupSegTraining.cli import main

    output = str(tmp_path_factory.mktemp("trained"))
    code = main(["train", "--manifest", phantom_dataset["train"], "--output", output, "--preset", "tiny",
                 "--iterations", "2", "--device", "cpu", "--progress", "none"])
    return {"exit_code": code, "output": output, "model": os.path.join(output, "model.pt")}
