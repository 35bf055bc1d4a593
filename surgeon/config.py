"""Run settings from the command line and from a pipeline file (``--config pipeline.toml``).

A pipeline file lets a team keep its recipe in its repository::

    source = "model.onnx"              # paths are relative to this file
    output = "served/"
    plugins = ["dynamic_batch", "pool_fix", "rename_outputs"]
    format = ["saved_model", "triton"]
    batch_sizes = [1, 3, 8]

    [rename_outputs]                   # a table per plugin holds its options
    names = { logits = "result" }

Flags given on the command line override the file, and ``--set`` overrides a
table's keys one by one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from surgeon import options
from surgeon.errors import UsageError
from surgeon.pipeline import RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SETTINGS: dict[str, type | tuple[type, ...]] = {
    "source": str, "output": str, "plugins": list, "format": list, "batch_sizes": list, "verify": bool,
    "atol": (int, float), "rtol": (int, float), "device": (str, int), "converter": str, "plugin_path": list,
    "max_tensor_gib": (int, float),
    "force": bool, "axis_sizes": dict,
}


def load_pipeline_file(path: Path) -> dict[str, Any]:
    """Read and check a pipeline file; relative paths become relative to its folder."""
    try:
        settings = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"pipeline file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"pipeline file {path}: cannot read it ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"pipeline file {path}: invalid TOML ({error})") from None
    for key, value in settings.items():
        if isinstance(value, dict) and key not in SETTINGS:
            continue
        if key not in SETTINGS:
            raise UsageError(f"pipeline file {path}: unknown setting {key!r} (settings: {', '.join(SETTINGS)}; "
                             "a [table] holds a plugin's options)")
        if not isinstance(value, SETTINGS[key]) or (isinstance(value, bool) and SETTINGS[key] != bool):
            raise UsageError(f"pipeline file {path}: {key} = {value!r} has the wrong type")
    base = path.parent
    if "source" in settings and (base / settings["source"].split(":")[0]).exists():
        settings["source"] = str(base / settings["source"])
    if "output" in settings:
        settings["output"] = str(base / settings["output"])
    settings["plugin_path"] = [str(base / p) for p in settings.get("plugin_path", [])]
    return settings


def run_config(settings: dict[str, Any], args: argparse.Namespace) -> RunConfig:
    """A RunConfig from pipeline-file settings overridden by command-line flags."""
    file_options = {key: value for key, value in settings.items() if isinstance(value, dict) and key not in SETTINGS}
    flag_options: dict[str, dict[str, Any]] = {}
    if args.weights:
        flag_options.setdefault("torch", {})["weights"] = args.weights
    if args.input_shape:
        flag_options.setdefault("torch", {})["input_shapes"] = args.input_shape
    source = f"example:{args.example}" if args.example else (args.source or settings.get("source"))
    output = args.output or settings.get("output")
    if not source:
        raise UsageError("no SOURCE given", hint="surgeon run model.onnx -o out/   (or --example ct-position)")
    if not output:
        raise UsageError("no output folder given", hint="add -o OUT")
    config = RunConfig(
        source=source,
        output=Path(output),
        plugins=_names(args.plugins) if args.plugins is not None else list(settings.get("plugins", _example_plugins(args))),
        options=options.merge(file_options, flag_options, options.parse_set(args.set)),
        verify=False if args.no_verify else settings.get("verify", True),
        device=args.device or (str(settings["device"]) if "device" in settings else None),
        plugin_paths=[Path(p) for p in [*settings.get("plugin_path", []), *args.plugin_path]],
        force=args.force or settings.get("force", False),
        pipeline_file=Path(args.config) if getattr(args, "config", None) else None,
    )
    if args.format or "format" in settings:
        config.formats = _names(args.format) if args.format else list(settings["format"])
    sizes = _positive_ints("--batch-sizes", args.batch_sizes) if args.batch_sizes else settings.get("batch_sizes")
    config.batch_sizes = list(sizes) if sizes else None
    config.axis_sizes = axis_sizes(settings.get("axis_sizes", {}), args.axis_sizes or [])
    for key in ("atol", "rtol", "converter", "max_tensor_gib"):
        value = getattr(args, key, None)
        if value is None:
            value = settings.get(key)
        if value is not None:
            setattr(config, key, value)
    return config


def _example_plugins(args: argparse.Namespace) -> list[str]:
    """A bundled example runs the rewrite plugins it needs unless --plugins says otherwise."""
    if not args.example:
        return []
    from surgeon_plugins import examples

    return list(examples.get(args.example).plugins)


def axis_sizes(from_file: dict[str, Any], flags: list[str]) -> dict[str, list[int]]:
    """The sizes to verify each named dimension at: the pipeline file's ``axis_sizes = {seq = [8, 16]}``, then
    each ``--axis-sizes seq=8,16`` flag."""
    sizes: dict[str, list[int]] = {}
    for name, values in from_file.items():
        if not isinstance(values, list) or not values or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise UsageError(f"pipeline file: axis_sizes.{name} = {values!r}: expected a list of positive whole "
                             "numbers, e.g. [8, 16, 32]")
        sizes[name] = values
    for flag in flags:
        name, equals, values = flag.partition("=")
        if not equals or not name.strip():
            raise UsageError(f"--axis-sizes {flag!r}: expected NAME=SIZES, e.g. seq=8,16,32")
        sizes[name.strip()] = _positive_ints(f"--axis-sizes {name.strip()}=", values)
    return sizes


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _positive_ints(flag: str, text: str) -> list[int]:
    try:
        values = [int(part) for part in _names(text)]
    except ValueError:
        values = []
    if not values or any(value <= 0 for value in values):
        raise UsageError(f"{flag} {text!r}: expected positive whole numbers separated by commas, e.g. 1,3,8")
    return values
