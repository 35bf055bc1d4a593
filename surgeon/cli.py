"""The command line: ``surgeon run``, ``plugins``, ``inspect``, ``new-plugin``.

Imports stay light here: TensorFlow and PyTorch are imported only by the
plugins that need them, when a run needs them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from surgeon.version import __version__
from surgeon.errors import SurgeonError, describe

log = logging.getLogger("surgeon")

RUN_EPILOG = """\
examples:
  surgeon run model.onnx -o out/ --plugins dynamic_batch,pool_fix,rename_outputs
  surgeon run model.onnx -o out/ --plugins rename_outputs --set rename_outputs.names=logits:result
  surgeon run net.py:build --weights ckpt.pth --input-shape 1,3,224,224 -o out/
  surgeon run text.py:build --input-shape int64:1,16 --set torch.dynamic_axes=input_ids:1:seq \\
      --plugins dynamic_batch,opset_compat --axis-sizes seq=8,16,32 -o out/   (token length dynamic too)
  surgeon run bert.onnx --plugins dynamic_batch,dynamic_axes,opset_compat \\
      --set dynamic_axes.axes=input_ids:1:seq,attention_mask:1:seq -o out/   (an ONNX file fixed at one length)
  surgeon run --example ct-position -o out/          (the bundled 3D CT classifier)
  surgeon run --config pipeline.toml                 (the same settings, kept in a file)

