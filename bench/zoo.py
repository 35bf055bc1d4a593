"""Small stand-ins for the architectures people serve, each keeping the constructs that break the road.

Written here (torchvision cannot be installed beside the CPU torch wheel of
this project's machine); sizes are small so that a conversion takes seconds.
Each factory returns a model in eval mode with seeded weights; ``SHAPES``
gives its input shapes (the ``--input-shape`` values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(inputs: int, outputs: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(outputs), nn.ReLU())


def seeded(model: nn.Module) -> nn.Module:
    """Batch-norm statistics that are not the identity, so that folding them wrongly would show."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


class Residual(nn.Module):
    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels // stride, channels, stride=stride),
                                  nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))
        self.skip = (nn.Identity() if stride == 1 else
                     nn.Sequential(nn.Conv2d(channels // stride, channels, 1, stride, bias=False),
                                   nn.BatchNorm2d(channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """ResNet: MaxPool2d(3, 2, 1), residual stages, AvgPool2d over the last map, x.view(x.size(0), -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 8, 7, 2), nn.MaxPool2d(3, 2, 1))
        self.stages = nn.Sequential(Residual(8, 1), Residual(16, 2), Residual(32, 2))
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(x.view(x.size(0), -1))


class Fire(nn.Module):
    def __init__(self, inputs: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inputs, squeeze, 1)
        self.left, self.right = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.left(x)), F.relu(self.right(x))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet: MaxPool2d(3, 2, ceil_mode=True), fire modules, AdaptiveAvgPool2d(1), torch.flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      Fire(16, 4, 8), Fire(16, 4, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      Fire(16, 8, 16))
        self.classifier = nn.Sequential(nn.Conv2d(32, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2).contiguous()
    return x.view(batch, -1, height, width)


class ShuffleBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half), conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([left, self.branch(right)], 1), 2)


class ShuffleNet(nn.Module):
    """ShuffleNet v2: channel shuffle through view(batch, ...) with the batch read off x.size()."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(ShuffleBlock(16), ShuffleBlock(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean([2, 3]))


class InceptionBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.one = conv_bn(channels, 8, 1)
        self.three = conv_bn(channels, 8, 3)
        self.pool = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), conv_bn(channels, 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.one(x), self.three(x), self.pool(x)], 1)


class Inception(nn.Module):
    """Inception: AvgPool2d(3, 1, 1, count_include_pad=False) branches and MaxPool2d(3, 2, ceil_mode=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.MaxPool2d(3, 2, ceil_mode=True))
        self.blocks = nn.Sequential(InceptionBlock(16), InceptionBlock(24))
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


class DenseNet(nn.Module):
    """DenseNet: concatenated features, AvgPool2d(2, 2) transitions, F.adaptive_avg_pool2d."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2)
        self.layers = nn.ModuleList([conv_bn(8, 4), conv_bn(12, 4), conv_bn(16, 4)])
        self.transition = nn.Sequential(nn.BatchNorm2d(20), nn.Conv2d(20, 10, 1), nn.AvgPool2d(2, 2))
        self.fc = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        x = F.adaptive_avg_pool2d(F.relu(self.transition(x)), (1, 1))
        return self.fc(torch.flatten(x, 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.gate = nn.Sequential(nn.Conv2d(channels, 4, 1), nn.ReLU(), nn.Conv2d(4, channels, 1), nn.Hardsigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.pool(x))


class MobileNet(nn.Module):
    """MobileNet v3: depthwise convolutions, Hardswish, squeeze-excitation, a Linear head after flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.Hardswish(),
            nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.Hardswish(), SqueezeExcite(16),
            nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.Hardswish())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ViT(nn.Module):
    """ViT: patches, a class token expanded to x.shape[0], attention, LayerNorm and GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 32, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 32))
        self.position = nn.Parameter(torch.randn(1, 17, 32) * 0.1)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patches(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.position
        return self.head(self.norm(self.encoder(x))[:, 0])


class TextLSTM(nn.Module):
    """A text classifier: token ids through an embedding and an LSTM, the last step to a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.lstm = nn.LSTM(16, 24, batch_first=True)
        self.fc = nn.Linear(24, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.fc(out[:, -1])


class UNet(nn.Module):
    """U-Net: max pooling down, nearest upsampling and a transposed convolution up, skip concatenations."""

    def __init__(self) -> None:
        super().__init__()
        self.down1, self.down2 = conv_bn(3, 8), conv_bn(8, 16)
        self.bottom = conv_bn(16, 16)
        self.up2 = nn.ConvTranspose2d(16, 16, 2, 2)
        self.merge2, self.merge1 = conv_bn(32, 8), conv_bn(16, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.down1(x)
        second = self.down2(F.max_pool2d(first, 2))
        bottom = self.bottom(F.max_pool2d(second, 2))
        x = self.merge2(torch.cat([self.up2(bottom), second], 1))
        x = self.merge1(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), first], 1))
        return self.out(x)


class ConvNeXtBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))
        self.scale = nn.Parameter(torch.full((channels,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.depthwise(x).permute(0, 2, 3, 1))
        return x + (self.scale * self.mlp(y)).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt: channels-last LayerNorm between permutes, GELU, layer scale, a patchify stem."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, 4)
        self.blocks = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.stem(x)).mean([-2, -1])))


class WindowAttention(nn.Module):
    def __init__(self, channels: int, window: int, heads: int) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.window
        windows = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        q, k, v = self.qkv(windows).reshape(-1, s * s, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        out = self.proj((attention @ v).transpose(1, 2).reshape(-1, s * s, c))
        return out.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class Swin(nn.Module):
    """Swin: window partition and merge through view(b, h // s, s, ...) with b read off x.shape, shifted
    windows (torch.roll), patch merging."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, 4)
        self.norm1, self.norm2 = nn.LayerNorm(16), nn.LayerNorm(16)
        self.attention, self.shifted = WindowAttention(16, 4, 2), WindowAttention(16, 4, 2)
        self.merge = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).permute(0, 2, 3, 1)
        x = x + self.attention(self.norm1(x))
        x = x + torch.roll(self.shifted(torch.roll(self.norm2(x), (-2, -2), (1, 2))), (2, 2), (1, 2))
        b, h, w, c = x.shape
        merged = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
        return self.head(self.merge(merged).mean([1, 2]))


class Bert(nn.Module):
    """BERT: token ids and an attention mask in, positions from torch.arange, the mask broadcast over heads."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(100, 32), nn.Embedding(16, 32)
        self.norm = nn.LayerNorm(32)
        self.qkv, self.out = nn.Linear(32, 96), nn.Linear(32, 32)
        self.ffn = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.pooler = nn.Linear(32, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, n = input_ids.shape
        positions = torch.arange(n, device=input_ids.device).unsqueeze(0).expand(b, n)
        x = self.norm(self.tokens(input_ids) + self.positions(positions))
        q, k, v = self.qkv(x).view(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / 8 ** 0.5
        scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, -1e4)
        x = x + self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, 32))
        x = x + self.ffn(x)
        return self.pooler(torch.tanh(x[:, 0]))


class AudioCNN(nn.Module):
    """A 1D audio classifier: AvgPool1d with count_include_pad=False and ceil_mode, MaxPool1d, a GRU head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 8, 9, 2, 4), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(3, 2, 1),
            nn.Conv1d(8, 8, 5, 1, 2), nn.ReLU(), nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False))
        self.gru = nn.GRU(8, 12, batch_first=True)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, hidden = self.gru(self.features(x).transpose(1, 2))
        return self.fc(hidden[-1])


