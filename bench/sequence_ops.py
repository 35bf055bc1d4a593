"""Which operators of a transformer carry a dynamic sequence axis through onnx-tf 1.10.

Each case is a tiny ONNX graph using one operator the way a text model
does, on an input whose sequence dimension is the symbol ``seq``. It is
converted by surgeon's converter (``to_saved_model``, default options, then
the serving checks ``check_servable``), the SavedModel is loaded in a fresh
process the way TF Serving loads it, and run at sequence lengths 8, 16 and
32; each output must have onnxruntime's shape and values (float: rtol 1e-4,
atol 1e-5; integers and booleans exactly). A case that needs a rewrite pass
first says so; the rest run as written.

    python bench/sequence_ops.py

Results go to bench/results/sequence_ops.md on the default stack (the
TensorFlow that constraints.txt pins), to sequence_ops-tfX.Y.md on any other
(TensorFlow 2.15: sequence_ops-tf2.15.md).
"""

from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx

from stacks import stack  # beside this script

RESULTS = Path(__file__).parent / "results" / "sequence_ops.md"
LENGTHS = (8, 16, 32)
BATCH, WIDTH, VOCABULARY = 2, 8, 50

HEADER = 'ir_version: 8, opset_import: ["" : {opset}]'
X = f"float[{BATCH}, seq, {WIDTH}] x"  # hidden states, batch-first
IDS = f"int64[{BATCH}, seq] ids"  # token ids
GRU_WEIGHTS = ("float[1, 12, 8] w = {" + ", ".join(str(round(0.05 * ((i * 5) % 9 - 4), 2)) for i in range(96))
               + "}, float[1, 12, 4] r = {" + ", ".join(str(round(0.05 * ((i * 3) % 7 - 3), 2)) for i in range(48))
               + "}")
WEIGHT = "float[8, 8] w = {" + ", ".join(str(round(0.1 * ((i * 7) % 11 - 5), 2)) for i in range(64)) + "}"


@dataclass(frozen=True)
class Case:
    """One operator in one use: ONNX text for its graph (``{header}`` stands for the model header), and the rewrite
    pass it needs first, if any."""

    op: str
    use: str
    text: str
    opset: int = 13
    rewrite: str | None = None


