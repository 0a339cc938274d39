"""Parsing the engine's JSON progress lines and the text shown for them (SemiSupSegLib.progress)."""

import math

from SemiSupSegLib import progress


def test_progress_line_is_parsed():
    e = progress.parse_line('{"event": "progress", "phase": "train", "iteration": 120, "total": 2000, '
                            '"losses": {"sup_a": 0.2, "loss": 0.41, "bad": "x"}, "lr": 0.01, '
                            '"elapsed_s": 12.3, "eta_s": 200.0}\n')
    assert (e.event, e.phase, e.iteration, e.total) == ("progress", "train", 120, 2000)
    assert e.losses == {"sup_a": 0.2, "loss": 0.41}
    assert e.fraction == 0.06
    assert progress.describe(e) == "Training: iteration 120/2000 · ETA 3 min 20 s · loss 0.410, sup_a 0.200"


def test_non_event_lines_are_not_events():
    for line in ["", "Warning: something", "{not json", "[1, 2]", '{"no_event": 1}', '{"event": 3}']:
        assert progress.parse_line(line) is None


def test_other_events():
    start = progress.parse_line('{"event": "start", "phase": "segment", "total": 8, "device": "cpu"}')
    assert progress.describe(start) == "Segmenting on cpu: starting"
    seg = progress.parse_line('{"event": "progress", "phase": "segment", "iteration": 2, "total": 8, "eta_s": null}')
    assert progress.describe(seg) == "Segmenting: window 2/8"
    err = progress.parse_line('{"event": "error", "message": "Image x.nrrd is not 3D.", "exit_code": 2}')
    assert progress.describe(err) == "Image x.nrrd is not 3D."
    assert err.get("exit_code") == 2
    done = progress.parse_line('{"event": "done", "phase": "train", "model": "out/model.pt"}')
    assert done.get("model") == "out/model.pt" and progress.describe(done) == "Training: done"


def test_validation_event():
    """``train --validate K``: the held-out cases' Dice, with the engine's sentence or a fallback without one."""
    line = ('{"event": "validation", "phase": "train", "mean_dice": 0.9125, "message": "Held-out validation on 2 '
            'labeled case(s) kept out of training: mean Dice 0.912 (a 0.900, b 0.925).", '
            '"cases": [{"id": "a", "mean_dice": 0.9}, {"id": "b", "mean_dice": 0.925}]}')
    e = progress.parse_line(line)
    assert e.validation_dice == 0.9125
    assert progress.describe(e).startswith("Held-out validation on 2 labeled case(s)")
    bare = progress.parse_line('{"event": "validation", "mean_dice": 0.5, "cases": [{"id": "a"}]}')
    assert progress.describe(bare) == "Validation on 1 held-out case(s): mean Dice 0.500"
    assert progress.parse_line('{"event": "validation", "mean_dice": "high"}').validation_dice is None
    assert progress.parse_line('{"event": "done", "mean_dice": 0.5}').validation_dice is None


def test_losses_are_shown_in_the_engines_order_without_statistics():
    losses = {"reliable_fraction": 0.8, "unsup_b": 0.4, "mdiff_voxels": 1200.0, "sup_b": 0.3, "loss": 1.5,
              "sup_a": 0.2, "lambda_c": 0.1, "lambda_u": 0.7, "contrast_a": 0.05, "new_term": 0.01}
    assert progress.loss_names(losses) == ["loss", "sup_a", "sup_b", "unsup_b", "contrast_a", "new_term"]
    assert progress.format_losses(losses) == "loss 1.500, sup_a 0.200, sup_b 0.300, unsup_b 0.400"


def test_format_duration():
    assert progress.format_duration(None) == ""
    assert progress.format_duration(44.6) == "45 s"
    assert progress.format_duration(185) == "3 min 05 s"
    assert progress.format_duration(3720) == "1 h 02 min"


def test_loss_history_keeps_columns_aligned():
    h = progress.LossHistory()
    h.add(progress.parse_line('{"event": "progress", "iteration": 1, "losses": {"loss": 1.0}}'))
    h.add(progress.parse_line('{"event": "progress", "iteration": 2, "losses": {"loss": 0.8, "con": 0.1}}'))
    h.add(progress.parse_line('{"event": "progress", "iteration": 3, "losses": {"con": 0.05}}'))
    assert not h.add(progress.parse_line('{"event": "checkpoint", "path": "x"}'))
    assert h.iterations == [1, 2, 3]
    assert h.series["loss"][:2] == [1.0, 0.8] and math.isnan(h.series["loss"][2])
    assert math.isnan(h.series["con"][0]) and h.series["con"][1:] == [0.1, 0.05]


def test_suggest_progress_reads_as_cases():
    event = progress.parse_line('{"event": "progress", "phase": "suggest", "iteration": 2, "total": 5, "case": "c2"}')
    assert progress.describe(event) == "Scoring cases: case 2/5"
