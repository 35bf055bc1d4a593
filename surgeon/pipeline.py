"""The pipeline: source -> rewrite passes in ``--plugins`` order -> writers -> verification.

Every plugin and option is resolved and validated before any work starts,
and everything is written into a staging folder renamed into place at the
end (see ``surgeon.output``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from surgeon import device, options, output, stack
from surgeon.context import Reference
from surgeon.discovery import Registry, discover
from surgeon.feeds import Case, case_feed, cases, fixed_sizes, static_batch
from surgeon.errors import PluginError, SurgeonError, UsageError, blamed_on
from surgeon.plugin import Converter, Hazard, RewritePass, Source, Writer
from surgeon.onnx_io import oversized_tensor
from surgeon.rewrite import run_passes
from surgeon import verify
from surgeon.verify import DEFAULT_ATOL, DEFAULT_RTOL  # the RunConfig field `verify` hides the module there
from surgeon.version import __version__

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
    axis_sizes: dict[str, list[int]] = field(default_factory=dict)
    verify: bool = True
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    device: str | None = None
    max_tensor_gib: float = 8.0
    converter: str = DEFAULT_CONVERTER
    plugin_paths: list[Path] = field(default_factory=list)
    force: bool = False
    pipeline_file: Path | None = None

    def __post_init__(self) -> None:
        # ``..`` resolved by the spelling, as the shell user means it: ``new/../out`` is ``out``, whether ``new``
        # exists or not (the file system would need ``new`` and would follow links)
        self.output = Path(os.path.normpath(self.output))


@dataclass
class Plan:
    """The resolved plugins of a run, with validated options."""

    source: Source
    passes: list[tuple[RewritePass, Any]]
    writers: list[tuple[Writer, Any]]
    converter: tuple[Converter, Any] | None
    options: dict[str, Any]
    idle_passes: list[RewritePass]  # installed, not in this run: named when a failure is a hazard they fix

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
    """The host's state of one run. Plugins see it as a :class:`surgeon.context.Context`, which it implements."""

    config: RunConfig
    plan: Plan
    staging: Path
    report: dict[str, Any]
    source_model: onnx.ModelProto | None = None
    rewritten: onnx.ModelProto | None = None
    reference: tuple[Reference, str] | None = None  # the original model as a function, and what it is in words
    served_models: dict[str, Path] = field(default_factory=dict)
    _saved_model: Path | None = None

    @property
    def source(self) -> str:
        return self.config.source

    @property
    def batch_sizes(self) -> list[int] | None:
        return self.config.batch_sizes

    @property
    def axis_sizes(self) -> dict[str, list[int]]:
        return self.config.axis_sizes

    @property
    def device(self) -> str | None:
        return self.config.device

    @property
    def writers(self) -> list[str]:
        return [writer.name for writer, _ in self.plan.writers]

    @property
    def model(self) -> onnx.ModelProto:
        if self.rewritten is None:
            raise SurgeonError("the model is not rewritten yet: only converters and writers may read it")
        return self.rewritten

    @property
    def onnx_path(self) -> Path:
        return self.staging / "model.onnx"

    @property
    def scratch(self) -> Path:
        path = self.staging / ".scratch"
        path.mkdir(exist_ok=True)
        return path

    def record(self, key: str, value: Any) -> None:
        self.report[key] = value

    def set_reference(self, reference: Reference, what: str) -> None:
        self.reference = (reference, what)

    def cases(self) -> list[Case]:
        return verified_cases(self)

    def newest_opset_in_reach(self) -> int | None:
        reaches = [rewrite.newest_opset for rewrite, _ in self.plan.passes if rewrite.newest_opset is not None]
        return max(reaches, default=None)

    def saved_model(self) -> Path:
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
                    raise with_fixes_named(error, self.model, self.plan) from error.__cause__
            # every SavedModel of the run (saved_model, triton, ...) is linked from this one: it carries the record
            stack.write_record(target, self.report["stack"])
            self._saved_model = target
        return self._saved_model


