"""Small stand-ins for the architectures people serve, each keeping the constructs that break the road.

Written here (torchvision cannot be installed beside the CPU torch wheel of
this project's machine); sizes are small so that a conversion takes seconds.
Each factory returns a model in eval mode with seeded weights; ``SHAPES``
gives its input shapes (the ``--input-shape`` values), ``SEQUENCE_AXES`` the
sequence axes of the text models' inputs. The ``hf_*`` models and
``swin_padded`` are written the way HuggingFace transformers writes BERT,
GPT-2, DistilBERT and Swin (plain torch, without the package): the buffers,
the index arithmetic on ``x.size()`` and the masks of its modelling code.
"""

from __future__ import annotations

import itertools
import math

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
        self.tokens, self.positions = nn.Embedding(100, 32), nn.Embedding(32, 32)  # lengths up to 32
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


def feed_forward(width: int, hidden: int) -> nn.Sequential:
    """A transformer's feed-forward: Linear, GELU, Linear."""
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, length, width) -> (batch, heads, length, width // heads) as HF's transpose_for_scores writes it: a
    view to x.size()[:-1] + (heads, size), then a permute."""
    return x.view(x.size()[:-1] + (heads, x.size(-1) // heads)).permute(0, 2, 1, 3)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """The inverse of split_heads, as HF writes it: permute, contiguous, a view to x.size()[:-2] + (width,)."""
    x = x.permute(0, 2, 1, 3).contiguous()
    return x.view(x.size()[:-2] + (x.size(-2) * x.size(-1),))


def attention_scores(query: torch.Tensor, key: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's eager attention scores: heads split, query @ key^T / sqrt(head size)."""
    query, key = split_heads(query, heads), split_heads(key, heads)
    return query @ key.transpose(-1, -2) / math.sqrt(query.size(-1))


def attention_context(scores: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """The masked scores' softmax applied to the values, heads merged back."""
    return merge_heads(scores.softmax(-1) @ split_heads(value, heads))


def extended_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """HF's extended attention mask, (batch, 1, 1, length): 0 where a token is attended to, the dtype's minimum
    where not. Any positive mask value attends (random integer feeds hold 0..3)."""
    attended = (attention_mask > 0)[:, None, None, :].to(dtype)
    return (1.0 - attended) * torch.finfo(dtype).min


class Embeddings(nn.Module):
    """HF's text embeddings: position ids (and token type ids, when there are token types) in buffers, sliced to
    the sequence length, the token types expanded to the batch; their sum through a LayerNorm."""

    def __init__(self, vocab: int, positions: int, width: int, token_types: int = 0) -> None:
        super().__init__()
        self.word_embeddings, self.position_embeddings = nn.Embedding(vocab, width), nn.Embedding(positions, width)
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)), persistent=False)
        self.token_type_embeddings = nn.Embedding(token_types, width) if token_types else None
        if token_types:
            self.register_buffer("token_type_ids", torch.zeros(self.position_ids.size(), dtype=torch.long),
                                 persistent=False)
        self.LayerNorm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        input_shape = input_ids.size()
        seq_length = input_shape[1]
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids[:, :seq_length])
        if self.token_type_embeddings is not None:
            token_type_ids = self.token_type_ids[:, :seq_length].expand(input_shape[0], seq_length)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(embeddings)


class BertAttention(nn.Module):
    """BERT's self-attention: query, key and value Linears, an additive mask on the scores, an output Linear."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.output = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        scores = self.masked(attention_scores(self.query(x), self.key(x), self.heads), mask)
        return self.output(attention_context(scores, self.value(x), self.heads))

    def masked(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The scores with the mask applied: here added, as BERT's extended mask is."""
        return scores + mask


class DistilBertAttention(BertAttention):
    """DistilBERT's self-attention: the raw attention mask applied by masked_fill with the dtype's minimum."""

    def masked(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        hidden = (mask == 0).view(scores.size(0), 1, 1, mask.size(-1)).expand_as(scores)
        return scores.masked_fill(hidden, torch.tensor(torch.finfo(scores.dtype).min))


class PostNormLayer(nn.Module):
    """A post-LN encoder layer (BERT, DistilBERT): LayerNorm(x + attention), then LayerNorm(x + feed-forward)."""

    def __init__(self, attention: nn.Module, width: int, hidden: int) -> None:
        super().__init__()
        self.attention, self.attention_norm = attention, nn.LayerNorm(width, eps=1e-12)
        self.ffn, self.output_norm = feed_forward(width, hidden), nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x, mask))
        return self.output_norm(x + self.ffn(x))


