"""opset_compat with the real onnx-tf 1.10: a small transformer end to end, and the ONNX backend node tests.

Transformer: written here in PyTorch (scaled_dot_product_attention, LayerNorm, GELU), exported at opset 14, 17
and 20, run through ``surgeon.run`` with opset_compat and dynamic_batch; the run's verification serves the SavedModel
in a fresh process at batch 1, 3 and 8 and compares it with PyTorch.

Backend cases: each runs through onnx-tf in this process (``prepare``, then the TensorFlow representation) as it
is. Those onnx-tf cannot convert or gets wrong go through opset_compat. Where the plan brings every node within
onnx-tf's set, onnx-tf must convert the rewritten model and match the expected outputs, unless a LIMITS entry
names the case and its failure (onnx-tf's handler itself at fault), and then the rewritten model must still
compute on onnxruntime what the original computes. The others are left, with the reasons opset_compat gives.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import surgeon
from surgeon import RewritePass
from surgeon.testing import BackendCase, apply_pass, backend_node_cases, run_onnx
from surgeon_plugins.passes import opset_compat
from surgeon_plugins.converters.onnx_tf.compat import imported_onnx_tf, mended_handlers
from surgeon_plugins.converters.onnx_tf.support import handlers, unconvertible

pytestmark = pytest.mark.tf  # every test here converts with TensorFlow

TRANSFORMER = '''
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, dim, heads, causal):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """Embeds 8 features per token, prepends a class token, two blocks (the second causal), classifies from the
    class token."""

    def __init__(self, dim=32, heads=4, classes=5):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.Sequential(Block(dim, heads, causal=False), Block(dim, heads, causal=True))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = torch.cat([self.token.expand(x.shape[0], -1, -1), self.embed(x)], dim=1)
        return self.head(self.norm(self.blocks(x))[:, 0])


def tiny_transformer():
    torch.manual_seed(0)
    return TinyTransformer()
'''


@pytest.mark.parametrize("opset", [14, 17, 20])
def test_a_transformer_exported_at_opset_14_17_or_20_serves_what_pytorch_computes(tmp_path, opset):
    import torch

    source = tmp_path / "tiny_transformer.py"
    source.write_text(TRANSFORMER)
    namespace: dict = {}
    exec(compile(TRANSFORMER, str(source), "exec"), namespace)
    export = tmp_path / "export.onnx"
    torch.onnx.export(namespace["tiny_transformer"]().eval(), (torch.randn(1, 6, 8),), str(export), dynamo=False,
                      opset_version=opset)
    findings = opset_compat.detect(gs.import_onnx(onnx.load(str(export))), opset_compat.OpsetCompatOptions())
    explanation = "\n".join(f"{finding.where}: {finding.message}" for finding in findings)
    assert "Squeeze-13" in explanation and all(finding.fixable for finding in findings)
    assert ("LayerNormalization-17" in explanation) == (opset >= 17)
    assert ("Gelu-20" in explanation) == (opset >= 20)

    report = surgeon.run(f"{source}:tiny_transformer", tmp_path / "out", plugins=["opset_compat", "dynamic_batch"],
                         options={"torch": {"opset": opset, "input_shapes": ["1,6,8"]}}, formats=["saved_model"],
                         batch_sizes=[1, 3, 8])
    fitted, batch = report["plugins"]
    assert fitted["details"]["opset"] == {"from": opset, "to": 12} and fitted["details"]["left"] == []
    # the causal mask: Squeeze needs opset 12, Trilu came at 14
    assert any(change.startswith("Trilu-14 -> decomposed") for change in fitted["details"]["rewritten"])
    assert batch["name"] == "dynamic_batch" and batch["details"]["export_batch"] == 1
    served = [row for row in report["parity"] if row["stage"] == "saved_model"]
    assert {row["batch"] for row in served} == {1, 3, 8}
    assert all(row["ok"] for row in report["parity"]), [row for row in report["parity"] if not row["ok"]]
    assert unconvertible(onnx.load(str(tmp_path / "out" / "model.onnx"))) == []


def test_the_table_read_as_text_is_the_handlers_own():
    imported_onnx_tf()
    from onnx_tf.common.handler_helper import get_backend_coverage

    coverage, _ = get_backend_coverage()
    implemented = {op: versions for op, versions in handlers().versions.items() if versions}
    assert {op: frozenset(v) for op, v in coverage[""].items() if v} == implemented


# ---------------------------------------------------------------- the backend node tests

RANDOM = re.compile(r"test_(bernoulli|training_dropout)")  # random output: only the shapes can be compared
ONNX = ".".join(onnx.__version__.split(".")[:2])
# (case name, how it fails after opset_compat, why[, the onnx release whose cases alone need it]): onnx-tf's
# handlers, or the test data, at fault
LIMITS: list[tuple[str, ...]] = [
    (r"test_cast(like)?_((BFLOAT16|FLOAT4E2M1)_to_|FLOAT_to_BFLOAT16)", "wrong values",
     "NumPy has no bfloat16 or float4: the data reach onnx-tf as integers"),
    (r"test_cast(like)?_FLOAT_to_STRING", "wrong values", "onnx-tf writes floats as strings differently", "1.18"),
    (r"test_(de)?quantizelinear_u?int4", ".", "onnx-graphsurgeon 0.6.1 reads int4 as int8", "1.18"),
    (r"test_qlinearmatmul_[23]D_int8_float32", "wrong values", "onnx-tf's int8 QLinearMatMul differs from the "
     "expected values (so does onnxruntime's)", "1.18"),
    (r"test_gelu_.*_expanded", "AddN", "onnx-tf's Sum is tf.add_n, which does not broadcast"),
    (r"test_", "is not supported in Tensorflow|Cannot set non-1 dilation", "onnx-tf's handler refuses these "
     "attributes (Resize modes, Conv SAME_LOWER, ConvTranspose dilations, MaxPool column-major indices)"),
    (r"test_resize_downsample_scales_(linear|cubic)", "wrong values", "onnx-tf's Resize downsamples differently"),
    (r"test_roialign_mode_max", "wrong values", "onnx-tf's RoiAlign computes mode=max differently"),
    (r"test_(gru|lstm|simple_rnn)_", ".", "onnx-tf's recurrent handlers fail or compute differently on "
     "TensorFlow 2.15 (and onnxruntime runs no layout=1)"),
    (r"test_range_bfloat16", "KeyError", "NumPy has no bfloat16: onnx-tf finds no NumPy type for the data", "1.23"),
    (r"test_l2normalization_axis_0", "wrong values", "onnx-tf's LpNormalization divides an all-zero slice by its "
     "zero norm (NaN where onnx gives 0)", "1.23"),
    (r"test_shape_start_greater_than_end", "wrong values", "onnx-tf's Slice of a shape returns an element where "
     "start > end leaves none", "1.23"),
]
# onnx-tf fails or succeeds on these before opset_compat; opset_compat fixes, or leaves them with a reason
REPRESENTATIVE = (
    "test_relu", "test_layer_normalization_2d_axis0", "test_layer_normalization_3d_axis1_epsilon",
    "test_gelu_default_1", "test_gelu_tanh_2", "test_split_1d_uneven_split_opset18",
    "test_split_variable_parts_2d_opset18", "test_shape_start_1_end_negative_1", "test_mish", "test_hardswish",
    "test_rms_normalization_2d_axis0", "test_group_normalization_example",
    "test_maxpool_2d_ceil_output_size_reduce_by_one", "test_castlike_FLOAT_to_DOUBLE", "test_where_example",
    "test_attention_3d_expanded", "test_attention_3d_causal_expanded", "test_nllloss_NC_expanded",
    "test_logsoftmax_axis_0_expanded_ver18", "test_resize_upsample_scales_linear", "test_edge_pad",
    "test_roialign_aligned_false", "test_gelu_default_1_expanded", "test_resize_upsample_scales_cubic",
    "test_attention_3d", "test_squeeze", "test_unique_sorted_with_axis",
)


@dataclass
class Result:
    before: str  # "ok", "wrong values ...", or "fails: ..."
    fixable: bool = False  # opset_compat plans to bring every node within onnx-tf's set
    after: str | None = None
    same_on_onnxruntime: bool | None = None  # None: onnxruntime runs neither
    left: list[str] = field(default_factory=list)  # why nodes stay beyond onnx-tf's set, or why it fails anyway


def last_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[-1].strip()


def close(actual: list, expected: list) -> bool:
    if len(actual) != len(expected):
        return False
    for got, want in zip(map(np.asarray, actual), expected):
        if got.shape != want.shape:
            return False
        rtol = 2e-3 if want.dtype == np.float16 else 1e-3  # float16 carries 11 bits: 1e-3 is one unit in the last place
        if want.dtype.kind in "fc" and not np.allclose(got, want, rtol=rtol, atol=1e-5, equal_nan=True):
            return False
        if want.dtype.kind not in "fc":
            with np.errstate(invalid="ignore"):
                if not np.array_equal(got.astype(want.dtype), want):
                    return False
    return True


def onnx_tf_outcome(model: onnx.ModelProto, case: BackendCase) -> str:
    """onnx-tf as surgeon's converter runs it (its handlers mended), in this process."""
    try:
        with mended_handlers() as onnx_tf:
            outputs = list(onnx_tf.backend.prepare(model, logging_level="ERROR").run(case.inputs))
    except Exception as error:
        return f"fails: {last_line(error)}"
    if RANDOM.match(case.name):
        outputs, expected = [np.asarray(o).shape for o in outputs], [e.shape for e in case.outputs]
        return "ok" if outputs == expected else f"wrong values: shapes {outputs}, expected {expected}"
    return "ok" if close(outputs, case.outputs) else "wrong values"


