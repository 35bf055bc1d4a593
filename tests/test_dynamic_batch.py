"""dynamic_batch: the batch follows the runtime batch everywhere it flows.

Each pattern that bakes the export batch into a graph is built twice, at
export batch 1 (where the value 1 is everywhere) and at export batch 2. After
the pass the model must compute, on onnxruntime at batch 1, 3 and 8, what the
original computes for each sample, and sample i of a batched run must equal
the run of sample i alone.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import surgeon
from surgeon import SurgeonError, UsageError
from surgeon.testing import apply_pass, apply_pass_with_record, assert_idempotent, find_pass, model_from_text
from surgeon.feeds import random_feed
from surgeon.verify import compare, onnxruntime_runner

SIZES = (1, 3, 8)
EXPORT_BATCHES = (1, 2)


def graph_text(batch: int, signature: str, body: str, constants: str = "") -> onnx.ModelProto:
    """A model from ONNX text (opset 13) where ``{B}`` stands for the export batch."""
    text = f'<ir_version: 8, opset_import: ["" : 13]>\ng {signature}\n' + (f"<{constants}>\n" if constants else "")
    return model_from_text((text + f"{{\n{body}\n}}").replace("{B}", str(batch)))


def numbers(count: int, start: float = 0.0, step: float = 0.25) -> str:
    return ", ".join(f"{start + step * i:g}" for i in range(count))


def samples_alone(model: onnx.ModelProto):
    """What ``model`` (fixed batch B) computes for each sample: sample i repeated B times, first result kept."""
    run = onnxruntime_runner(model)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value

    def outputs(feed: list[np.ndarray]) -> list[np.ndarray]:
        parts = [run([[np.repeat(a[i : i + 1], batch, axis=0) for a in feed]])[0] for i in range(len(feed[0]))]
        return [np.concatenate([p[index][:1] for p in parts]) for index in range(len(parts[0]))]

    return outputs


def assert_follows_batch(original: onnx.ModelProto, rewritten: onnx.ModelProto, sizes=SIZES) -> None:
    """At each size, ``rewritten`` matches ``original`` sample by sample, and its samples do not mix."""
    reference, run = samples_alone(original), onnxruntime_runner(rewritten)
    for size in sizes:
        feed = random_feed(rewritten, size)
        batched = run([feed])[0]
        rows = compare("onnx", size, batched, reference(feed), 1e-5, 1e-5)
        alone = [run([[a[i : i + 1] for a in feed]])[0] for i in range(size)]
        rows += compare("onnx", size, batched, [np.concatenate(p) for p in zip(*alone)], 1e-5, 1e-5, "per-sample")
        assert all(row["ok"] for row in rows), rows


def batch_dims(values) -> list:
    return [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values]


# -- the patterns, as exporters write them (name -> build(export batch) -> model)

def flatten_to_one_row(b: int) -> onnx.ModelProto:
    # x.view(x.size(0), -1): the export batch becomes the first entry of a constant shape
    return graph_text(b, "(float[{B}, 2, 3] x) => (float[{B}, 4] y)", """
        flat = Reshape(x, shape)
        y = MatMul(flat, w)""", f"int64[2] shape = {{{b}, -1}}, float[6, 4] w = {{{numbers(24, -3)}}}")


def zeros_along_channels(b: int) -> onnx.ModelProto:
    # ResNet "shortcut A": zeros built from x.size(0) concatenated along channels
    return graph_text(b, "(float[{B}, 2, 3] x) => (float[{B}, 3, 3] y)", "y = Concat<axis=1>(x, zeros)",
                      f"float[{b}, 1, 3] zeros = {{{', '.join(['0'] * 3 * b)}}}")


def expanded_token(b: int) -> onnx.ModelProto:
    # a class token: cls.expand(x.size(0), -1, -1), then concatenated
    return graph_text(b, "(float[{B}, 2, 3] x) => (float[{B}, 3, 3] y)", """
        token = Expand(cls, shape)
        y = Concat<axis=1>(token, x)""", "float[1, 1, 3] cls = {0.5, -1, 2}, int64[3] shape = {{B}, 1, 3}")


def tiled_token(b: int) -> onnx.ModelProto:
    return graph_text(b, "(float[{B}, 2, 3] x) => (float[{B}, 3, 3] y)", """
        token = Tile(cls, repeats)
        y = Concat<axis=1>(x, token)""", "float[1, 1, 3] cls = {0.5, -1, 2}, int64[3] repeats = {{B}, 1, 1}")


def filled_rows(b: int) -> onnx.ModelProto:
    # torch.full((x.size(0), 1, 3), 1.5) kept as ConstantOfShape
    return graph_text(b, "(float[{B}, 2, 3] x) => (float[{B}, 3, 3] y)", """
        fill = ConstantOfShape<value = float[1] {1.5}>(shape)
        y = Concat<axis=1>(fill, x)""", "int64[3] shape = {{B}, 1, 3}")


def resized_to_sizes(b: int) -> onnx.ModelProto:
    return graph_text(b, "(float[{B}, 2, 3, 3] x) => (float[{B}, 2, 5, 4] y)",
                      'y = Resize<mode = "linear">(x, "", "", sizes)', "int64[4] sizes = {{B}, 2, 5, 4}")


def sliced_batch(b: int) -> onnx.ModelProto:
    # x[:x.size(0), 1:3]: the end on the batch axis is the export batch
    return graph_text(b, "(float[{B}, 4] x) => (float[{B}, 2] y)", "y = Slice(x, starts, ends, axes)",
                      "int64[2] starts = {0, 1}, int64[2] ends = {{B}, 3}, int64[2] axes = {0, 1}")


def heads_split_and_joined(b: int) -> onnx.ModelProto:
    # attention: x.view(x.shape[0], n, heads, d) ... .reshape(x.shape[0], n, heads * d)
    return graph_text(b, "(float[{B}, 2, 6] x) => (float[{B}, 2, 6] y)", """
        [split_heads] heads = Reshape(x, split)
        swapped = Transpose<perm = [0, 2, 1, 3]>(heads)
        scores = MatMul(swapped, w)
        back = Transpose<perm = [0, 2, 1, 3]>(scores)
        [join_heads] y = Reshape(back, join)""",
                      f"int64[4] split = {{{b}, 2, 3, 2}}, int64[3] join = {{{b}, 2, 6}}, "
                      f"float[2, 2] w = {{0.5, -1, 1.5, 2}}")


def batch_merged_with_heads(b: int) -> onnx.ModelProto:
    # nn.MultiheadAttention: q.view(bsz * heads, n, d), then back to (bsz, n, heads * d)
    return graph_text(b, "(float[{B}, 2, 6] x) => (float[{B}, 12] y)", """
        split = Reshape(x, merged)
        scaled = Mul(split, half)
        y = Reshape(scaled, rows)""",
                      f"int64[3] merged = {{{2 * b}, 2, 3}}, int64[2] rows = {{{b}, 12}}, float half = {{0.5}}")


def rows_joined_per_sample(b: int) -> onnx.ModelProto:
    # the batch merged with another axis (bsz * n rows), then a constant of n rows per sample joined to them
    return graph_text(b, "(float[{B}, 2, 3] x) => (float[{B}, 8] y)", """
        rows = Reshape(x, merged)
        joined = Concat<axis=1>(rows, column)
        y = Reshape(joined, back)""",
                      f"int64[2] merged = {{{2 * b}, 3}}, float[{2 * b}, 1] column = {{{', '.join(['5, -5'] * b)}}}, "
                      f"int64[2] back = {{{b}, 8}}")


def same_rows_added(b: int) -> onnx.ModelProto:
    # a constant with the batch as leading dim, every row the same, added to the batch
    return graph_text(b, "(float[{B}, 3] x) => (float[{B}, 3] y)", "y = Add(x, bias)",
                      f"float[{b}, 3] bias = {{{', '.join(['1, -2, 0.5'] * b)}}}")


def initial_state_of_lstm(b: int) -> onnx.ModelProto:
    # torch.zeros(1, x.size(0), hidden) as the initial state of an LSTM (seq-first inside)
    return graph_text(b, "(float[{B}, 4, 2] x) => (float[{B}, 4, 3] y)", """
        seq = Transpose<perm = [1, 0, 2]>(x)
        out, h, c = LSTM<hidden_size = 3>(seq, w, r, "", "", zeros, zeros)
        squeezed = Reshape(out, shape)
        y = Transpose<perm = [1, 0, 2]>(squeezed)""",
                      f"float[1, 12, 2] w = {{{numbers(24, -3)}}}, float[1, 12, 3] r = {{{numbers(36, -4)}}}, "
                      f"float[1, {b}, 3] zeros = {{{', '.join(['0'] * 3 * b)}}}, int64[3] shape = {{4, {b}, 3}}")


PATTERNS = {build.__name__: build for build in (
    flatten_to_one_row, zeros_along_channels, expanded_token, tiled_token, filled_rows, resized_to_sizes,
    sliced_batch, heads_split_and_joined, batch_merged_with_heads, rows_joined_per_sample, same_rows_added,
    initial_state_of_lstm)}


@pytest.mark.parametrize("export_batch", EXPORT_BATCHES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_pattern_follows_the_runtime_batch(pattern, export_batch):
    original = PATTERNS[pattern](export_batch)
    rewritten, record = apply_pass_with_record("dynamic_batch", original)
    assert record.details["export_batch"] == export_batch
    # a constant of one row broadcasts over any batch: at export batch 1 it needs no rewrite
    assert bool(record.details["rewritten"]) == (export_batch > 1 or pattern != "same_rows_added")
    assert_follows_batch(original, rewritten)
    assert batch_dims(rewritten.graph.input)[0][0] == "batch"
    assert batch_dims(rewritten.graph.output)[0][0] == "batch"


@pytest.mark.parametrize("export_batch", EXPORT_BATCHES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_pattern_is_rewritten_once(pattern, export_batch):
    assert_idempotent("dynamic_batch", PATTERNS[pattern](export_batch))


def test_setting_only_the_input_dim_is_not_enough(tmp_path):
    """The common recipe, a symbolic input dim on a batch-1 export: the baked [1, -1] returns one row at batch 4."""
    original = flatten_to_one_row(1)
    recipe = onnx.ModelProto()
    recipe.CopyFrom(original)
    recipe.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    recipe.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(Exception):
        onnxruntime_runner(recipe)([random_feed(recipe, 4)])
    fixed = apply_pass("dynamic_batch", original)
    (y,) = onnxruntime_runner(fixed)([random_feed(fixed, 4)])[0]
    assert y.shape == (4, 4)


def test_the_rewrite_uses_minus_one_where_the_batch_goes():
    rewritten = apply_pass("dynamic_batch", flatten_to_one_row(1))
    (shape,) = [onnx.numpy_helper.to_array(t) for t in rewritten.graph.initializer
                if t.data_type == onnx.TensorProto.INT64]
    assert shape.tolist() == [-1, 6]


def test_stale_intermediate_shapes_are_updated():
    original = flatten_to_one_row(1)
    original.graph.value_info.append(onnx.helper.make_tensor_value_info("flat", onnx.TensorProto.FLOAT, [1, 6]))
    rewritten = apply_pass("dynamic_batch", original)
    (flat,) = [v for v in rewritten.graph.value_info if v.name == "flat"]
    assert batch_dims([flat]) == [["batch", 6]]


def test_a_model_already_dynamic_is_left_alone():
    model = flatten_to_one_row(1)
    model = apply_pass("dynamic_batch", model)
    rewritten, record = apply_pass_with_record("dynamic_batch", model)
    assert not record.changed
    assert_follows_batch(flatten_to_one_row(1), rewritten)


def test_an_exporter_s_dynamic_shape_computation_is_followed_not_rewritten():
    """Shape(x)[0:1] concatenated with [-1] already follows the batch: nothing to rewrite."""
    model = graph_text(1, "(float[batch, 2, 3] x) => (float[batch, 6] y)", """
        s = Shape(x)
        n = Slice(s, zero, one)
        shape = Concat<axis=0>(n, minus_one)
        y = Reshape(x, shape)""", "int64[1] zero = {0}, int64[1] one = {1}, int64[1] minus_one = {-1}")
    _, record = apply_pass_with_record("dynamic_batch", model)
    assert not record.changed


def test_the_dim_name_and_the_batched_inputs_are_options():
    model = graph_text(1, "(float[1, 2, 3] x, float[3] scale) => (float[1, 6] y)", """
        scaled = Mul(x, scale)
        y = Reshape(scaled, shape)""", "int64[2] shape = {1, -1}")
    with pytest.raises(SurgeonError, match=r"inputs: they disagree on the batch size on axis 0 \(x 1, scale 3\)"):
        apply_pass("dynamic_batch", model)
    rewritten = apply_pass("dynamic_batch", model, inputs="x", name="N")
    assert batch_dims(rewritten.graph.input) == [["N", 2, 3], [3]]
    assert batch_dims(rewritten.graph.output) == [["N", 6]]


@pytest.mark.parametrize("export_batch", EXPORT_BATCHES)
def test_a_sequence_first_model_takes_the_batch_axis_as_an_option(export_batch):
    model = graph_text(export_batch, "(float[4, {B}, 6] x) => (float[4, {B}, 6] y)", """
        heads = Reshape(x, split)
        y = Reshape(heads, join)""", "int64[4] split = {4, {B}, 2, 3}, int64[3] join = {4, {B}, 6}")
    rewritten = apply_pass("dynamic_batch", model, axis=1)
    assert batch_dims(rewritten.graph.output) == [[4, "batch", 6]]
    run = onnxruntime_runner(rewritten)
    for size in SIZES:
        x = np.random.default_rng(size).standard_normal((4, size, 6)).astype(np.float32)
        (y,) = run([[x]])[0]
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("options, message", [
    ({"inputs": "nope"}, r"plugin 'dynamic_batch': inputs: the model has no input 'nope' \(its inputs: x\)"),
    ({"axis": 5}, r"plugin 'dynamic_batch': axis: the model has no input with an axis 5"),
    ({"axis": 5, "inputs": "x"}, r"plugin 'dynamic_batch': axis: input 'x' has no axis 5"),
])
def test_options_that_do_not_fit_the_model_name_the_option(options, message):
    with pytest.raises(SurgeonError, match=message):
        apply_pass("dynamic_batch", flatten_to_one_row(1), **options)


def test_a_negative_axis_is_refused_when_the_options_are_read():
    with pytest.raises(UsageError, match="axis must be 0 or more"):
        apply_pass("dynamic_batch", flatten_to_one_row(1), axis=-1)


# -- models that cannot take another batch size: a clear error naming the node, never a wrong model

REFUSED = {
    "mean over the batch": ("(float[{B}, 3] x) => (float[1, 3] y)", "y = ReduceMean<axes = [0]>(x)", "",
                            r"the ReduceMean node making 'y' reduces over axis 0, which holds the batch"),
    "concatenated along the batch": ("(float[{B}, 3] x) => (float[{B2}, 3] y)", "y = Concat<axis=0>(x, x)", "",
                                     r"the Concat node making 'y' concatenates along the batch axis"),
    "first sample picked": ("(float[{B}, 3] x) => (float[3] y)", "y = Gather<axis=0>(x, zero)", "int64 zero = {0}",
                            r"the Gather node making 'y' picks samples along the batch axis"),
    "op without a rule": ("(float[{B}, 3] x) => (int64[2, ?] y)", "y = NonZero(x)", "",
                          r"the NonZero node making 'y' dynamic_batch does not know how the batch flows"),
}


@pytest.mark.parametrize("export_batch", EXPORT_BATCHES)
@pytest.mark.parametrize("case", REFUSED)
def test_a_model_that_mixes_samples_is_refused_naming_the_node(case, export_batch):
    signature, body, constants, message = REFUSED[case]
    model = graph_text(export_batch, signature.replace("{B2}", str(2 * export_batch)), body, constants)
    with pytest.raises(SurgeonError, match=message):
        apply_pass("dynamic_batch", model)


def test_rows_that_differ_between_the_samples_of_the_export_batch_are_refused():
    model = graph_text(2, "(float[2, 2, 3] x) => (float[2, 3, 3] y)", "y = Concat<axis=1>(x, rows)",
                       "float[2, 1, 3] rows = {0, 0, 0, 1, 1, 1}")
    with pytest.raises(SurgeonError, match=r"the Concat node making 'y' combines 'rows' with the batch, but it differs "
                                           r"between the samples of the export batch"):
        apply_pass("dynamic_batch", model)


def test_part_of_the_batch_sliced_away_is_refused():
    model = graph_text(2, "(float[2, 3] x) => (float[1, 3] y)", "y = Slice(x, zero, one, zero)",
                       "int64[1] zero = {0}, int64[1] one = {1}")
    with pytest.raises(SurgeonError, match=r"the Slice node making 'y' takes part of the batch axis \(end 1 of 2\)"):
        apply_pass("dynamic_batch", model)


def test_squeezing_the_batch_away_at_batch_one_is_refused():
    model = graph_text(1, "(float[1, 3] x) => (float[3] y)", "y = Squeeze(x, zero)", "int64[1] zero = {0}")
    with pytest.raises(SurgeonError, match=r"the Squeeze node making 'y' removes axis 0, which holds the batch"):
        apply_pass("dynamic_batch", model)


# -- the detector behind `surgeon inspect`

def findings(model: onnx.ModelProto, **options):
    rewrite = find_pass("dynamic_batch")
    return rewrite.detect(gs.import_onnx(model), rewrite.options(**options))


def test_the_detector_reports_every_place_that_bakes_the_batch():
    found = {(f.where, f.message.split(";")[0]) for f in findings(heads_split_and_joined(1))}
    assert found == {
        ("input 'x'", "batch fixed at 1 on axis 0"),
        ("node 'split_heads' (Reshape)", "shape [1, 2, 3, 2] bakes the export batch 1 on axis 0"),
        ("node 'join_heads' (Reshape)", "shape [1, 2, 6] bakes the export batch 1 on axis 0"),
        ("output 'y'", "declares a fixed batch of 1 on axis 0"),
    }


def test_the_detector_finds_nothing_once_the_pass_ran():
    for build in PATTERNS.values():
        assert findings(apply_pass("dynamic_batch", build(2))) == []


def test_the_detector_says_why_a_model_cannot_be_made_dynamic():
    signature, body, constants, message = REFUSED["mean over the batch"]
    (finding,) = findings(graph_text(1, signature, body, constants))
    assert finding.message.startswith("the batch cannot be made dynamic: the ReduceMean node making 'y'")


def test_inspect_shows_the_hazards_with_the_plugin_that_fixes_them(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(zeros_along_channels(1), str(path))
    hazards = [f for f in surgeon.inspect(path)["findings"] if f["plugin"] == "dynamic_batch"]
    assert [f["where"] for f in hazards] == ["input 'x'", "the Concat node making 'y'", "output 'y'"]


# -- small PyTorch models that bake the batch in, exported at batch 1 and 2 (factories for the torch source too)

def flatten_net():
    """x.view(x.size(0), -1) before the classifier."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).view(x.size(0), -1))

    return Net()


