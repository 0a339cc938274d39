"""The model file: weights + metadata round trip, safe loading, clear errors for foreign or damaged files."""

import os

import helpers  # noqa: F401  (one torch thread)
import pytest
import torch

from SemiSupSegTraining import __version__
from SemiSupSegTraining.errors import InputError
from SemiSupSegTraining.modelfile import (
    MODEL_FORMAT,
    classes_of,
    load_model,
    load_trusted_data,
    read_metadata,
    save_model,
)
from SemiSupSegTraining.networks import build_networks

META = {
    "classes": [{"value": 0, "name": "background"}, {"value": 1, "name": "organ"},
                {"value": 4, "name": "vessel", "color": [0.1, 0.2, 0.3]}],
    "normalization": {"method": "window", "ct_window": [-120.0, 240.0]},
    "patch_size": [32, 32, 16],
    "preset": "tiny",
    "overrides": {"lr": 0.005},
    "networks": {"a": "VNet", "b": "ResVNet", "base_filters": 4, "resnet_blocks": [1, 1, 1, 1], "in_channels": 1},
}


def _trained_like_networks():
    """Two networks whose weights and batch-norm statistics differ from a fresh build."""
    torch.manual_seed(3)
    net_a, net_b = build_networks(3, 4, (1, 1, 1, 1), dropout=0.0)
    for net in (net_a, net_b):
        net.train()
        with torch.no_grad():
            net(torch.randn(2, 1, 16, 16, 16) * 3 + 1)  # moves the running statistics
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))
        net.eval()
    return net_a, net_b


def test_save_load_round_trip_keeps_outputs_identical(tmp_path):
    net_a, net_b = _trained_like_networks()
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        expected = [n(x) for n in (net_a, net_b)]
    path = save_model(str(tmp_path / "model.pt"), net_a.state_dict(), net_b.state_dict(), META)
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.pt"]  # its metadata beside it, no temporary file
    loaded_a, loaded_b, meta = load_model(path)
    assert not loaded_a.training and not loaded_b.training
    with torch.no_grad():
        got = [n(x) for n in (loaded_a, loaded_b)]
    for (logits, features), (logits2, features2) in zip(expected, got):
        assert torch.equal(logits, logits2) and torch.equal(features, features2)
    for name, tensor in net_b.state_dict().items():
        assert torch.equal(tensor, loaded_b.state_dict()[name]), name
    assert [c.value for c in classes_of(meta)] == [0, 1, 4]
    assert classes_of(meta)[2].color == [0.1, 0.2, 0.3]


def test_metadata_holds_versions_and_settings(tmp_path):
    path = save_model(str(tmp_path / "model.pt"), *(n.state_dict() for n in _trained_like_networks()), META)
    meta = read_metadata(path)
    assert meta["format"] == MODEL_FORMAT
    assert meta["engine_version"] == __version__
    assert meta["torch_version"] == str(torch.__version__)
    for key in ("classes", "normalization", "patch_size", "preset", "overrides", "python_version"):
        assert key in meta


def test_trained_model_metadata(trained_model):
    assert trained_model["exit_code"] == 0
    meta = read_metadata(trained_model["model"])
    assert [c["name"] for c in meta["classes"]] == ["background", "left atrium"]
    assert [c["value"] for c in meta["classes"]] == [0, 1]
    assert meta["normalization"]["method"] == "zscore"
    assert meta["patch_size"] == [32, 32, 16]
    assert meta["preset"] == "tiny"
    assert meta["overrides"]["iterations"] == 2 and "lr" not in meta["overrides"]
    assert meta["engine_version"] == __version__ and meta["torch_version"] == str(torch.__version__)
    assert meta["training"]["iterations"] == 2
    assert meta["training"]["labeled_cases"] == 1 and meta["training"]["unlabeled_cases"] == 1
    net_a, net_b, _ = load_model(trained_model["model"])
    with torch.no_grad():
        logits, features = net_a(torch.zeros(1, 1, 16, 32, 32))
    assert logits.shape == (1, 2, 16, 32, 32) and features.shape == (1, 4, 16, 32, 32)


def test_missing_model_file(tmp_path):
    path = str(tmp_path / "none.pt")
    with pytest.raises(InputError, match="does not exist") as e:
        read_metadata(path)
    assert path in str(e.value)


def test_truncated_model_file(tmp_path):
    path = save_model(str(tmp_path / "model.pt"), *(n.state_dict() for n in _trained_like_networks()), META)
    with open(path, "rb") as f:
        data = f.read()
    cut = str(tmp_path / "cut.pt")
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated") as e:
        load_model(cut)
    assert cut in str(e.value)


class Payload:
    """Any class: pickling it stores a reference to code, which weights_only loading refuses."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_file_that_would_run_code_is_refused(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"metadata": {"format": MODEL_FORMAT}, "weights_a": Payload()}, path)
    with pytest.raises(InputError, match="could run code") as e:
        load_trusted_data(path)
    assert path in str(e.value)


def test_foreign_torch_file_is_refused(tmp_path):
    path = str(tmp_path / "other.pt")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(InputError, match="not a SemiSupSeg model file") as e:
        read_metadata(path)
    assert path in str(e.value)
    torch.save([1, 2, 3], path)
    with pytest.raises(InputError, match="not a SemiSupSeg") as e:
        read_metadata(path)


def test_other_format_version_is_refused(tmp_path):
    path = save_model(str(tmp_path / "model.pt"), *(n.state_dict() for n in _trained_like_networks()), META)
    data = torch.load(path, weights_only=True)
    data["metadata"]["format_version"] = 99
    torch.save(data, path)
    with pytest.raises(InputError, match="version 99") as e:
        load_model(path)
    assert path in str(e.value)


def test_metadata_without_a_required_key_is_refused(tmp_path):
    meta = dict(META)
    del meta["patch_size"]
    path = save_model(str(tmp_path / "model.pt"), *(n.state_dict() for n in _trained_like_networks()), meta)
    with pytest.raises(InputError, match="patch_size") as e:
        read_metadata(path)
    assert path in str(e.value)


def test_weights_that_do_not_fit_the_description(tmp_path):
    meta = dict(META, networks=dict(META["networks"], base_filters=8))
    path = save_model(str(tmp_path / "model.pt"), *(n.state_dict() for n in _trained_like_networks()), meta)
    with pytest.raises(InputError, match="do not fit") as e:
        load_model(path)
    assert path in str(e.value)


def test_the_metadata_file_beside_the_model_is_read_without_torch_and_notices_a_replaced_model(tmp_path):
    from SemiSupSegTraining.modelinfo import MetadataMissing, metadata_path, read_metadata_file

    net_a, net_b = _trained_like_networks()
    path = save_model(str(tmp_path / "model.pt"), net_a.state_dict(), net_b.state_dict(), META)
    assert metadata_path(path) == str(tmp_path / "model.json")
    assert read_metadata_file(path) == read_metadata(path)  # the same as the model file's own
    with open(path, "ab") as f:
        f.write(b"another version")  # a model file copied over without its metadata
    with pytest.raises(MetadataMissing, match="belongs to another version"):
        read_metadata_file(path)
    os.remove(metadata_path(path))
    with pytest.raises(MetadataMissing, match="has no metadata file model.json"):
        read_metadata_file(path)
    (tmp_path / "model.json").write_text('{"format": "semisupseg-model-metadata", "model_bytes": 1}')
    with pytest.raises(InputError, match="is not a SemiSupSeg model metadata file"):
        read_metadata_file(path)
