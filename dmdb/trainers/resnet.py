"""The networks of the paper's recipes, written in plain torch (no torchvision).

``resnet9``
    The fast CIFAR ResNet-9 of the FFCV CIFAR-10 example, which the
    datamodels authors trained: conv-bn-relu blocks, two residual blocks,
    global max pooling and a linear head scaled by 0.2.
``resnet18``
    The standard ImageNet-style ResNet-18 (7x7 stem, four stages of two
    basic blocks, global average pooling), used for FMoW.

Both take ``width``, the channel count of the first stage (64 in the
paper); the other stages scale with it, so a tiny width gives a network
small enough for CPU tests.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["resnet9", "resnet18"]


def _conv_bn(c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1,
             padding: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def resnet9(num_classes: int = 10, width: int = 64) -> nn.Sequential:
    """Return the FFCV-example ResNet-9.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    width : int
        Channels of the first block (64 in the recipe); the others are
        ``2 * width`` and ``4 * width``.

    Returns
    -------
    nn.Sequential
        Maps float images of shape (B, 3, H, W) to logits of shape
        (B, num_classes); any H, W >= 8 works.
    """
    w1, w2, w4 = width, 2 * width, 4 * width
    return nn.Sequential(
        _conv_bn(3, w1, kernel_size=3, stride=1, padding=1),
        _conv_bn(w1, w2, kernel_size=5, stride=2, padding=2),
        _Residual(nn.Sequential(_conv_bn(w2, w2), _conv_bn(w2, w2))),
        _conv_bn(w2, w4, kernel_size=3, stride=1, padding=1),
        nn.MaxPool2d(2),
        _Residual(nn.Sequential(_conv_bn(w4, w4), _conv_bn(w4, w4))),
        _conv_bn(w4, w2, kernel_size=3, stride=1, padding=0),
        nn.AdaptiveMaxPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(w2, num_classes, bias=False),
        # The FFCV example scales the logits down; it stabilises lr 0.5.
        _Scale(0.2),
    )


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class _ResNet18(nn.Module):
    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        layers: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate(widths):
            stride = 1 if stage == 0 else 2
            layers += [_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each block, so every block starts as the identity.
        for m in self.modules():
            if isinstance(m, _BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(num_classes: int = 62, width: int = 64) -> nn.Module:
    """Return an ImageNet-style ResNet-18.

    Parameters
    ----------
    num_classes : int
        Number of output logits (62 for FMoW).
    width : int
        Channels of the first stage (64 in the standard network); the
        stages have ``width, 2*width, 4*width, 8*width`` channels.

    Returns
    -------
    nn.Module
        Maps float images of shape (B, 3, H, W) to logits of shape
        (B, num_classes); H, W >= 32 is advised (the stem divides by 4 and
        the stages by 8 more).
    """
    return _ResNet18(num_classes, width)
