"""The engine command lines and environment that the Slicer module builds (SemiSupSegLib.commands)."""

import datetime
import os

import pytest
from SemiSupSegLib import commands


def test_train_command_has_every_option_in_the_engine_spelling():
    cmd = commands.train_command("py", manifest="m.json", output="out", preset="tiny", iterations=5,
                                 device="cpu", init_model="old/model.pt")
    assert cmd[:4] == ["py", "-m", "SemiSupSegTraining", "train"]
    assert cmd[4:] == ["--manifest", "m.json", "--output", "out", "--preset", "tiny", "--init-model", "old/model.pt",
                       "--iterations", "5", "--device", "cpu", "--progress", "json"]


def test_train_command_leaves_out_what_is_not_given():
    cmd = commands.train_command("py", manifest="m.json", output="out", iterations=0)
    assert cmd == ["py", "-m", "SemiSupSegTraining", "train", "--manifest", "m.json", "--output", "out",
                   "--progress", "json"]


def test_train_command_holds_out_cases_to_validate():
    cmd = commands.train_command("py", manifest="m.json", output="out", validate=2)
    assert cmd[-4:] == ["--validate", "2", "--progress", "json"]
    assert "--validate" not in commands.train_command("py", manifest="m.json", output="out", validate=0)
    assert "--validate" not in commands.train_command("py", resume="run1", validate=2)  # the folder keeps its own


def test_train_command_sets_the_method_the_engine_trains():
    cmd = commands.train_command("py", manifest="m.json", output="out", method="supervised")
    assert cmd[-4:] == ["--set", "method=supervised", "--progress", "json"]
    assert "--set" not in commands.train_command("py", resume="run1", method="supervised")  # the folder keeps its own


def test_train_resume_command():
    assert commands.train_command("py", resume="run1", device="cuda") == [
        "py", "-m", "SemiSupSegTraining", "train", "--resume", "run1", "--device", "cuda", "--progress", "json"]
    with pytest.raises(ValueError):
        commands.train_command("py", manifest="m.json", resume="run1")


@pytest.mark.parametrize("kwargs", [dict(preset="huge"), dict(device="tpu"), dict(output=None),
                                    dict(method="reference"), dict(method="nnunet")])
def test_train_command_rejects_bad_choices(kwargs):
    args = dict(manifest="m.json", output="out")
    args.update(kwargs)
    with pytest.raises(ValueError):
        commands.train_command("py", **args)


def test_segment_command():
    cmd = commands.segment_command("py", "m.pt", "in.nrrd", "seg.nrrd", uncertainty="u.nrrd", device="cpu",
                                   roi=(1, 2, 3, 10, 20, 30), keep_largest=True)
    assert cmd == ["py", "-m", "SemiSupSegTraining", "segment", "--model", "m.pt", "--input", "in.nrrd",
                   "--output", "seg.nrrd", "--uncertainty", "u.nrrd", "--device", "cpu",
                   "--roi", "1", "2", "3", "10", "20", "30", "--keep-largest", "--progress", "json"]
    assert "--roi" not in commands.segment_command("py", "m.pt", "in.nrrd", "seg.nrrd")
    assert commands.segment_command("py", "m.pt", "in.nrrd", "seg.nrrd", device="cuda:1")[-3] == "cuda:1"
    with pytest.raises(ValueError):
        commands.segment_command("py", "m.pt", "in.nrrd", "seg.nrrd", roi=(5, 0, 0, 5, 9, 9))


def test_every_long_command_passes_the_stop_file():
    stop = commands.stop_file_in(os.path.join("tmp", "SemiSupSeg-train-1"))
    assert stop == os.path.join("tmp", "SemiSupSeg-train-1", "stop-request")
    train = commands.train_command("py", manifest="m.json", output="out", stop_file=stop)
    assert train[-4:] == ["--progress", "json", "--stop-file", stop]
    segment = commands.segment_command("py", "m.pt", "in.nrrd", "seg.nrrd", stop_file=stop)
    assert segment[-4:] == ["--progress", "json", "--stop-file", stop]
    assert commands.suggest_command("py", "m.pt", "m.json", device="cpu", stop_file=stop) == [
        "py", "-m", "SemiSupSegTraining", "suggest", "--model", "m.pt", "--manifest", "m.json", "--device", "cpu",
        "--progress", "json", "--stop-file", stop]


def test_roi_index_box_covers_every_touched_voxel_and_clips():
    corners = [(x, y, z) for x in (1.2, 4.6) for y in (-3.0, 2.4) for z in (0.0, 0.0)]
    # x: voxels 1..5 (4.6 is inside voxel 5), y: clipped to 0..2, z: the plane through voxel 0's center
    assert commands.roi_index_box(corners, (10, 10, 10)) == (1, 0, 0, 6, 3, 1)
    assert commands.roi_index_box(corners, (10, 10, 10), margin=1) == (0, 0, 0, 7, 4, 2)
    assert commands.roi_index_box([(20, 20, 20), (30, 30, 30)], (10, 10, 10)) is None


