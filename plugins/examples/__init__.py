"""Bundled example models, used by ``surgeon run --example NAME`` (the source spec ``example:NAME``).

Each example names the rewrite plugins it needs, used when ``--plugins`` is
not given, and a default input shape small enough for a quick run; the
model's real size is one ``--input-shape`` away.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surgeon import UsageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Example:
    """A bundled model: ``factory(input_shape=..., **kwargs)`` builds it with deterministic weights."""

    factory: Callable[..., torch.nn.Module]
    input_shape: tuple[int, ...]
    full_input_shape: tuple[int, ...]
    plugins: tuple[str, ...]
    doc: str


def ct_position(**kwargs: Any) -> torch.nn.Module:
    from surgeon_plugins.examples.ct_position import ct_position

    return ct_position(**kwargs)


EXAMPLES = {
    "ct-position": Example(
        factory=ct_position,
        input_shape=(1, 1, 32, 64, 64),
        full_input_shape=(1, 1, 128, 128, 128),
        plugins=("dynamic_batch", "pool_fix", "rename_outputs"),
        doc="The recipe's CT body-position classifier: a 3D ResNet-34, 1 channel in, 6 classes out "
        "(full size: --input-shape 1,1,128,128,128).",
    ),
}


def get(name: str) -> Example:
    """The example called ``name``, or an error listing the bundled ones."""
    if name not in EXAMPLES:
        raise UsageError(f"unknown example {name!r}; bundled: {', '.join(EXAMPLES)}")
    return EXAMPLES[name]
