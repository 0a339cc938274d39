"""The paper's protocol end to end on a tiny copy of the left-atrium layout: `prepare la` with the paper's
crop and folds, Testing/Benchmarks/reproduce_paper.py over folds × seeds (preset tiny, two iterations), the
paper's window stride, and the aggregate in the paper's units beside the paper's row."""

import json
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from SemiSupSegTraining import prepare
from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.infer import overlap_for_stride, window_count
from SemiSupSegTraining.errors import InputError
from SemiSupSegTraining.phantoms import make_phantom

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Benchmarks"))
import reproduce_paper  # noqa: E402


def test_the_paper_stride_gives_monais_steps_exactly():
    overlap = overlap_for_stride((112, 112, 80), (18, 18, 4))          # x y z in, z y x out
    steps = [int(window * (1 - share)) for window, share in zip((80, 112, 112), overlap)]
    assert steps == [4, 18, 18]
    # 160×192×88 (x y z): z (88−80)/4+1 = 3, y (192−112)/18 → 6, x (160−112)/18 → 4 windows
    assert window_count((88, 192, 160), (80, 112, 112), overlap) == 3 * 6 * 4
    # Any stride, not only where window × (1 − (1 − s / window)) happens to round back to s (18 and 3 do not).
    for window, stride in ((18, 3), (96, 16), (80, 7)):
        share = overlap_for_stride((window,) * 3, (stride,) * 3)[0]
        assert int(window * (1 - share)) == stride
    with pytest.raises(InputError, match="stride"):
        overlap_for_stride((112, 112, 80), (18, 18, 0))


def test_paper_as_printed_is_the_papers_plain_reading():
    printed, product = preset_config("paper-as-printed"), preset_config("paper")
    differ = {k for k, v in printed.to_dict().items() if v != product.to_dict()[k]}
    assert differ == {"preset", "unlabeled_views", "reliability", "lambda_u_rampup", "projection_channels",
                      "lambda_c_schedule"}
    assert (printed.method, printed.lambda_u_rampup, printed.lambda_c_schedule) == ("ours", 0.0, "printed")


def _write_la_layout(root, count=6):
    for i in range(count):
        image, label = make_phantom(i, (24, 40, 40))
        folder = root / f"case{i:02d}"
        folder.mkdir(parents=True)
        for array, name in ((image, "lgemri.nrrd"), ((label * 255).astype(np.uint8), "laendo.nrrd")):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing((0.625, 0.625, 0.625))
            sitk.WriteImage(volume, str(folder / name))


def test_reproduction_runs_folds_by_seeds_and_reports_the_papers_units(tmp_path, capsys):
    _write_la_layout(tmp_path / "la")
    prepared = str(tmp_path / "prepared")
    prepare.prepare_la(str(tmp_path / "la"), prepared, labeled=[2], crop_margin=4, min_crop_xy=(32, 32), folds=2)
    output = str(tmp_path / "runs")
    argv = ["--prepared", prepared, "--output", output, "--labeled", "2", "--seeds", "0", "1", "--folds", "0",
            "--preset", "tiny", "--set", "iterations=2", "--device", "cpu"]
    assert reproduce_paper.main(argv) == 0
    with open(os.path.join(output, "results.json")) as f:
        results = json.load(f)
    assert results["stride_xyz"] == [18, 18, 4] and [r["seed"] for r in results["runs"]] == [0, 1]
    for run in results["runs"]:                      # each run's score: the mean over its test cases
        with open(os.path.join(output, f"fold0-seed{run['seed']}", "scores.json")) as f:
            cases = json.load(f)["cases"]
        assert len(cases) == 3                       # fold 0 tests the last 6 // 2 cases
        assert run["mean"]["dice"] == pytest.approx(np.mean([c["classes"]["left atrium"]["dice"] for c in cases]))
    dice = [100 * r["mean"]["dice"] for r in results["runs"]]
    assert results["table"]["dice"]["mean"] == pytest.approx(np.mean(dice))
    with open(os.path.join(output, "table.md"), encoding="utf-8") as f:
        table = f.read()
    assert "| the paper | 89.10 ± 0.012 | 81.62 ± 0.024 | 6.30 ± 0.85 | 1.80 ± 0.02 |" in table
    assert "95HD vox" in table and table.rstrip().endswith("| 2 |")

    # A second call reuses the finished runs: a score edited on disk is what it aggregates.
    path = os.path.join(output, "fold0-seed1", "scores.json")
    with open(path) as f:
        scores = json.load(f)
    scores["mean"]["dice"] = 0.5
    with open(path, "w") as f:
        json.dump(scores, f)
    assert reproduce_paper.main(argv) == 0
    with open(os.path.join(output, "results.json")) as f:
        assert json.load(f)["table"]["dice"]["mean"] == pytest.approx((dice[0] + 50.0) / 2)


def test_reproduction_says_what_is_missing(tmp_path, capsys):
    assert reproduce_paper.main(["--prepared", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "has no folds.json" in capsys.readouterr().err


def test_segment_takes_the_papers_stride_and_says_when_it_cannot(tmp_path, tiny_model_file, phantom_dataset, capsys):
    from SemiSupSegTraining.cli import main
    from SemiSupSegTraining.manifest import load_manifest

    image = load_manifest(phantom_dataset["test"]).cases[0].image
    output = str(tmp_path / "seg.nii.gz")
    # The tiny model's windows are 32×32×16: steps of 8×8×4 voxels over the 32×32×16 phantom.
    assert main(["segment", "--model", tiny_model_file, "--input", image, "--output", output, "--stride", "8", "8",
                 "4", "--device", "cpu", "--progress", "none"]) == 0
    assert sitk.ReadImage(output).GetSize() == sitk.ReadImage(image).GetSize()
    assert main(["segment", "--model", tiny_model_file, "--input", image, "--output", str(tmp_path / "no.nii.gz"),
                 "--stride", "8", "8", "40", "--device", "cpu"]) == 2
    assert "needs three steps of 1 voxel up to the model's window" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "no.nii.gz")
