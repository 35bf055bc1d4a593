"""Fresh names for the tensors and nodes a pass adds to a graph, and keys TensorFlow takes for inputs."""

from __future__ import annotations

import keyword
import re
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

TF_INPUT_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # also not a Python keyword (see signature_input_keys)


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... whichever is not in ``taken``; it is added to ``taken``."""
    candidate, suffix = base, 1
    while candidate in taken:
        candidate, suffix = f"{base}_{suffix}", suffix + 1
    taken.add(candidate)
    return candidate


class FreshNames:
    """Names no tensor or node of ``graph`` has yet: ``names("scale")`` -> ``"scale"``, then ``"scale_1"``."""

    def __init__(self, graph: gs.Graph, prefix: str = "") -> None:
        self.taken = set(graph.tensors()) | {node.name for node in graph.nodes}
        self.prefix = prefix

    def __call__(self, base: str) -> str:
        return fresh_name(f"{self.prefix}{base}", self.taken)


def signature_input_keys(inputs: Sequence[str], outputs: Sequence[str]) -> dict[str, str]:
    """Each of a model's ``inputs`` -> the key TensorFlow can give it in a SavedModel signature.

    A signature input is a parameter of the traced function, which TensorFlow
    renames unless it is letters, digits and ``_`` starting with a letter
    (``input.1`` reaches the function as ``input_1``, where onnx-tf cannot find
    it) and refuses if it is a Python keyword; and it is a placeholder named
    by the key, which must be an ASCII op name, unique ignoring case (the
    save fails on ``入力``, or on ``X`` beside ``x``). A name that passes both
    unchanged keeps itself. Any other becomes its ASCII letters, digits and
    ``_`` (accents dropped, other characters joined into ``_``, ``input_`` in
    front unless it starts with a letter), with ``_1``, ``_2``... while a kept
    name, a key given before or an output has it (ignoring case). Outputs keep
    their names: TensorFlow takes any string as an output key. The keys
    depend on the names and their order alone, so the converter, the writers
    and a fresh serving process all derive the same ones.
    """
    keys: dict[str, str] = {}
    taken: set[str] = set()  # lower case
    for name in inputs:
        if TF_INPUT_KEY.fullmatch(name) and not keyword.iskeyword(name) and name.lower() not in taken:
            keys[name] = name
            taken.add(name.lower())
    taken |= {name.lower() for name in outputs}
    for name in inputs:
        if name in keys:
            continue
        ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        plain = re.sub(r"[^A-Za-z0-9_]+", "_", ascii_name).strip("_")
        base = plain if plain[:1].isalpha() else f"input_{plain}".rstrip("_")
        key, suffix = base, 1
        while key.lower() in taken or keyword.iskeyword(key):
            key, suffix = f"{base}_{suffix}", suffix + 1
        keys[name] = key
        taken.add(key.lower())
    return {name: keys[name] for name in inputs}
