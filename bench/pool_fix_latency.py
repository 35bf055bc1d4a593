"""Serving latency of a SavedModel converted with and without pool_fix (issue 6: the rewrite costs <= 5%).

Two models whose pooling onnx-tf 1.10 converts natively and exactly, so
that the conversions without pool_fix serve correctly too:

- ct-position: the bundled 3D ResNet-34 (``MaxPool3d(3, stride=2, padding=1)``), batch made dynamic;
- pool-heavy: a small 2D CNN that is mostly pooling: ``MaxPool2d(3, 2, 1)``, ``AvgPool2d(3, 1, 1)``
  with and without count_include_pad, ``MaxPool2d(3, 2, 1, ceil_mode=True)``; at a static batch
  onnx-tf pools its count_include_pad=False averages natively (as SAME), at a dynamic one it cannot.

Each variant is converted by ``surgeon.run``, which checks the SavedModel
against PyTorch in a fresh process:

- without pool_fix;
- pool_fix: its default scope rewrites only what onnx-tf gets wrong, so here nothing;
- pool_fix scope=all: every padded or ceil-mode pooling becomes Pad + pooling without padding
  (+ the exact divisor): the cost of the explicit rewrite itself;
- pool-heavy with a dynamic batch, without pool_fix (refused: PyFunc) and with it.

All the SavedModels are then loaded into one fresh process the way TF
Serving loads them and called in interleaved rounds (the results file
describes the method).

    python bench/pool_fix_latency.py
    python bench/pool_fix_latency.py --rounds 20 --block 0.2

Results go to bench/results/pool_fix_latency.md on the default stack (the
TensorFlow that constraints.txt pins), to pool_fix_latency-tfX.Y.md on any
other (TensorFlow 2.15: pool_fix_latency-tf2.15.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from stacks import stack  # beside this script
from statistics import median

RESULTS = Path(__file__).parent / "results" / "pool_fix_latency.md"
BASELINE = "without pool_fix"


def pool_heavy():
    """A 2D CNN whose time goes mostly to pooling that onnx-tf converts natively at a static batch."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.AvgPool2d(3, stride=1, padding=1),
        nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
        nn.Conv2d(16, 8, 1),
    ).eval()


ALL = {"pool_fix": {"scope": "all"}}
MODELS = {  # name: (source, torch source options, {variant: (rewrite plugins, their options)})
    "ct-position (3D ResNet-34, 1x1x32x64x64)": ("example:ct-position", {}, {
        BASELINE: (["dynamic_batch"], {}),
        "pool_fix": (["dynamic_batch", "pool_fix"], {}),
        "pool_fix scope=all": (["dynamic_batch", "pool_fix"], ALL),
    }),
    "pool-heavy (2D CNN, 1x3x224x224)": (f"{Path(__file__).resolve()}:pool_heavy", {"input_shapes": ["1,3,224,224"]}, {
        BASELINE: ([], {}),
        "pool_fix": (["pool_fix"], {}),
        "pool_fix scope=all": (["pool_fix"], ALL),
        "dynamic batch, without pool_fix": (["dynamic_batch"], {}),
        "dynamic batch, pool_fix": (["dynamic_batch", "pool_fix"], {}),
    }),
}

TIMER = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf

