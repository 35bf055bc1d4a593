"""Named dynamic axes as users write them: ``INPUT:AXIS:NAME`` (``input_ids:1:seq``), for the sources that
export them dynamic and the passes that make them dynamic."""

from __future__ import annotations

from dataclasses import dataclass

BATCH_AXIS = "batch"  # the name of a dynamic batch dimension


@dataclass(frozen=True)
class DynamicAxis:
    """Axis ``axis`` of the input called ``input`` is dynamic, as the dimension ``name``."""

    input: str
    axis: int
    name: str


def parse_dynamic_axis(text: str) -> DynamicAxis:
    """``"input_ids:1:seq"`` -> DynamicAxis("input_ids", 1, "seq") (an input name may hold colons itself).

    Raises ValueError, as option parsing expects, for another form, axis 0 (the batch's) or a name that is not a
    word."""
    rest, _, name = text.rpartition(":")
    input_name, _, axis = rest.rpartition(":")
    if not input_name or not axis.strip().isdigit() or not name.strip():
        raise ValueError(f"dynamic axis {text!r}: expected INPUT:AXIS:NAME, such as input_ids:1:seq")
    dynamic = DynamicAxis(input_name, int(axis), name.strip())
    if dynamic.axis == 0:
        raise ValueError(f"dynamic axis {text!r}: axis 0 is the batch, which dynamic_batch (or "
                         "torch.dynamic_batch_export) makes dynamic")
    if not dynamic.name.isidentifier() or dynamic.name == BATCH_AXIS:
        raise ValueError(f"dynamic axis {text!r}: the name must be a word such as seq, and not {BATCH_AXIS!r}")
    return dynamic