def same_on_onnxruntime(original: onnx.ModelProto, rewritten: onnx.ModelProto, case: BackendCase) -> bool | None:
    try:
        reference = run_onnx(original, case.inputs)
    except Exception:
        return None
    return close(run_onnx(rewritten, case.inputs), reference)


NO_CHANGE = RewritePass(name="no_change", doc="changes nothing", run=lambda graph, options: None)


def check(case: BackendCase) -> Result:
    result = Result(before=onnx_tf_outcome(case.model, case))
    if result.before == "ok":
        return result
    plan = opset_compat.make_plan(gs.import_onnx(case.model), opset_compat.OpsetCompatOptions())
    try:
        rewritten = apply_pass("opset_compat", case.model)
    except surgeon.PluginError as error:
        apply_pass(NO_CHANGE, case.model)  # raises too when onnx-graphsurgeon's round trip breaks the model
        raise AssertionError(f"{case.name}: {error}") from None
    result.left = [f"{blocked.source}: {blocked.reason}" for blocked in plan.blocked]
    result.fixable = bool(plan.unsupported) and not plan.blocked
    if not plan.unsupported:
        result.left = [f"every node has an onnx-tf handler, yet onnx-tf {result.before}"]
    if result.fixable:
        result.after = onnx_tf_outcome(rewritten, case)
        if result.after != "ok":
            result.same_on_onnxruntime = same_on_onnxruntime(case.model, rewritten, case)
    return result