class PreNormLayer(nn.Module):
    """A pre-LN layer (GPT-2, Swin): x + attention(LayerNorm(x), ...), then x + mlp(LayerNorm(x))."""

    def __init__(self, attention: nn.Module, mlp: nn.Module, width: int) -> None:
        super().__init__()
        self.ln_1, self.attention, self.ln_2, self.mlp = nn.LayerNorm(width), attention, nn.LayerNorm(width), mlp

    def forward(self, x: torch.Tensor, *context: torch.Tensor | int) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x), *context)
        return x + self.mlp(self.ln_2(x))


class HFBert(nn.Module):
    """BERT as HF writes it: position and token type ids from buffers, an additive attention mask, post-LN layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = Embeddings(100, 32, 32, token_types=2)
        self.layers = nn.ModuleList(PostNormLayer(BertAttention(32, 4), 32, 64) for _ in range(2))
        self.pooler, self.classifier = nn.Linear(32, 32), nn.Linear(32, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        mask = extended_mask(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


class HFDistilBert(nn.Module):
    """DistilBERT as HF writes it: position ids from a buffer, the mask applied by masked_fill with the dtype's
    minimum, post-LN layers, a ReLU classifier on the first token."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = Embeddings(100, 32, 32)
        self.layers = nn.ModuleList(PostNormLayer(DistilBertAttention(32, 4), 32, 64) for _ in range(2))
        self.pre_classifier, self.classifier = nn.Linear(32, 32), nn.Linear(32, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, attention_mask)
        return self.classifier(F.relu(self.pre_classifier(x[:, 0])))


class Conv1D(nn.Module):
    """GPT-2's Linear: the weight stored (inputs, outputs), torch.addmm on x.view(-1, inputs), the result viewed
    back to x.size()[:-1] + (outputs,)."""

    def __init__(self, outputs: int, inputs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(inputs, outputs) / math.sqrt(inputs))
        self.bias = nn.Parameter(torch.randn(outputs) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.weight.size(1),)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


class CausalAttention(nn.Module):
    """GPT-2's attention: one Conv1D split into query, key and value; the causal mask a slice of a lower-triangular
    buffer applied by torch.where with the dtype's minimum, then the additive padding mask."""

    def __init__(self, width: int, heads: int, positions: int) -> None:
        super().__init__()
        self.width, self.heads = width, heads
        self.c_attn, self.c_proj = Conv1D(3 * width, width), Conv1D(width, width)
        self.register_buffer("bias", torch.tril(torch.ones((positions, positions), dtype=torch.bool))
                             .view(1, 1, positions, positions), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        query, key, value = self.c_attn(x).split(self.width, dim=2)
        scores = attention_scores(query, key, self.heads)
        query_length, key_length = scores.size(-2), scores.size(-1)
        causal = self.bias[:, :, key_length - query_length:key_length, :key_length]
        scores = torch.where(causal, scores, torch.full([], torch.finfo(scores.dtype).min, dtype=scores.dtype))
        return self.c_proj(attention_context(scores + mask, value, self.heads))


class HFGPT2(nn.Module):
    """GPT-2 as HF writes it: causal mask from a tril buffer, attention mask, pre-LN layers, tied LM head."""

    def __init__(self) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(100, 32), nn.Embedding(32, 32)
        self.h = nn.ModuleList(
            PreNormLayer(CausalAttention(32, 4, 32),
                         nn.Sequential(Conv1D(128, 32), nn.GELU(approximate="tanh"), Conv1D(32, 128)), 32)
            for _ in range(2))
        self.ln_f = nn.LayerNorm(32)
        self.lm_head = nn.Linear(32, 100, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        input_shape = input_ids.size()
        input_ids = input_ids.view(-1, input_shape[-1])
        position_ids = torch.arange(0, input_shape[-1], dtype=torch.long, device=input_ids.device).unsqueeze(0)
        hidden = self.wte(input_ids) + self.wpe(position_ids)
        mask = extended_mask(attention_mask.view(input_ids.size(0), -1), hidden.dtype)
        for block in self.h:
            hidden = block(hidden, mask)
        return self.lm_head(self.ln_f(hidden))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(batch, height, width, channels) -> (batch * windows, window, window, channels), as HF's Swin writes it."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """The inverse of window_partition, the batch left to view's -1."""
    channels = windows.shape[-1]
    windows = windows.view(-1, height // window, width // window, window, window, channels)
    return windows.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, height, width, channels)


class SwinSelfAttention(BertAttention):
    """Swin's window attention: a relative position bias gathered from a table by an index buffer, and the shifted
    windows' mask added through a view to (batch // windows, windows, heads, n, n)."""

    def __init__(self, width: int, heads: int, window: int) -> None:
        super().__init__(width, heads)
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.1)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", relative[..., 0] * (2 * window - 1) + relative[..., 1],
                             persistent=False)

    def masked(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        tokens = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(tokens, tokens, -1)
        scores = scores + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is None:
            return scores
        windows = mask.shape[0]
        scores = scores.view(scores.shape[0] // windows, windows, self.heads, tokens, tokens)
        return (scores + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.heads, tokens, tokens)


class ShiftedWindows(nn.Module):
    """Swin's attention over a map whose size is not a multiple of the window: F.pad to it, torch.roll by the
    shift, window partition, attention (with the shift's mask), window reverse, roll back, crop."""

    def __init__(self, width: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.attention = SwinSelfAttention(width, heads, window)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, channels = x.size()
        x = x.view(batch, height, width, channels)
        pad_right = (self.window - width % self.window) % self.window
        pad_bottom = (self.window - height % self.window) % self.window
        x = F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
        _, padded_height, padded_width, _ = x.shape
        mask = None
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), (1, 2))
            mask = self.shift_mask(padded_height, padded_width, x.dtype)
        windows = window_partition(x, self.window).view(-1, self.window * self.window, channels)
        windows = self.attention(windows, mask).view(-1, self.window, self.window, channels)
        x = window_reverse(windows, self.window, padded_height, padded_width)
        if self.shift:
            x = torch.roll(x, (self.shift, self.shift), (1, 2))
        return x[:, :height, :width, :].contiguous().view(batch, height * width, channels)

    def shift_mask(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """HF's get_attn_mask: regions of the rolled map numbered, -100 between tokens of different regions."""
        regions = torch.zeros((1, height, width, 1), dtype=dtype)
        cuts = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
        for count, (rows, columns) in enumerate(itertools.product(cuts, cuts)):
            regions[:, rows, columns, :] = count
        regions = window_partition(regions, self.window).view(-1, self.window * self.window)
        mask = regions.unsqueeze(1) - regions.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class SwinPadded(nn.Module):
    """Swin as HF writes it on a 7x7 map, 4x4 windows: F.pad before partition, crop after, shift mask, merging pad."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.embed_norm = nn.Conv2d(3, 16, 4, 4), nn.LayerNorm(16)
        self.layers = nn.ModuleList(PreNormLayer(ShiftedWindows(16, 2, 4, shift), feed_forward(16, 32), 16)
                                    for shift in (0, 2))
        self.merge_norm, self.reduction = nn.LayerNorm(64), nn.Linear(64, 32, bias=False)
        self.norm, self.head = nn.LayerNorm(32), nn.Linear(32, 10)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.embed(pixel_values)
        _, _, height, width = x.shape
        x = self.embed_norm(x.flatten(2).transpose(1, 2))
        for layer in self.layers:
            x = layer(x, height, width)
        x = self.norm(self.merge(x, height, width))
        return self.head(F.adaptive_avg_pool1d(x.transpose(1, 2), 1).flatten(1))

    def merge(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """HF's patch merging: the map padded to even sizes, its four interleaved quarters concatenated."""
        batch, _, channels = x.shape
        x = F.pad(x.view(batch, height, width, channels), (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :], x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]], -1)
        return self.reduction(self.merge_norm(x.view(batch, -1, 4 * channels)))


