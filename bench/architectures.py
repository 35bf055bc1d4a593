"""Which architectures come out servable: the recipe done by hand, against surgeon with either exporter.

For each model of ``bench/zoo.py``:

- recipe: what the original recipe did: export at batch 1 with the
  TorchScript exporter (opset 12; 14 where torch needs it), set the inputs'
  first dim to ``?``, onnx-tf ``prepare(...).export_graph``, then serve the
  SavedModel in a fresh process at batch 1, 3 and 8 and compare with PyTorch;
- surgeon: ``surgeon run bench/zoo.py:build`` with
  dynamic_batch,pool_fix,gru_fix,opset_compat,rename_outputs, verified at 1, 3 and 8
  (and per sample) against PyTorch, the SavedModel in a fresh process;
- surgeon dynamo: the same with ``--set torch.dynamo=true`` (needs
  onnxscript and onnx-ir: ``pip install 'surgeon[dynamo]'``); skipped, and
  said so, on a stack without them (the TensorFlow 2.15 one).

For the text models (the zoo's ``SEQUENCE_AXES``), two sections more:

- dynamic sequence: exported from PyTorch with the sequence axes dynamic
  (``--set torch.dynamic_axes=...``), verified at seq 8, 16 and 32;
- dynamic sequence from an ONNX file: exported as the recipe exports (batch 1,
  the zoo's fixed shapes, the TorchScript exporter at the recipe's opset), the
  inputs named after forward()'s parameters, then ``surgeon run model.onnx``
  with dynamic_batch,dynamic_axes,... and ``--set dynamic_axes.axes=...:seq``,
  verified at lengths up to the export's (a quarter, half and all of it)
  against onnxruntime on the file given the input padded with zeros.

The recipe calls onnx-tf through ``imported_onnx_tf()``
(surgeon_plugins/onnx_tf_compat.py): plain onnx-tf 1.10 no longer even
imports on the default stack (onnx >= 1.19 has no ``onnx.mapping``), so
this column measures onnx-tf's conversion, not its import; the results
record what a plain ``import onnx_tf.backend`` does on the stack.

Each conversion runs in a process of its own. Results go to
bench/results/architectures.md on the default stack (the TensorFlow that
constraints.txt pins), to architectures-tfX.Y.md on any other (TensorFlow
2.15: architectures-tf2.15.md).

    python bench/architectures.py [--only vit,unet]     (--only prints, and writes no results)
    python bench/architectures.py --onnx-sequence-only  (that section alone, spliced into the results file)
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import zoo  # noqa: E402  (beside this script)
from stacks import stack  # noqa: E402

ZOO = HERE / "zoo.py"
RESULTS = HERE / "results" / "architectures.md"
PLUGINS = "dynamic_batch,pool_fix,gru_fix,opset_compat,rename_outputs"
ONNX_SEQUENCE_PLUGINS = "dynamic_batch,dynamic_axes,pool_fix,gru_fix,opset_compat,rename_outputs"
ONNX_SEQUENCE_TITLE = "## Text models with a dynamic sequence from an ONNX file"
BATCHES = (1, 3, 8)
LENGTHS = (8, 16, 32)  # the sequence lengths text models are verified at, with their sequence axes dynamic
ATOL, RTOL = 1e-4, 1e-3
TIMEOUT_S = 900
RECIPE_OPSET = {"vit": 14}  # scaled_dot_product_attention needs 14


def dynamo_missing() -> str | None:
    """Why this stack cannot run the dynamo exporter (its packages are not installed), or None when it can."""
    from surgeon_plugins.sources.torch import DYNAMO_PACKAGES

    missing = [package for module, package in DYNAMO_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return None
    return (f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed on this stack; the "
            "dynamo exporter's packages need ml-dtypes >= 0.5, and TensorFlow 2.15 pins 0.3")


def plain_onnx_tf_import() -> str:
    """What ``import onnx_tf.backend`` does on this stack without surgeon's stand-ins, in a process of its own."""
    finished = subprocess.run([sys.executable, "-c", "import onnx_tf.backend"], capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=TIMEOUT_S)
    if finished.returncode == 0:
        return "imports"
    last = (finished.stderr.strip().splitlines() or ["?"])[-1]
    return "fails: " + re.sub(r" \(/[^)]*\)$", "", last)[:200]  # without the path of this machine's onnx


def recipe(name: str, folder: Path) -> str:
    """The recipe by hand, in this process (a child of main()); the outcome in words."""
    import numpy as np
    import onnx
    import torch

    from surgeon.device import quiet_tensorflow
    from surgeon.serving import run_in_fresh_process
    from surgeon_plugins.sources.torch import dummy_inputs, parse_input_shape

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
            from surgeon_plugins.converters.onnx_tf.compat import imported_onnx_tf

            imported_onnx_tf().prepare(exported).export_graph(str(folder / "saved_model"))
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


