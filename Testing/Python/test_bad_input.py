"""Every bad input of the corpus (bad_inputs.py) meets ``semisupseg``: exit code 2, exactly one line on stderr
(``semisupseg: error: ...`` naming the bad file), no output file, and no code from the file run."""

import os
import subprocess
import sys

import pytest

import bad_inputs
import helpers  # noqa: F401  (one torch thread: tiny networks on a busy machine)
from SemiSupSegTraining.cli import main
from SemiSupSegTraining.errors import EXIT_BAD_INPUT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def good(tiny_model_file, phantom_dataset):
    folder = phantom_dataset["folder"]
    return bad_inputs.Good(tiny_model_file, os.path.join(folder, "images", "phantom000.nii.gz"),
                           os.path.join(folder, "labels", "phantom000.nii.gz"))


def _files_under(path):
    if os.path.isfile(path):
        return [path]
    return [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]


def _assert_refused(entry, code, stderr):
    lines = stderr.splitlines()
    assert code == EXIT_BAD_INPUT, stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("semisupseg: error: "), lines[0]
    assert entry.bad_path in lines[0], f"the message does not name {entry.bad_path}: {lines[0]}"
    written = [f for p in entry.outputs if os.path.exists(p) for f in _files_under(p)]
    assert not written, f"outputs written although the input was bad: {written}"
    if entry.marker:
        assert not os.path.exists(entry.marker), "code from the model file ran"


@pytest.mark.parametrize("name", list(bad_inputs.CORPUS))
def test_bad_input_is_refused_with_one_sentence(name, good, tmp_path, capfd):
    entry = bad_inputs.build(name, str(tmp_path / name), good)
    capfd.readouterr()
    code = main(entry.argv)
    captured = capfd.readouterr()  # fd-level: catches C++ library warnings (ITK, torch) as well
    _assert_refused(entry, code, captured.err)


def test_pickle_payload_refused_by_the_command_line_process(good, tmp_path):
    """The malicious model file through the real command line (a fresh interpreter, as Slicer runs it)."""
    entry = bad_inputs.build("model_pickle_payload_torch", str(tmp_path / "evil"), good)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "SemiSupSegTraining"] + entry.argv, capture_output=True,
                          text=True, env=env, timeout=120)
    _assert_refused(entry, proc.returncode, proc.stderr)


@pytest.mark.parametrize("use_torch", [True, False], ids=["torch.save", "pickle"])
def test_pickle_payload_is_live(tmp_path, use_torch):
    """Control: the corpus' payload really runs its command when unpickled without weights_only, so the
    refusal above proves something."""
    import pickle

    import torch

    marker = tmp_path / "CONTROL"
    payload = {"metadata": bad_inputs.PickleBomb(f"touch {marker}")}
    path = tmp_path / "control.pt"
    if use_torch:
        torch.save(payload, path)
        torch.load(path, weights_only=False)
    else:
        path.write_bytes(pickle.dumps(payload))
        pickle.loads(path.read_bytes())
    assert marker.exists()