FACTORIES = {"resnet": ResNet, "squeezenet": SqueezeNet, "shufflenet": ShuffleNet, "inception": Inception,
             "densenet": DenseNet, "mobilenet": MobileNet, "vit": ViT, "text_lstm": TextLSTM, "unet": UNet,
             "convnext": ConvNeXt, "swin": Swin, "bert": Bert, "audio_cnn": AudioCNN, "speech_tagger": SpeechTagger,
             "unet3d": UNet3D, "hf_bert": HFBert, "hf_gpt2": HFGPT2, "hf_distilbert": HFDistilBert,
             "swin_padded": SwinPadded}
TEXT = ["int64:1,16", "int64:1,16"]  # input_ids, attention_mask
SHAPES = {name: ["1,3,32,32"] for name in FACTORIES} | {
    "text_lstm": ["int64:1,12"], "bert": TEXT, "audio_cnn": ["1,1,400"],
    "speech_tagger": ["1,20,8"],
    "unet3d": ["1,1,16,16,16"], "hf_bert": TEXT, "hf_gpt2": TEXT, "hf_distilbert": TEXT,
    "swin_padded": ["1,3,28,28"]}
# the text models' sequence axes: "input:axis,input:axis" (input names: forward()'s parameters)
SEQUENCE_AXES = {"text_lstm": "tokens:1"} | {name: "input_ids:1,attention_mask:1"
                                              for name in ("bert", "hf_bert", "hf_gpt2", "hf_distilbert")}


def dynamic_sequence(name: str) -> list[str]:
    """The text model ``name``'s sequence axes as ``torch.dynamic_axes`` takes them, named ``seq``."""
    return [f"{entry}:seq" for entry in SEQUENCE_AXES[name].split(",")]


def build(name: str) -> nn.Module:
    """The model called ``name`` (a key of FACTORIES): ``surgeon run bench/zoo.py:build --set torch.kwargs=...``."""
    torch.manual_seed(0)
    return seeded(FACTORIES[name]())
