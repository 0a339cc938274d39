"""The module's first-hour helpers without Slicer: demo cases made here (no download, no torch in Slicer's
process), the folder of a model file someone gave you, and the device checked before a job starts."""

import datetime
import json
import os
import subprocess
import sys

from SemiSupSegLib import commands, demo_cases
from SemiSupSegLib.cases import CaseTable

from SemiSupSegTraining.manifest import load_manifest

MODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "SemiSupSeg")


def test_demo_cases_are_made_here_as_two_labeled_and_four_unlabeled_cases(tmp_path):
    path, preset = demo_cases.write_demo_cases(str(tmp_path / "demo"), labeled=2, unlabeled=2)
    assert preset == "demo" and preset in commands.PRESETS
    manifest = load_manifest(path)
    assert [c.labeled for c in manifest.cases] == [True, True, False, False]
    assert [c.name for c in manifest.classes] == ["background", demo_cases.DEMO_STRUCTURE]
    cases = CaseTable()
    assert cases.add_manifest(manifest) == 4 and len(cases.labeled_rows) == 2 and cases.readiness()[0]
    mtime = os.path.getmtime(path)
    assert demo_cases.write_demo_cases(str(tmp_path / "demo"))[0] == path and os.path.getmtime(path) == mtime


def test_demo_cases_load_no_torch_into_slicers_process(tmp_path):
    code = (f"import sys; sys.path.insert(0, {MODULE_DIR!r})\n"
            "from SemiSupSegLib import demo_cases\n"
            f"demo_cases.write_demo_cases({str(tmp_path)!r}, labeled=1, unlabeled=0)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.load(open(tmp_path / "train.json"))["cases"]


def test_a_model_someone_gave_you_gets_its_own_folder(tmp_path):
    when = datetime.datetime(2026, 3, 1, 10, 15, 0)
    first = commands.imported_model_folder(str(tmp_path), "/mail/Dr. Smith's atria.pt", when)
    assert os.path.basename(first) == "imported-Dr_Smith_s_atria-20260301-101500"
    os.makedirs(first)
    assert commands.imported_model_folder(str(tmp_path), "/mail/Dr. Smith's atria.pt", when) == first + "-2"


def test_the_device_is_checked_before_a_job_starts():
    def problem(device, torch="2.4.1", system="Linux", machine="x86_64", driver=True):
        return commands.device_problem(device, torch, system, machine, driver)

    assert problem("auto", driver=False) is None and problem("cpu", system="Darwin") is None
    assert problem("cuda") is None and problem("cuda:1", torch="2.4.1+cu121") is None
    assert "CPU build" in problem("cuda", torch="2.4.1+cpu")
    assert "NVIDIA driver" in problem("cuda", driver=False)
    assert "macOS" in problem("cuda", system="Darwin", machine="arm64")
    assert problem("mps", system="Darwin", machine="arm64") is None
    assert "Apple silicon" in problem("mps") and "Apple silicon" in problem("mps", system="Darwin")


def test_a_volume_is_read_from_its_own_file_only_on_that_files_grid(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))  # x 6, y 5, z 4
    image.SetSpacing((0.5, 0.6, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    path = str(tmp_path / "ct.nii.gz")
    sitk.WriteImage(image, path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    file_grid = (reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    ras = ((6, 5, 4), (0.5, 0.6, 2.0), (-10.0, 20.0, 30.0), [[-1, 0, 0], [0, -1, 0], [0, 0, 1]])  # as Slicer has it
    assert commands.same_grid(file_grid, ras)
    centered = (ras[0], ras[1], (1.5, 1.5, -4.0), ras[3])  # loaded with "center"
    assert not commands.same_grid(file_grid, centered)
    assert not commands.same_grid(file_grid, ((6, 5, 3),) + ras[1:])
    assert commands.reusable_volume_file(path, False, False)
    assert not commands.reusable_volume_file(path, True, False)  # changed since it was read
    assert not commands.reusable_volume_file(path, False, True)  # under a transform
    assert not commands.reusable_volume_file(str(tmp_path / "ct.dcm"), False, False)
    name = commands.export_cache_name("vtkMRMLScalarVolumeNode3", "s1", 100, 200)
    assert name == "vtkMRMLScalarVolumeNode3-s1-100-200.nrrd" != commands.export_cache_name(
        "vtkMRMLScalarVolumeNode3", "s1", 100, 201)
