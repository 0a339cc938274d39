"""``train --validate K``: the last K labeled cases never enter training, the trained model segments them, and
their Dice (validation.json, the model file, the ``validation`` event) is the Dice of that segmentation."""

import json
import os
import shutil
import threading

import helpers
import numpy as np
import pytest
import torch
from SemiSupSegLib import progress

from SemiSupSegTraining import train as training
from SemiSupSegTraining.cli import main
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.errors import EXIT_BAD_INPUT, Cancelled
from SemiSupSegTraining.infer import segment_file
from SemiSupSegTraining.manifest import load_manifest, write_manifest
from SemiSupSegTraining.modelfile import read_metadata

ITERATIONS = 6
HELD_OUT = "phantom002"  # the last of the three labeled cases in manifest order


def _config(validate=0):
    return preset_config("tiny", {"iterations": ITERATIONS, "device": "cpu", "checkpoint_every": 2,
                                  "validate_cases": validate})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three labeled phantoms and one unlabeled one (train.json), and the same manifest without phantom002."""
    from SemiSupSegTraining.phantoms import write_phantom_dataset

    folder = str(tmp_path_factory.mktemp("validate"))
    full, _ = write_phantom_dataset(folder, labeled=3, unlabeled=1, test=0, shape_zyx=(16, 32, 32))
    manifest = load_manifest(full)
    assert [c.id for c in manifest.labeled_cases][-1] == HELD_OUT
    manifest.cases = [c for c in manifest.cases if c.id != HELD_OUT]
    without = write_manifest(manifest, os.path.join(folder, "without.json"))
    return {"full": full, "without": without, "folder": folder}


@pytest.fixture(scope="module")
def validated_run(dataset, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("validated"))
    events = []
    model = training.train(dataset["full"], folder, _config(validate=1), progress="none", callback=events.append)
    return {"model": model, "folder": folder, "events": events}


@pytest.fixture(scope="module")
def run_without(dataset, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("without"))
    return training.train(dataset["without"], folder, _config(), progress="none")


def _weights(path):
    data = torch.load(path, map_location="cpu", weights_only=True)
    return {f"{net}.{name}": t for net in ("weights_a", "weights_b") for name, t in data[net].items()}


def _assert_same_training(model, reference):
    """Bit-equal weights and the same grid: any crop, label or header of the held-out case in training (as a
    labeled or an unlabeled case, or in the target spacing) would change them."""
    a, b = _weights(model), _weights(reference)
    assert a.keys() == b.keys()
    assert not [name for name in a if not torch.equal(a[name], b[name])]
    meta, ref = read_metadata(model), read_metadata(reference)
    assert meta["geometry"] == ref["geometry"]
    assert (meta["training"]["labeled_cases"], meta["training"]["unlabeled_cases"]) == (2, 1)


def test_held_out_cases_never_enter_training(validated_run, run_without):
    _assert_same_training(validated_run["model"], run_without)
    start = validated_run["events"][0]
    assert start["event"] == "start" and "2 labeled, 1 unlabeled" in start["message"] and HELD_OUT in start["message"]


def _dice_by_hand(prediction, reference):
    p, r = prediction > 0, reference > 0
    return 2.0 * np.logical_and(p, r).sum() / (p.sum() + r.sum())


def test_reported_dice_is_the_dice_of_the_trained_model_on_the_held_out_case(dataset, validated_run, tmp_path,
                                                                            capsys):
    entry = next(c for c in load_manifest(dataset["full"]).cases if c.id == HELD_OUT)
    prediction = str(tmp_path / "held-out-seg.nii.gz")
    segment_file(validated_run["model"], entry.image, prediction, device="cpu")
    expected = _dice_by_hand(helpers.read_array(prediction), helpers.read_array(entry.label))
    with open(os.path.join(validated_run["folder"], "validation.json")) as f:
        report = json.load(f)
    assert [c["id"] for c in report["cases"]] == [HELD_OUT]
    assert report["cases"][0]["dice"] == {"left atrium": pytest.approx(expected, abs=1e-9)}
    assert report["mean_dice"] == pytest.approx(expected, abs=1e-9)
    # the same figure in the event (before "done"), in the model file, and in `semisupseg info`
    names = [e["event"] for e in validated_run["events"]]
    assert names[-2:] == ["validation", "done"]
    event = validated_run["events"][-2]
    assert event["mean_dice"] == pytest.approx(expected, abs=1e-9)
    parsed = progress.parse_line(json.dumps(event))  # the Slicer module reads the line the engine prints
    assert parsed.validation_dice == event["mean_dice"] and progress.describe(parsed) == event["message"]
    assert read_metadata(validated_run["model"])["validation"] == report
    capsys.readouterr()
    assert main(["info", "--model", validated_run["model"]]) == 0
    assert json.loads(capsys.readouterr().out)["validation"]["mean_dice"] == pytest.approx(expected, abs=1e-9)


def test_resume_holds_out_the_same_cases(dataset, run_without, tmp_path):
    folder = str(tmp_path / "run")
    stop = threading.Event()

    def on_event(event):
        if event["event"] == "progress" and event["iteration"] == 3:
            stop.set()

    with pytest.raises(Cancelled):
        training.train(dataset["full"], folder, _config(validate=1), progress="none", callback=on_event,
                       cancel_event=stop)
    assert not os.path.exists(os.path.join(folder, "validation.json"))
    moved = str(tmp_path / "moved")
    shutil.copytree(folder, moved)
    model = training.train(None, moved, progress="none", resume=True)
    _assert_same_training(model, run_without)
    with open(os.path.join(moved, "validation.json")) as f:
        assert [c["id"] for c in json.load(f)["cases"]] == [HELD_OUT]


def test_the_command_line_refuses_to_hold_out_every_labeled_case(dataset, tmp_path, capsys):
    output = str(tmp_path / "out")
    code = main(["train", "--manifest", dataset["full"], "--output", output, "--preset", "tiny", "--device", "cpu",
                 "--validate", "3", "--progress", "none"])
    assert code == EXIT_BAD_INPUT
    line = helpers.only_line(capsys.readouterr().err)
    assert "3 labeled case(s) to hold out" in line and "hold out fewer than 3" in line
    assert not os.path.exists(output)
    assert main(["train", "--manifest", dataset["full"], "--output", output, "--preset", "tiny",
                 "--validate", "-1", "--progress", "none"]) == EXIT_BAD_INPUT
    assert "validate_cases is -1" in helpers.only_line(capsys.readouterr().err)
    assert main(["train", "--resume", output, "--validate", "1"]) == EXIT_BAD_INPUT
    assert "drop --validate" in helpers.only_line(capsys.readouterr().err)
