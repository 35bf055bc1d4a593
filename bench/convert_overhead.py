"""How much does ``surgeon run --no-verify`` cost over the bare library calls doing the same conversion?

The model is the bundled CT example, the recipe's 3D ResNet-34, at
1x1x128x128x128 (about 250 MB of weights), exported once with
``torch.onnx.export(dynamo=False, opset_version=13)`` at that fixed shape,
as the recipe did. Then, each as a whole new process, alternating:

- surgeon, as onnx-tf lays it out: ``surgeon run model.onnx -o OUT --no-verify
  --set onnx_tf.layout=onnx-tf`` (load and check the ONNX, write
  OUT/model.onnx, convert with onnx-tf, scan the SavedModel for Python
  callbacks, link it into OUT/saved_model, write report.json): the same
  SavedModel the bare calls make;
- surgeon: the same with its default, the SavedModel laid out to serve on the
  CPU (converted channels-first, then rewritten channels-last:
  plugins/converters/onnx_tf/layout.py), which costs conversion time for
  serving time (bench/served_latency.py);
- bare: ``onnx.load``, ``onnx_tf.backend.prepare``, ``export_graph``.

Wall time, CPU time and peak resident memory of each process (``os.wait4``)
over ``--repeat`` runs. Target (issue 3): time ratio of the like-for-like
conversion (layout as onnx-tf's) at most 1.05.

    python bench/convert_overhead.py               # full size, 3 runs each
    python bench/convert_overhead.py --shape 1,1,32,64,64 --repeat 1

Results go to bench/results/convert_overhead.md on the default stack (the
TensorFlow that constraints.txt pins), to convert_overhead-tfX.Y.md on any
other (TensorFlow 2.15: convert_overhead-tf2.15.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from stacks import stack  # beside this script

RESULTS = Path(__file__).parent / "results" / "convert_overhead.md"
SURGEON = Path(sys.executable).with_name("surgeon")
BARE = """
import sys
import onnx
# onnx-tf 1.10 as surgeon imports it: plain `import onnx_tf` fails on the default stack (onnx >= 1.19 has no
# onnx.mapping); the conversion itself is onnx-tf's own
from surgeon_plugins.converters.onnx_tf.compat import imported_onnx_tf

