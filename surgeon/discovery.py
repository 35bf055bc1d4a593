"""Finding plugins: the entry-point group ``surgeon`` and ``--plugin-path`` files.

Built-in plugins are registered through the same entry-point group as
third-party ones. A module that fails to import, or whose hook raises, is
recorded as broken with the reason; the others keep working, and the broken
one only stops a run that asks for something it would have provided.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import TypeVar, cast

import pluggy

from surgeon import hookspecs
from surgeon.errors import UsageError, describe
from surgeon.plugin import KINDS, Converter, Plugin, RewritePass, Source, Writer

ENTRY_POINT_GROUP = "surgeon"
P = TypeVar("P", bound=Plugin)
HOOK_FOR_KIND = {
    Source: "surgeon_sources",
    RewritePass: "surgeon_passes",
    Converter: "surgeon_converters",
    Writer: "surgeon_writers",
}


@dataclass(frozen=True)
class BrokenModule:
    """A plugin module that could not be loaded or whose hook raised."""

    origin: str
    reason: str


@dataclass
class Registry:
    """Everything the installed plugin modules provide, by kind and name."""

    plugins: dict[type[Plugin], dict[str, Plugin]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    origin: dict[str, str] = field(default_factory=dict)
    broken: list[BrokenModule] = field(default_factory=list)

    @property
    def sources(self) -> dict[str, Source]:
        return self.plugins[Source]  # type: ignore[return-value]

    @property
    def passes(self) -> dict[str, RewritePass]:
        return self.plugins[RewritePass]  # type: ignore[return-value]

    @property
    def converters(self) -> dict[str, Converter]:
        return self.plugins[Converter]  # type: ignore[return-value]

    @property
    def writers(self) -> dict[str, Writer]:
        return self.plugins[Writer]  # type: ignore[return-value]

    def all(self) -> Iterable[Plugin]:
        for by_name in self.plugins.values():
            yield from by_name.values()

    def find(self, name: str) -> Plugin | None:
        return next((p for p in self.all() if p.name == name), None)

    def get(self, kind: type[P], name: str) -> P:
        """The plugin of ``kind`` called ``name``, or an error listing the choices."""
        by_name = self.plugins[kind]
        if name in by_name:
            return cast(P, by_name[name])
        label = {Source: "source", RewritePass: "rewrite plugin", Converter: "converter", Writer: "format"}[kind]
        message = f"unknown {label} {name!r}; installed: {', '.join(sorted(by_name)) or 'none'}"
        broken = "; ".join(f"{b.origin} ({b.reason})" for b in self.broken)
        hint = f"these plugin modules failed to load and may provide it: {broken}" if broken else None
        raise UsageError(message, hint=hint)


def discover(plugin_paths: Iterable[str | Path] = ()) -> Registry:
    """Load the entry-point plugins and the given plugin files."""
    manager = pluggy.PluginManager("surgeon")
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    modules: list[tuple[str, object]] = []
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=_builtins_first):
        origin = f"entry point {entry_point.name!r} ({entry_point.value})"
        if manager.has_plugin(entry_point.name):
            continue
        try:
            module = entry_point.load()
            manager.register(module, name=entry_point.name)
        except Exception as error:  # a broken third-party plugin must not hide the others
            registry.broken.append(BrokenModule(origin, describe(error)))
            continue
        modules.append((origin, module))
    for path in plugin_paths:
        module = load_file(Path(path))
        try:
            manager.register(module, name=f"file:{path}")
        except Exception as error:
            raise UsageError(f"plugin file {path}: {describe(error)}") from None
        modules.append((f"plugin file {path}", module))
    for origin, module in modules:
        _collect(manager, registry, origin, module)
    return registry


def _builtins_first(entry_point: EntryPoint) -> tuple[bool, str]:
    """Built-ins first, so a third-party plugin that reuses a built-in name is the one refused."""
    return (entry_point.dist is None or entry_point.dist.name != "surgeon", entry_point.name)


def load_file(path: Path) -> ModuleType:
    """Import a ``--plugin-path`` file as a module; errors name the file."""
    if not path.is_file():
        raise UsageError(f"plugin file {path}: no such file")
    try:
        return import_file(path, "surgeon_plugin_file")
    except Exception as error:
        raise UsageError(f"plugin file {path} failed to import: {describe(error)}") from None


def import_file(path: Path, prefix: str) -> ModuleType:
    """Import the Python file ``path`` as a module named after ``prefix`` and the file; errors propagate."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"{prefix}_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError("not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _collect(manager: pluggy.PluginManager, registry: Registry, origin: str, module: object) -> None:
    """Ask one module's hooks for what it provides, each on its own."""
    provided: list[tuple[type[Plugin], Plugin]] = []
    for kind, hook_name in HOOK_FOR_KIND.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            if impl.plugin is not module:
                continue
            try:
                items = list(impl.function() or ())
                for item in items:
                    if not isinstance(item, kind):
                        raise TypeError(f"{hook_name} returned {item!r}, not a {kind.__name__}")
            except Exception as error:
                registry.broken.append(BrokenModule(origin, f"{hook_name}: {describe(error)}"))
                return
            provided.extend((kind, item) for item in items)
    for kind, item in provided:
        clash = registry.find(item.name)
        if clash is not None:
            registry.broken.append(
                BrokenModule(origin, f"name {item.name!r} is already provided by {registry.origin[item.name]}")
            )
            continue
        registry.plugins[kind][item.name] = item
        registry.origin[item.name] = origin