CASES = [
    Case("Gather", "embedding lookup of token ids", f"""
        g ({IDS}) => (float[{BATCH}, seq, 4] y) <float[{VOCABULARY}, 4] table = {{{', '.join(
            str(i / 10) for i in range(VOCABULARY * 4))}}}> {{ y = Gather(table, ids) }}"""),
    Case("Add", "bias over the sequence", f"""
        g ({X}) => (float[{BATCH}, seq, 8] y) <float[8] b = {{1, 2, 3, 4, 5, 6, 7, 8}}> {{ y = Add(x, b) }}"""),
    Case("Add", "positional table sliced to the length (Shape-computed end)", f"""
        g ({X}) => (float[{BATCH}, seq, 8] y)
        <float[64, 8] positions = {{{', '.join(str(i / 100) for i in range(512))}}}, int64[1] zero = {{0}},
         int64[1] one = {{1}}, int64[1] two = {{2}}> {{
            shape = Shape(x)
            length = Slice(shape, one, two)
            table = Slice(positions, zero, length, zero)
            y = Add(x, table)
        }}"""),
    Case("MatMul", "projection by a weight", f"""
        g ({X}) => (float[{BATCH}, seq, 8] y) <{WEIGHT}> {{ y = MatMul(x, w) }}"""),
    Case("MatMul", "attention scores q @ k^T (seq x seq)", f"""
        g ({X}) => (float[{BATCH}, seq, seq] y) {{
            kt = Transpose<perm = [0, 2, 1]>(x)
            y = MatMul(x, kt)
        }}"""),
    Case("Softmax", "over the last axis of seq x seq scores", f"""
        g ({X}) => (float[{BATCH}, seq, seq] y) {{
            kt = Transpose<perm = [0, 2, 1]>(x)
            scores = MatMul(x, kt)
            y = Softmax<axis = -1>(scores)
        }}"""),
    Case("Attention", "scaled dot-product: MatMul, Div, Softmax, MatMul", f"""
        g ({X}) => (float[{BATCH}, seq, 8] y) <float scale = {{2.828427}}> {{
            kt = Transpose<perm = [0, 2, 1]>(x)
            scores = MatMul(x, kt)
            scaled = Div(scores, scale)
            weights = Softmax<axis = -1>(scaled)
            y = MatMul(weights, x)
        }}"""),
    Case("LayerNormalization", "the opset-17 operator", f"""
        g ({X}) => (float[{BATCH}, seq, 8] y) <float[8] gamma = {{1, 1, 1, 1, 2, 2, 2, 2}}, float[8] beta = {{0, 0, 0,
         0, 1, 1, 1, 1}}> {{ y = LayerNormalization<axis = -1, epsilon = 0.00001>(x, gamma, beta) }}""", opset=17),
    Case("LayerNormalization", "the opset-17 operator", f"""
        g ({X}) => (float[{BATCH}, seq, 8] y) <float[8] gamma = {{1, 1, 1, 1, 2, 2, 2, 2}}, float[8] beta = {{0, 0, 0,
         0, 1, 1, 1, 1}}> {{ y = LayerNormalization<axis = -1, epsilon = 0.00001>(x, gamma, beta) }}""", opset=17,
         rewrite="opset_compat"),
    Case("ReduceMean, Sub, Pow, Sqrt, Div", "layer norm decomposed (as opset < 17 exports it)", f"""
        g ({X}) => (float[{BATCH}, seq, 8] y) <float two = {{2.0}}, float epsilon = {{0.00001}}> {{
            mean = ReduceMean<axes = [-1]>(x)
            centred = Sub(x, mean)
            squared = Pow(centred, two)
            variance = ReduceMean<axes = [-1]>(squared)
            shifted = Add(variance, epsilon)
            deviation = Sqrt(shifted)
            y = Div(centred, deviation)
        }}"""),
    Case("Reshape", "split heads: [0, -1, 2, 4]", f"""
        g ({X}) => (float[{BATCH}, seq, 2, 4] y) <int64[4] shape = {{0, -1, 2, 4}}> {{ y = Reshape(x, shape) }}"""),
    Case("Reshape", "merge heads back: [0, 0, 8] after [0, -1, 2, 4]", f"""
        g ({X}) => (float[{BATCH}, seq, 8] y) <int64[4] split = {{0, -1, 2, 4}}, int64[3] merged = {{0, 0, 8}}> {{
            heads = Reshape(x, split)
            y = Reshape(heads, merged)
        }}"""),
    Case("Reshape", "flatten batch and sequence: [-1, 8]", f"""
        g ({X}) => (float[N, 8] y) <int64[2] shape = {{-1, 8}}> {{ y = Reshape(x, shape) }}"""),
    Case("Transpose", "heads to the front: perm [0, 2, 1, 3]", f"""
        g ({X}) => (float[{BATCH}, 2, seq, 4] y) <int64[4] split = {{0, -1, 2, 4}}> {{
            heads = Reshape(x, split)
            y = Transpose<perm = [0, 2, 1, 3]>(heads)
        }}"""),
    Case("Slice", "constant end: the first 4 tokens", f"""
        g ({X}) => (float[{BATCH}, 4, 8] y) <int64[1] start = {{0}}, int64[1] end = {{4}}, int64[1] axis = {{1}}> {{
            y = Slice(x, start, end, axis)
        }}"""),
    Case("Slice", "constant end INT64_MAX: all but the first token", f"""
        g ({X}) => (float[{BATCH}, M, 8] y)
        <int64[1] start = {{1}}, int64[1] end = {{9223372036854775807}}, int64[1] axis = {{1}}> {{
            y = Slice(x, start, end, axis)
        }}"""),
    Case("Slice", "Shape-computed end: all but the last token", f"""
        g ({X}) => (float[{BATCH}, M, 8] y) <int64[1] zero = {{0}}, int64[1] one = {{1}}, int64[1] two = {{2}}> {{
            shape = Shape(x)
            length = Slice(shape, one, two)
            end = Sub(length, one)
            y = Slice(x, zero, end, one)
        }}"""),
    Case("Range", "positions 0..seq-1 from Shape", f"""
        g ({X}) => (int64[seq] y) <int64 zero = {{0}}, int64 step = {{1}}, int64 one = {{1}}> {{
            shape = Shape(x)
            length = Gather<axis = 0>(shape, one)
            y = Range(zero, length, step)
        }}"""),
    Case("Range, Gather", "positional embedding of Range positions", f"""
        g ({X}) => (float[{BATCH}, seq, 8] y)
        <float[64, 8] positions = {{{', '.join(str(i / 100) for i in range(512))}}}, int64 zero = {{0}},
         int64 step = {{1}}, int64 one = {{1}}> {{
            shape = Shape(x)
            length = Gather<axis = 0>(shape, one)
            index = Range(zero, length, step)
            table = Gather(positions, index)
            y = Add(x, table)
        }}"""),
    Case("Expand", "a [batch, 1, seq] padding mask to [batch, seq, seq]", f"""
        g ({IDS}) => (bool[{BATCH}, seq, seq] y) <int64 pad = {{0}}, int64[1] axis = {{1}}, int64[1] last = {{2}}> {{
            keep = Equal(ids, pad)
            row = Unsqueeze(keep, axis)
            ids_shape = Shape(ids)
            length = Slice(ids_shape, axis, last)
            target = Concat<axis = 0>(ids_shape, length)
            y = Expand(row, target)
        }}""", rewrite="opset_compat"),
    Case("Where", "masking scores with -1e9", f"""
        g ({X}, {IDS}) => (float[{BATCH}, seq, seq] y) <int64 pad = {{0}}, int64[1] axis = {{1}},
         float low = {{-1000000000.0}}> {{
            kt = Transpose<perm = [0, 2, 1]>(x)
            scores = MatMul(x, kt)
            padding = Equal(ids, pad)
            mask = Unsqueeze(padding, axis)
            y = Where(mask, low, scores)
        }}""", rewrite="opset_compat"),
    Case("Equal", "padding mask ids == 0", f"""
        g ({IDS}) => (bool[{BATCH}, seq] y) <int64 pad = {{0}}> {{ y = Equal(ids, pad) }}"""),
    Case("Cast", "int64 mask to float", f"""
        g ({IDS}) => (float[{BATCH}, seq] y) {{ y = Cast<to = 1>(ids) }}"""),
    Case("Trilu", "causal mask over ConstantOfShape [seq, seq]", f"""
        g ({X}) => (float[seq, seq] y) <int64[1] one = {{1}}, int64[1] two = {{2}}> {{
            shape = Shape(x)
            length = Slice(shape, one, two)
            square = Concat<axis = 0>(length, length)
            ones = ConstantOfShape<value = float[1] {{1.0}}>(square)
            y = Trilu<upper = 0>(ones)
        }}""", opset=14),
    Case("Concat", "a class token before the sequence", f"""
        g ({X}) => (float[{BATCH}, M, 8] y) <float[{BATCH}, 1, 8] token = {{{', '.join(['0.5'] * BATCH * 8)}}}> {{
            y = Concat<axis = 1>(token, x)
        }}"""),
    Case("Concat", "two sequences end to end", f"""
        g ({X}) => (float[{BATCH}, M, 8] y) {{ y = Concat<axis = 1>(x, x) }}"""),
    Case("Unsqueeze", "mask [b, seq] -> [b, 1, 1, seq] (axes input)", f"""
        g ({IDS}) => (int64[{BATCH}, 1, 1, seq] y) <int64[2] axes = {{1, 2}}> {{ y = Unsqueeze(ids, axes) }}"""),
    Case("Unsqueeze", "mask [b, seq] -> [b, 1, 1, seq] (axes input)", f"""
        g ({IDS}) => (int64[{BATCH}, 1, 1, seq] y) <int64[2] axes = {{1, 2}}> {{ y = Unsqueeze(ids, axes) }}""",
         rewrite="opset_compat"),
    Case("ConstantOfShape", "zeros shaped [batch, seq] from Shape", f"""
        g ({IDS}) => (int64[{BATCH}, seq] y) {{
            shape = Shape(ids)
            y = ConstantOfShape<value = int64[1] {{0}}>(shape)
        }}"""),
    Case("Shape, Gather", "the length as a scalar, into a Reshape (time-major x)", f"""
        g (float[seq, {BATCH}, 8] x) => (float[seq, {BATCH}, 2, 4] y) <int64 zero = {{0}}, int64[1] zero_axis = {{0}},
         int64[3] rest = {{{BATCH}, 2, 4}}> {{
            shape = Shape(x)
            length = Gather<axis = 0>(shape, zero)
            length_1d = Unsqueeze(length, zero_axis)
            target = Concat<axis = 0>(length_1d, rest)
            y = Reshape(x, target)
        }}""", rewrite="opset_compat"),
    Case("CumSum", "positions from an attention mask (cumsum over seq)", f"""
        g ({IDS}) => (int64[{BATCH}, seq] y) <int64 axis = {{1}}> {{ y = CumSum(ids, axis) }}"""),
    Case("Pad", "the sequence by 1 before and 2 after", f"""
        g ({X}) => (float[{BATCH}, M, 8] y) <int64[6] pads = {{0, 1, 0, 0, 2, 0}}> {{ y = Pad(x, pads) }}"""),
    Case("Einsum", "scores bid,bjd->bij", f"""
        g ({X}) => (float[{BATCH}, seq, seq] y) {{ y = Einsum<equation = "bid,bjd->bij">(x, x) }}""", opset=13),
    Case("Erf", "GELU written out: x * 0.5 * (1 + erf(x / sqrt 2))", f"""
        g ({X}) => (float[{BATCH}, seq, 8] y) <float root = {{1.4142135}}, float one = {{1.0}}, float half = {{0.5}}> {{
            scaled = Div(x, root)
            e = Erf(scaled)
            shifted = Add(e, one)
            halved = Mul(shifted, half)
            y = Mul(x, halved)
        }}"""),
    Case("Gelu", "the opset-20 operator", f"""
        g ({X}) => (float[{BATCH}, seq, 8] y) {{ y = Gelu(x) }}""", opset=20),
    Case("Gelu", "the opset-20 operator", f"""
        g ({X}) => (float[{BATCH}, seq, 8] y) {{ y = Gelu(x) }}""", opset=20, rewrite="opset_compat"),
    Case("Split", "q, k halves of the features", f"""
        g ({X}) => (float[{BATCH}, seq, 4] q, float[{BATCH}, seq, 4] k) {{ q, k = Split<axis = -1>(x) }}"""),
    Case("Split", "the sequence in two equal halves", f"""
        g ({X}) => (float[{BATCH}, M, 8] a, float[{BATCH}, M, 8] b) {{ a, b = Split<axis = 1>(x) }}"""),
    Case("ReduceMean", "mean pooling over the sequence", f"""
        g ({X}) => (float[{BATCH}, 8] y) {{ y = ReduceMean<axes = [1], keepdims = 0>(x) }}"""),
    Case("Gather", "the last token (index -1 on the sequence axis)", f"""
        g ({X}) => (float[{BATCH}, 8] y) <int64 last = {{-1}}> {{ y = Gather<axis = 1>(x, last) }}"""),
    Case("LSTM", "over time, time-major X [seq, batch, 8]", f"""
        g (float[seq, {BATCH}, 8] x) => (float[seq, 1, {BATCH}, 4] y) <float[1, 16, 8] w = {{{', '.join(
            str(round(0.05 * ((i * 5) % 9 - 4), 2)) for i in range(128))}}}, float[1, 16, 4] r = {{{', '.join(
            str(round(0.05 * ((i * 3) % 7 - 3), 2)) for i in range(64))}}}> {{
            y, h = LSTM<hidden_size = 4>(x, w, r)
        }}"""),
    Case("GRU", "over time, time-major X [seq, batch, 8], without B", f"""
        g (float[seq, {BATCH}, 8] x) => (float[seq, 1, {BATCH}, 4] y) <{GRU_WEIGHTS}> {{
            y, h = GRU<hidden_size = 4>(x, w, r)
        }}"""),
    Case("GRU", "over time, time-major X [seq, batch, 8], with B", f"""
        g (float[seq, {BATCH}, 8] x) => (float[seq, 1, {BATCH}, 4] y) <{GRU_WEIGHTS}, float[1, 24] b = {{{', '.join(
            str(round(0.1 * (i % 5 - 2), 2)) for i in range(24))}}}> {{
            y, h = GRU<hidden_size = 4>(x, w, r, b)
        }}"""),
    Case("Conv", "1D over the sequence, channels-first [b, 8, seq], kernel 3, pads 1", f"""
        g (float[{BATCH}, 8, seq] x) => (float[{BATCH}, 4, seq] y) <float[4, 8, 3] w = {{{', '.join(
            str(round(0.05 * ((i * 5) % 9 - 4), 2)) for i in range(96))}}}> {{
            y = Conv<kernel_shape = [3], pads = [1, 1]>(x, w)
        }}"""),
]


