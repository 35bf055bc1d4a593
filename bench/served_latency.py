"""How fast does a converted SavedModel serve, before and after the serving layout, against onnxruntime and PyTorch?

Models (torchvision's resnet18 and mobilenet_v2 where torchvision is
installed, else the same architectures written here, untrained, seeded):

- resnet18 at 3x224x224;
- mobilenet_v2 at 3x224x224 (depthwise convolutions, ReLU6);
- ct-position: the bundled CT example, a 3D ResNet-34, at ``--ct-shape``;
- a transformer encoder (4 layers, width 256, 4 heads, 64 tokens of
  features): no convolution, so the serving layout leaves it as it was.

Each is exported by ``torch.onnx.export`` (legacy exporter, opset 13, batch
1), made batch-dynamic by surgeon's dynamic_batch pass (with pool_fix and
opset_compat, as ``surgeon run`` would), then converted by onnx-tf 1.10
twice, in this process:

- before: as the converter did, ``prepare(model)`` (onnx-tf's CPU form);
- after: through the serving layout for a CPU
  (plugins/converters/onnx_tf/layout.py, ``write_for_serving``).

Then, at batch 1 and 8, in one process, each runner with 2 threads:

- the SavedModels as TF Serving runs them: a TF1 session over the ``serve``
  meta graph, fed and fetched by the ``serving_default`` signature's tensor
  names (intra-op 2 threads, inter-op 1);
- onnxruntime on the ONNX model (CPU provider, intra-op 2 threads, its
  threads not spinning between calls: they would take the cores from the
  runner after them);
- PyTorch eager (``torch.set_num_threads(2)``, no_grad, ``OMP_WAIT_POLICY=PASSIVE``:
  its OpenMP threads otherwise spin at every barrier while another
  runner's threads hold the cores, which made resnet18 30 times slower
  at batch 1 here).

Every runner is warmed up, then the runners take turns, the first one
rotating, for ``--repeat`` rounds; each figure is the fastest call (the one
other work on the machine disturbed least). The ratios to onnxruntime are
measured in the same run.

    python bench/served_latency.py
    python bench/served_latency.py --only resnet18 --repeat 5

Results go to bench/results/served_latency.md on the default stack (the
TensorFlow that constraints.txt pins), to served_latency-tfX.Y.md on any
other (TensorFlow 2.15: served_latency-tf2.15.md); ``--only`` prints and
writes nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from stacks import stack  # beside this script
from zoo import seeded  # batch-norm statistics that are not the identity, as trained ones are not

RESULTS = Path(__file__).parent / "results" / "served_latency.md"
BATCHES = (1, 8)
THREADS = 2
PASSES = ("dynamic_batch", "pool_fix", "opset_compat")
COUNTED = ("Transpose", "Pad", "PadV2")


# --------------------------------------------------------------------------- the models

def resnet18():
    """torchvision's resnet18, or the same architecture: basic blocks of 2, 2, 2, 2 at widths 64 to 512."""
    from torch import nn

    if importlib.util.find_spec("torchvision"):
        import torchvision

        return torchvision.models.resnet18(weights=None)

    class Block(nn.Module):
        def __init__(self, inputs: int, outputs: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm2d(outputs),
                                      nn.ReLU(), nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(outputs))
            self.skip = nn.Identity() if stride == 1 and inputs == outputs else nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

        def forward(self, x):
            return (self.body(x) + self.skip(x)).relu()

    layers, inputs = [], 64
    for outputs, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(inputs, outputs, stride), Block(outputs, outputs, 1)]
        inputs = outputs
    return nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.MaxPool2d(3, 2, 1), *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(512, 1000))