OUT gets model.onnx (the rewritten ONNX), one folder per --format, and
report.json (what each plugin changed, timings, and the parity table). OUT is
written all at once: after a failure it is absent or as it was.
`surgeon plugins` lists the plugins and their options.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgeon",
        description="Take a PyTorch model or an ONNX file to a TensorFlow SavedModel that TF Serving and "
        "Triton can mount, fixing the ONNX graph on the way and checking that the numbers still match.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"surgeon {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run", help="convert a model: source -> rewrite plugins -> outputs, then verify",
        description="Convert SOURCE into OUT: load it as ONNX, run the rewrite plugins in the order "
        "given, write the formats, and verify that every stage computes what the source computes.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common],
    )
    run.add_argument("source", nargs="?", metavar="SOURCE",
                     help="an .onnx file, or a PyTorch model as file.py:factory or package.module:factory")
    run.add_argument("-o", "--output", metavar="OUT", help="output folder (must be empty, or use --force)")
    run.add_argument("--plugins", metavar="A,B,C",
                     help="rewrite plugins to run, in this order (default: none)")
    run.add_argument("--set", action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                     help="set a plugin option; repeatable (lists: a,b; maps: k:v,k2:v2 or JSON)")
    run.add_argument("--format", metavar="F,G",
                     help="outputs: saved_model, triton, onnx, frozen_pb (default: saved_model; "
                     "OUT/model.onnx is always written)")
    run.add_argument("--batch-sizes", metavar="1,3,8",
                     help="batch sizes to verify at (default: 1 and 3 when the batch is dynamic)")
    run.add_argument("--axis-sizes", action="append", metavar="NAME=8,16,32",
                     help="sizes to verify a named dynamic dimension of the inputs at (such as a sequence length "
                     "exported with --set torch.dynamic_axes=input_ids:1:seq); repeatable; every combination with "
                     "the batch sizes is checked (default: other dynamic dimensions at 4)")
    run.add_argument("--no-verify", action="store_true", help="skip the parity check")
    run.add_argument("--atol", type=float, help="absolute tolerance of the parity check (default 1e-4)")
    run.add_argument("--rtol", type=float, help="relative tolerance of the parity check, as a fraction of the "
                     "largest value of each sample of each output (default 1e-3): a value passes when it is within "
                     "atol + rtol * that largest value")
    run.add_argument("--device", metavar="cpu|N", help="the one device TensorFlow may use")
    run.add_argument("--max-tensor-gib", type=float, metavar="GIB",
                     help="refuse models with a tensor larger than this (default 8)")
    run.add_argument("--plugin-path", action="append", default=[], metavar="FILE.py",
                     help="load plugins from a Python file; repeatable")
    run.add_argument("--config", metavar="FILE.toml", help="a pipeline file; command-line flags override it")
    run.add_argument("--force", action="store_true",
                     help="replace OUT if it holds a previous surgeon output (its report.json); never a folder "
                     "holding the source, checkpoint, plugin or pipeline file, the current or home folder")
    run.add_argument("--example", metavar="NAME", help="use a bundled example model as SOURCE (ct-position)")
    run.add_argument("--weights", metavar="CKPT", help="PyTorch checkpoint (a state_dict) for a PyTorch SOURCE")
    run.add_argument("--input-shape", metavar="1,1,128,128,128", action="append",
                     help="input shape for exporting a PyTorch SOURCE; repeat for several inputs")
    run.add_argument("-v", "--verbose", action="store_true", help="also show TensorFlow's and plugins' logs")

    plugins = commands.add_parser("plugins", help="list installed plugins, their kinds and options",
                                  parents=[common])
    plugins.add_argument("--plugin-path", action="append", default=[], metavar="FILE.py")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    inspect = commands.add_parser(
        "inspect", help="show a model's inputs, outputs, ops and the hazards plugins would fix", parents=[common])
    inspect.add_argument("model", metavar="MODEL", help="an .onnx file, or a SavedModel folder")
    inspect.add_argument("--plugin-path", action="append", default=[], metavar="FILE.py")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    new_plugin = commands.add_parser(
        "new-plugin", help="write a ready-to-install rewrite-plugin package (pass, detector, test, entry point)",
        parents=[common])
    new_plugin.add_argument("name", metavar="NAME", help="the plugin's name, e.g. fold_bn")
    new_plugin.add_argument("--dir", default=".", metavar="PARENT", help="where to create surgeon-NAME/ (default: .)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(getattr(args, "verbose", False))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        commands = {"run": _run, "plugins": _plugins, "inspect": _inspect, "new-plugin": _new_plugin}
        return commands[args.command](args)
    except SurgeonError as error:
        _fail(args, error, str(error))
        return error.exit_code
    except KeyboardInterrupt:
        print("surgeon: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `surgeon inspect ... | head`: the reader has gone; exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        _fail(args, error, f"internal error: {describe(error)}\n  hint: --debug shows the traceback")
        return 70


def _fail(args: argparse.Namespace, error: BaseException, message: str) -> None:
    if getattr(args, "debug", False):
        traceback.print_exception(error)
    print(f"surgeon: error: {message}", file=sys.stderr)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _configure_logging(verbose: bool) -> None:
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not any(isinstance(handler.formatter, _Formatter) for handler in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter())
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def _run(args: argparse.Namespace) -> int:
    from surgeon import pipeline
    from surgeon.config import load_pipeline_file, run_config

    settings: dict[str, Any] = load_pipeline_file(Path(args.config)) if args.config else {}
    config = run_config(settings, args)
    report = pipeline.run(config)
    written = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in config.output.iterdir()))
    print(f"surgeon: wrote {config.output} ({written}) in {report['seconds']['total']:.1f}s")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from surgeon.inspection import list_plugins

    listing = list_plugins([Path(p) for p in args.plugin_path])
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
        return 0
    width = max((len(p["name"] or "") for p in listing), default=4) + 2
    for plugin in listing:
        if plugin["kind"] == "broken":
            print(f"{'(broken)':<{width}}{plugin['origin']}: {plugin['doc']}")
            continue
        print(f"{plugin['name']:<{width}}{plugin['kind']:<11}{plugin['doc']}")
        for option in plugin["options"]:
            doc = f"  {option['doc']}" if option["doc"] else ""
            print(f"{'':<{width}}  {option['name']}: {option['type']} = {option['default']!r}{doc}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from surgeon.inspection import inspect

    info = inspect(Path(args.model), [Path(p) for p in args.plugin_path])
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if info["kind"] == "saved_model":
        from surgeon.saved_model_info import format_description

        print(format_description(info))
        return 0
    opset = ", ".join(f"{domain} {version}" for domain, version in info["opset"].items())
    print(f"{info['path']}: opset {opset}; ir {info['ir_version']}; producer {info['producer'] or '?'}")
    for heading in ("inputs", "outputs"):
        print(f"{heading}:")
        for value in info[heading]:
            print(f"  {value['name']}  {value['dtype']}  {value['shape']}")
    ops = ", ".join(f"{op} {count}" for op, count in info["ops"].items())
    print(f"ops ({info['nodes']} nodes): {ops}")
    if info["findings"]:
        print("hazards:")
        for finding in info["findings"]:
            print(f"  [{finding['plugin']}] {finding['where']}: {finding['message']}")
    else:
        print("hazards: none found by the installed plugins")
    for broken in info["broken_plugins"]:
        print(f"warning: plugin {broken['origin']} is broken: {broken['reason']}", file=sys.stderr)
    return 0


def _new_plugin(args: argparse.Namespace) -> int:
    from surgeon.scaffold import new_plugin

    folder = new_plugin(args.name, Path(args.dir))
    print(f"wrote {folder}; next:\n  cd {folder} && pip install -e '.[test]' && python -m pytest\n"
          f"  surgeon run model.onnx -o out/ --plugins {args.name}")
    return 0