@dataclass
class Outcome:
    """What became of one case: ``carries`` whether every length matched; ``why`` the error or the divergence."""

    case: Case
    carries: bool
    why: str = ""


def model_of(case: Case) -> onnx.ModelProto:
    from surgeon.testing import model_from_text

    return model_from_text(f"<{HEADER.format(opset=case.opset)}>\n{case.text}")


def feed_at(model: onnx.ModelProto, length: int) -> list[np.ndarray]:
    """Seeded inputs with ``seq`` = ``length`` (token ids in 0..VOCABULARY-1, a few of them the padding id 0)."""
    rng = np.random.default_rng(length)
    feed = []
    for value in model.graph.input:
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else length for dim in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.integer):
            feed.append(rng.integers(0, VOCABULARY, shape).astype(dtype))
        else:
            feed.append(rng.standard_normal(shape).astype(dtype))
    return feed


def divergence(got: list[np.ndarray], want: list[np.ndarray]) -> str:
    """Why the served outputs are not onnxruntime's; empty when they are."""
    for index, (actual, expected) in enumerate(zip(got, want)):
        actual = np.asarray(actual)
        if actual.shape != expected.shape:
            return f"output {index} has shape {list(actual.shape)}, onnxruntime {list(expected.shape)}"
        if expected.dtype.kind == "f":
            if not np.allclose(actual, expected, rtol=1e-4, atol=1e-5):
                return f"output {index} differs by up to {float(np.max(np.abs(actual - expected))):.3g}"
        elif not np.array_equal(actual, expected):
            return f"output {index} differs"
    return ""


