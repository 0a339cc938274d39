"""The two subnetworks of the paper: Subnet A, a V-Net; Subnet B, a ResNet-encoder V-Net.

Both map an image (B, C_in, D, H, W) with D, H, W divisible by 16 to ``(logits, features)``: logits
(B, K, D, H, W) and the last decoder block's full-resolution features (B, F, D, H, W), F = base filters,
which the prototype contrastive loss (Eq. 6-7) works on. The V-Net follows the one used by MC-Net/MCF
(four poolings, additive skips, dropout at the bottleneck; UA-MT's and BCP's V-Net also drop out the last
decoder features before the classifier, ``decoder_dropout``); Subnet B swaps the encoder for a 3D
ResNet34-style stack of basic blocks ([3, 4, 6, 3] by default) and keeps the same decoder.
"""

from typing import Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm3d(channels)
    if kind == "instancenorm":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r}")


class ConvStack(nn.Sequential):
    """``stages`` × (3³ conv, normalisation, ReLU)."""

    def __init__(self, stages: int, in_channels: int, out_channels: int, norm: str):
        layers = []
        for i in range(stages):
            layers += [nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
                       _norm(norm, out_channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class Resample(nn.Sequential):
    """Halves (strided 2³ conv) or doubles (2³ transposed conv) the resolution."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, up: bool):
        conv = nn.ConvTranspose3d if up else nn.Conv3d
        super().__init__(conv(in_channels, out_channels, 2, stride=2), _norm(norm, out_channels),
                         nn.ReLU(inplace=True))


class VNetDecoder(nn.Module):
    """Four up-steps with additive skips, then a 1³ conv to the classes (through Dropout3d of ``dropout``
    when > 0: UA-MT's and BCP's ``has_dropout``; the features returned are those before it)."""

    def __init__(self, base: int, num_classes: int, norm: str, dropout: float = 0.0):
        super().__init__()
        n = base
        self.up5, self.block6 = Resample(16 * n, 8 * n, norm, up=True), ConvStack(3, 8 * n, 8 * n, norm)
        self.up6, self.block7 = Resample(8 * n, 4 * n, norm, up=True), ConvStack(3, 4 * n, 4 * n, norm)
        self.up7, self.block8 = Resample(4 * n, 2 * n, norm, up=True), ConvStack(2, 2 * n, 2 * n, norm)
        self.up8, self.block9 = Resample(2 * n, n, norm, up=True), ConvStack(1, n, n, norm)
        self.head = nn.Conv3d(n, num_classes, 1)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, skips: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        x1, x2, x3, x4, x5 = skips
        x = self.block6(self.up5(x5) + x4)
        x = self.block7(self.up6(x) + x3)
        x = self.block8(self.up7(x) + x2)
        features = self.block9(self.up8(x) + x1)
        return self.head(self.dropout(features)), features


class VNet(nn.Module):
    """Subnet A. ``base_filters`` = 16 is the paper's scale (9.45 M parameters with one input channel)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_filters: int = 16,
                 norm: str = "batchnorm", dropout: float = 0.5, decoder_dropout: bool = False):
        super().__init__()
        n = base_filters
        self.block1 = ConvStack(1, in_channels, n, norm)
        self.down1, self.block2 = Resample(n, 2 * n, norm, up=False), ConvStack(2, 2 * n, 2 * n, norm)
        self.down2, self.block3 = Resample(2 * n, 4 * n, norm, up=False), ConvStack(3, 4 * n, 4 * n, norm)
        self.down3, self.block4 = Resample(4 * n, 8 * n, norm, up=False), ConvStack(3, 8 * n, 8 * n, norm)
        self.down4, self.block5 = Resample(8 * n, 16 * n, norm, up=False), ConvStack(3, 16 * n, 16 * n, norm)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.decoder = VNetDecoder(n, num_classes, norm, dropout if decoder_dropout else 0.0)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x1 = self.block1(x)
        x2 = self.block2(self.down1(x1))
        x3 = self.block3(self.down2(x2))
        x4 = self.block4(self.down3(x3))
        x5 = self.dropout(self.block5(self.down4(x4)))
        return self.decoder((x1, x2, x3, x4, x5))


class BasicBlock3d(nn.Module):
    """ResNet's basic block in 3D: two 3³ convs with a shortcut (1³ strided conv when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          _norm(norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResVNet(nn.Module):
    """Subnet B: a ResNet34-style 3D encoder (stages of basic blocks, each halving the resolution and
    doubling the width as the V-Net's encoder does) feeding the V-Net decoder."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_filters: int = 16,
                 blocks: Sequence[int] = (3, 4, 6, 3), norm: str = "batchnorm", dropout: float = 0.5,
                 decoder_dropout: bool = False):
        super().__init__()
        n = base_filters
        self.stem = ConvStack(1, in_channels, n, norm)
        widths = [n, 2 * n, 4 * n, 8 * n, 16 * n]
        self.stages = nn.ModuleList()
        for i, count in enumerate(blocks):
            layers = [BasicBlock3d(widths[i], widths[i + 1], 2, norm)]
            layers += [BasicBlock3d(widths[i + 1], widths[i + 1], 1, norm) for _ in range(count - 1)]
            self.stages.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.decoder = VNetDecoder(n, num_classes, norm, dropout if decoder_dropout else 0.0)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        skips = [self.stem(x)]
        for stage in self.stages:
            skips.append(stage(skips[-1]))
        skips[-1] = self.dropout(skips[-1])
        return self.decoder(skips)


class ProjectionHead(nn.Sequential):
    """Maps a network's decoder features (B, F, *spatial) to the D-dimensional voxel representations that the
    prototype contrastive loss (Eq. 6-7) works on: 1³ conv, batch norm, ReLU, 1³ conv.

    Training only (inference never needs it), so model files do not hold it. Without it L_c pulls on the
    very features the classifier reads, and on our benchmark that cost Dice (docs/method.md).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv3d(in_channels, in_channels, 1), nn.BatchNorm3d(in_channels), nn.ReLU(inplace=True),
                         nn.Conv3d(in_channels, out_channels, 1))


NETWORK_KINDS = ("VNet", "ResVNet")


def build_networks(num_classes: int, base_filters: int = 16, resnet_blocks: Sequence[int] = (3, 4, 6, 3),
                   dropout: float = 0.5, in_channels: int = 1,
                   kinds: Sequence[str] = NETWORK_KINDS, decoder_dropout: bool = False) -> Tuple[nn.Module, nn.Module]:
    """(Subnet A, Subnet B): a V-Net and a ResNet-encoder V-Net as the paper pairs them, or the two networks
    named by ``kinds`` ("VNet" or "ResVNet" each; the baselines train two V-Nets), built in that order;
    ``decoder_dropout``: ``dropout`` also before each classifier."""
    if len(resnet_blocks) != 4:
        raise ValueError("resnet_blocks needs four stage lengths, e.g. (3, 4, 6, 3)")
    if len(kinds) != 2 or any(kind not in NETWORK_KINDS for kind in kinds):
        raise ValueError(f"kinds names two of {NETWORK_KINDS}, got {tuple(kinds)}")
    return tuple(VNet(in_channels, num_classes, base_filters, dropout=dropout, decoder_dropout=decoder_dropout)
                 if kind == "VNet" else ResVNet(in_channels, num_classes, base_filters, resnet_blocks, dropout=dropout,
                                                decoder_dropout=decoder_dropout) for kind in kinds)


def _fold_pair(conv: nn.Module, norm: nn.Module) -> nn.Module:
    transpose = isinstance(conv, nn.ConvTranspose3d)
    return fuse_conv_bn_eval(conv, norm, transpose=transpose)


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Folds every eval-mode batch norm into the convolution before it (exact; inference only).

    Batch norm after a convolution is an affine map per channel, so it can live in the convolution's
    weights and bias; on a CPU this saves about a fifth of the forward time.
    """
    if net.training:
        raise ValueError("fold_batchnorm is for networks in eval mode")
    for module in net.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            for i in range(len(children) - 1):
                if isinstance(children[i], (nn.Conv3d, nn.ConvTranspose3d)) and \
                        isinstance(children[i + 1], nn.BatchNorm3d):
                    module[i] = _fold_pair(children[i], children[i + 1])
                    module[i + 1] = nn.Identity()
        elif isinstance(module, BasicBlock3d):
            for conv, norm in (("conv1", "norm1"), ("conv2", "norm2")):
                if isinstance(getattr(module, norm), nn.BatchNorm3d):
                    setattr(module, conv, _fold_pair(getattr(module, conv), getattr(module, norm)))
                    setattr(module, norm, nn.Identity())
    return net


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