def shortcut_a_net():
    """A ResNet block with the "option A" shortcut: zeros from x.size(0) concatenated along channels."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)

        def forward(self, x):
            shortcut = x[:, :, ::2, ::2]
            zeros = torch.zeros(x.size(0), 3, shortcut.size(2), shortcut.size(3))
            return torch.relu(self.conv(x) + torch.cat([shortcut, zeros], 1))

    return Net()


def attention_net():
    """Multi-head self-attention written with x.shape[0] in its reshapes."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.heads = nn.Linear(8, 24), 2

        def forward(self, x):
            n, c = x.shape[1], x.shape[2]
            q, k, v = self.qkv(x).reshape(x.shape[0], n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            weights = (q @ k.transpose(-2, -1)).softmax(-1)
            return (weights @ v).transpose(1, 2).reshape(x.shape[0], n, c)

    return Net()


def token_net():
    """A class token expanded to x.shape[0], rows repeated x.size(0) times, a filled constant: all concatenated."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.linspace(-1, 1, 8).reshape(1, 1, 8))
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            tokens = self.token.expand(x.shape[0], -1, -1)
            rows = torch.arange(16.0).reshape(1, 2, 8).repeat(x.size(0), 1, 1)
            filled = torch.full((x.size(0), 1, 8), 0.5)
            return self.proj(torch.cat([tokens, x, rows, filled], 1))

    return Net()


def lstm_net():
    """An LSTM whose initial state is torch.zeros(1, x.size(0), hidden)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 6, batch_first=True)

        def forward(self, x):
            state = torch.zeros(1, x.size(0), 6)
            return self.lstm(x, (state, state))[0]

    return Net()


