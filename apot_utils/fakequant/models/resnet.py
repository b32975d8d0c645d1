"""ResNets with APoT-quantized convolutions.

CIFAR: ResNet-20/32/44/56 (He et al. 2016, 16-32-64 channels), input [N, 3, 32, 32].
ImageNet: ResNet-18/34 in torchvision's layout, input [N, 3, 224, 224].
The first convolution and the last linear layer are 8-bit in every model, as in the
release (its full-precision CIFAR model included); ``bit`` (2..8, or 32 for full
precision) sets every other convolution; ``terms`` and ``per_channel`` are QuantConv2d's.
"""
from __future__ import annotations

import math

from torch import nn

from ..layers import FirstConv8bit, LastLinear8bit, QuantConv2d


class BasicBlock(nn.Module):
    """quant: QuantConv2d's keyword arguments (bit, scheme, terms, per_channel)."""

    def __init__(self, inplanes: int, planes: int, stride: int, quant: dict):
        super().__init__()
        self.conv1 = QuantConv2d(inplanes, planes, 3, stride, 1, **quant)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = QuantConv2d(planes, planes, 3, 1, 1, **quant)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(QuantConv2d(inplanes, planes, 1, stride, **quant), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class _ResNet(nn.Module):
    def __init__(self, bit: int, scheme: str, terms: int | None, per_channel: bool, inplanes: int):
        super().__init__()
        self.bit, self.scheme, self.terms, self.per_channel, self.inplanes = bit, scheme, terms, per_channel, inplanes

    def _make_stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            quant = {"bit": self.bit, "scheme": self.scheme, "terms": self.terms, "per_channel": self.per_channel}
            layers.append(BasicBlock(self.inplanes, planes, s, quant))
            self.inplanes = planes
        return nn.Sequential(*layers)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class CifarResNet(_ResNet):
    """[N, 3, 32, 32] images -> [N, num_classes] logits."""

    def __init__(self, depth: int = 20, bit: int = 4, scheme: str = "apot", num_classes: int = 10,
                 terms: int | None = None, per_channel: bool = False):
        super().__init__(bit, scheme, terms, per_channel, 16)
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = FirstConv8bit(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(16, blocks, 1)
        self.layer2 = self._make_stage(32, blocks, 2)
        self.layer3 = self._make_stage(64, blocks, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = LastLinear8bit(64, num_classes)
        self._init_weights()

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class ImageNetResNet(_ResNet):
    """[N, 3, 224, 224] images -> [N, num_classes] logits (torchvision's ResNet layout)."""

    def __init__(self, layers: tuple[int, int, int, int], bit: int = 4, scheme: str = "apot",
                 num_classes: int = 1000, terms: int | None = None, per_channel: bool = False):
        super().__init__(bit, scheme, terms, per_channel, 64)
        self.conv1 = FirstConv8bit(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_stage(64, layers[0], 1)
        self.layer2 = self._make_stage(128, layers[1], 2)
        self.layer3 = self._make_stage(256, layers[2], 2)
        self.layer4 = self._make_stage(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = LastLinear8bit(512, num_classes)
        self._init_weights()

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))
