"""surgeon: PyTorch or ONNX to a TensorFlow SavedModel that serves, fixing the graph on the way.

The Python API mirrors the command line::

    import surgeon
    report = surgeon.run("model.onnx", "out/", plugins=["rename_outputs"],
                         options={"rename_outputs": {"names": {"logits": "result"}}})
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.errors import PluginError, SurgeonError, UsageError
from surgeon.hookspecs import hookimpl
from surgeon.plugin import Converter, Finding, Hazard, NoOptions, RewritePass, Source, Writer
from surgeon.version import __version__

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping



def run(
    source: str | Path,
    output: str | Path,
    *,
    plugins: Iterable[str] = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    formats: Iterable[str] | None = None,
    batch_sizes: Iterable[int] | None = None,
    verify: bool = True,
    device: str | None = None,
    plugin_paths: Iterable[str | Path] = (),
    force: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Run the pipeline like ``surgeon run``; return the report written to ``output/report.json``.

    ``settings`` takes the remaining fields of :class:`surgeon.pipeline.RunConfig`
    (``atol``, ``rtol``, ``converter``, ``axis_sizes``: ``{"seq": [8, 16]}``).
    """
    from surgeon import pipeline

    config = pipeline.RunConfig(
        source=str(source),
        output=Path(output),
        plugins=list(plugins),
        options={name: dict(values) for name, values in (options or {}).items()},
        batch_sizes=list(batch_sizes) if batch_sizes else None,
        verify=verify,
        device=device,
        plugin_paths=[Path(p) for p in plugin_paths],
        force=force,
        **settings,
    )
    if formats is not None:
        config.formats = list(formats)
    return pipeline.run(config)


def inspect(path: str | Path, plugin_paths: Iterable[str | Path] = ()) -> dict[str, Any]:
    """What ``surgeon inspect`` shows, as a dict."""
    from surgeon import inspection

    return inspection.inspect(Path(path), [Path(p) for p in plugin_paths])


def plugins(plugin_paths: Iterable[str | Path] = ()) -> list[dict[str, Any]]:
    """What ``surgeon plugins`` shows, as a list of dicts."""
    from surgeon import inspection

    return inspection.list_plugins([Path(p) for p in plugin_paths])


__all__ = [
    "Converter",
    "Finding",
    "Hazard",
    "NoOptions",
    "PluginError",
    "RewritePass",
    "Source",
    "SurgeonError",
    "UsageError",
    "Writer",
    "__version__",
    "hookimpl",
    "inspect",
    "plugins",
    "run",
]
