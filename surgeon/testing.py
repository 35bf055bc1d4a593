"""Helpers for testing rewrite passes, for surgeon's own tests and plugin authors'.

    from surgeon.testing import model_from_text, apply_pass, assert_same_outputs

    model = model_from_text('''
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
    ''')
    rewritten = apply_pass("my_fix", model, some_option=3)
    assert_same_outputs(model, rewritten, batch_sizes=[1, 3, 8])
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.parser

from surgeon import options as option_parsing
from surgeon.plugin import RewritePass
from surgeon.rewrite import PassRecord, run_passes
from surgeon.feeds import random_feed
from surgeon.verify import DEFAULT_ATOL, DEFAULT_RTOL, compare, onnxruntime_runner


def model_from_text(text: str) -> onnx.ModelProto:
    """An ONNX model from the ONNX text syntax, checked."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def find_pass(name: str) -> RewritePass:
    """The installed rewrite pass called ``name``."""
    from surgeon.discovery import discover

    return discover().passes[name]


def apply_pass(rewrite: str | RewritePass, model: onnx.ModelProto, **raw_options: Any) -> onnx.ModelProto:
    """Run one pass through the real pass runner (checks included); return the new model."""
    return apply_pass_with_record(rewrite, model, **raw_options)[0]


def apply_pass_with_record(
    rewrite: str | RewritePass, model: onnx.ModelProto, **raw_options: Any
) -> tuple[onnx.ModelProto, PassRecord]:
    """Like :func:`apply_pass`, also returning what the host recorded about the pass."""
    rewrite = find_pass(rewrite) if isinstance(rewrite, str) else rewrite
    built = option_parsing.build(rewrite.name, rewrite.options, raw_options)
    rewritten, (record,) = run_passes(model, [(rewrite, built)])
    return rewritten, record


def run_onnx(model: onnx.ModelProto, feed: Sequence[np.ndarray], optimized: bool = True) -> list[np.ndarray]:
    """Run ``model`` on onnxruntime with one array per input, in input order.

    ``optimized=False``: with onnxruntime's graph optimizations off, to compare two graphs bit for bit (its fusions
    may order a float sum differently once a shape is symbolic)."""
    return onnxruntime_runner(model, optimized)([list(feed)])[0]


def assert_same_outputs(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    batch_sizes: Iterable[int] = (1,),
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> None:
    """``after`` computes what ``before`` computes on seeded random inputs at each batch size."""
    run_before, run_after = onnxruntime_runner(before), onnxruntime_runner(after)
    for size in batch_sizes:
        feed = random_feed(before, size)
        rows = compare("after", size, run_after([feed])[0], run_before([feed])[0], atol, rtol)
        bad = [row for row in rows if not row["ok"]]
        assert not bad, f"outputs differ at batch {size}: {bad}"


def assert_idempotent(rewrite: str | RewritePass, model: onnx.ModelProto, **raw_options: Any) -> None:
    """A second application of the pass changes nothing."""
    once = apply_pass(rewrite, model, **raw_options)
    twice, record = apply_pass_with_record(rewrite, once, **raw_options)
    assert not record.changed, f"second application changed the graph: {dataclasses.asdict(record)}"
    assert twice.graph == once.graph or onnx.helper.printable_graph(twice.graph) == onnx.helper.printable_graph(
        once.graph
    ), "second application changed the graph"


@dataclasses.dataclass(frozen=True)
class BackendCase:
    """One case of the ONNX backend node tests shipped in the onnx wheel."""

    name: str
    model: onnx.ModelProto
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]


def backend_node_cases(prefixes: Iterable[str] = ("",)) -> list[BackendCase]:
    """The cases whose name starts with ``test_`` + one of ``prefixes`` (all by default).

    onnx wheels up to 1.18 ship the cases as files, which are read (the first
    data set of each); later wheels ship only the code that writes them,
    which is run once per process instead. Cases with sequence, map or
    optional inputs or outputs are left out (they have no plain tensor data).
    """
    return [case for case in _all_backend_node_cases()
            if any(case.name.startswith(f"test_{prefix}") for prefix in prefixes)]


@functools.lru_cache(maxsize=1)
def _all_backend_node_cases() -> tuple[BackendCase, ...]:
    from pathlib import Path

    root = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    return tuple(_cases_from_files(root) if root.is_dir() else _cases_from_code())


