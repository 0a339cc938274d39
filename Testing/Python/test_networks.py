"""Subnet A (V-Net) and Subnet B (ResNet-encoder V-Net): output shapes and the paper's parameter count."""

import helpers  # noqa: F401  (one torch thread)
import pytest
import torch

from SemiSupSegTraining.networks import ResVNet, VNet, build_networks, count_parameters

SMALL = 4  # base filters: keeps the forward passes at a few milliseconds


def _forward(net, shape, batch=2):
    torch.manual_seed(0)
    net.eval()
    with torch.no_grad():
        return net(torch.randn((batch, 1) + shape))


@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("shape", [(16, 16, 16), (16, 32, 48), (32, 16, 32)])
@pytest.mark.parametrize("kind", ["VNet", "ResVNet"])
def test_logits_and_features_shapes(kind, shape, num_classes):
    if kind == "VNet":
        net = VNet(1, num_classes, SMALL)
    else:
        net = ResVNet(1, num_classes, SMALL, blocks=(1, 1, 1, 1))
    logits, features = _forward(net, shape)
    assert logits.shape == (2, num_classes) + shape
    assert features.shape == (2, SMALL) + shape
    assert torch.isfinite(logits).all() and torch.isfinite(features).all()


def test_resvnet_with_the_paper_blocks():
    logits, features = _forward(ResVNet(1, 3, SMALL, blocks=(3, 4, 6, 3)), (16, 16, 32), batch=1)
    assert logits.shape == (1, 3, 16, 16, 32) and features.shape == (1, SMALL, 16, 16, 32)


def test_build_networks_pairs_vnet_and_resvnet():
    net_a, net_b = build_networks(4, SMALL, (1, 1, 1, 1), dropout=0.0)
    assert isinstance(net_a, VNet) and isinstance(net_b, ResVNet)
    for net in (net_a, net_b):
        logits, features = _forward(net, (16, 16, 16), batch=1)
        assert logits.shape == (1, 4, 16, 16, 16) and features.shape == (1, SMALL, 16, 16, 16)
    with pytest.raises(ValueError):
        build_networks(2, SMALL, (1, 1, 1))


def test_multichannel_input():
    net = VNet(in_channels=2, num_classes=3, base_filters=SMALL)
    net.eval()
    with torch.no_grad():
        logits, features = net(torch.randn(1, 2, 16, 16, 16))
    assert logits.shape == (1, 3, 16, 16, 16) and features.shape == (1, SMALL, 16, 16, 16)


def test_paper_scale_vnet_parameter_count():
    # The paper (and MC-Net/MCF) report 9.45 M parameters for the V-Net with 16 base filters.
    assert abs(count_parameters(VNet(1, 2, 16)) - 9.45e6) <= 0.01e6


def test_paper_scale_resvnet_is_larger_than_vnet():
    assert count_parameters(ResVNet(1, 2, 16)) > count_parameters(VNet(1, 2, 16))


def test_eval_mode_is_deterministic_and_dropout_acts_in_training():
    net = VNet(1, 2, SMALL, dropout=0.5)
    x = torch.randn(2, 1, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        first, second = net(x)[0], net(x)[0]
    assert torch.equal(first, second)
    net.train()
    torch.manual_seed(1)
    with torch.no_grad():
        a = net(x)[0]
        b = net(x)[0]
    assert not torch.equal(a, b)


def test_gradients_reach_both_networks():
    for net in build_networks(2, SMALL, (1, 1, 1, 1)):
        logits, features = net(torch.randn(2, 1, 16, 16, 16))
        (logits.square().mean() + features.mean()).backward()
        assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("which", [0, 1])
def test_folding_batchnorm_keeps_outputs_and_removes_every_norm(which):
    from SemiSupSegTraining.networks import fold_batchnorm

    torch.manual_seed(0)
    net = build_networks(3, 4, (1, 2, 1, 1))[which]
    x = torch.randn(2, 1, 32, 32, 32)
    net.train()
    with torch.no_grad():
        net(x)  # running statistics that differ from the identity
    net.eval()
    with torch.no_grad():
        before = net(x)[0]
        folded = fold_batchnorm(net)
        after = folded(x)[0]
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert torch.allclose(before, after, atol=1e-5)
