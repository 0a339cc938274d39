"""The one atomic write (``atomicio.atomic_write``) and every writer of the engine that goes through it: a write
interrupted by an exception leaves the old file whole and no temporary file behind."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from SemiSupSegTraining import atomicio
from SemiSupSegTraining.atomicio import atomic_write, write_json_atomic, write_text_atomic


def _half_then(error):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("half a fi")
            f.flush()
            raise error
    return write


@pytest.mark.parametrize("error", [RuntimeError("disk gone"), KeyboardInterrupt()])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "run.json"
    write_text_atomic(str(path), "old")
    with pytest.raises(type(error)):
        atomic_write(str(path), _half_then(error))
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["run.json"]


def test_a_first_write_that_fails_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        atomic_write(str(tmp_path / "sub" / "new.json"), _half_then(RuntimeError("full")))
    assert os.listdir(tmp_path / "sub") == []


def test_the_file_and_its_folder_are_flushed_before_and_after_the_rename(tmp_path, monkeypatch):
    """fsync on the new file before it takes the name, and on the folder after (where the OS can open one)."""
    path = tmp_path / "config.json"
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd") else str(fd)
        synced.append((target, path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(atomicio.os, "fsync", fsync)
    write_json_atomic(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and path.read_text().endswith("}\n")
    if os.path.isdir("/proc/self/fd"):
        file_sync, folder_sync = synced
        assert file_sync[0].endswith("config.json") and atomicio.PARTIAL_MARK in file_sync[0]
        assert not file_sync[1]                                              # the temporary, before the rename
        assert folder_sync == (str(tmp_path), True)                          # the folder, after it
    else:
        assert len(synced) >= 1


def test_previous_keeps_the_current_file_under_another_name(tmp_path):
    path, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    atomic_write(str(path), lambda tmp: open(tmp, "w").write("one"), previous=str(previous))
    assert not previous.exists()
    atomic_write(str(path), lambda tmp: open(tmp, "w").write("two"), previous=str(previous))
    assert (path.read_text(), previous.read_text()) == ("two", "one")
    with pytest.raises(RuntimeError):
        atomic_write(str(path), _half_then(RuntimeError("kill")), previous=str(previous))
    assert (path.read_text(), previous.read_text()) == ("two", "one")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_a_writer_that_writes_another_name_is_refused(tmp_path):
    with pytest.raises(OSError, match="no file named"):
        atomic_write(str(tmp_path / "a.json"), lambda tmp: open(tmp + ".other", "w").close())
    assert os.listdir(tmp_path) == []


def test_a_two_file_format_refers_to_its_data_file_by_the_final_name(tmp_path):
    from SemiSupSegTraining.fileio import write_image_atomic

    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    write_image_atomic(image, str(tmp_path / "case.mhd"))
    assert sorted(os.listdir(tmp_path)) == ["case.mhd", "case.zraw"]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case.mhd"))),
                          np.arange(24).reshape(2, 3, 4))


def test_remove_partial_files_clears_what_a_killed_training_left(tmp_path):
    from SemiSupSegTraining.runfolder import remove_partial_files

    (tmp_path / ".checkpoint.pt.partialx1y2").mkdir()
    (tmp_path / ".checkpoint.pt.partialx1y2" / "checkpoint.pt").write_text("half")
    (tmp_path / "checkpoint.pt.partial123").write_text("half")      # the name older versions used
    (tmp_path / "checkpoint.pt").write_text("whole")
    (tmp_path / ".notes.partial").mkdir()                            # not the training's: left alone
    remove_partial_files(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".notes.partial", "checkpoint.pt"]


# ------------------------------------------------------------------ every writer goes through atomic_write

def _writers():
    """(name, file name, write(path, version)) for each writer of the engine that must be atomic."""
    def manifest(path, version):
        from SemiSupSegTraining.manifest import Manifest, default_classes, write_manifest
        write_manifest(Manifest(default_classes(["atrium"]), [], "MRI", extra={"version_mark": version}), path)

    def model_metadata(path, version):
        from SemiSupSegTraining.modelinfo import write_metadata
        model = os.path.join(os.path.dirname(path), "model.pt")
        if not os.path.exists(model):
            open(model, "wb").close()
        write_metadata(model, {"version_mark": version})

    def model_file(path, version):
        import torch
        from SemiSupSegTraining.modelfile import save_atomic
        save_atomic({"version_mark": torch.tensor(version)}, path)

    def checkpoint(path, version):
        import torch
        from SemiSupSegTraining.runfolder import write_checkpoint
        write_checkpoint(os.path.dirname(path), {"version_mark": torch.tensor(version)})

    def run_text(path, version):
        from SemiSupSegTraining.runfolder import write_text_atomic as runfolder_text
        runfolder_text(path, str(version))

    def image(path, version):
        from SemiSupSegTraining.fileio import write_image_atomic
        write_image_atomic(sitk.GetImageFromArray(np.full((2, 2, 2), version, np.int16)), path)

    def prepare_outputs(path, version):
        from SemiSupSegTraining.datasets.convert import write_outputs
        from SemiSupSegTraining.manifest import CaseEntry, default_classes
        entries = [CaseEntry(f"c{i}", f"/x/c{i}.nii.gz", f"/x/c{i}l.nii.gz", True) for i in range(2)]
        write_outputs(os.path.dirname(path), entries, default_classes(["atrium"]), "MRI", "test", "test", 2,
                      [1], {"version_mark": version})

    def picture(path, version):
        pytest.importorskip("matplotlib")
        from SemiSupSegTraining.demo import write_loss_curve
        log = os.path.join(os.path.dirname(path), "log.jsonl")
        with open(log, "w") as f:
            for i in (1, 2):
                f.write(json.dumps({"iteration": i, "losses": {"loss": version / i}}) + "\n")
        assert write_loss_curve(log, path) == path

    return [("manifest", "manifest.json", manifest), ("model metadata", "model.json", model_metadata),
            ("model file", "model.pt", model_file), ("checkpoint", "checkpoint.pt", checkpoint),
            ("run folder text", "log.jsonl", run_text), ("image", "case.nii.gz", image),
            ("prepare's records", "prepare.json", prepare_outputs), ("demo picture", "loss_curve.png", picture)]


@pytest.mark.parametrize("name, filename, write", _writers(), ids=[w[0] for w in _writers()])
def test_every_engine_writer_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch, name, filename, write):
    """The write fails after the new content is on disk but before the rename (fsync raises): a writer that
    went around atomic_write would already have replaced the file."""
    path = str(tmp_path / filename)
    write(path, 1)
    before = open(path, "rb").read()
    listing = sorted(os.listdir(tmp_path))

    def fail(_path):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomicio, "_fsync_file", fail)
    with pytest.raises(KeyboardInterrupt):
        write(path, 2)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == listing
