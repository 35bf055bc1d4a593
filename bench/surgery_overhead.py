"""How much does surgeon's pass runner cost over one bare onnx-graphsurgeon round trip?

A synthetic chain of N nodes goes through surgeon's pass runner with three
passes that each touch every node (import once, three passes with the
structural check and change records after each, export once, ONNX checker
and strict shape inference). The baseline is one bare onnx-graphsurgeon round
trip of the same graph: import, cleanup, toposort, export. Both are timed in
the same process, alternating, best of ``--repeat``.

    python bench/surgery_overhead.py            # 10k and 100k nodes
    python bench/surgery_overhead.py --sizes 10000 --repeat 1

Targets (issue 2): ratio <= 1.3 at 100k nodes; 10k -> 100k near-linear.
Results go to bench/results/surgery_overhead.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from surgeon.plugin import NoOptions, RewritePass
from surgeon.rewrite import gc_paused, run_passes

RESULTS = Path(__file__).parent / "results" / "surgery_overhead.md"


def chain(size: int) -> onnx.ModelProto:
    """x -> Relu -> Neg -> Relu -> ... with ``size`` nodes; the graph is long, the tensors tiny."""
    ops = ("Relu", "Neg")
    nodes = [helper.make_node(ops[i % 2], [f"t{i}"], [f"t{i + 1}"], name=f"node{i}") for i in range(size)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("t0", onnx.TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(f"t{size}", onnx.TensorProto.FLOAT, [1, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def rename_nodes(graph: gs.Graph, options: NoOptions) -> None:
    for index, node in enumerate(graph.nodes):
        node.name = f"renamed{index}"


def rename_tensors(graph: gs.Graph, options: NoOptions) -> None:
    for node in graph.nodes:
        for tensor in node.outputs:
            if tensor not in graph.outputs:
                tensor.name = f"{tensor.name}_r"


def swap_ops(graph: gs.Graph, options: NoOptions) -> None:
    """Assign every node's op again: touches every node, keeps the meaning."""
    for node in graph.nodes:
        node.op = str(node.op)


PASSES = [(RewritePass(name=run.__name__, doc="", run=run), NoOptions()) for run in
          (rename_nodes, rename_tensors, swap_ops)]


def bare_round_trip(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = gs.import_onnx(model)
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


def bare_round_trip_gc_paused(model: onnx.ModelProto) -> onnx.ModelProto:
    with gc_paused():
        return bare_round_trip(model)


def best_of(repeat: int, work, model: onnx.ModelProto) -> float:
    """The least CPU time of ``repeat`` runs: CPU time is what other work on a shared machine disturbs least."""
    times = []
    for _ in range(repeat):
        started = time.process_time()
        work(model)
        times.append(time.process_time() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for size in map(int, args.sizes.split(",")):
        model = chain(size)
        baseline = best_of(args.repeat, bare_round_trip, model)
        paused = best_of(args.repeat, bare_round_trip_gc_paused, model)
        surgery = best_of(args.repeat, lambda m: run_passes(m, PASSES), model)
        rows.append((size, baseline, paused, surgery))
        print(f"{size:>7} nodes: bare round trip {baseline:.2f}s (GC paused {paused:.2f}s), "
              f"surgeon 3 passes {surgery:.2f}s, ratio {surgery / baseline:.2f} ({surgery / paused:.2f})", flush=True)
    lines = [
        "# Surgery overhead: surgeon's pass runner vs one bare onnx-graphsurgeon round trip",
        "",
        f"Machine: {platform.machine()}, {platform.python_version()}, onnx {onnx.__version__}, "
        f"onnx-graphsurgeon {gs.__version__}; CPU seconds, best of {args.repeat}; `python bench/surgery_overhead.py`.",
        "",
        "surgeon pauses Python's cyclic garbage collector during surgery (`surgeon.rewrite.gc_paused`); the",
        "last column compares with a bare round trip that does the same, to show what the checks and",
        "change records cost by themselves.",
        "",
        "| nodes | bare round trip (s) | surgeon, 3 passes (s) | ratio (target <= 1.3) | bare, GC paused (s) | ratio to it |",
        "|---:|---:|---:|---:|---:|---:|",
        *(f"| {size} | {base:.2f} | {surg:.2f} | {surg / base:.2f} | {paused:.2f} | {surg / paused:.2f} |"
          for size, base, paused, surg in rows),
    ]
    if len(rows) > 1:
        (small, small_base, _, small_surg), (large, large_base, _, large_surg) = rows[0], rows[-1]
        lines += ["", f"Scaling {small} -> {large} nodes ({large / small:.0f}x): surgeon {large_surg / small_surg:.1f}x, "
                      f"bare round trip {large_base / small_base:.1f}x."]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
