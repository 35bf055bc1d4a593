"""Run a converted model the way a server does: in a fresh process, in graph mode.

A SavedModel runs through its ``serving_default`` signature in a TF1-style
session, as TF Serving runs it; a frozen GraphDef (``frozen_pb``) through
the tensor names in its ``signature.json``. A fresh process has none of the
Python callbacks or eager state of the process that converted the model, so
what passes here serves.

    python -m surgeon.serving MODEL FEEDS.npz RESULTS.npz [--verbose]

FEEDS.npz holds ``count`` (of feeds), ``inputs`` and ``outputs`` (the
ONNX names of all of the model's inputs and outputs, in order) and
``feed{k}_{j}``: input j of feed k. Each input is fed through its key in the
signature, which ``surgeon.naming.signature_input_keys`` derives from those
names as the converter did (``input.1`` -> ``input_1``). RESULTS.npz gets
``result{k}_{m}`` (output m of feed k) or ``error{k}`` (why feed k failed).
One process runs every feed, so TensorFlow is imported and the model loaded
once.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from surgeon.errors import SurgeonError
from surgeon.naming import signature_input_keys
from surgeon.saved_model_info import SERVE_TAG, SERVING_SIGNATURE

FROZEN_GRAPH = "model.pb"
FROZEN_SIGNATURE = "signature.json"

Outputs = list[np.ndarray]


def run_in_fresh_process(model: Path, feeds: Sequence[Sequence[np.ndarray]], input_names: Sequence[str],
                         output_names: Sequence[str]) -> list[Outputs | str]:
    """Run every feed through ``model`` in one new Python process; a str result says why that feed failed."""
    from surgeon.device import verbose

    with tempfile.TemporaryDirectory(prefix="surgeon-serving-") as folder:
        feeds_path, results_path = Path(folder) / "feeds.npz", Path(folder) / "results.npz"
        contents: dict[str, Any] = {"count": np.array(len(feeds)), "inputs": np.array(input_names, dtype=str),
                                    "outputs": np.array(output_names, dtype=str)}
        contents.update((f"feed{k}_{j}", np.asarray(array)) for k, feed in enumerate(feeds)
                        for j, array in enumerate(feed))
        np.savez(feeds_path, **contents)
        command = [sys.executable, "-m", "surgeon.serving", str(Path(model).resolve()), str(feeds_path),
                   str(results_path)]
        loud = verbose()
        env = dict(os.environ)
        if not loud:
            # TensorFlow's C++ logs; what TensorFlow 2.21 logs while its libraries load (absl, before it reads
            # this) the child holds back itself (surgeon.device.quiet_tensorflow)
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # in the temporary folder: `python -m` puts the working folder first on the module path
        finished = subprocess.run([*command, *(["--verbose"] if loud else [])], env=env, cwd=folder,
                                  stderr=None if loud else subprocess.PIPE, text=True)
        if finished.returncode != 0:
            why = (finished.stderr or "").strip().splitlines()[-1:] or [f"exit status {finished.returncode}"]
            raise SurgeonError(f"{model} cannot be run in a fresh process: {why[0]}")
        with np.load(results_path) as results:
            return [str(results[f"error{k}"]) if f"error{k}" in results
                    else [results[f"result{k}_{m}"] for m in range(len(output_names))]
                    for k in range(len(feeds))]


def run(model: Path, feeds: Sequence[Sequence[np.ndarray]], input_names: Sequence[str],
        output_names: Sequence[str]) -> list[Outputs | str]:
    """Run every feed through ``model`` in this process, in graph mode (what the fresh process does).

    ``input_names`` and ``output_names``: all of the model's, ONNX names in order (see the module's docstring).
    """
    from surgeon.device import quiet_tensorflow

    keys = signature_input_keys(input_names, output_names)
    with quiet_tensorflow() as tf:
        session = tf.compat.v1.Session(graph=tf.Graph())
        with session:
            inputs, outputs = _load(tf, session, model)
            missing = [keys[name] for name in input_names if keys[name] not in inputs]
            missing += [name for name in output_names if name not in outputs]
            if missing:
                raise SurgeonError(f"{model}: the signature has no tensor {missing[0]!r} "
                                   f"(inputs: {', '.join(inputs)}; outputs: {', '.join(outputs)})")
            fetches = [outputs[name] for name in output_names]
            results: list[Outputs | str] = []
            for feed in feeds:
                try:
                    results.append(session.run(fetches, {inputs[keys[name]]: array
                                                         for name, array in zip(input_names, feed)}))
                except tf.errors.OpError as error:
                    results.append(_first_line(error.message))
                except ValueError as error:  # e.g. a shape the signature does not accept
                    results.append(_first_line(str(error)))
    return results


def _load(tf: Any, session: Any, model: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Load ``model`` into ``session``; return input and output names -> graph tensor names."""
    if (model / FROZEN_GRAPH).is_file():
        graph_def = tf.compat.v1.GraphDef.FromString((model / FROZEN_GRAPH).read_bytes())
        with session.graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        signature = json.loads((model / FROZEN_SIGNATURE).read_text())
        return signature["inputs"], signature["outputs"]
    meta_graph = tf.compat.v1.saved_model.loader.load(session, [SERVE_TAG], str(model))
    if SERVING_SIGNATURE not in meta_graph.signature_def:
        raise SurgeonError(f"{model}: no {SERVING_SIGNATURE!r} signature "
                           f"(it has: {', '.join(meta_graph.signature_def)})")
    signature = meta_graph.signature_def[SERVING_SIGNATURE]
    return ({name: info.name for name, info in signature.inputs.items()},
            {name: info.name for name, info in signature.outputs.items()})


def _first_line(message: str) -> str:
    """The line that says what went wrong, skipping headers such as 'Graph execution error:'."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    telling = [line for line in lines if not line.endswith(":")]
    return (telling or lines or ["failed without a message"])[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in args:
        args.remove("--verbose")
        logging.getLogger("surgeon").setLevel(logging.DEBUG)
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    model, feeds_path, results_path = Path(args[0]), args[1], args[2]
    with np.load(feeds_path) as data:
        input_names, output_names = [str(name) for name in data["inputs"]], [str(name) for name in data["outputs"]]
        feeds = [[data[f"feed{k}_{j}"] for j in range(len(input_names))] for k in range(int(data["count"]))]
    try:
        results = run(model, feeds, input_names, output_names)
    except Exception as error:  # the parent reports this line
        print(f"{type(error).__name__}: {_first_line(str(error))}", file=sys.stderr)
        return 1
    arrays: dict[str, Any] = {}
    for k, result in enumerate(results):
        if isinstance(result, str):
            arrays[f"error{k}"] = np.array(result)
        else:
            arrays.update({f"result{k}_{m}": np.asarray(value) for m, value in enumerate(result)})
    np.savez(results_path, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
