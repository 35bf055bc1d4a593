"""Fuzzing and a command-line harness, for surgeon's own reliability tests and its fuzz benchmark.

Not part of the plugin-author API (that is ``surgeon.testing``): seeded mutations of models, their bytes and the
names of their inputs and outputs, small models to mutate, and ``surgeon`` run in this process under a time bound.
"""

from __future__ import annotations

from typing import Any

import onnx

from surgeon.testing import model_from_text


def mutate(data: bytes, rng: Any, edits: int = 4) -> bytes:
    """``data`` with up to ``edits`` random byte flips, overwrites, cuts, insertions and deletions (fuzzing)."""
    mutated = bytearray(data)
    for _ in range(rng.randint(1, edits)):
        kind = rng.choice(["flip", "set", "cut", "insert", "delete"])
        at = rng.randrange(max(len(mutated), 1))
        if kind == "flip" and mutated:
            mutated[at] ^= 1 << rng.randrange(8)
        elif kind == "set" and mutated:
            mutated[at] = rng.randrange(256)
        elif kind == "cut":
            del mutated[at:]
        elif kind == "insert":
            mutated[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == "delete":
            del mutated[at : at + rng.randint(1, 16)]
    return bytes(mutated)


class Hang(Exception):
    """A command ran past its time bound."""


def cli_in_process(*args: Any, seconds: int = 30) -> tuple[int, str]:
    """Run ``surgeon ARGS`` in this process, raising :class:`Hang` past ``seconds``; return (exit code, stderr)."""
    import contextlib
    import io
    import signal

    from surgeon.cli import main

    def hang(signum: int, frame: Any) -> None:
        raise Hang(f"surgeon {' '.join(map(str, args))} ran past {seconds}s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main([str(arg) for arg in args])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, stderr.getvalue()


def small_cnn() -> onnx.ModelProto:
    """A tiny image classifier (Conv, Relu, AveragePool, ReduceMean) with a dynamic batch: a fuzzing seed."""
    weights = ", ".join(str((i % 7 - 3) / 10) for i in range(108))
    return model_from_text(f"""
        <ir_version: 8, opset_import: ["" : 13]>
        small_cnn (float[N, 3, 8, 8] images) => (float[N, 4] logits)
        <float[4, 3, 3, 3] w = {{{weights}}}, float[4] b = {{0.1, -0.1, 0.2, -0.2}}>
        {{
            c = Conv <pads = [1, 1, 1, 1]> (images, w, b)
            r = Relu(c)
            p = AveragePool <kernel_shape = [2, 2], strides = [2, 2]> (r)
            logits = ReduceMean <axes = [2, 3], keepdims = 0> (p)
        }}
    """)


def mutate_model(model: onnx.ModelProto, rng: Any) -> onnx.ModelProto:
    """A copy of ``model`` with one structural change that byte edits rarely reach (fuzzing):
    an attribute or dimension changed, an op swapped, an input rewired, a node dropped or doubled."""
    mutated = onnx.ModelProto()
    mutated.CopyFrom(model)
    graph = mutated.graph
    nodes = list(graph.node)
    kind = rng.choice(["attribute", "dim", "op", "rewire", "drop", "double"])
    node = rng.choice(nodes) if nodes else None
    if kind == "attribute" and node is not None and node.attribute:
        attribute = rng.choice(list(node.attribute))
        if attribute.ints:
            attribute.ints[rng.randrange(len(attribute.ints))] = rng.choice([-1, 0, 1, 2, 7, 2**31 - 1])
        else:
            attribute.i = rng.choice([-1, 0, 1, 2, 2**40])
    elif kind == "dim":
        values = [*graph.input, *graph.output]
        dims = [dim for value in values for dim in value.type.tensor_type.shape.dim]
        if dims:
            rng.choice(dims).dim_value = rng.choice([0, 1, 3, 2**20])
    elif kind == "op" and node is not None:
        node.op_type = rng.choice(["Relu", "Add", "MaxPool", "Reshape", "Squeeze", "Transpose", "Identity", "Gemm"])
    elif kind == "rewire" and node is not None and node.input:
        names = [value.name for value in graph.input] + [out for other in nodes for out in other.output]
        node.input[rng.randrange(len(node.input))] = rng.choice(names + ["nowhere"])
    elif kind == "drop" and node is not None:
        graph.node.remove(node)
    elif kind == "double" and node is not None:
        graph.node.append(node)
    return mutated


# names a user's model may give its inputs and outputs: non-ASCII, characters that mean something to TensorFlow or
# a shell, a number, a Python keyword, the empty string
ODD_NAMES = ("入力", "input.1", "a/b", "x:0", "my input", "0", "class", "")


def two_inputs() -> onnx.ModelProto:
    """A tiny model of two inputs and two outputs with a dynamic batch: a fuzzing seed for names."""
    return model_from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        two_inputs (float[N, 4] x, float[N, 4] y) => (float[N, 4] total, float[N, 4] product)
        {
            total = Add(x, y)
            product = Mul(x, y)
        }
    """)


def renamings(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """The (name, new name) pairs :func:`mutate_names` picks from: each graph input and output to each of
    ``ODD_NAMES``, to the name of another input or output (two inputs, or an input and an output, with one name),
    and to that name in the other case (names equal ignoring case)."""
    names = [value.name for value in (*model.graph.input, *model.graph.output)]
    pairs = []
    for name in names:
        others = [other for other in names if other != name]
        pairs += [(name, new) for new in (*ODD_NAMES, *others, *(other.swapcase() for other in others))]
    return pairs


def renamed(model: onnx.ModelProto, name: str, new: str) -> onnx.ModelProto:
    """A copy of ``model`` whose graph input or output ``name`` is called ``new`` wherever the graph uses it."""
    mutated = onnx.ModelProto()
    mutated.CopyFrom(model)
    graph = mutated.graph
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        if value.name == name:
            value.name = new
    for node in graph.node:
        for names in (node.input, node.output):
            for index, used in enumerate(names):
                if used == name:
                    names[index] = new
    return mutated


def mutate_names(model: onnx.ModelProto, rng: Any, renames: int = 2) -> onnx.ModelProto:
    """``model`` with up to ``renames`` of its inputs and outputs renamed, one after the other, each by a pair of
    :func:`renamings` (fuzzing): odd names, collisions, names equal ignoring case."""
    for _ in range(rng.randint(1, renames)):
        model = renamed(model, *rng.choice(renamings(model)))
    return model