def run_case(case: Case, folder: Path) -> Outcome:
    """Convert ``case`` and serve it at every length from one fresh process."""
    from surgeon.errors import describe
    from surgeon.onnx_io import real_inputs
    from surgeon.serving import run_in_fresh_process
    from surgeon.testing import apply_pass, run_onnx
    from surgeon_plugins.converters.onnx_tf import OnnxTfOptions, check_servable, to_saved_model

    model = model_of(case)
    try:
        if case.rewrite:
            model = apply_pass(case.rewrite, model)
        to_saved_model(model, OnnxTfOptions(), folder)
        check_servable(folder, model)
    except Exception as error:
        return Outcome(case, False, f"conversion: {first_line(describe(error))}")
    feeds = [feed_at(model, length) for length in LENGTHS]
    served = run_in_fresh_process(folder, feeds, [value.name for value in real_inputs(model)],
                                  [value.name for value in model.graph.output])
    for length, feed, got in zip(LENGTHS, feeds, served):
        if isinstance(got, str):
            return Outcome(case, False, f"seq {length}: {first_line(got)}")
        why = divergence(got, run_onnx(model, feed))
        if why:
            return Outcome(case, False, f"seq {length}: {why}")
    return Outcome(case, True)


def first_line(text: str) -> str:
    """The first line, cut to 160 characters, with table bars escaped."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return (line[:157] + "..." if len(line) > 160 else line).replace("|", "\\|")


def main() -> None:
    from surgeon.device import quiet_tensorflow

    stack_words, results = stack(RESULTS)
    print(f"stack: {stack_words}; results to {results}", flush=True)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="sequence-ops-") as folder, quiet_tensorflow():
        for index, case in enumerate(CASES):
            outcome = run_case(case, Path(folder) / f"case{index}")
            print(f"{case.op:32} {'yes' if outcome.carries else 'no '} {case.use} {case.rewrite or ''} {outcome.why}",
                  flush=True)
            outcomes.append(outcome)
    carried = sum(outcome.carries for outcome in outcomes)
    lines = [
        "# Which operators carry a dynamic sequence axis through onnx-tf",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other work, Python "
        f"{platform.python_version()}, {stack_words} (CPU), onnx-tf {version('onnx-tf')}; "
        "`python bench/sequence_ops.py`.",
        "",
        "Each row is a tiny ONNX graph whose input has the symbolic sequence dimension `seq` (batch fixed at "
        f"{BATCH}), converted by surgeon's converter (`to_saved_model` with default options, then its serving "
        "checks), loaded in a fresh process as TF Serving loads it and run at seq = "
        f"{', '.join(map(str, LENGTHS))}. \"yes\": every output had onnxruntime's shape and values at every "
        "length (float: rtol 1e-4, atol 1e-5; integers and booleans exactly). \"no\": the first error or divergence.",
        "",
        f"{carried} of {len(outcomes)} carry the sequence.",
        "",
        "| op | how it is used | carries a dynamic sequence |",
        "|---|---|---|",
    ]
    for outcome in outcomes:
        case = outcome.case
        use = case.use + (f" (opset {case.opset})" if case.opset != 13 else "") + (
            f", after the {case.rewrite} pass" if case.rewrite else "")
        verdict = "yes" if outcome.carries else f"no: {outcome.why}"
        lines.append(f"| {outcome.case.op} | {use} | {verdict} |")
    results.parent.mkdir(exist_ok=True)
    results.write_text("\n".join(lines) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
