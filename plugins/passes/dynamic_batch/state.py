"""The batch state of a tensor: what the flow analysis knows of where the batch is in it.

Every tensor of the graph gets one of these states:

- ``None``: it does not depend on the batch (weights, constants, shapes of those);
- ``Batch(axis, inner, outer)``: axis ``axis`` holds the batch; at runtime its
  size there is outer * N * inner, index o * N * inner + i * inner + r
  belonging to sample i (``inner`` and ``outer`` are 1 for a plain batch axis);
- ``Value(entries)``: a small integer tensor computed from shapes that depend
  on the batch; each entry is an int, ``Term(f)`` (N * f at runtime) or None
  (computed at runtime in a way the analysis does not follow).

Besides its state, a batched integer tensor built by index arithmetic from
the sample index (``arange`` of the batch) may have ``Positions``: the
values it holds, which decide what a Gather along the batch axis reads.

They are plain values, shared by the analysis, its rules and the builder of the fixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Batch:
    """The tensor holds the batch on ``axis``: outer x N x inner elements there."""

    axis: int
    inner: int = 1
    outer: int = 1

    @property
    def factor(self) -> int:
        """The size of the batch axis is N * factor."""
        return self.inner * self.outer

    def moved(self, axis: int) -> Batch:
        """The same batch on another axis."""
        return Batch(axis, self.inner, self.outer)


@dataclass(frozen=True)
class Term:
    """A shape entry equal to N * factor at runtime."""

    factor: int = 1

    def __repr__(self) -> str:
        return "N" if self.factor == 1 else f"N*{self.factor}"


Entry = int | float | Term | None


@dataclass(frozen=True)
class Value:
    """A scalar or 1-D integer tensor computed from batch-dependent shapes."""

    entries: tuple[Entry, ...]
    scalar: bool = False

    @property
    def known(self) -> bool:
        """Every entry is a plain number: the value does not depend on the batch after all."""
        return not any(e is None or isinstance(e, Term) for e in self.entries)


@dataclass(frozen=True)
class Positions:
    """What a batched integer tensor built from the sample index holds: every entry of sample i is
    i * stride + r with 0 <= r < span.

    Gathered along a batch axis that holds ``stride`` elements per sample
    (``Batch.inner``), such indices read sample i's own elements as long as
    span <= stride. The statement is about each entry and the sample it
    belongs to, so it holds through any op that moves entries without
    changing them.
    """

    stride: int
    span: int


State = Batch | Value | None


def as_int(entry: Entry) -> int:
    """``entry`` as a plain int; TypeError, as ``int()`` raises, for N * f or an entry the walk did not follow."""
    if isinstance(entry, Term) or entry is None:
        raise TypeError(f"{entry!r} is not a known number")
    return int(entry)


def terms_of(entries: Sequence[Entry]) -> list[tuple[int, Term]]:
    """The entries equal to N * f at runtime, each with its position."""
    return [(k, entry) for k, entry in enumerate(entries) if isinstance(entry, Term)]


def independent(state: State) -> bool:
    """The tensor does not depend on the batch: no state, or a Value of plain numbers."""
    return state is None or (isinstance(state, Value) and state.known)
