"""Tests of the training step's semi-supervised inputs: each network's own intensity view of the unlabeled
crops, and the projection heads that L_c trains through (SemiSupSegTraining.views, train.Trainer)."""

import numpy as np
import pytest
import torch

from SemiSupSegTraining.config import preset_config
from SemiSupSegTraining.data import load_training_cases
from SemiSupSegTraining.manifest import load_manifest
from SemiSupSegTraining.train import Trainer
from SemiSupSegTraining.views import intensity_view


def _crops(seed=0):
    from helpers import structured_volume

    return torch.from_numpy(np.stack([structured_volume((16, 32, 32), seed + i) for i in range(2)])[:, None])


def test_intensity_view_repeats_with_the_seed_and_differs_between_draws():
    x = _crops()
    first = intensity_view(x, torch.Generator().manual_seed(3))
    again = intensity_view(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    view_a, view_b = intensity_view(x, g), intensity_view(x, g)
    assert first.shape == x.shape and first.dtype == x.dtype
    assert torch.equal(first, again)
    assert torch.isfinite(first).all()
    assert (view_a - view_b).abs().mean() > 0.05
    assert (first - x).abs().mean() > 0.05


def test_intensity_view_keeps_every_voxel_in_place():
    # a perturbation of intensities only: the structures stay where they were, so the view is still
    # strongly correlated with the crop voxel by voxel (a flip or shift would drop this to about 0)
    x = _crops()
    view = intensity_view(x, torch.Generator().manual_seed(0))
    for i in range(x.shape[0]):
        r = np.corrcoef(x[i].flatten().numpy(), view[i].flatten().numpy())[0, 1]
        assert r > 0.8
    shifted = torch.roll(x, 5, dims=-1)
    assert np.corrcoef(x[0].flatten().numpy(), shifted[0].flatten().numpy())[0, 1] < 0.8


def _trainer(phantom_dataset, **overrides):
    manifest = load_manifest(phantom_dataset["train"])
    labeled, unlabeled = load_training_cases(manifest, "zscore", (-120.0, 240.0))
    config = preset_config("tiny", dict({"device": "cpu"}, **overrides))
    return Trainer(config, len(manifest.classes), labeled, unlabeled, torch.device("cpu"))


def _record_inputs(trainer):
    seen = {}
    for name, net in (("a", trainer.net_a), ("b", trainer.net_b)):
        net.register_forward_pre_hook(lambda module, args, name=name: seen.__setitem__(name, args[0].clone()))
    return seen


@pytest.mark.parametrize("views", [True, False])
def test_each_network_gets_its_own_view_of_the_unlabeled_crops_only(phantom_dataset, views):
    trainer = _trainer(phantom_dataset, unlabeled_views=views)
    seen = _record_inputs(trainer)
    trainer.step()
    n = trainer.config.batch_labeled
    assert seen["a"].shape[0] == n + trainer.config.batch_unlabeled
    assert torch.equal(seen["a"][:n], seen["b"][:n])  # the labeled crops are never perturbed
    assert torch.equal(seen["a"][n:], seen["b"][n:]) is not views


def test_contrastive_loss_trains_the_projection_heads_and_the_networks(phantom_dataset):
    trainer = _trainer(phantom_dataset, use_unsupervised=False, use_regularization=False, projection_channels=5)
    assert [head[-1].out_channels for head in trainer.projectors] == [5, 5]
    before = [[p.detach().clone() for p in head.parameters()] for head in trainer.projectors]
    terms = trainer.step()
    assert float(terms["contrast_a"]) > 0 and float(terms["contrast_b"]) > 0
    for head, old in zip(trainer.projectors, before):
        assert any(not torch.equal(p, q) for p, q in zip(head.parameters(), old))
    # the heads belong to their network's optimiser
    for opt, net, head in zip(trainer.optimizers, trainer.networks(), trainer.projectors):
        ids = {id(p) for group in opt.param_groups for p in group["params"]}
        assert {id(p) for p in head.parameters()} <= ids and {id(p) for p in net.parameters()} <= ids


def test_no_projection_heads_without_contrastive_loss(phantom_dataset):
    assert _trainer(phantom_dataset, use_contrastive=False).projectors is None
    assert _trainer(phantom_dataset, method="supervised").projectors is None
    assert _trainer(phantom_dataset, projection_channels=0).projectors is None


def test_projection_heads_are_in_the_checkpoint_not_in_the_model_file(trained_model):
    from SemiSupSegTraining.modelfile import load_model, load_trusted_data

    checkpoint = load_trusted_data(trained_model["output"] + "/checkpoint.pt", "checkpoint")
    assert any(key.startswith("0.") for key in checkpoint["projectors"])
    model = load_trusted_data(trained_model["model"])
    net_a, net_b, _ = load_model(trained_model["model"])
    assert set(model["weights_a"]) == set(net_a.state_dict())
    assert set(model["weights_b"]) == set(net_b.state_dict())


@pytest.mark.parametrize("value", [-1, 2.5, "16"])
def test_bad_projection_width_is_one_sentence(value):
    from SemiSupSegTraining.errors import InputError

    with pytest.raises(InputError, match="projection_channels"):
        preset_config("tiny", {"projection_channels": value})


def _every_term_active(phantom_dataset, sequential):
    # threshold 0.5 with two classes: every voxel where the networks' argmax differ is in M_diff
    trainer = _trainer(phantom_dataset, sequential_backward=sequential, threshold_start=0.5, threshold_end=0.5,
                       lambda_u_rampup=0.0)
    terms = [trainer.step() for _ in range(2)]
    return trainer, terms


def test_sequential_backward_gives_the_joint_loss_gradients(phantom_dataset):
    sequential, seq_terms = _every_term_active(phantom_dataset, True)
    joint, joint_terms = _every_term_active(phantom_dataset, False)
    for key in ("unsup_a", "unsup_b", "reg", "mdiff_voxels", "contrast_a", "contrast_b"):
        assert float(seq_terms[-1][key]) > 0, key  # every cross-network term is exercised
    for key, value in joint_terms[-1].items():
        torch.testing.assert_close(seq_terms[-1][key], value, rtol=0, atol=1e-6, msg=key)
    modules = [(sequential.net_a, joint.net_a), (sequential.net_b, joint.net_b),
               (sequential.projectors, joint.projectors)]
    for seq_module, joint_module in modules:
        for (name, p), q in zip(seq_module.state_dict().items(), joint_module.state_dict().values()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)  # weights and batch-norm statistics
    # dropout's generator ends where the joint step leaves it, so the next iteration draws the same masks
    assert torch.equal(sequential.dropout_state()[0], joint.dropout_state()[0])


def test_reported_loss_counts_each_term_once(phantom_dataset):
    trainer, terms = _every_term_active(phantom_dataset, True)
    t = {k: float(v) for k, v in terms[-1].items()}
    expected = (t["sup_a"] + t["sup_b"] + t["lambda_u"] * (t["unsup_a"] + t["unsup_b"] + t["reg"])
                + t["lambda_c"] * (t["contrast_a"] + t["contrast_b"]))
    assert t["loss"] == pytest.approx(expected, rel=1e-5)


def test_cpu_training_uses_channels_last_weights(phantom_dataset):
    trainer = _trainer(phantom_dataset)
    conv = trainer.net_a.block2[0].weight  # (more than one input channel: the layouts differ)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
