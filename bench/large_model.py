"""A model over 2 GB: time and peak memory of ``surgeon run`` on it, all the way to a verified SavedModel.

The model is generated: one MatMul, ``y = x @ W``, with ``x`` of shape
[1, 4096] and ``W`` of [4096, COLUMNS] float32 stored as external data beside
it (``model.onnx.data``); ``--gb`` sets the size of ``W`` (default 2.2 GB,
over the 2 GiB a protobuf message can hold). The weights are written in
chunks, never held whole in memory. Then, as a new process:

    surgeon run model.onnx -o OUT --plugins dynamic_batch

(load, the pass on the onnx-graphsurgeon graph, OUT/model.onnx with
OUT/model.onnx.data, conversion with the weights as variables in
OUT/saved_model/variables, verification against onnxruntime on the source,
onnxruntime on OUT/model.onnx and the SavedModel in a fresh process).

Measured: wall and CPU time, the peak resident memory of the surgeon process
(``os.wait4``, which also covers its fresh verification process: the larger
of the two), and the peak of the two together, sampled from ``/proc`` every
0.1 s; the sizes of what was written; the stage times from report.json.

    python bench/large_model.py                 # 2.2 GB, about 4 min, needs 7 GB of disk and 12 GB of memory
    python bench/large_model.py --gb 0.3        # a quick look

Results go to bench/results/large_model.md on the default stack, to
large_model-tfX.Y.md on any other (TensorFlow 2.15: large_model-tf2.15.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).parent))
from stacks import stack  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "large_model.md"
ROWS = 4096
CHUNK_ROWS = 64


def write_model(folder: Path, weight_bytes: float, seed: int = 0) -> Path:
    """Write ``folder/model.onnx``: ``y = x @ W``, ``x`` [1, 4096], ``W`` [4096, C] float32 of about
    ``weight_bytes`` in ``folder/model.onnx.data``, its values uniform in [-1/64, 1/64) from ``seed``; return the
    model's path. The weights are written a few rows at a time."""
    columns = max(1, int(weight_bytes) // (4 * ROWS))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(folder / "model.onnx.data", "wb") as data:
        for start in range(0, ROWS, CHUNK_ROWS):
            rows = min(CHUNK_ROWS, ROWS - start)
            block = rng.random((rows, columns), dtype=np.float32)
            block -= 0.5
            block /= 32
            data.write(block.tobytes())
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[ROWS, columns],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "model.onnx.data"), ("offset", "0"), ("length", str(4 * ROWS * columns))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")], "large",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ROWS])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, columns])], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def tree_rss(pid: int) -> int:
    """The resident memory of ``pid`` and its descendants, in bytes (0 once it is gone)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parent, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
        rss[int(entry.name)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo += children.get(current, [])
    return total


def measure(command: list[str]) -> dict[str, float]:
    """Run ``command``; its wall and CPU time (s), the peak resident memory of its largest process and of all its
    processes together (GB)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = process.stderr.read() if process.stderr else ""
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return {"wall_s": seconds, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_process_gb": usage.ru_maxrss * 1024 / 1e9, "peak_tree_gb": peak[0] / 1e9}


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.2, help="size of the weights, in GB (1e9 bytes)")
    parser.add_argument("--work", type=Path, help="folder for the model and the output (default: a temporary one)")
    args = parser.parse_args()
    stack_words, results = stack(RESULTS)
    print(f"stack: {stack_words}; results to {results}", flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="large-model-"))
    try:
        started = time.perf_counter()
        source = write_model(work / "source", args.gb * 1e9)
        generated = time.perf_counter() - started
        out = work / "out"  # --force replaces a previous run's output there, and refuses any other folder
        command = [sys.executable, "-m", "surgeon", "run", str(source), "-o", str(out), "--plugins", "dynamic_batch",
                   "--force"]
        print("running:", " ".join(command[1:]), flush=True)
        figures = measure(command)
        report = json.loads((out / "report.json").read_text())
        sizes = {"source data": (work / "source" / "model.onnx.data").stat().st_size,
                 **{f"OUT/{name}": (out / name).stat().st_size for name in ("model.onnx", "model.onnx.data",
                                                                             "saved_model/saved_model.pb")
                    if (out / name).exists()},
                 "OUT/saved_model/variables/": folder_bytes(out / "saved_model" / "variables")}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    stages = report["seconds"]
    parity = [f"{row['stage']} {row['batch']} {row['check']}: max scaled {row['max_scaled']:.2e}"
              for row in report["parity"]]
    lines = [
        "# A model over 2 GB through `surgeon run`",
        "",
        f"`python bench/large_model.py{'' if args.gb == 2.2 else f' --gb {args.gb:g}'}` on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} cores, shared), {stack_words}.",
        "",
        f"Model: one MatMul, `W` float32 [{ROWS}, {sizes['source data'] // (4 * ROWS)}] = "
        f"{sizes['source data'] / 1e9:.3f} GB ({sizes['source data'] / 2**30:.3f} GiB) as external data "
        f"(generated in {generated:.1f} s). Command: `surgeon run model.onnx -o OUT --plugins dynamic_batch`.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| wall time | {figures['wall_s']:.1f} s |",
        f"| CPU time | {figures['cpu_s']:.1f} s |",
        f"| peak resident memory, largest process (`wait4`) | {figures['peak_process_gb']:.2f} GB |",
        f"| peak resident memory, all processes together (sampled every 0.1 s) | {figures['peak_tree_gb']:.2f} GB |",
        *(f"| stage `{name}` | {seconds:.1f} s |" for name, seconds in stages.items()),
        *(f"| size of {name} | {size / 1e9:.3f} GB |" if size > 1e6 else f"| size of {name} | {size} bytes |"
          for name, size in sizes.items()),
        f"| weights saved as variables | {report.get('variables')} |",
        f"| layout | {report.get('layout', {}).get('why_not')} |",
        "",
        "Parity (each stage against onnxruntime on the source): " + "; ".join(parity) + ".",
        "",
    ]
    results.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
