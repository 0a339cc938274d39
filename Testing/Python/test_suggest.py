"""``semisupseg suggest``: the score by hand on a tiny array, and a tiny model trained once on bright spheres
ranking a case it cannot segment (inverted contrast) above the cases it segments well."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
from SemiSupSegTraining.cli import main  # noqa: E402
from SemiSupSegTraining.config import preset_config  # noqa: E402
from SemiSupSegTraining.fileio import write_image_atomic, write_label_image# noqa: E402
from SemiSupSegTraining.geometry import Geometry# noqa: E402
from SemiSupSegTraining.manifest import CaseEntry, Manifest, default_classes, write_manifest  # noqa: E402
from SemiSupSegTraining.suggest import score_probabilities, suggest_cases  # noqa: E402

SHAPE = (16, 32, 32)
CLASSES = default_classes(["sphere"])


def test_score_by_hand():
    p_fg = np.array([0.9, 0.6, 0.2, 0.0], np.float32).reshape(1, 1, 4)
    probabilities = np.stack([1 - p_fg, p_fg])
    labels = (p_fg > 0.5).astype(np.uint8)
    tv = np.array([0.1, 0.4, 0.2, 0.0], np.float32).reshape(1, 1, 4)
    terms = score_probabilities(probabilities, labels, tv)
    # E = 2 (0.9 + 0.6) / (2 + 1.7) = 0.810811; D = 0.7 / 1.7 = 0.411765
    assert terms["dice_error"] == pytest.approx(1 - 3.0 / 3.7, abs=1e-6)
    assert terms["disagreement"] == pytest.approx(0.7 / 1.7, abs=1e-6)
    assert terms["score"] == pytest.approx(0.5 * (1 - 3.0 / 3.7 + 0.7 / 1.7), abs=1e-6)
    assert terms["predicted_voxels"] == 2
    empty = score_probabilities(np.stack([np.ones_like(p_fg), np.zeros_like(p_fg)]), np.zeros_like(labels), tv * 0)
    assert (empty["score"], empty["dice_error"], empty["disagreement"]) == (1.0, 1.0, 1.0)


def _sphere_case(folder, name, seed, labeled=False, invert=False):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    c = np.array(SHAPE) / 2 + rng.uniform(-3, 3, 3)
    inside = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < 7.0 ** 2
    image = np.where(inside, 200.0, 50.0)
    if invert:  # dark sphere on a bright background: nothing the model has seen
        image = 250.0 - image
    image = (image + rng.normal(0, 20, SHAPE)).astype(np.float32)
    geometry = Geometry(SHAPE[::-1], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    image_path, label_path = os.path.join(folder, f"{name}.nii.gz"), os.path.join(folder, f"{name}_label.nii.gz")
    write_image_atomic(geometry.to_image(image), image_path)
    write_label_image(inside.astype(np.uint8), CLASSES, geometry, label_path)
    return CaseEntry(name, image_path, label_path, labeled)


@pytest.fixture(scope="module")
def spheres(tmp_path_factory):
    """A tiny model trained for 30 iterations on two labeled and two unlabeled bright spheres (seconds), and a
    manifest of two unlabeled spheres and an inverted one."""
    from SemiSupSegTraining.train import train

    folder = str(tmp_path_factory.mktemp("spheres"))
    cases = [_sphere_case(folder, "l1", 1, labeled=True), _sphere_case(folder, "l2", 2, labeled=True),
             _sphere_case(folder, "u1", 3), _sphere_case(folder, "u2", 4)]
    train_manifest = write_manifest(Manifest(CLASSES, cases, "MRI"), os.path.join(folder, "train.json"))
    config = preset_config("tiny", {"iterations": 30, "lr": 0.05, "device": "cpu", "checkpoint_every": 1000})
    model = train(train_manifest, os.path.join(folder, "run"), config, progress="none")
    ranked = cases[2:] + [_sphere_case(folder, "inverted", 5, invert=True)]
    manifest = write_manifest(Manifest(CLASSES, ranked, "MRI"), os.path.join(folder, "rank.json"))
    return {"model": model, "manifest": manifest, "train": train_manifest, "folder": folder}


def test_a_case_the_model_cannot_segment_ranks_first(spheres):
    from SemiSupSegTraining.evaluation import evaluate_model

    report = evaluate_model(spheres["model"], spheres["train"], device="cpu")
    dice = {c["id"]: c["classes"]["sphere"]["dice"] for c in report["cases"]}
    assert dice["u1"] > 0.7 and dice["u2"] > 0.7  # the model segments the bright spheres well
    ranking = suggest_cases(spheres["model"], spheres["manifest"], device="cpu")
    assert [s.rank for s in ranking] == [1, 2, 3]
    assert ranking[0].id == "inverted"
    assert ranking[0].score > max(s.score for s in ranking[1:]) + 0.3
    assert all(0.0 <= s.score <= 1.0 for s in ranking)


def test_suggest_command_line_table_json_and_progress(spheres, capsys, tmp_path):
    output = str(tmp_path / "ranking.json")
    assert main(["suggest", "--model", spheres["model"], "--manifest", spheres["manifest"], "--device", "cpu",
                 "--json", "--output", output, "--progress", "none"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [s["id"] for s in printed["ranking"]][0] == "inverted"
    assert json.load(open(output)) == printed
    assert main(["suggest", "--model", spheres["model"], "--manifest", spheres["manifest"], "--device", "cpu",
                 "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["iteration"] for e in progress] == [1, 2, 3] and {e["case"] for e in progress} == {"u1", "u2", "inverted"}
    assert events[-1]["event"] == "done" and events[-1]["ranking"][0]["id"] == "inverted"


def test_suggest_stops_at_the_stop_file_and_refuses_a_manifest_without_unlabeled_cases(spheres, capsys, tmp_path):
    stop = tmp_path / "stop"
    stop.write_text("")
    assert main(["suggest", "--model", spheres["model"], "--manifest", spheres["manifest"], "--device", "cpu",
                 "--progress", "json", "--stop-file", str(stop)]) == 3
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "cancelled" and not any(e["event"] == "progress" for e in events)
    labeled_only = write_manifest(Manifest(CLASSES, [_sphere_case(str(tmp_path), "l", 9, labeled=True)], "MRI"),
                                  str(tmp_path / "labeled.json"))
    assert main(["suggest", "--model", spheres["model"], "--manifest", labeled_only, "--progress", "none"]) == 2
    assert "has no unlabeled cases" in capsys.readouterr().err


def test_suggest_refuses_an_output_it_cannot_write_before_scoring(spheres, capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    output = str(blocker / "ranking.json")  # its folder would have to be a file
    assert main(["suggest", "--model", spheres["model"], "--manifest", spheres["manifest"], "--device", "cpu",
                 "--output", output, "--progress", "json"]) == 2
    captured = capsys.readouterr()
    assert not any(json.loads(line)["event"] == "progress" for line in captured.out.splitlines())
    assert "choose another --output" in captured.err and "Traceback" not in captured.err