def sequence_flags(name: str) -> list[str]:
    """The flags that export the text model ``name`` with its sequence axes dynamic and verify them at LENGTHS."""
    axes = ",".join(zoo.dynamic_sequence(name))
    return ["--set", f"torch.dynamic_axes={axes}", "--axis-sizes", f"seq={','.join(map(str, LENGTHS))}"]


def run_surgeon(name: str, dynamo: bool, sequence: bool = False) -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        command = [sys.executable, "-m", "surgeon", "run", f"{ZOO}:build", "-o", str(out), "--plugins", PLUGINS,
                   "--batch-sizes", ",".join(map(str, BATCHES)), "--set", f"torch.kwargs={json.dumps({'name': name})}",
                   *[argument for shape in zoo.SHAPES[name] for argument in ("--input-shape", shape)],
                   *(["--set", "torch.dynamo=true"] if dynamo else []), *(sequence_flags(name) if sequence else [])]
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


def sequence_inputs(name: str) -> tuple[list[str], dict[str, int]]:
    """The text model ``name``'s input names (its forward()'s parameters, in order) and the axis of each input
    that holds the sequence (``SEQUENCE_AXES``)."""
    parameters = list(inspect.signature(zoo.FACTORIES[name].forward).parameters)[1:]  # without self
    names = parameters[:len(zoo.SHAPES[name])]
    axes = {entry.split(":")[0]: int(entry.split(":")[1]) for entry in zoo.SEQUENCE_AXES[name].split(",")}
    assert set(axes) <= set(names), (name, axes, names)
    return names, axes


def export_length(name: str) -> int:
    """The length the text model ``name`` is exported at: its first sequence axis in the zoo's ``SHAPES``."""
    names, axes = sequence_inputs(name)
    first = next(iter(axes))
    shape = zoo.SHAPES[name][names.index(first)].split(":")[-1]
    return int(shape.split(",")[axes[first]])


