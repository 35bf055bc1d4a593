"""What a plugin sees of the run in progress: the one object handed to sources, converters and writers.

Plugins type their ``ctx`` argument as :class:`Context`; the host's own run state (``surgeon.pipeline``) implements
it and keeps everything else to itself. A plugin learns what else is in the run by asking the context (which
writers, how far the passes reach), never by testing for another plugin's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from surgeon.feeds import Case

Reference = Callable[[list["np.ndarray"]], list["np.ndarray"]]
"""The original model as a function: input arrays in the source's input order -> output arrays."""


class Context(Protocol):
    """The run in progress, as plugins may use it."""

    @property
    def source(self) -> str:
        """The SOURCE of ``surgeon run`` as the user gave it (a file, or a ``module:factory`` spec)."""
        ...

    @property
    def batch_sizes(self) -> Sequence[int] | None:
        """The batch sizes asked for with ``--batch-sizes``; None: the host's defaults."""
        ...

    @property
    def axis_sizes(self) -> Mapping[str, Sequence[int]]:
        """The sizes asked for each named dynamic dimension with ``--axis-sizes`` (empty: none asked)."""
        ...

    @property
    def device(self) -> str | None:
        """The device given with ``--device``: ``cpu``, a GPU index such as ``0``, or None (not given)."""
        ...

    @property
    def writers(self) -> Sequence[str]:
        """The names of this run's writers, in the order they write (``onnx`` first)."""
        ...

    @property
    def model(self) -> onnx.ModelProto:
        """The model after every rewrite pass (for converters and writers)."""
        ...

    @property
    def onnx_path(self) -> Path:
        """Where the rewritten model is written: ``OUT/model.onnx`` once the run succeeds."""
        ...

    @property
    def scratch(self) -> Path:
        """A private folder for intermediate files, removed before the output is committed."""
        ...

    @property
    def report(self) -> Mapping[str, Any]:
        """What report.json holds so far (read only; :meth:`record` adds to it)."""
        ...

    @property
    def served_models(self) -> MutableMapping[str, Path]:
        """What a server would load, by stage name (``saved_model`` -> its folder). A writer adds what it writes;
        verification runs each in a fresh process."""
        ...

    def saved_model(self) -> Path:
        """The SavedModel converted from :attr:`model`: converted on first use, then shared by every writer."""
        ...

    def record(self, key: str, value: Any) -> None:
        """Put ``value`` (JSON-serialisable) into report.json under ``key``."""
        ...

    def set_reference(self, reference: Reference, what: str) -> None:
        """For a source that can run the original model: verification compares against it. ``what`` names it in
        the report (``the PyTorch model``)."""
        ...

    def cases(self) -> Sequence[Case]:
        """What verification feeds the model: each batch size with each size of the named dimensions (what
        ``--batch-sizes`` and ``--axis-sizes`` ask for, else the defaults). Feeds made from them
        (``surgeon.feeds.case_feed``) are the inputs verification checked; warm-up requests carry the same."""
        ...

    def newest_opset_in_reach(self) -> int | None:
        """The newest ONNX opset this run's passes bring within the converter's reach; None when no pass changes
        opsets (the source should then write one the converter takes as it is)."""
        ...


__all__ = ["Context", "Reference"]