def limit(name: str, failure: str) -> str | None:
    return next((why for pattern, how, why, *_ in LIMITS if re.match(pattern, name) and re.search(how, failure)), None)


def run_cases(cases: list[BackendCase]) -> dict[str, Result]:
    import logging

    from surgeon.device import quiet_tensorflow

    logging.getLogger("surgeon").setLevel(logging.ERROR)
    with quiet_tensorflow():
        results = {}
        for case in cases:
            try:
                results[case.name] = check(case)
            except surgeon.PluginError as error:  # onnx-graphsurgeon cannot round-trip it
                results[case.name] = Result(before="fails", left=[f"onnx-graphsurgeon's round trip: "
                                                                  f"{last_line(error)}"])
    return results


def assert_fixed_or_explained(results: dict[str, Result]) -> dict:
    """Every fixable case converts and matches, or fails for a listed reason with its meaning kept; a summary."""
    problems = []
    summary = {"cases": len(results), "onnx_tf_before": sum(r.before == "ok" for r in results.values()),
               "fixable": 0, "fixed": 0, "onnx_tf_after": 0, "limits": defaultdict(list), "left": Counter()}
    for name, result in results.items():
        if result.before == "ok":
            summary["onnx_tf_after"] += 1
        elif result.fixable:
            summary["fixable"] += 1
            if result.after == "ok":
                summary["fixed"] += 1
                summary["onnx_tf_after"] += 1
                continue
            why = limit(name, result.after)
            if not why:
                problems.append(f"{name}: opset_compat brought it within onnx-tf's set, yet {result.after}")
            if result.same_on_onnxruntime is False:
                problems.append(f"{name}: the rewrite changed what onnxruntime computes")
            summary["limits"][why].append(name)
        elif not result.left:
            problems.append(f"{name}: onnx-tf fails ({result.before}) and opset_compat gives no reason")
        else:
            summary["left"].update(re.sub(r"'[^']*'", "'...'", reason) for reason in dict.fromkeys(result.left))
    assert not problems, "\n".join(problems)
    return summary


def test_representative_backend_cases_convert_after_opset_compat_or_are_explained():
    cases = [case for case in backend_node_cases(tuple(n.removeprefix("test_") for n in REPRESENTATIVE))
             if case.name in REPRESENTATIVE]
    assert len(cases) == len(REPRESENTATIVE)
    results = run_cases(cases)
    summary = assert_fixed_or_explained(results)
    assert results["test_relu"].before == "ok"
    assert summary["fixed"] == 21 and len(summary["limits"]) == 2
    assert {name for name, r in results.items() if r.left} == {"test_attention_3d", "test_squeeze",
                                                                "test_unique_sorted_with_axis"}
    assert any("computed at run time" in reason for reason in results["test_squeeze"].left)


@pytest.mark.slow
def test_every_backend_case_converts_after_opset_compat_or_is_explained(capsys):
    results = run_cases(backend_node_cases())
    summary = assert_fixed_or_explained(results)
    unused = [why for _, _, why, *release in LIMITS if release in ([], [ONNX]) and why not in summary["limits"]]
    assert not unused, f"LIMITS entries no case needs: {unused}"
    assert summary["onnx_tf_after"] > summary["onnx_tf_before"] + 350
    with capsys.disabled():
        print("\nopset_compat on the ONNX backend node tests:")
        print(json.dumps({**summary, "left": dict(summary["left"].most_common())}, indent=1))
