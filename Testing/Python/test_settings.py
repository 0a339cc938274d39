"""The settings: docs/settings.md is generated from TrainConfig and matches it; every choice is checked in
one place; one default method and preset everywhere (the command line, the Python API, TrainConfig, the
presets)."""

import inspect
import os

import pytest

from SemiSupSegTraining import config as C
from SemiSupSegTraining.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_settings_md_is_generated_from_trainconfig():
    with open(os.path.join(ROOT, "docs", "settings.md"), encoding="utf-8") as f:
        committed = f.read()
    assert committed == C.settings_markdown(), (
        "docs/settings.md differs from TrainConfig: run python -m SemiSupSegTraining.config --markdown docs/settings.md")


def test_every_setting_is_documented_in_the_page():
    page = C.settings_markdown()
    for field in C.dataclasses.fields(C.TrainConfig):
        row = next(line for line in page.splitlines() if line.startswith(f"| `{field.name}` |"))
        assert len(row.split("|")[3].strip()) > 10, f"{field.name} has no documentation in TrainConfig"


@pytest.mark.parametrize("name", sorted(C.CHOICES))
def test_each_choice_setting_refuses_a_value_outside_its_literal_type(name):
    for good in C.CHOICES[name]:
        C.preset_config("tiny", {name: good})
    with pytest.raises(InputError) as error:
        C.preset_config("tiny", {name: "nonsense"})
    assert str(error.value).startswith(f"{name} is 'nonsense'; use one of ") and "\n" not in str(error.value)


@pytest.mark.parametrize("setting", [{"iterations": 0}, {"batch_unlabeled": -1}, {"validate_cases": True},
                                     {"projection_channels": 1.5}, {"reliable_fraction": 1.5},
                                     {"unlabeled_start": 1.0}, {"bcp_box": 0.0}, {"lambda_u": -1.0},
                                     {"cps_rampup": 2.0}, {"bcp_pretrain_iterations": -1}])
def test_a_setting_out_of_range_is_one_sentence(setting):
    with pytest.raises(InputError) as error:
        C.preset_config("tiny", setting)
    name = next(iter(setting))
    assert str(error.value).startswith(f"{name} is ") and "\n" not in str(error.value)


def test_settings_of_earlier_versions_are_dropped_when_read():
    assert C.TrainConfig.from_dict({"num_workers": 0, "extra": {}, "method": "ours"}).method == "ours"
    assert not hasattr(C.TrainConfig(), "num_workers")


def test_validate_is_short():
    # the choices live in the Literal types, the ranges in one table: validate stays a loop, not a ladder
    assert len(inspect.getsource(C.TrainConfig.validate).splitlines()) < 30


# ------------------------------------------------------------------------------------- one default

def test_one_default_method_and_preset_everywhere(monkeypatch, tmp_path):
    from SemiSupSegTraining import api, cli, train

    parser = cli.build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    preset_default = next(a.default for a in train_parser._actions if "--preset" in a.option_strings)
    assert preset_default == C.DEFAULT_PRESET
    assert C.DEFAULT_PRESET in train_parser.format_help()           # --help names it
    assert C.preset_method(C.DEFAULT_PRESET) == C.DEFAULT_METHOD
    assert C.preset_config(C.DEFAULT_PRESET).method == C.DEFAULT_METHOD
    assert C.TrainConfig().method == C.DEFAULT_METHOD
    # api.train without a config trains the default preset (and so the default method)
    seen = []
    monkeypatch.setattr(train, "_train_from", lambda start, *args, **kwargs: seen.append(start["config"]) or "")
    from SemiSupSegTraining.phantoms import write_phantom_dataset

    manifest, _ = write_phantom_dataset(str(tmp_path / "data"), labeled=1, unlabeled=0, test=0, shape_zyx=(16, 32, 32))
    api.train(manifest, str(tmp_path / "run"), progress="none")
    assert seen[0] == C.preset_config(C.DEFAULT_PRESET)
    assert seen[0].method == C.DEFAULT_METHOD and seen[0].preset == C.DEFAULT_PRESET
