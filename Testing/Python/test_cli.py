"""``semisupseg train | segment | evaluate | info`` end to end on tiny phantoms, progress as JSON lines, and bad
input: exit code 2, one line on stderr naming the file, no output written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import only_line, write_image, write_manifest_json

from SemiSupSegTraining import __version__
from SemiSupSegTraining.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _json_lines(text):
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert events and all(isinstance(e, dict) and "event" in e for e in events)
    return events


def _image(folder, case):
    return os.path.join(folder, "images", f"{case}.nii.gz")


def _label(folder, case):
    return os.path.join(folder, "labels", f"{case}.nii.gz")


# --------------------------------------------------------------------------------------- end to end

def test_train_writes_the_model_file(trained_model):
    assert trained_model["exit_code"] == 0
    files = set(os.listdir(trained_model["output"]))
    assert {"model.pt", "checkpoint.pt", "config.json", "log.jsonl"} <= files
    assert ".lock" not in files and not [f for f in files if "partial" in f]
    with open(os.path.join(trained_model["output"], "config.json")) as f:
        config = json.load(f)
    assert config["preset"] == "tiny" and config["iterations"] == 2 and config["device"] == "cpu"


def test_segment_then_evaluate(tmp_path, trained_model, phantom_dataset, capsys):
    folder = phantom_dataset["folder"]
    output = str(tmp_path / "phantom002.nii.gz")
    code = main(["segment", "--model", trained_model["model"], "--input", _image(folder, "phantom002"),
                 "--output", output, "--device", "cpu", "--progress", "none"])
    assert code == 0 and os.path.isfile(output)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(output))
    assert labels.shape == (16, 32, 32) and set(np.unique(labels)) <= {0, 1}
    capsys.readouterr()

    code = main(["evaluate", "--prediction", output, "--reference", _label(folder, "phantom002"),
                 "--model", trained_model["model"], "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    metrics = result["classes"]["left atrium"]
    assert 0.0 <= metrics["dice"] <= 1.0 and 0.0 <= metrics["jaccard"] <= metrics["dice"]

    # Without classes, every value found is a class; the reference against itself is perfect.
    reference = _label(folder, "phantom002")
    assert main(["evaluate", "--prediction", reference, "--reference", reference, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classes"]["label 1"]["dice"] == 1.0 and result["classes"]["label 1"]["hd95_mm"] == 0.0

    assert main(["evaluate", "--prediction", output, "--reference", reference]) == 0
    table = capsys.readouterr().out
    assert "Dice" in table and "mean" in table


def test_slicer_segmentation_file_output_evaluates_by_segment_name(tmp_path, trained_model, phantom_dataset,
                                                                   capsys):
    folder = phantom_dataset["folder"]
    as_labels, as_segments = str(tmp_path / "p.nii.gz"), str(tmp_path / "p.seg.nrrd")
    for output in (as_labels, as_segments):
        assert main(["segment", "--model", trained_model["model"], "--input", _image(folder, "phantom002"),
                     "--output", output, "--device", "cpu", "--progress", "none"]) == 0
    capsys.readouterr()
    # No model given: the classes come from the segmentation file's segment names.
    assert main(["evaluate", "--prediction", as_segments, "--reference", _label(folder, "phantom002"),
                 "--json"]) == 0
    by_segments = json.loads(capsys.readouterr().out)["classes"]
    assert main(["evaluate", "--prediction", as_labels, "--reference", _label(folder, "phantom002"),
                 "--model", trained_model["model"], "--json"]) == 0
    by_values = json.loads(capsys.readouterr().out)["classes"]
    assert list(by_segments) == ["left atrium"]
    assert by_segments["left atrium"]["dice"] == by_values["left atrium"]["dice"]


def test_evaluate_a_model_on_a_manifest(trained_model, phantom_dataset, capsys):
    code = main(["evaluate", "--model", trained_model["model"], "--manifest", phantom_dataset["test"],
                 "--device", "cpu", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in report["cases"]] == ["phantom002"]
    dice = report["cases"][0]["classes"]["left atrium"]["dice"]
    assert 0.0 <= dice <= 1.0
    assert report["mean"]["left atrium"]["dice"]["mean"] == pytest.approx(dice)


def test_train_progress_as_json_lines(tmp_path, phantom_dataset, capsys):
    output = str(tmp_path / "run")
    code = main(["train", "--manifest", phantom_dataset["train"], "--output", output, "--preset", "tiny",
                 "--iterations", "2", "--device", "cpu", "--progress", "json"])
    captured = capsys.readouterr()
    assert code == 0
    events = _json_lines(captured.out)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    start, done = events[0], events[-1]
    assert start["phase"] == "train" and start["total"] == 2
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["iteration"] for e in progress] == [1, 2]
    assert all(e["total"] == 2 and "elapsed_s" in e and "eta_s" in e for e in progress)
    assert all(np.isfinite(e["losses"]["loss"]) for e in progress)
    assert done["model"] == os.path.join(output, "model.pt") and os.path.isfile(done["model"])
    assert captured.err == ""


def test_segment_progress_as_json_lines(tmp_path, trained_model, phantom_dataset, capsys):
    output = str(tmp_path / "labels.nrrd")
    code = main(["segment", "--model", trained_model["model"], "--input",
                 _image(phantom_dataset["folder"], "phantom000"), "--output", output, "--device", "cpu",
                 "--progress", "json"])
    assert code == 0
    events = _json_lines(capsys.readouterr().out)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds
    assert events[-1]["output"] == output
    last = [e for e in events if e["event"] == "progress"][-1]
    assert last["iteration"] == last["total"]


def test_info(trained_model, capsys):
    assert main(["info", "--model", trained_model["model"]]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["preset"] == "tiny" and meta["engine_version"] == __version__
    assert main(["info", "--preset", "tiny"]) == 0
    assert json.loads(capsys.readouterr().out)["patch_size"] == [32, 32, 16]


def test_info_writes_the_metadata_file_of_an_older_model(trained_model, capsys, tmp_path):
    import shutil

    from SemiSupSegTraining.modelinfo import read_metadata_file

    older = str(tmp_path / "model.pt")
    shutil.copy(trained_model["model"], older)  # a model file without model.json, as before
    assert main(["info", "--model", older, "--write-metadata"]) == 0
    assert read_metadata_file(older) == json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------------------------------- bad input

def _assert_bad_input(code, captured, *names):
    assert code == 2
    line = only_line(captured.err)
    assert line.startswith("semisupseg: error:")
    for name in names:
        assert name in line, f"{name} not named in {line!r}"
    assert "Traceback" not in captured.err + captured.out


def _garbage(path):
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(1000))
    return str(path)


def test_segment_unreadable_input(tmp_path, tiny_model_file, capsys):
    bad = _garbage(tmp_path / "scan.nii.gz")
    output = str(tmp_path / "labels.nii.gz")
    code = main(["segment", "--model", tiny_model_file, "--input", bad, "--output", output,
                 "--probabilities", str(tmp_path / "p.nii.gz"), "--device", "cpu", "--progress", "none"])
    _assert_bad_input(code, capsys.readouterr(), bad)
    assert os.listdir(tmp_path) == ["scan.nii.gz"]


def test_segment_truncated_input(tmp_path, tiny_model_file, capsys):
    whole = write_image(np.random.default_rng(0).normal(size=(16, 32, 32)).astype(np.float32),
                        str(tmp_path / "whole.nii.gz"))
    cut = str(tmp_path / "cut.nii.gz")
    with open(whole, "rb") as f, open(cut, "wb") as g:
        data = f.read()
        g.write(data[: len(data) // 2])
    output = str(tmp_path / "labels.nii.gz")
    code = main(["segment", "--model", tiny_model_file, "--input", cut, "--output", output, "--device", "cpu",
                 "--progress", "none"])
    _assert_bad_input(code, capsys.readouterr(), cut)
    assert not os.path.exists(output)


def test_segment_2d_input(tmp_path, tiny_model_file, capsys):
    path = str(tmp_path / "slice.nrrd")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.float32)), path)
    output = str(tmp_path / "labels.nii.gz")
    code = main(["segment", "--model", tiny_model_file, "--input", path, "--output", output, "--device", "cpu",
                 "--progress", "none"])
    _assert_bad_input(code, capsys.readouterr(), path)
    assert not os.path.exists(output)


def test_segment_missing_model(tmp_path, phantom_dataset, capsys):
    model = str(tmp_path / "missing.pt")
    output = str(tmp_path / "labels.nii.gz")
    code = main(["segment", "--model", model, "--input", _image(phantom_dataset["folder"], "phantom000"),
                 "--output", output, "--device", "cpu", "--progress", "none"])
    _assert_bad_input(code, capsys.readouterr(), model)
    assert not os.path.exists(output)


def test_segment_with_a_garbage_model_file(tmp_path, phantom_dataset, capsys):
    model = _garbage(tmp_path / "model.pt")
    output = str(tmp_path / "labels.nii.gz")
    code = main(["segment", "--model", model, "--input", _image(phantom_dataset["folder"], "phantom000"),
                 "--output", output, "--device", "cpu", "--progress", "json"])
    captured = capsys.readouterr()
    _assert_bad_input(code, captured, model)
    error = _json_lines(captured.out)[-1]
    assert error["event"] == "error" and error["exit_code"] == 2 and model in error["message"]
    assert not os.path.exists(output)


def test_segment_to_an_unknown_format(tmp_path, tiny_model_file, phantom_dataset, capsys):
    output = str(tmp_path / "labels.xyz")
    code = main(["segment", "--model", tiny_model_file, "--input", _image(phantom_dataset["folder"], "phantom000"),
                 "--output", output, "--device", "cpu", "--progress", "none"])
    _assert_bad_input(code, capsys.readouterr(), output)
    assert os.listdir(tmp_path) == []


def test_train_manifest_not_json(tmp_path, capsys):
    manifest = write_manifest_json(str(tmp_path / "manifest.json"), "{'cases': [")
    output = str(tmp_path / "run")
    code = main(["train", "--manifest", manifest, "--output", output, "--preset", "tiny", "--device", "cpu",
                 "--progress", "none"])
    _assert_bad_input(code, capsys.readouterr(), manifest)
    assert not os.path.exists(output) or os.listdir(output) == []


def _one_case_manifest(tmp_path, label_array, label_spacing=(1.0, 1.0, 1.0)):
    write_image(np.random.default_rng(0).normal(size=(16, 32, 32)).astype(np.float32),
                str(tmp_path / "image.nii.gz"))
    label = write_image(label_array, str(tmp_path / "label.nii.gz"), label_spacing)
    manifest = write_manifest_json(str(tmp_path / "manifest.json"), {
        "classes": [{"value": 0, "name": "background"}, {"value": 1, "name": "organ"}],
        "cases": [{"id": "c1", "image": "image.nii.gz", "label": "label.nii.gz"}]})
    return manifest, label


@pytest.mark.parametrize("problem", ["all-zero", "off-grid", "unknown-value"])
def test_train_bad_label(tmp_path, capsys, problem):
    label_array = np.zeros((16, 32, 32), np.uint8)
    spacing = (1.0, 1.0, 1.0)
    if problem != "all-zero":
        label_array[4:8, 10:20, 10:20] = 1 if problem == "off-grid" else 3
    if problem == "off-grid":
        spacing = (1.0, 1.0, 2.0)
    manifest, label = _one_case_manifest(tmp_path, label_array, spacing)
    output = str(tmp_path / "run")
    code = main(["train", "--manifest", manifest, "--output", output, "--preset", "tiny", "--device", "cpu",
                 "--progress", "none"])
    _assert_bad_input(code, capsys.readouterr(), label)
    assert not os.path.exists(output) or os.listdir(output) == []


def test_evaluate_files_on_different_grids(tmp_path, capsys):
    array = np.zeros((8, 8, 8), np.uint8)
    array[2:5, 2:5, 2:5] = 1
    prediction = write_image(array, str(tmp_path / "prediction.nii.gz"), (1.0, 1.0, 1.0))
    reference = write_image(array, str(tmp_path / "reference.nii.gz"), (1.0, 1.0, 3.0))
    code = main(["evaluate", "--prediction", prediction, "--reference", reference, "--json"])
    captured = capsys.readouterr()
    _assert_bad_input(code, captured, prediction)
    assert captured.out == ""


def test_module_entry_point_reports_bad_input(tmp_path):
    """``python -m SemiSupSegTraining`` (how Slicer runs the engine): exit code 2 and one line on stderr."""
    model = str(tmp_path / "absent.pt")
    output = str(tmp_path / "labels.nii.gz")
    result = subprocess.run([sys.executable, "-m", "SemiSupSegTraining", "segment", "--model", model, "--input",
                             str(tmp_path / "scan.nii.gz"), "--output", output, "--device", "cpu",
                             "--progress", "none"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    line = only_line(result.stderr)
    assert line.startswith("semisupseg: error:") and model in line
    assert not os.path.exists(output)


# --------------------------------------------------------------------------------------- which method trains

def test_the_default_trains_labels_alone_and_the_papers_presets_and_the_demo_train_the_paper(tmp_path, monkeypatch):
    from SemiSupSegTraining import demo
    from SemiSupSegTraining.config import DEFAULT_METHOD, TrainConfig, preset_config, preset_method

    assert DEFAULT_METHOD == "supervised"  # the rule's choice on the fair tables (docs/benchmarks.md)
    assert TrainConfig().method == DEFAULT_METHOD
    assert preset_config("cpu-fast").method == preset_method("cpu-fast") == DEFAULT_METHOD
    assert [preset_config(p).method for p in ("paper", "pancreas", "tiny", "demo")] == ["ours"] * 4
    assert [preset_method(p) for p in ("paper", "pancreas", "tiny", "demo")] == ["ours"] * 4
    assert preset_config("paper", {"method": "supervised"}).method == "supervised"  # --set wins over the preset
    seen = []

    class Stop(Exception):
        pass

    def record(manifest, output, config, progress=None):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(demo, "train", record)
    with pytest.raises(Stop):
        demo.run_demo(str(tmp_path / "demo"), iterations=1, device="cpu", progress="none")
    assert seen[0].method == "ours" and seen[0].preset == "demo"