def mobilenet_v2():
    """torchvision's mobilenet_v2, or the same architecture: inverted residuals with depthwise convolutions."""
    from torch import nn

    if importlib.util.find_spec("torchvision"):
        import torchvision

        return torchvision.models.mobilenet_v2(weights=None)

    def conv(inputs: int, outputs: int, kernel: int = 1, stride: int = 1, groups: int = 1, relu: bool = True):
        return [nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, groups=groups, bias=False),
                nn.BatchNorm2d(outputs), *([nn.ReLU6()] if relu else [])]

    class Inverted(nn.Module):
        def __init__(self, inputs: int, outputs: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = inputs * expand
            self.residual = stride == 1 and inputs == outputs
            self.body = nn.Sequential(*(conv(inputs, hidden) if expand != 1 else []),
                                      *conv(hidden, hidden, 3, stride, hidden), *conv(hidden, outputs, relu=False))

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    layers, inputs = conv(3, 32, 3, 2), 32
    for expand, outputs, repeat, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for index in range(repeat):
            layers.append(Inverted(inputs, outputs, stride if index == 0 else 1, expand))
            inputs = outputs
    return nn.Sequential(*layers, *conv(inputs, 1280), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(1280, 1000))


def transformer():
    """A pre-norm transformer encoder over 64 tokens of 256 features, attention written out (opset 13)."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self, width: int = 256, heads: int = 4) -> None:
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

        def forward(self, x):
            batch, tokens, width = x.shape
            q, k, v = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-2, -1) / (width // self.heads) ** 0.5, dim=-1)
            x = x + self.out((attention @ v).transpose(1, 2).reshape(batch, tokens, width))
            return x + self.mlp(self.norm2(x))

    return nn.Sequential(*[Layer() for _ in range(4)])


def ct_position(shape: tuple[int, ...]):
    from surgeon_plugins import examples

    return examples.get("ct-position").factory(input_shape=shape)


def models(ct_shape: tuple[int, ...]) -> dict[str, tuple[Callable[[], Any], tuple[int, ...]]]:
    """name -> (factory, input shape at batch 1)."""
    return {
        "resnet18": (resnet18, (1, 3, 224, 224)),
        "mobilenet_v2": (mobilenet_v2, (1, 3, 224, 224)),
        f"ct-position 3D ResNet-34 ({'x'.join(map(str, ct_shape[1:]))})": (lambda: ct_position(ct_shape), ct_shape),
        "transformer encoder (64x256)": (transformer, (1, 64, 256)),
    }


# --------------------------------------------------------------------------- converting

def exported(module, shape: tuple[int, ...], folder: Path):
    """The ONNX model of ``module`` as surgeon serves it: exported at batch 1, then made batch-dynamic."""
    import onnx
    import torch

    from surgeon.testing import apply_pass

    path = folder / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (torch.zeros(shape),), str(path), dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["output"])
    model = onnx.load(str(path))
    for name in PASSES:
        model = apply_pass(name, model)
    return model


def onnx_tf_conversion(model) -> Callable[[str, Path], None]:
    """``convert(device, folder)``: the converter's own onnx-tf conversion of ``model`` for that device."""
    from surgeon_plugins.converters.onnx_tf import OnnxTfOptions, to_saved_model

    def convert(device: str, folder: Path) -> None:
        to_saved_model(model, OnnxTfOptions(), folder, device)

    return convert


def counts(path: Path) -> dict[str, int]:
    from surgeon.saved_model_info import read_meta_graph, serving_ops

    ops = serving_ops(read_meta_graph(path))
    return {op: ops[op] for op in COUNTED}


# --------------------------------------------------------------------------- the runners

class SavedModelRunner:
    """A SavedModel as TF Serving runs it: a session over the ``serve`` graph, by the signature's tensor names."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=THREADS, inter_op_parallelism_threads=1)
        self.session = tf.compat.v1.Session(graph=tf.Graph(), config=config)
        meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(path))
        signature = meta_graph.signature_def["serving_default"]
        (self.feed,) = [info.name for info in signature.inputs.values()]
        (self.fetch,) = [info.name for info in signature.outputs.values()]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(self.fetch, {self.feed: x})


class OnnxRuntimeRunner:
    def __init__(self, model) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                    providers=["CPUExecutionProvider"])
        self.feed = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.feed: x})[0]


class TorchRunner:
    def __init__(self, module) -> None:
        import torch

        torch.set_num_threads(THREADS)
        self.module = module

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(x)).numpy()


def race(runners: dict[str, Callable[[np.ndarray], np.ndarray]], x: np.ndarray, repeat: int) -> dict[str, float]:
    """The fastest call of each runner (ms) over ``repeat`` rounds in which the runners take turns."""
    for runner in runners.values():
        for _ in range(3):
            runner(x)
    names, best = list(runners), {name: float("inf") for name in runners}
    for index in range(repeat):
        for name in names[index % len(names):] + names[:index % len(names)]:
            started = time.perf_counter()
            runners[name](x)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: seconds * 1e3 for name, seconds in best.items()}


# --------------------------------------------------------------------------- the run

def measure(name: str, factory: Callable[[], Any], shape: tuple[int, ...], folder: Path,
            repeat: int) -> dict[str, Any]:
    import torch

    from surgeon_plugins.converters.onnx_tf.layout import write_for_serving

    torch.manual_seed(0)
    module = seeded(factory())
    model = exported(module, shape, folder)
    convert = onnx_tf_conversion(model)
    started = time.perf_counter()
    convert("CPU", folder / "before")
    convert_seconds = time.perf_counter() - started
    details = write_for_serving(model, convert, folder / "after", "CPU")
    layout_seconds = time.perf_counter() - started - convert_seconds
    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "before": SavedModelRunner(folder / "before"), "after": SavedModelRunner(folder / "after"),
        "onnxruntime": OnnxRuntimeRunner(model), "pytorch": TorchRunner(module)}
    row: dict[str, Any] = {"name": name, "details": details, "seconds": (convert_seconds, layout_seconds),
                           "before_ops": counts(folder / "before"), "after_ops": counts(folder / "after")}
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, *shape[1:])).astype(np.float32)
        expected = runners["onnxruntime"](x)
        row[f"error_{batch}"] = max(float(np.abs(runners[key](x) - expected).max()) for key in ("before", "after"))
        row[f"ms_{batch}"] = race(runners, x, repeat)
        print(f"{name}, batch {batch}: " + ", ".join(f"{key} {value:.1f} ms" for key, value in
                                                     row[f"ms_{batch}"].items()), flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | batch | before (ms) | after (ms) | onnxruntime (ms) | PyTorch (ms) | before / ort | "
             "after / ort | after / PyTorch | max abs error |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        for batch in BATCHES:
            ms = row[f"ms_{batch}"]
            lines.append(f"| {row['name']} | {batch} | {ms['before']:.1f} | {ms['after']:.1f} | "
                         f"{ms['onnxruntime']:.1f} | {ms['pytorch']:.1f} | {ms['before'] / ms['onnxruntime']:.2f} | "
                         f"**{ms['after'] / ms['onnxruntime']:.2f}** | {ms['after'] / ms['pytorch']:.2f} | "
                         f"{row[f'error_{batch}']:.1e} |")
    lines += ["", "| model | Transpose before -> after | Pad + PadV2 before -> after | layout | "
              "conversion before -> after (s) |", "|---|---:|---:|---|---:|"]
    for row in rows:
        before, after, details = row["before_ops"], row["after_ops"], row["details"]
        layout = details.get("layout", f"as before: {details.get('why_not')}")
        lines.append(f"| {row['name']} | {before['Transpose']} -> {after['Transpose']} | "
                     f"{before['Pad'] + before['PadV2']} -> {after['Pad'] + after['PadV2']} | {layout} | "
                     f"{row['seconds'][0]:.1f} -> {row['seconds'][1]:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=9, help="rounds; each figure is the fastest of them")
    parser.add_argument("--ct-shape", default="1,1,32,64,64", help="the CT example's input shape at batch 1")
    parser.add_argument("--only", help="comma-separated model names (prefixes); prints, writes no results")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads: its threads sleep between calls
    stack_words, results = stack(RESULTS)
    print(f"stack: {stack_words}; results to {results if not args.only else '(none: --only)'}", flush=True)
    chosen = models(tuple(map(int, args.ct_shape.split(","))))
    if args.only:
        prefixes = args.only.split(",")
        chosen = {name: spec for name, spec in chosen.items() if name.startswith(tuple(prefixes))}
    rows = []
    with tempfile.TemporaryDirectory(prefix="served-latency-") as folder:
        for index, (name, (factory, shape)) in enumerate(chosen.items()):
            work = Path(folder) / str(index)
            work.mkdir()
            rows.append(measure(name, factory, shape, work, args.repeat))
    command = "python bench/served_latency.py" + "".join(
        f" --{flag} {value}" for flag, value, default in (("repeat", args.repeat, 9),
                                                          ("ct-shape", args.ct_shape, "1,1,32,64,64"))
        if value != default)
    lines = [
        "# Serving latency: the SavedModel before and after the serving layout, against onnxruntime and PyTorch",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other work, Python "
        f"{platform.python_version()}, {stack_words}, onnx-tf {version('onnx-tf')}, onnxruntime "
        f"{version('onnxruntime')}, torch {version('torch')}; load average {os.getloadavg()[0]:.1f} at the end; "
        f"`{command}`.",
        "",
        "before: the SavedModel as onnx-tf converts it for the CPU (what the converter wrote); after: converted",
        "channels-first and laid out for the CPU (plugins/converters/onnx_tf/layout.py). Both served as TF Serving",
        f"runs them (a TF1 session over the `serve` graph, by the signature's tensor names), {THREADS} threads per",
        f"runner, in one process, runners taking turns; each figure is the fastest of {args.repeat} calls. Ratios",
        "are measured in the same run (the machine is shared: absolute times move between runs, ratios less).",
        "max abs error: the larger of before's and after's against onnxruntime. The transformer has no",
        "convolution, so its before and after are the same conversion: their difference is the noise. Op counts:",
        "of the serving signature's functions; conversion: onnx-tf's, and after it the layout (in this process,",
        "TensorFlow already imported).",
        "",
        *table(rows),
        "",
        "Targets: after / onnxruntime <= 1.2 at batch 1 and <= 1.1 at batch 8 on resnet18.",
    ]
    print("\n".join(lines))
    if args.only:
        return
    results.parent.mkdir(exist_ok=True)
    results.write_text("\n".join(lines) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