def with_fixes_named(error: SurgeonError, model: onnx.ModelProto, plan: Plan) -> SurgeonError:
    """``error`` with a hint naming the installed passes that fix its hazard, with what their detectors find in
    ``model`` (at the nodes the error names, when it names any): a pass to add, or one that ran and left it."""
    from surgeon.inspection import findings

    ran = {rewrite.name for rewrite, _ in plan.passes}
    fixers = [rewrite for rewrite in [*(p for p, _ in plan.passes), *plan.idle_passes]
              if error.hazard is not None and error.hazard in rewrite.fixes]
    try:
        found = findings(model, fixers)
    except SurgeonError:  # a broken detector must not hide the conversion's own error
        found = []
    if error.nodes:
        found = [finding for finding in found if set(finding["nodes"]) & set(error.nodes)]
    hints = []
    for rewrite in fixers:
        own = [finding for finding in found if finding["plugin"] == rewrite.name]
        if not own:
            if rewrite.name in ran and not error.nodes:
                hints.append(f"{rewrite.name} ran but left it: `surgeon inspect MODEL.onnx` says why")
            continue
        own.sort(key=lambda finding: not finding["fixable"])
        first = f"{own[0]['where']}: {own[0]['message']}" + (f" (and {len(own) - 1} more)" if len(own) > 1 else "")
        if rewrite.name in ran:
            hints.append(f"{rewrite.name} ran but left {first}")
        elif own[0]["fixable"]:
            hints.append(f"add {rewrite.name} to --plugins, which detects {first}")
        else:
            hints.append(f"{rewrite.name} detects {first}")
    if hints:
        hint = "; ".join(hints)
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
            try:
                ctx.rewritten, records = run_passes(ctx.source_model, plan.passes)
            except PluginError as error:
                refusing, reload = batch_fixer(plan, error), plan.source.load_with_dynamic_batch
                if refusing is None or reload is None:
                    raise
                log.warning("%s; exporting again with a dynamic batch axis, without %s", error, refusing.name)
                ctx.record("dynamic_batch_fallback", {"refused_by": refusing.name, "reason": str(error)})
                ctx.source_model = _load(plan.source, config.source, plan.options[plan.source.name], ctx, reload)
                ctx.rewritten, records = run_passes(ctx.source_model,
                                                    [(p, o) for p, o in plan.passes if p is not refusing])
        report["plugins"] = [record.__dict__ for record in records]
        oversized = oversized_tensor(ctx.model, int(config.max_tensor_gib * 2**30))
        if oversized:
            raise SurgeonError(f"{config.source}: {oversized}, over the budget of {config.max_tensor_gib:g} GiB",
                               hint="raise it with --max-tensor-gib if the machine really has the memory")
        if config.verify or config.axis_sizes:
            verified_cases(ctx)  # sizes the model or the reference cannot take: refused before writing
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
    published = False
    for writer, writer_options in plan.writers:
        if writer.publish is not None:
            with blamed_on(writer.name, "publishing"):
                writer.publish(ctx, writer_options, config.output)
            published = True
    if published:
        write_report(config.output, report)
    return report


def check_parity(ctx: RunContext) -> list[dict[str, Any]]:
    """Compare every stage of the run with its reference (``surgeon.verify``); return the parity table, or raise
    on a divergence with a hint naming the passes that fix a fixed batch."""
    model, config, plan = ctx.model, ctx.config, ctx.plan
    feeds = {case: case_feed(model, case) for case in verified_cases(ctx)}
    run, what = verify.reference_runner(loaded_source(ctx), model, ctx.reference, plan.passes)
    ctx.record("reference", what)
    table = verify.compare_stages(verify.stage_runners(model, ctx.served_models),
                                  verify.reference_outputs(run, what, feeds), feeds,
                                  by_sample=static_batch(model) is None, atol=config.atol, rtol=config.rtol,
                                  names=[value.name for value in model.graph.output])
    for line in verify.format_table(table):
        log.info("%s", line)
    verify.raise_on_divergence(
        table, config.atol, config.rtol,
        batch_fixers_run=[p.name for p, _ in plan.passes if Hazard.FIXED_BATCH in p.fixes],
        batch_fixers_left_out=[p.name for p in plan.idle_passes if Hazard.FIXED_BATCH in p.fixes],
        padded=fixed_sizes(loaded_source(ctx), model) if ctx.reference is None else None)
    return table


def verified_cases(ctx: RunContext) -> list[Case]:
    """The cases verification runs (``surgeon.feeds.cases``), a named dimension that the source model fixes
    included (at 2, half its size and all of it, unless ``--axis-sizes`` says otherwise). When the reference is
    onnxruntime on the source model, a size longer than the source fixes is refused: nothing computes it."""
    fixed = fixed_sizes(loaded_source(ctx), ctx.model)
    if ctx.config.verify and ctx.reference is None:
        verify.refuse_longer_than_fixed(ctx.axis_sizes, fixed)
    return cases(ctx.model, ctx.batch_sizes, ctx.axis_sizes, fixed)


def loaded_source(ctx: RunContext) -> onnx.ModelProto:
    """The source model; verification needs it loaded."""
    if ctx.source_model is None:
        raise SurgeonError("verification runs once the source is loaded")
    return ctx.source_model


def write_report(folder: Path, report: dict[str, Any]) -> None:
    partial = folder / ".report.json.partial"
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(folder / "report.json")


def batch_fixer(plan: Plan, error: PluginError) -> RewritePass | None:
    """The pass of the run that raised ``error`` when it is one that fixes a fixed batch: the source may then
    export again with a dynamic batch instead."""
    return next((rewrite for rewrite, _ in plan.passes
                 if rewrite.name == error.plugin and Hazard.FIXED_BATCH in rewrite.fixes), None)


def _load(source: Source, spec: str, source_options: Any, ctx: RunContext,
          load: Callable[[str, Any, RunContext], onnx.ModelProto] | None = None) -> onnx.ModelProto:
    with blamed_on(source.name, f"loading {spec}"):
        model = (load or source.load)(spec, source_options, ctx)
    if not isinstance(model, onnx.ModelProto):
        raise PluginError(source.name, f"load() returned {type(model).__name__}, not an onnx.ModelProto")
    return model
