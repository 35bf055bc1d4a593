"""The CT body-position classifier of the original recipe: a 3D ResNet-34.

One CT volume in (1 channel, depth x height x width), six body positions out.
The layout and parameter names follow the 3D ResNets the recipe trained
(``resnet34(num_classes=6, shortcut_type=True, sample_size=128,
sample_duration=128)``, where any shortcut type but 'A' means 1x1x1
convolution shortcuts), so a checkpoint trained with that code loads here: a
7x7x7 stem with stride (1, 2, 2), ``MaxPool3d(3, stride=2, padding=1)``,
residual stages of 3, 4, 6 and 3 basic blocks, an ``AvgPool3d`` whose fixed
size follows from the input size, and ``x.view(x.size(0), -1)`` before the
linear head: the flatten that freezes the batch at export.

Without a checkpoint the weights are random but deterministic, batch norms
included, so that converting them wrongly shows in the parity check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

STAGES = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)
SEED = 20191115


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class ResNet3d(nn.Module):
    layer1: nn.Sequential  # set in __init__, one per stage
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, sample_size: int, sample_duration: int, num_classes: int = 6, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, WIDTHS[0], kernel_size=7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        in_planes = WIDTHS[0]
        for index, (blocks, planes) in enumerate(zip(STAGES, WIDTHS)):
            stride = 1 if index == 0 else 2
            stage = [BasicBlock(in_planes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
            in_planes = planes
        side = math.ceil(sample_size / 32)
        self.avgpool = nn.AvgPool3d((math.ceil(sample_duration / 16), side, side), stride=1)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(input))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


def ct_position(input_shape: Sequence[int], num_classes: int = 6) -> ResNet3d:
    """The classifier for volumes of ``input_shape`` (N, C, D, H, W with H == W), with seeded weights."""
    if len(input_shape) != 5 or input_shape[3] != input_shape[4]:
        raise ValueError(f"ct-position takes volumes N, C, D, H, W with square slices (H == W), "
                         f"got input shape {tuple(input_shape)}")
    _, channels, depth, height, _ = input_shape
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = ResNet3d(sample_size=height, sample_duration=depth, num_classes=num_classes, in_channels=channels)
        for module in model.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                randomise(module)
    return model.eval()


@torch.no_grad()
def randomise(norm: nn.BatchNorm3d) -> None:
    """Batch-norm parameters and statistics that differ per channel, as trained ones do."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("randomise() takes a batch norm that tracks running statistics")
    norm.weight.uniform_(0.8, 1.2)
    norm.bias.normal_(0.0, 0.1)
    norm.running_mean.normal_(0.0, 0.1)
    norm.running_var.uniform_(0.5, 1.5)