def test_find_python_slicer_prefers_path_then_beside_executable(tmp_path):
    assert commands.find_python_slicer(which=lambda name: "/opt/Slicer/bin/PythonSlicer") == \
        "/opt/Slicer/bin/PythonSlicer"
    exe = tmp_path / "python-real"
    exe.write_text("")
    (tmp_path / "PythonSlicer").write_text("")
    assert commands.find_python_slicer(which=lambda name: None, executable=str(exe), os_name="posix") == \
        str(tmp_path / "PythonSlicer")
    plain = tmp_path / "elsewhere" / "python3"
    assert commands.find_python_slicer(which=lambda name: None, executable=str(plain)) == str(plain)


def test_inside_slicer_only_python_slicer_will_do(tmp_path):
    slicer_exe = tmp_path / "bin" / "SlicerApp-real"  # what sys.executable may be inside Slicer
    with pytest.raises(RuntimeError, match="PythonSlicer was found neither on PATH nor in .*reinstall"):
        commands.find_python_slicer(which=lambda name: None, executable=str(slicer_exe), os_name="posix",
                                    inside_slicer=True)
    with pytest.raises(RuntimeError, match=r"PythonSlicer\.exe"):
        commands.find_python_slicer(which=lambda name: None, executable=str(slicer_exe), os_name="nt",
                                    inside_slicer=True)


def test_the_default_model_folder_is_in_the_application_data_not_documents():
    local = os.path.join("C:", "Users", "ann", "AppData", "Local", "NA-MIC", "Slicer")
    assert commands.default_model_folder(local, "home") == os.path.join(local, "SemiSupSeg", "models")
    assert commands.default_model_folder("", "home") == os.path.join("home", ".semisupseg", "SemiSupSeg", "models")


def test_locate_engine_installed_and_source_layouts(tmp_path):
    installed = tmp_path / "qt-scripted-modules"
    (installed / "SemiSupSegTraining").mkdir(parents=True)
    (installed / "SemiSupSegTraining" / "__init__.py").write_text("")
    assert commands.locate_engine(str(installed)) == str(installed)
    checkout = tmp_path / "repo"
    (checkout / "SemiSupSeg").mkdir(parents=True)
    (checkout / "SemiSupSegTraining").mkdir()
    (checkout / "SemiSupSegTraining" / "__init__.py").write_text("")
    assert commands.locate_engine(str(checkout / "SemiSupSeg")) == str(checkout)
    assert commands.locate_engine(str(tmp_path / "nowhere" / "x")) is None
    # the real repository
    module_dir = os.path.join(os.path.dirname(__file__), "..", "..", "SemiSupSeg")
    assert commands.locate_engine(module_dir) == os.path.abspath(os.path.join(module_dir, ".."))


def test_engine_environment_puts_the_engine_first_on_pythonpath():
    env = commands.engine_environment("/ext", {"PYTHONPATH": os.pathsep.join(["/a", "/ext", "/b"])}, cpu_only=True)
    assert env["PYTHONPATH"] == os.pathsep.join(["/ext", "/a", "/b"])
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "-1"
    assert "PYTHONPATH" not in commands.engine_environment(None, {})


def test_missing_requirements():
    assert commands.missing_requirements(lambda name: object()) == []
    assert commands.missing_requirements(lambda name: None) == ["monai>=1.2", "scipy>=1.7", "psutil>=5.9"]
    assert commands.missing_requirements(lambda name: None if name == "scipy" else object()) == ["scipy>=1.7"]


def test_new_run_folder_is_fresh(tmp_path):
    now = datetime.datetime(2025, 3, 4, 5, 6, 7)
    first = commands.new_run_folder(str(tmp_path), now)
    assert first == str(tmp_path / "run-20250304-050607")
    os.makedirs(first)
    assert commands.new_run_folder(str(tmp_path), now) == first + "-2"
    assert commands.model_file_in(first) == os.path.join(first, "model.pt")


def test_presets_and_devices_match_the_engine():
    config = pytest.importorskip("SemiSupSegTraining.config")
    assert set(commands.PRESETS) == set(config.PRESETS)
    assert commands.DEFAULT_PRESET in config.PRESETS
    assert set(commands.METHODS) == set(config.METHODS) - {"reference"}  # the reference code's step: benchmarks only
    assert commands.DEFAULT_METHOD == config.TrainConfig().method  # the module trains the engine's default
    devices = pytest.importorskip("SemiSupSegTraining.devices")
    assert set(commands.DEVICES) == set(devices.DEVICES)


def test_the_module_imports_from_a_source_checkout_with_only_its_own_folder_on_the_path(tmp_path):
    # Slicer puts the module's folder on sys.path, not the repository root: importing the package must put the
    # engine there before commands.py imports the engine's settings.
    import subprocess
    import sys

    module_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "SemiSupSeg")
    code = (f"import sys; sys.path.insert(0, {module_dir!r}); "
            "from SemiSupSegLib import commands; print(commands.DEFAULT_METHOD)")
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=str(tmp_path), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == commands.DEFAULT_METHOD