class SpeechTagger(nn.Module):
    """A speech tagger: two stacked bidirectional LSTM layers over feature frames, a tag per frame."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.tags = nn.Linear(12, 5)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(frames)
        return self.tags(out).log_softmax(-1)


class UNet3D(nn.Module):
    """A 3D U-Net for CT volumes: MaxPool3d down, ConvTranspose3d up, a skip concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU())
        self.bottom = nn.Sequential(nn.MaxPool3d(2), nn.Conv3d(4, 8, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose3d(8, 4, 2, 2)
        self.out = nn.Conv3d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down(x)
        return self.out(torch.cat([self.up(self.bottom(skip)), skip], 1))


FACTORIES = {"resnet": ResNet, "squeezenet": SqueezeNet, "shufflenet": ShuffleNet, "inception": Inception,
             "densenet": DenseNet, "mobilenet": MobileNet, "vit": ViT, "text_lstm": TextLSTM, "unet": UNet,
             "convnext": ConvNeXt, "swin": Swin, "bert": Bert, "audio_cnn": AudioCNN, "speech_tagger": SpeechTagger,
             "unet3d": UNet3D}
SHAPES = {name: ["1,3,32,32"] for name in FACTORIES} | {
    "text_lstm": ["int64:1,12"], "bert": ["int64:1,16", "int64:1,16"], "audio_cnn": ["1,1,400"],
    "speech_tagger": ["1,20,8"],
    "unet3d": ["1,1,16,16,16"]}


def build(name: str) -> nn.Module:
    """The model called ``name`` (a key of FACTORIES): ``surgeon run bench/zoo.py:build --set torch.kwargs=...``."""
    torch.manual_seed(0)
    return seeded(FACTORIES[name]())
