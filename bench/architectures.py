"""Which architectures come out servable: the recipe done by hand, against surgeon with either exporter.

For each model of ``bench/zoo.py``:

- recipe: what the original recipe did (and DESIGN.md measured): export at
  batch 1 with the TorchScript exporter (opset 12; 14 where torch needs it),
  set the inputs' first dim to ``?``, onnx-tf ``prepare(...).export_graph``,
  then serve the SavedModel in a fresh process at batch 1, 3 and 8 and
  compare with PyTorch;
- surgeon: ``surgeon run bench/zoo.py:build`` with
  dynamic_batch,pool_fix,opset_compat,rename_outputs, verified at 1, 3 and 8
  (and per sample) against PyTorch, the SavedModel in a fresh process;
- surgeon dynamo: the same with ``--set torch.dynamo=true`` (after
  ``surgeon setup-dynamo``).

Each conversion runs in a process of its own. Results go to
bench/results/architectures.md.

    python bench/architectures.py [--only vit,unet]     (--only prints, and writes no results)
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import zoo  # noqa: E402  (beside this script)

ZOO = HERE / "zoo.py"
RESULTS = HERE / "results" / "architectures.md"
PLUGINS = "dynamic_batch,pool_fix,gru_fix,opset_compat,rename_outputs"
BATCHES = (1, 3, 8)
ATOL, RTOL = 1e-4, 1e-3
TIMEOUT_S = 900
RECIPE_OPSET = {"vit": 14}  # scaled_dot_product_attention needs 14


def recipe(name: str, folder: Path) -> str:
    """The recipe by hand, in this process (a child of main()); the outcome in words."""
    import numpy as np
    import onnx
    import torch

    from surgeon.device import quiet_tensorflow
    from surgeon.serving import run_in_fresh_process
    from surgeon_plugins.torch_exporter import dummy_inputs, parse_input_shape

    model = zoo.build(name)
    specs = [parse_input_shape(text) for text in zoo.SHAPES[name]]
    names = [f"input_{i}" for i in range(len(specs))]
    path = folder / "model.onnx"
    torch.onnx.export(model, tuple(dummy_inputs(specs)), str(path), dynamo=False,
                      opset_version=RECIPE_OPSET.get(name, 12), input_names=names, output_names=["result"])
    exported = onnx.load(str(path))
    for value in exported.graph.input:
        value.type.tensor_type.shape.dim[0].dim_param = "?"
    try:
        with quiet_tensorflow():
            from onnx_tf.backend import prepare

            prepare(exported).export_graph(str(folder / "saved_model"))
    except Exception as error:
        lines = str(error).strip().splitlines() or [""]
        # TensorFlow wraps the handler's error in "in user code:" and a traceback; its last message line says why
        messages = [line.strip() for line in lines if re.search(r"\w(Error|Exception|It): ", line)
                    and "in user code" not in line and "raise " not in line]
        why = messages[-1] if messages else lines[0]
        return f"does not convert: {type(error).__name__}: {why[:120]}"
    rng = np.random.default_rng(0)
    feeds, expected = [], []
    for size in BATCHES:
        feed = [rng.integers(0, 100, (size, *spec.shape[1:])).astype(spec.dtype) if spec.dtype == "int64"
                else rng.standard_normal((size, *spec.shape[1:])).astype(spec.dtype) for spec in specs]
        with torch.no_grad():
            expected.append(model(*map(torch.from_numpy, feed)).numpy())
        feeds.append(feed)
    try:
        served = run_in_fresh_process(folder / "saved_model", feeds, names, ["result"])
    except Exception as error:
        return f"does not load in a fresh process: {str(error)[:120]}"
    for size, result, want in zip(BATCHES, served, expected):
        if isinstance(result, str):
            return f"fails at batch {size}: {result[:120]}"
        if result[0].shape != want.shape:
            return f"wrong shape at batch {size}: {result[0].shape} for {want.shape}"
        error = float(np.max(np.abs(result[0] - want)))
        if not np.allclose(result[0], want, atol=ATOL, rtol=RTOL):
            return f"wrong numbers at batch {size} (max abs error {error:.2g})"
    return "ok"


def run_recipe(name: str) -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        try:
            finished = subprocess.run([sys.executable, __file__, "--recipe", name, folder], capture_output=True,
                                      text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"did not finish in {TIMEOUT_S} s", time.perf_counter() - started
        seconds = time.perf_counter() - started
    if finished.returncode != 0:
        return f"crashed: {(finished.stderr.strip().splitlines() or ['?'])[-1][:160]}", seconds
    return finished.stdout.strip().splitlines()[-1], seconds


def run_surgeon(name: str, dynamo: bool) -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        command = [sys.executable, "-m", "surgeon", "run", f"{ZOO}:build", "-o", str(out), "--plugins", PLUGINS,
                   "--batch-sizes", ",".join(map(str, BATCHES)), "--set", f"torch.kwargs={json.dumps({'name': name})}",
                   *[argument for shape in zoo.SHAPES[name] for argument in ("--input-shape", shape)],
                   *(["--set", "torch.dynamo=true"] if dynamo else [])]
        started = time.perf_counter()
        try:
            finished = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"did not finish in {TIMEOUT_S} s", time.perf_counter() - started
        seconds = time.perf_counter() - started
        if finished.returncode != 0:
            lines = [line for line in finished.stderr.splitlines() if line.startswith("surgeon: error:")]
            return (lines[-1][len("surgeon: error: "):][:300] if lines else "failed"), seconds
        report = json.loads((out / "report.json").read_text())
    served = [row for row in report["parity"] if row["stage"] == "saved_model"]
    worst = max(row["max_abs"] for row in served)
    touched = [plugin["name"] for plugin in report["plugins"]
               if plugin["nodes_added"] or plugin["nodes_removed"] or plugin["nodes_rewritten"] or plugin["renamed"]]
    return f"ok (max abs error {worst:.1e}; nodes changed by {', '.join(touched) or 'none'})", seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model names")
    parser.add_argument("--recipe", nargs=2, metavar=("NAME", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recipe:
        print(recipe(args.recipe[0], Path(args.recipe[1])))
        return
    names = args.only.split(",") if args.only else list(zoo.FACTORIES)
    rows = []
    for name in names:
        outcomes = [run_recipe(name), run_surgeon(name, dynamo=False), run_surgeon(name, dynamo=True)]
        for config, (outcome, seconds) in zip(("recipe", "surgeon", "surgeon dynamo"), outcomes):
            print(f"{name:<11} {config:<15} {seconds:5.1f}s  {outcome}", flush=True)
        rows.append((name, zoo.FACTORIES[name].__doc__.splitlines()[0], outcomes))
    if args.only:
        print(f"not written to {RESULTS}: --only ran a subset")
    else:
        write(rows)


def write(rows: list) -> None:
    servable = [sum(outcomes[k][0].startswith("ok") for _, _, outcomes in rows) for k in range(3)]
    lines = [
        "# Architectures: the recipe by hand vs surgeon",
        "",
        f"Machine: {platform.machine()}, 2 CPUs shared with other work, Python {platform.python_version()}; "
        "`python bench/architectures.py`. Models: `bench/zoo.py` (small stand-ins; input shapes in its "
        "`SHAPES`). 'ok': the SavedModel, loaded in a fresh process through `serving_default`, matches "
        f"PyTorch at batch {', '.join(map(str, BATCHES))} (atol {ATOL}, rtol {RTOL}; surgeon also per sample). "
        "dynamic_batch always frees the batch dim of the graph's inputs and outputs (F5); 'nodes changed by' "
        "names the plugins that also rewrote nodes. Times: the whole conversion and check, one process each.",
        "",
        f"Servable and correct: recipe **{servable[0]} of {len(rows)}**, surgeon **{servable[1]} of {len(rows)}**, "
        f"surgeon with the dynamo exporter **{servable[2]} of {len(rows)}**.",
        "",
        "| model | what it has | recipe by hand | surgeon | surgeon, dynamo exporter |",
        "|---|---|---|---|---|",
    ]
    for name, doc, outcomes in rows:
        cells = [f"{outcome} ({seconds:.0f} s)" for outcome, seconds in outcomes]
        lines.append(f"| {name} | {doc} | " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