def _cases_from_files(root: Any) -> Iterable[BackendCase]:
    from onnx import numpy_helper

    for folder in sorted(root.iterdir()):
        data = folder / "test_data_set_0"
        model = onnx.load(str(folder / "model.onnx"))
        try:
            arrays = {kind: [_as_declared(numpy_helper.to_array(_read_tensor(path)), value)
                             for path, value in zip(sorted(data.glob(f"{kind}_*.pb"), key=_index), values)]
                      for kind, values in (("input", model.graph.input), ("output", model.graph.output))}
        except ValueError:
            continue
        yield BackendCase(folder.name, model, arrays["input"], arrays["output"])


def _as_declared(array: np.ndarray, value: onnx.ValueInfoProto) -> np.ndarray:
    """onnx up to 1.18 wrote bfloat16 data as its uint16 bits: read them as bfloat16."""
    if value.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16 and array.dtype == np.uint16:
        import ml_dtypes

        return array.view(ml_dtypes.bfloat16)
    return array


def _cases_from_code() -> Iterable[BackendCase]:
    import warnings

    from onnx import numpy_helper
    from onnx.backend.test.case import node

    with warnings.catch_warnings(), np.errstate(all="ignore"):  # the cases compute infinities on purpose
        warnings.simplefilter("ignore")
        generated = node.collect_testcases(None)
    for case in sorted(generated, key=lambda case: case.name):
        if not case.data_sets or case.model is None:
            continue
        inputs, outputs = case.data_sets[0]
        arrays = [numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
                  for value in (*inputs, *outputs)]
        if all(isinstance(array, np.ndarray) for array in arrays):
            yield BackendCase(case.name, case.model, arrays[:len(inputs)], arrays[len(inputs):])


def _read_tensor(path: Any) -> onnx.TensorProto:
    tensor = onnx.TensorProto()
    data = path.read_bytes()
    tensor.ParseFromString(data)
    if not tensor.data_type:
        raise ValueError(f"{path} holds no plain tensor")
    return tensor


def _index(path: Any) -> int:
    return int(path.stem.rsplit("_", 1)[1])


@dataclasses.dataclass
class BackendRun:
    """A pass run over backend node test cases: what it touched and what still matches."""

    touched: list[str] = dataclasses.field(default_factory=list)
    passed: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # case -> why
    not_runnable: dict[str, str] = dataclasses.field(default_factory=dict)  # onnxruntime fails the original

    def summary(self) -> str:
        return (f"{len(self.passed)} passed, {len(self.failed)} failed; touched {len(self.touched)}; "
                f"{len(self.not_runnable)} not runnable on onnxruntime before the pass")


def run_pass_on_backend_cases(rewrite: str | RewritePass, prefixes: Iterable[str] = ("",), atol: float = 1e-4,
                              rtol: float = 1e-3, **raw_options: Any) -> BackendRun:
    """Apply the pass to each backend case and check the rewritten model against the expected outputs.

    Cases onnxruntime cannot run even before the pass are set aside, with the reason.
    """
    from surgeon.errors import describe

    result = BackendRun()
    for case in backend_node_cases(prefixes):
        try:
            run_onnx(case.model, case.inputs)
        except Exception as error:
            result.not_runnable[case.name] = describe(error)
            continue
        try:
            rewritten, record = apply_pass_with_record(rewrite, case.model, **raw_options)
            if record.changed:
                result.touched.append(case.name)
            outputs = run_onnx(rewritten, case.inputs)
        except Exception as error:
            result.failed[case.name] = describe(error)
            continue
        rows = compare(case.name, 1, outputs, case.outputs, atol, rtol)
        bad = [row for row in rows if not row["ok"]]
        if bad:
            result.failed[case.name] = bad[0].get("error") or f"output {bad[0]['output']} differs by {bad[0]['max_abs']:.3g}"
        else:
            result.passed.append(case.name)
    return result


__all__ = [
    "BackendCase",
    "BackendRun",
    "apply_pass",
    "apply_pass_with_record",
    "assert_idempotent",
    "assert_same_outputs",
    "backend_node_cases",
    "find_pass",
    "model_from_text",
    "run_onnx",
    "run_pass_on_backend_cases",
]