rounds, block_seconds, paths = int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
runners = {}
for name, path in paths.items():
    session = tf.compat.v1.Session(graph=tf.Graph())
    meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    signature = meta_graph.signature_def["serving_default"]
    (value,) = signature.inputs.values()
    shape = [dim.size if dim.size > 0 else 1 for dim in value.tensor_shape.dim]
    feed = {value.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    fetches = [output.name for output in signature.outputs.values()]
    for _ in range(5):
        session.run(fetches, feed)
    started = time.perf_counter()
    session.run(fetches, feed)
    runners[name] = (session, fetches, feed, max(1, round(block_seconds / (time.perf_counter() - started))))
seconds = {name: [] for name in paths}
for index in range(rounds):
    names = list(paths)[index % len(paths):] + list(paths)[:index % len(paths)]
    for name in names:
        session, fetches, feed, calls = runners[name]
        started = time.perf_counter()
        for _ in range(calls):
            session.run(fetches, feed)
        seconds[name].append((time.perf_counter() - started) / calls)
print(json.dumps(seconds))
"""


def convert(source: str, source_options: dict, plugins: list[str], options: dict, out: Path) -> tuple[str, str]:
    """Convert with surgeon (parity checked in a fresh process); return (what pool_fix did, the worst error)."""
    import surgeon

    report = surgeon.run(source, out, plugins=plugins, options={"torch": source_options, **options},
                         formats=["saved_model"])
    record = next((record for record in report["plugins"] if record["name"] == "pool_fix"), None)
    worst = max(row["max_abs"] for row in report["parity"] if row["stage"] == "saved_model")
    return changes(record), f"{worst:.1e}"


def changes(record: dict | None) -> str:
    """What the pool_fix pass did, from its record in report.json."""
    if record is None:
        return "-"
    parts = [f"{record[key]} {key.split('_')[1]}" for key in ("nodes_added", "nodes_removed", "nodes_rewritten")
             if record.get(key)]
    return ", ".join(parts) or "no change"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block", type=float, default=0.3, help="seconds of calls per variant and round")
    args = parser.parse_args()
    stack_words, results = stack(RESULTS)
    print(f"stack: {stack_words}; results to {results}", flush=True)
    import surgeon

    rows, paths = [], {}
    with tempfile.TemporaryDirectory(prefix="pool_fix_latency-") as folder:
        for model, (source, source_options, variants) in MODELS.items():
            for variant, (plugins, options) in variants.items():
                out = Path(folder) / str(len(rows))
                try:
                    done, worst = convert(source, source_options, plugins, options, out)
                    paths[f"{model}|{variant}"] = str(out / "saved_model")
                except surgeon.SurgeonError as error:
                    done, worst = "-", "refused: " + str(error).split(":")[0]
                rows.append((model, variant, done, worst))
                print(f"converted {model} / {variant}: {done}, {worst}", flush=True)
        timed = subprocess.run([sys.executable, "-c", TIMER, str(args.rounds), str(args.block), json.dumps(paths)],
                               capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if timed.returncode:
            sys.exit(timed.stderr[-3000:])
        seconds = json.loads(timed.stdout.strip().splitlines()[-1])
    lines = [
        "# Serving latency with and without pool_fix",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other work, Python "
        f"{platform.python_version()}, {stack_words} (CPU), onnx-tf {version('onnx-tf')}; "
        f"`python bench/pool_fix_latency.py --rounds {args.rounds} --block {args.block}`.",
        "",
        "Every SavedModel is served from one fresh process as TF Serving runs it (a TF1 session on the `serve`",
        f"tag, `serving_default`), at batch 1. In each of {args.rounds} rounds every variant runs for about "
        f"{args.block} s, in a",
        "rotating order; a round's figure is its mean latency per call. Shown: the median over the rounds and the",
        "fastest round (the one other work on the machine disturbed least), each against the conversion without",
        "pool_fix. `pool_fix` with its default scope leaves these models unchanged, so its row is the same",
        "SavedModel again and its difference is the measurement noise. The error column is surgeon's parity check",
        "against PyTorch (max abs error of the served SavedModel).",
        "",
        "| model | conversion | pool_fix changed | max abs error | median (ms) | vs without | fastest (ms) | vs without |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, variant, done, worst in rows:
        key, base = f"{model}|{variant}", f"{model}|{BASELINE}"
        if key not in seconds:
            lines.append(f"| {model} | {variant} | {done} | {worst} | | | | |")
            continue
        times, base_times = seconds[key], seconds[base]
        lines.append(f"| {model} | {variant} | {done} | {worst} | {median(times) * 1e3:.2f} | "
                     f"{median(times) / median(base_times) - 1:+.1%} | {min(times) * 1e3:.2f} | "
                     f"{min(times) / min(base_times) - 1:+.1%} |")
    results.parent.mkdir(exist_ok=True)
    results.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
