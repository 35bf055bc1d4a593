"""The pipeline: source -> rewrite passes in ``--plugins`` order -> writers -> verification.

Every plugin and option is resolved and validated before any work starts,
and everything is written into a staging folder renamed into place at the
end (see ``surgeon.output``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from surgeon import __version__, device, options, output, stack
from surgeon.discovery import Registry, discover
from surgeon.errors import PluginError, SurgeonError, UsageError, blamed_on
from surgeon.plugin import Converter, RewritePass, Source, Writer
from surgeon.onnx_io import oversized_tensor
from surgeon.rewrite import run_passes
from surgeon.verify import DEFAULT_ATOL, DEFAULT_RTOL, check_parity

log = logging.getLogger("surgeon")

ALWAYS_WRITTEN = "onnx"
DEFAULT_FORMATS = ("saved_model",)
DEFAULT_CONVERTER = "onnx_tf"


@dataclass
class RunConfig:
    """Everything ``surgeon run`` takes; the Python API and the CLI both build one."""

    source: str
    output: Path
    plugins: list[str] = field(default_factory=list)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    formats: list[str] = field(default_factory=lambda: list(DEFAULT_FORMATS))
    batch_sizes: list[int] | None = None
    verify: bool = True
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    device: str | None = None
    max_tensor_gib: float = 8.0
    converter: str = DEFAULT_CONVERTER
    plugin_paths: list[Path] = field(default_factory=list)
    force: bool = False
    pipeline_file: Path | None = None


@dataclass
class Plan:
    """The resolved plugins of a run, with validated options."""

    source: Source
    passes: list[tuple[RewritePass, Any]]
    writers: list[tuple[Writer, Any]]
    converter: tuple[Converter, Any] | None
    options: dict[str, Any]
    idle_passes: list[RewritePass]  # installed, not in this run: their detectors explain a failed conversion

    @classmethod
    def resolve(cls, registry: Registry, config: RunConfig) -> Plan:
        source = pick_source(registry, config.source)
        passes = [registry.get(RewritePass, name) for name in config.plugins]
        formats = [ALWAYS_WRITTEN, *(name for name in dict.fromkeys(config.formats) if name != ALWAYS_WRITTEN)]
        writers = [registry.get(Writer, name) for name in formats]
        converter = None
        if any(writer.needs_saved_model for writer in writers):
            converter = registry.get(Converter, config.converter)
        used = [source, *passes, *writers, *([converter] if converter else [])]
        for name, values in config.options.items():
            plugin = registry.find(name)
            if plugin is None:
                raise UsageError(f"options given for unknown plugin {name!r}")
            if plugin not in used:
                options.build(name, plugin.options, values)  # still report mistakes
                log.warning("options for %r are ignored: it is not used in this run", name)
        built = {plugin.name: options.build(plugin.name, plugin.options, config.options.get(plugin.name, {}))
                 for plugin in used}
        return cls(
            source=source,
            passes=[(p, built[p.name]) for p in passes],
            writers=[(w, built[w.name]) for w in writers],
            converter=(converter, built[converter.name]) if converter else None,
            options=built,
            idle_passes=[p for name, p in registry.passes.items() if name not in config.plugins],
        )


def pick_source(registry: Registry, spec: str) -> Source:
    accepting = [source for source in registry.sources.values() if _accepts(source, spec)]
    if len(accepting) == 1:
        return accepting[0]
    if not accepting:
        raise UsageError(
            f"no installed source understands {spec!r}",
            hint="give an .onnx file, or a PyTorch model as file.py:factory or package.module:factory",
        )
    raise UsageError(f"{spec!r} is claimed by several sources: {', '.join(s.name for s in accepting)}")


def _accepts(source: Source, spec: str) -> bool:
    with blamed_on(source.name, "accepts()"):
        return bool(source.accepts(spec))


@dataclass
class RunContext:
    """What plugins see of a run in progress."""

    config: RunConfig
    plan: Plan
    staging: Path
    report: dict[str, Any]
    source_model: onnx.ModelProto | None = None
    model: onnx.ModelProto | None = None
    # set by a source that can compute the original outputs (e.g. PyTorch):
    # input arrays in the source's input order -> output arrays
    reference: Callable[[list[Any]], list[Any]] | None = None
    # what a server would load, by stage name (e.g. "saved_model" -> its folder in staging); writers add
    # to it, and verification runs each in a fresh process
    served_models: dict[str, Path] = field(default_factory=dict)
    _saved_model: Path | None = None

    @property
    def onnx_path(self) -> Path:
        """The rewritten model, ``OUT/model.onnx`` once the run succeeds."""
        return self.staging / "model.onnx"

    @property
    def scratch(self) -> Path:
        """A private folder for intermediate files, removed before the output is committed."""
        path = self.staging / ".scratch"
        path.mkdir(exist_ok=True)
        return path

    def saved_model(self) -> Path:
        """The SavedModel converted from ``self.model``: converted on first use, then shared."""
        if self._saved_model is None:
            if self.plan.converter is None:
                raise SurgeonError("no converter was planned for this run")
            converter, converter_options = self.plan.converter
            target = self.scratch / "saved_model"
            with stage(self.report, "convert", f"converting to TensorFlow with {converter.name}"):
                try:
                    with blamed_on(converter.name, "conversion"):
                        converter.convert(self.model, converter_options, target, self)
                except SurgeonError as error:
                    raise with_fixes_named(error, self.model, self.plan.idle_passes) from error.__cause__
            # every SavedModel of the run (saved_model, triton, ...) is linked from this one: it carries the record
            stack.write_record(target, self.report["stack"])
            self._saved_model = target
        return self._saved_model


def with_fixes_named(error: SurgeonError, model: onnx.ModelProto, idle_passes: list[RewritePass]) -> SurgeonError:
    """``error`` with a hint naming what installed passes, not in the run, detect in ``model``."""
    from surgeon.inspection import findings

    unnamed = [rewrite for rewrite in idle_passes if rewrite.name not in str(error)]
    try:
        found = findings(model, unnamed)
    except SurgeonError:  # a broken detector must not hide the conversion's own error
        return error
    if not found:
        return error
    plugins = ", ".join(dict.fromkeys(finding["plugin"] for finding in found))
    first, more = found[0], f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    hint = f"add {plugins} to --plugins, which detects {first['where']}: {first['message']}{more}"
    error.hint = f"{hint}; {error.hint}" if error.hint else hint
    return error


@contextmanager
def stage(report: dict[str, Any], name: str, what: str) -> Iterator[None]:
    """Log a pipeline stage with its time, and record the time in the report."""
    log.info("%s ...", what)
    started = time.perf_counter()
    yield
    seconds = time.perf_counter() - started
    report.setdefault("seconds", {})[name] = round(seconds, 3)
    log.info("%s: done in %.1fs", name, seconds)


def files_read(config: RunConfig) -> list[Path]:
    """The user's files this run reads, which ``--force`` must never remove: the source (an ONNX file with its
    external data, or the Python file of a factory), the checkpoint, plugin files and the pipeline file."""
    factory_file = config.source.split(":")[0]
    candidates = [Path(config.source), *([Path(factory_file)] if factory_file.endswith(".py") else []),
                  *config.plugin_paths]
    weights = config.options.get("torch", {}).get("weights")
    candidates += [Path(weights)] if weights else []
    candidates += [config.pipeline_file] if config.pipeline_file else []
    found = [path for path in candidates if path.exists()]
    source = Path(config.source)
    if source.is_file() and source.suffix == ".onnx":
        try:
            model = onnx.load(str(source), load_external_data=False)
        except Exception:  # the source plugin says what is wrong with it
            return found
        found += [source.parent / entry.value for tensor in model.graph.initializer
                  for entry in tensor.external_data if entry.key == "location"]
    return found


def run(config: RunConfig) -> dict[str, Any]:
    """Run the whole pipeline; return the report (also written to OUT/report.json)."""
    started = time.perf_counter()
    device.select(config.device)
    plan = Plan.resolve(discover(config.plugin_paths), config)
    report: dict[str, Any] = {
        "surgeon": __version__,
        "source": config.source,
        "source_plugin": plan.source.name,
        "formats": [writer.name for writer, _ in plan.writers],
        "stack": stack.installed_versions(),  # also in OUT/saved_model/assets.extra/surgeon.json
    }
    keep = files_read(config) if config.force and config.output.is_dir() else []
    with output.staged(config.output, config.force, keep) as staging:
        ctx = RunContext(config=config, plan=plan, staging=staging, report=report)
        with stage(report, "load", f"loading {config.source} with {plan.source.name}"):
            ctx.source_model = _load(plan.source, config.source, plan.options[plan.source.name], ctx)
        names = ", ".join(p.name for p, _ in plan.passes) or "none"
        with stage(report, "rewrite", f"rewriting: {names}"):
            ctx.model, records = run_passes(ctx.source_model, plan.passes)
        report["plugins"] = [record.__dict__ for record in records]
        oversized = oversized_tensor(ctx.model, int(config.max_tensor_gib * 2**30))
        if oversized:
            raise SurgeonError(f"{config.source}: {oversized}, over the budget of {config.max_tensor_gib:g} GiB",
                               hint="raise it with --max-tensor-gib if the machine really has the memory")
        for writer, writer_options in plan.writers:
            with stage(report, f"write_{writer.name}", f"writing {writer.name}"):
                with blamed_on(writer.name, "writing"):
                    writer.write(ctx, writer_options, staging)
        if config.verify:
            with stage(report, "verify", "verifying outputs"):
                report["parity"] = check_parity(ctx)
        shutil.rmtree(staging / ".scratch", ignore_errors=True)
        report["seconds"]["total"] = round(time.perf_counter() - started, 3)
        write_report(staging, report)
    publishing = [(writer, writer_options) for writer, writer_options in plan.writers if writer.publish]
    for writer, writer_options in publishing:
        with blamed_on(writer.name, "publishing"):
            writer.publish(ctx, writer_options, config.output)
    if publishing:
        write_report(config.output, report)
    return report


def write_report(folder: Path, report: dict[str, Any]) -> None:
    partial = folder / ".report.json.partial"
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(folder / "report.json")


def _load(source: Source, spec: str, source_options: Any, ctx: RunContext) -> onnx.ModelProto:
    with blamed_on(source.name, f"loading {spec}"):
        model = source.load(spec, source_options, ctx)
    if not isinstance(model, onnx.ModelProto):
        raise PluginError(source.name, f"load() returned {type(model).__name__}, not an onnx.ModelProto")
    return model