imported_onnx_tf().prepare(onnx.load(sys.argv[1])).export_graph(sys.argv[2])
"""


def export(shape: tuple[int, ...], path: Path) -> None:
    import torch

    from surgeon_plugins.examples.ct_position import ct_position

    model = ct_position(input_shape=shape)
    with torch.no_grad():
        torch.onnx.export(model, torch.zeros(shape), str(path), dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["output"])


def measure(command: list[str]) -> tuple[float, float, float]:
    """Run ``command`` as a new process; return its wall time (s), CPU time (s) and peak resident memory (GB)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-2000:]}")
    process.stderr.close()
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1e6  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1,1,128,128,128")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, help="folder for the model and outputs (default: a temporary one)")
    args = parser.parse_args()
    stack_words, results = stack(RESULTS)
    command_line = "".join(f" --{name} {value}" for name, value, default in (
        ("shape", args.shape, parser.get_default("shape")), ("repeat", args.repeat, parser.get_default("repeat")))
        if value != default)
    print(f"stack: {stack_words}; results to {results}", flush=True)
    shape = tuple(map(int, args.shape.split(",")))
    work = args.work or Path(tempfile.mkdtemp(prefix="convert-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"ct_position_{'x'.join(map(str, shape))}.onnx"
    if not source.exists():
        export(shape, source)
    print(f"{source}: {source.stat().st_size / 1e6:.0f} MB", flush=True)

    commands = {
        "surgeon": [str(SURGEON), "run", str(source), "--no-verify"],
        "surgeon_onnx_tf_layout": [str(SURGEON), "run", str(source), "--no-verify", "--set", "onnx_tf.layout=onnx-tf"],
    }
    runs: dict[str, list[tuple[float, float, float]]] = {"surgeon": [], "surgeon_onnx_tf_layout": [], "bare": []}
    stages = []
    for attempt in range(args.repeat):
        order = list(runs)
        for name in order[attempt % len(order):] + order[:attempt % len(order)]:
            out = work / f"out_{name}"
            shutil.rmtree(out, ignore_errors=True)
            command = [*commands[name], "-o", str(out)] if name in commands else [
                sys.executable, "-c", BARE, str(source), str(out)]
            runs[name].append(measure(command))
            if name == "surgeon":
                stages.append(json.loads((out / "report.json").read_text())["seconds"])
            wall, cpu, peak = runs[name][-1]
            print(f"  {name:<8} wall {wall:6.1f}s  cpu {cpu:6.1f}s  peak {peak:.2f} GB", flush=True)

    def summary(name: str) -> dict[str, float]:
        walls, cpus, peaks = zip(*runs[name])
        return {"wall": statistics.median(walls), "best": min(walls), "cpu": statistics.median(cpus),
                "peak": max(peaks)}

    bare, ours, like = summary("bare"), summary("surgeon"), summary("surgeon_onnx_tf_layout")
    ratio = {key: like[key] / bare[key] for key in bare}
    laid_out = {key: ours[key] / bare[key] for key in bare}
    saved_model = sum(f.stat().st_size for f in (work / "out_surgeon" / "saved_model").rglob("*") if f.is_file())
    stage_names = [name for name in stages[-1] if name != "total"]
    print(f"ratio (onnx-tf's layout): wall {ratio['wall']:.3f} (best {ratio['best']:.3f}), cpu {ratio['cpu']:.3f}; "
          f"laid out for the CPU: wall {laid_out['wall']:.3f}, cpu {laid_out['cpu']:.3f}; "
          f"peak memory surgeon {ours['peak']:.2f} GB, bare {bare['peak']:.2f} GB")

    lines = [
        "# Conversion overhead: `surgeon run --no-verify` vs the bare library calls",
        "",
        f"Model: the bundled CT example (3D ResNet-34) at {'x'.join(map(str, shape))}, ONNX "
        f"{source.stat().st_size / 1e6:.0f} MB (opset 13, legacy exporter, fixed shape); "
        f"SavedModel {saved_model / 1e6:.0f} MB.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{stack_words}, onnx-tf {version('onnx-tf')}; load average "
        f"{os.getloadavg()[0]:.1f} at the end.",
        f"Each run is a whole new process (imports included); {args.repeat} runs each, alternating; "
        f"`python bench/convert_overhead.py{command_line}`. CPU time (user + system) is the least disturbed by other "
        "work on the machine.",
        "",
        "| | wall, median (s) | wall, best (s) | CPU, median (s) | peak memory (GB) |",
        "|---|---:|---:|---:|---:|",
        *(f"| {label} | {row['wall']:.1f} | {row['best']:.1f} | {row['cpu']:.1f} | {row['peak']:.2f} |"
          for label, row in (("bare: onnx.load + prepare + export_graph", bare),
                             ("`surgeon run --no-verify --set onnx_tf.layout=onnx-tf`", like),
                             ("`surgeon run --no-verify` (laid out for the CPU, the default)", ours))),
        f"| ratio, onnx-tf's layout / bare (target <= 1.05) | {ratio['wall']:.3f} | {ratio['best']:.3f} | "
        f"{ratio['cpu']:.3f} | {ratio['peak']:.2f} |",
        f"| ratio, laid out for the CPU / bare (no target: conversion time for serving time) | "
        f"{laid_out['wall']:.3f} | {laid_out['best']:.3f} | {laid_out['cpu']:.3f} | {laid_out['peak']:.2f} |",
        "",
        "With onnx-tf's layout, surgeon does more than the bare calls (loads the ONNX with checks, writes "
        "OUT/model.onnx, scans the SavedModel for Python callbacks, writes report.json) and still takes less time: "
        "its converter traces "
        "onnx-tf's model once, without AutoGraph where it can, and saves only the serving signature, where "
        "`export_graph` traces it with AutoGraph and TensorFlow traces it again while saving the module "
        "(plugins/converters/onnx_tf/__init__.py).",
        "",
        "All runs (wall s / CPU s / GB): " + "; ".join(
            f"{name} " + ", ".join(f"{w:.1f}/{c:.1f}/{m:.2f}" for w, c, m in values) for name, values in runs.items())
        + ".",
        "",
        "surgeon's stages in its last run (report.json, seconds; convert includes importing TensorFlow "
        "and onnx-tf):",
        "",
        "| " + " | ".join(stage_names) + " |",
        "|" + "---:|" * len(stage_names),
        "| " + " | ".join(f"{stages[-1][name]:.2f}" for name in stage_names) + " |",
    ]
    results.parent.mkdir(exist_ok=True)
    results.write_text("\n".join(lines) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