def multihead_net():
    """nn.MultiheadAttention, whose reshapes merge the batch with the heads (bsz * num_heads)."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attention(x, x, x, need_weights=True)[0]

    return Net()


def merged_heads_net():
    """Attention as F.multi_head_attention_forward writes it: views to (n, bsz * heads, d), exportable at opset 12."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out, self.heads = nn.Linear(8, 24), nn.Linear(8, 8), 2

        def forward(self, x):
            b, n, c = x.shape
            q, k, v = self.qkv(x).transpose(0, 1).chunk(3, dim=-1)
            q, k, v = (t.reshape(n, b * self.heads, c // self.heads).transpose(0, 1) for t in (q, k, v))
            attended = torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), -1), v)
            return self.out(attended.transpose(0, 1).reshape(n * b, c)).view(n, b, c).transpose(0, 1)

    return Net()


def vit_net():
    """A tiny ViT: patches, a class token, position embeddings, einsum attention, the class token's head."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.patches = nn.Conv2d(3, 16, 4, 4)
            self.token = nn.Parameter(torch.linspace(-1, 1, 16).reshape(1, 1, 16))
            self.position = nn.Parameter(torch.linspace(0, 1, 80).reshape(1, 5, 16))
            self.norm, self.qkv, self.heads, self.head = nn.LayerNorm(16), nn.Linear(16, 48), 4, nn.Linear(16, 3)

        def forward(self, x):
            x = self.patches(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.token.expand(x.shape[0], -1, -1), x], 1) + self.position
            b, n, c = x.shape
            q, k, v = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            weights = torch.einsum("bhid,bhjd->bhij", q, k).softmax(-1)
            x = x + torch.einsum("bhij,bhjd->bhid", weights, v).transpose(1, 2).reshape(b, n, c)
            return self.head(x[:, 0])

    return Net()


def shuffle_net():
    """ShuffleNet's channel shuffle: x.view(b, groups, c // groups, h, w).transpose(1, 2).view(b, -1, h, w)."""
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 6, 1)

        def forward(self, x):
            b, c, h, w = x.shape
            x = self.conv(x).view(b, 2, 3, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
            return F.interpolate(x, size=(6, 5), mode="bilinear", align_corners=False)

    return Net()


TORCH_MODELS = {
    "flatten": (flatten_net, (3, 8, 8)),
    "shortcut_a": (shortcut_a_net, (3, 8, 8)),
    "attention": (attention_net, (5, 8)),
    "token": (token_net, (3, 8)),
    "lstm": (lstm_net, (5, 4)),
    "multihead": (multihead_net, (4, 8)),
    "merged_heads": (merged_heads_net, (4, 8)),
    "vit": (vit_net, (3, 8, 8)),
    "shuffle": (shuffle_net, (4, 4, 4)),
}


def torch_outputs(net, x: np.ndarray) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [net(torch.from_numpy(x)).numpy()]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (net, {export batch: ONNX model exported at that batch with the legacy exporter, opset 13})."""
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("torch")
    models = {}
    for name, (build, shape) in TORCH_MODELS.items():
        net = build().eval()
        by_batch = {}
        for batch in EXPORT_BATCHES:
            path = folder / f"{name}_{batch}.onnx"
            torch.onnx.export(net, (torch.randn(batch, *shape),), str(path), dynamo=False, opset_version=13,
                              input_names=["x"], output_names=["y"])
            by_batch[batch] = onnx.load(str(path))
        models[name] = (net, by_batch)
    return models


@pytest.mark.parametrize("export_batch", EXPORT_BATCHES)
@pytest.mark.parametrize("name", TORCH_MODELS)
def test_pytorch_models_match_pytorch_at_each_batch_size(exported, name, export_batch):
    net, by_batch = exported[name]
    original = by_batch[export_batch]
    rewritten = apply_pass("dynamic_batch", original)
    run = onnxruntime_runner(rewritten)
    for size in SIZES:
        feed = random_feed(rewritten, size)
        batched = run([feed])[0]
        rows = compare("onnx", size, batched, torch_outputs(net, feed[0]), 1e-4, 1e-3)
        alone = [run([[feed[0][i : i + 1]]])[0] for i in range(size)]
        rows += compare("onnx", size, batched, [np.concatenate(p) for p in zip(*alone)], 1e-5, 1e-4, "per-sample")
        assert all(row["ok"] for row in rows), rows
    assert batch_dims(rewritten.graph.output)[0][0] == "batch"


@pytest.mark.parametrize("export_batch", EXPORT_BATCHES)
@pytest.mark.parametrize("name", TORCH_MODELS)
def test_pytorch_models_are_rewritten_once(exported, name, export_batch):
    assert_idempotent("dynamic_batch", exported[name][1][export_batch])


# -- end to end: PyTorch -> ONNX at a fixed batch -> dynamic_batch -> onnx-tf -> SavedModel in a fresh process

def served_net():
    """Several patterns at once: zeros concatenated along channels, x.view(x.size(0), ...), an expanded token."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
            self.token = nn.Parameter(torch.linspace(-1, 1, 6).reshape(1, 1, 6))
            self.fc = nn.Linear(17 * 6, 5)

        def forward(self, x):
            shortcut = torch.cat([x[:, :, ::2, ::2], torch.zeros(x.size(0), 3, 4, 4)], 1)
            features = torch.relu(self.conv(x) + shortcut)
            tokens = features.view(x.size(0), 6, 16).transpose(1, 2)
            sequence = torch.cat([self.token.expand(x.shape[0], -1, -1), tokens], 1)
            return self.fc(sequence.reshape(x.size(0), -1))

    return Net()


# nn.MultiheadAttention needs opset 13 (aten::unflatten), where onnx-tf lacks Unsqueeze-13: not served here
SERVED = {"served": (served_net, (3, 8, 8)), **{k: v for k, v in TORCH_MODELS.items() if k != "multihead"}}


def source_and_shape(name: str, export_batch: int) -> tuple[str, str]:
    build, shape = SERVED[name]
    return f"{__file__}:{build.__name__}", ",".join(map(str, (export_batch, *shape)))


def assert_served_parity(report: dict) -> None:
    expected = {(stage, size, check) for stage in ("onnx", "saved_model") for size in SIZES
                for check in ["vs reference"] + (["per-sample"] if size > 1 else [])}
    assert {(row["stage"], row["batch"], row["check"]) for row in report["parity"]} == expected
    assert all(row["ok"] for row in report["parity"]), report["parity"]
    (record,) = [p for p in report["plugins"] if p["name"] == "dynamic_batch"]
    assert record["details"]["shapes_updated"]


@pytest.mark.parametrize("export_batch", EXPORT_BATCHES)
@pytest.mark.tf
def test_the_served_model_matches_pytorch_in_a_fresh_process(tmp_path, export_batch):
    from surgeon.saved_model_info import describe

    source, shape = source_and_shape("served", export_batch)
    report = surgeon.run(source, tmp_path / "out", plugins=["dynamic_batch"], formats=["saved_model"],
                         batch_sizes=list(SIZES), options={"torch": {"input_shapes": [shape]}})
    assert_served_parity(report)
    rewritten = report["plugins"][0]["details"]["rewritten"]
    # the zeros concatenated along channels, the token expanded, the two views using x.size(0)
    assert sorted(where.split(": ")[0].rsplit(" ", 1)[-1] for where in rewritten) == [
        "(Concat)", "(Expand)", "(Reshape)", "(Reshape)"]
    signature = describe(tmp_path / "out" / "saved_model")["signatures"]["serving_default"]
    assert [t["shape"] for t in signature["inputs"]] == [[None, 3, 8, 8]]
    assert [t["shape"] for t in signature["outputs"]] == [[None, 5]]


@pytest.mark.slow
@pytest.mark.parametrize("export_batch", EXPORT_BATCHES)
@pytest.mark.parametrize("name", [name for name in SERVED if name != "served"])
def test_every_pytorch_model_serves_at_each_batch_size(cli, tmp_path, name, export_batch):
    """Through the command line, one process per model (onnx-tf converts one LSTM per process only)."""
    source, shape = source_and_shape(name, export_batch)
    done = cli("run", source, "-o", tmp_path / "out", "--plugins", "dynamic_batch", "--input-shape", shape,
               "--batch-sizes", ",".join(map(str, SIZES)))
    assert done.returncode == 0, done.stderr
    assert_served_parity(json.loads((tmp_path / "out" / "report.json").read_text()))


def test_nodes_removed_by_an_earlier_pass_are_ignored():
    """A node whose outputs were cleared (the documented way to remove one) is not part of the graph."""
    from surgeon.rewrite import import_graph

    graph = import_graph(model_from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 4] x) => (float[1, 4] y) { a = Relu(x)  b = Add(a, x)  y = Relu(a) }
    """))
    next(node for node in graph.nodes if node.op == "Add").outputs.clear()
    dynamic = find_pass("dynamic_batch")
    dynamic.run(graph, dynamic.options())
    assert [t.shape[0] for t in (*graph.inputs, *graph.outputs)] == ["batch", "batch"]
