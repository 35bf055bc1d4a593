"""What dynamic_batch's fixes splice into the graph: the runtime batch size, and shapes, repeats and sample
indices made from it.

The analysis plans each fix as a function of a ``BatchBuilder``; the pass
runs them once the whole graph is known to take another batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs
from numpy.typing import DTypeLike

from surgeon.graph import Builder
from surgeon_plugins.passes.dynamic_batch.state import Entry, Term, as_int


class BatchBuilder(Builder):
    """A graph kit ``Builder`` that also reads the runtime batch size N from a batched input ``source``."""

    def __init__(self, graph: gs.Graph, source: gs.Tensor, axis: int) -> None:
        super().__init__(graph, prefix="dynamic_batch/")
        self.source, self.axis = source, axis
        self.sample_indices: dict[tuple[tuple[int, ...], int, str], gs.Tensor] = {}

    def batch_size(self, factor: int = 1) -> gs.Tensor:
        """An int64 [1] tensor holding N * factor (made once per factor)."""
        return self.size(self.source, self.axis, "batch_size", factor)

    def shape(self, entries: Sequence[Entry], base: str) -> gs.Tensor:
        """An int64 1-D tensor of ``entries`` (ints and Terms): a constant, or a Concat of constants and N * f."""
        plain = [e for e in entries if isinstance(e, int)]
        if len(plain) == len(entries):
            return self.ints(base, plain)
        parts: list[gs.Tensor] = []
        run: list[int] = []
        for entry in entries:
            if isinstance(entry, Term):
                if run:
                    parts.append(self.ints(f"{base}_part", run))
                    run = []
                parts.append(self.batch_size(entry.factor))
            else:
                run.append(as_int(entry))
        if run:
            parts.append(self.ints(f"{base}_part", run))
        return self.op("Concat", parts, base, axis=0)

    def repeat(self, block: gs.Tensor, axis: int, rank: int, inner: int) -> gs.Tensor:
        """``block`` (one sample, ``inner`` long on ``axis``) repeated for each sample of the runtime batch."""
        entries: list[Entry] = [1] * rank
        entries[axis] = Term(1)
        if inner == 1:
            return self.op("Expand", [block, self.shape(entries, f"{block.name}_batch_shape")], f"{block.name}_expand")
        return self.op("Tile", [block, self.shape(entries, f"{block.name}_repeats")], f"{block.name}_tile")

    def sample_index(self, dims: Sequence[int], axis: int, dtype: DTypeLike) -> gs.Tensor:
        """The sample index of the runtime batch: a tensor of ``dims`` with N on ``axis``, holding 0 to N - 1
        along that axis and the same across the others, as ``dtype`` (made once per form; Range: opset 11)."""
        key = (tuple(dims), axis, np.dtype(dtype).str)
        if key not in self.sample_indices:
            count = self.op("Reshape", [self.batch_size(), self.ints("scalar", [])], "sample_count", dtype=np.int64)
            numbers = self.op("Range", [self.ints("zero", 0), count, self.ints("one", 1)], "sample_numbers",
                              dtype=np.int64)
            placed = [-1 if k == axis else 1 for k in range(len(dims))]
            index = self.op("Reshape", [numbers, self.ints("sample_index_shape", placed)], "sample_index",
                            dtype=np.int64)
            if any(size != 1 for k, size in enumerate(dims) if k != axis):
                entries: list[Entry] = [Term(1) if k == axis else size for k, size in enumerate(dims)]
                index = self.op("Expand", [index, self.shape(entries, "sample_index_dims")], "sample_index_expand",
                                dtype=np.int64)
            if np.dtype(dtype) != np.int64:
                index = self.cast(index, dtype, "sample_index_cast")
            self.sample_indices[key] = index
        return self.sample_indices[key]