def onnx_sequence_lengths(name: str) -> list[int]:
    """The lengths the ONNX file of ``name`` is verified at: a quarter, half and all of the export's length (the
    padded reference checks nothing longer)."""
    length = export_length(name)
    return sorted({max(length // 4, 1), max(length // 2, 1), length})


def export_fixed(name: str, path: Path) -> None:
    """Export the text model ``name`` as the recipe does (batch 1, the zoo's fixed shapes, the TorchScript exporter
    at the recipe's opset), its inputs named after forward()'s parameters; in this process (a child of main())."""
    import torch

    from surgeon_plugins.sources.torch import dummy_inputs, parse_input_shape

    names, _ = sequence_inputs(name)
    specs = [parse_input_shape(text) for text in zoo.SHAPES[name]]
    torch.onnx.export(zoo.build(name), tuple(dummy_inputs(specs)), str(path), dynamo=False,
                      opset_version=RECIPE_OPSET.get(name, 12), input_names=names, output_names=["result"])


def run_onnx_sequence(name: str) -> tuple[str, float]:
    """Export ``name`` at its fixed length (a child process), then ``surgeon run`` the ONNX file with dynamic_axes
    on its sequence axes, verified at every batch and at ``onnx_sequence_lengths``; the outcome in words."""
    axes = ",".join(zoo.dynamic_sequence(name))
    lengths = ",".join(map(str, onnx_sequence_lengths(name)))
    with tempfile.TemporaryDirectory() as folder:
        path, out = Path(folder) / f"{name}.onnx", Path(folder) / "out"
        started = time.perf_counter()
        try:
            exported = subprocess.run([sys.executable, __file__, "--export", name, str(path)], capture_output=True,
                                      text=True, timeout=TIMEOUT_S)
            if exported.returncode != 0:
                last = (exported.stderr.strip().splitlines() or ["?"])[-1]
                return f"export failed: {last[:160]}", time.perf_counter() - started
            finished = subprocess.run(
                [sys.executable, "-m", "surgeon", "run", str(path), "-o", str(out), "--plugins", ONNX_SEQUENCE_PLUGINS,
                 "--set", f"dynamic_axes.axes={axes}", "--batch-sizes", ",".join(map(str, BATCHES)),
                 "--axis-sizes", f"seq={lengths}"], capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"did not finish in {TIMEOUT_S} s", time.perf_counter() - started
        seconds = time.perf_counter() - started
        if finished.returncode != 0:
            lines = [line for line in finished.stderr.splitlines() if line.startswith("surgeon: error:")]
            return (f"fails: {lines[-1][len('surgeon: error: '):][:300]}" if lines
                    else f"crashed: {(finished.stderr.strip().splitlines() or ['?'])[-1][:160]}"), seconds
        report = json.loads((out / "report.json").read_text())
    served = [row for row in report["parity"] if row["stage"] == "saved_model"]
    cases = {(row["batch"], row["sizes"].get("seq")) for row in served}
    (record,) = [plugin for plugin in report["plugins"] if plugin["name"] == "dynamic_axes"]
    worst = max(row["max_abs"] for row in served)
    return (f"ok at {len(cases)} batch x seq (max abs error {worst:.1e}; dynamic_axes rewrote "
            f"{record['nodes_rewritten']} nodes, added {record['nodes_added']})"), seconds


def onnx_sequence_section(outcomes: list, stack_words: str) -> list[str]:
    """The results' section on the ONNX files exported at one length (``outcomes``: name, outcome, seconds)."""
    served = sum(outcome.startswith("ok") for _, outcome, _ in outcomes)
    by_lengths: dict[str, list[str]] = {}
    for name, _, _ in outcomes:
        by_lengths.setdefault(",".join(map(str, onnx_sequence_lengths(name))), []).append(name)
    asked = "; ".join(f"`--axis-sizes seq={lengths}` for {', '.join(names)}" for lengths, names in by_lengths.items())
    return [
        ONNX_SEQUENCE_TITLE,
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {stack_words} (`python bench/architectures.py "
        "--onnx-sequence-only` reruns this section alone). The text models exported as the recipe exports them: "
        "batch 1, the zoo's fixed "
        "shapes, the TorchScript exporter at the recipe's opset, the inputs named after "
        "forward()'s parameters. Then `surgeon run MODEL.onnx --plugins "
        f"{ONNX_SEQUENCE_PLUGINS} --set dynamic_axes.axes=...:seq` (the axes of `SEQUENCE_AXES`), verified from one "
        f"SavedModel at every combination of batch {', '.join(map(str, BATCHES))} and a quarter, half and all of the "
        f"export's length ({asked}), each against onnxruntime on the ONNX file given the "
        "input padded with zeros to the export's length: a model where that padding changes the result fails "
        "there, whatever it serves (text_lstm classifies from its last step, `out[:, -1]`, which the padded "
        "original takes from the padding: this check cannot pass on it). Times: the export and the run, one "
        "process each. "
        f"**{served} of {len(outcomes)}** serve.",
        "",
        "| model | surgeon, dynamic sequence from an ONNX file |",
        "|---|---|",
        *(f"| {name} | {outcome.replace('|', '/')} ({seconds:.0f} s) |" for name, outcome, seconds in outcomes),
    ]


def spliced(text: str, section: list[str]) -> str:
    """``text`` (a results file) with its ONNX-sequence section replaced by ``section``, or ``section`` added at
    its end; the rest as it was."""
    lines = text.rstrip("\n").split("\n")
    if ONNX_SEQUENCE_TITLE in lines:
        start = lines.index(ONNX_SEQUENCE_TITLE)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = lines[end:]
        lines = lines[:start] + section + ([""] + tail if tail else [])
    else:
        lines += ["", *section]
    return "\n".join(lines) + "\n"


def what_it_has(name: str) -> str:
    """The first paragraph of the model's docstring, on one line."""
    return " ".join(zoo.FACTORIES[name].__doc__.split("\n\n")[0].split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model names")
    parser.add_argument("--onnx-sequence-only", action="store_true",
                        help="run only the section on text models' ONNX files exported at one length, and splice it "
                             "into the results file, the rest of it left as it is")
    parser.add_argument("--recipe", nargs=2, metavar=("NAME", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--export", nargs=2, metavar=("NAME", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recipe:
        print(recipe(args.recipe[0], Path(args.recipe[1])))
        return
    if args.export:
        export_fixed(args.export[0], Path(args.export[1]))
        return
    stack_words, results = stack(RESULTS)
    print(f"stack: {stack_words}", flush=True)
    names = args.only.split(",") if args.only else list(zoo.FACTORIES)
    if args.onnx_sequence_only:
        from_files = onnx_sequences(names)
        if args.only:
            print(f"not written to {results}: --only ran a subset")
        elif not results.exists():
            print(f"not written: {results} does not exist yet (run the whole bench first)")
        else:
            results.write_text(spliced(results.read_text(), onnx_sequence_section(from_files, stack_words)))
            print(f"wrote its section of {results}")
        return
    no_dynamo = dynamo_missing()
    if no_dynamo:
        print(f"dynamo exporter: skipped ({no_dynamo})", flush=True)
    plain = plain_onnx_tf_import()
    print(f"plain `import onnx_tf.backend` on this stack: {plain}", flush=True)
    configs = ("recipe", "surgeon") if no_dynamo else ("recipe", "surgeon", "surgeon dynamo")
    rows = []
    for name in names:
        outcomes = [run_recipe(name), run_surgeon(name, dynamo=False)]
        if not no_dynamo:
            outcomes.append(run_surgeon(name, dynamo=True))
        for config, (outcome, seconds) in zip(configs, outcomes):
            print(f"{name:<11} {config:<15} {seconds:5.1f}s  {outcome}", flush=True)
        rows.append((name, what_it_has(name), outcomes))
    sequences = []
    for name in [name for name in names if name in zoo.SEQUENCE_AXES]:
        outcome, seconds = run_surgeon(name, dynamo=False, sequence=True)
        print(f"{name:<11} {'dynamic sequence':<15} {seconds:5.1f}s  {outcome}", flush=True)
        sequences.append((name, outcome, seconds))
    from_files = onnx_sequences(names)
    if args.only:
        print(f"not written to {results}: --only ran a subset")
    else:
        write(rows, sequences, from_files, results, stack_words, no_dynamo, plain)


def onnx_sequences(names: list[str]) -> list[tuple[str, str, float]]:
    """The ONNX-file section for the text models among ``names``, printed as it goes."""
    outcomes = []
    for name in [name for name in names if name in zoo.SEQUENCE_AXES]:
        outcome, seconds = run_onnx_sequence(name)
        print(f"{name:<11} {'seq, ONNX file':<15} {seconds:5.1f}s  {outcome}", flush=True)
        outcomes.append((name, outcome, seconds))
    return outcomes


def write(rows: list, sequences: list, from_files: list, results: Path, stack_words: str, no_dynamo: str | None,
          plain: str) -> None:
    servable = [sum(outcomes[k][0].startswith("ok") for _, _, outcomes in rows) for k in range(len(rows[0][2]))]
    dynamo = (f"the dynamo exporter was not run ({no_dynamo})" if no_dynamo
              else f"surgeon with the dynamo exporter **{servable[2]} of {len(rows)}**")
    lines = [
        "# Architectures: the recipe by hand vs surgeon",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other work, Python "
        f"{platform.python_version()}, {stack_words}, onnx-tf {version('onnx-tf')}; "
        "`python bench/architectures.py`. Models: `bench/zoo.py` (small stand-ins; input shapes in its "
        "`SHAPES`). 'ok': the SavedModel, loaded in a fresh process through `serving_default`, matches "
        f"PyTorch at batch {', '.join(map(str, BATCHES))} (atol {ATOL}, rtol {RTOL}; surgeon also per sample). "
        "dynamic_batch always frees the batch dim of the graph's inputs and outputs; 'nodes changed by' "
        "names the plugins that also rewrote nodes. Times: the whole conversion and check, one process each.",
        "",
        "The recipe by hand runs onnx-tf 1.10's own `prepare(...).export_graph`, imported through surgeon's "
        "`imported_onnx_tf()` (surgeon_plugins/onnx_tf_compat.py): plain onnx-tf 1.10 no longer even imports "
        "on the default stack (onnx >= 1.19 removed `onnx.mapping`, which it reads), so this column measures "
        f"onnx-tf's conversion, not its import. A plain `import onnx_tf.backend` on this stack: {plain}.",
        "",
        f"Servable and correct: recipe **{servable[0]} of {len(rows)}**, surgeon **{servable[1]} of {len(rows)}**, "
        f"{dynamo}.",
        "",
        "| model | what it has | recipe by hand | surgeon |" + ("" if no_dynamo else " surgeon, dynamo exporter |"),
        "|---|---|---|---|" + ("" if no_dynamo else "---|"),
    ]
    for name, doc, outcomes in rows:
        cells = [f"{outcome} ({seconds:.0f} s)" for outcome, seconds in outcomes]
        lines.append(f"| {name} | {doc} | " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    lines += [
        "",
        "## Text models with a dynamic sequence",
        "",
        f"The text models exported with their sequence axes dynamic (`--set torch.dynamic_axes=...:seq`, the axes "
        f"of the zoo's `SEQUENCE_AXES`) and verified from one SavedModel at every combination of batch "
        f"{', '.join(map(str, BATCHES))} and sequence length {', '.join(map(str, LENGTHS))} "
        f"(`--axis-sizes seq={','.join(map(str, LENGTHS))}`): "
        f"**{sum(outcome.startswith('ok') for _, outcome, _ in sequences)} of {len(sequences)}** serve.",
        "",
        "| model | surgeon, dynamic sequence |",
        "|---|---|",
        *(f"| {name} | {outcome.replace('|', '/')} ({seconds:.0f} s) |" for name, outcome, seconds in sequences),
        "",
        *onnx_sequence_section(from_files, stack_words),
    ]
    results.write_text("\n".join(lines) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
