"""tf_serving: a TF Serving model folder (``--format tf_serving``).

Writes ``OUT/tf_serving/<name>/<version>/``, the layout TF Serving loads
(``<model base path>/<integer version>/saved_model.pb``), holding the run's
SavedModel, and ``OUT/tf_serving/models.config``, the ``ModelServerConfig``
for ``--model_config_file``, its ``base_path`` as seen by the docker command
that mounts ``OUT/tf_serving`` at ``/models``.

Warm-up: ``<version>/assets.extra/tf_serving_warmup_requests``, a TFRecord
file of ``tensorflow.serving.PredictionLog`` records that TF Serving replays
when it loads the version, so that the first real request does not pay for
graph optimisation and kernel set-up. One predict request per batch size
verification checks, with the same seeded inputs (``surgeon.verify``), each
named by its key in the serving signature (``input.1`` -> ``input_1``:
``surgeon.naming.signature_input_keys``); off with
``--set tf_serving.warmup=false``. The records are encoded here (the request
wrapper is a few protobuf fields around TensorFlow's ``TensorProto``), so the
``tensorflow-serving-api`` package is not needed to write them.

With ``base`` set, the version is also published into that model base path
after the whole run succeeded, at the next free version number (or
``version``): staged in a hidden folder inside it (TF Serving ignores
non-numeric folders) and renamed into place; if anything fails, what this run
added is taken back, and other versions are never touched (``surgeon.publish``).

After the run, where the servable folder is, the docker command that serves it
and a request for its signature are logged and kept in the report
(``tf_serving_commands``).
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from surgeon import SurgeonError, Writer, hookimpl, publish, stack
from surgeon.example_request import GRPC_PORT, REST_PORT, SIGNATURE_NAME, request_commands
from surgeon.naming import signature_input_keys
from surgeon.onnx_io import real_inputs
from surgeon.output import link_tree
from surgeon.publish import default_name
from surgeon.saved_model_info import read_meta_graph, signatures
from surgeon.feeds import case_feed

log = logging.getLogger("surgeon")

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"  # where TF Serving looks, in a version folder
MODELS_CONFIG = "models.config"
IMAGE = "tensorflow/serving:{release}"
CONTAINER_MODELS = "/models"  # the image's MODEL_BASE_PATH: it serves /models/$MODEL_NAME


@dataclass(frozen=True)
class TfServingOptions:
    name: str = field(default="", metadata={"doc": "model name (default: from SOURCE)"})
    version: int = field(default=0, metadata={"doc": "version folder (default: 1, or the next free one in base)"})
    base: str = field(default="", metadata={
        "doc": "also publish into this model base path (TF Serving's <models>/<name>), as a new version"})
    warmup: bool = field(default=True, metadata={
        "doc": "write assets.extra/tf_serving_warmup_requests: a request per verified batch size"})
    release: str = field(default="", metadata={
        "doc": "tensorflow/serving image tag in the printed docker command (default: MAJOR.MINOR.0 of the "
               "TensorFlow that wrote the model)"})

    def __post_init__(self) -> None:
        if self.version < 0:
            raise ValueError("version cannot be negative")
        if self.name and not re.fullmatch(r"[\w.-]+", self.name):
            raise ValueError(f"name {self.name!r} is not a folder name (letters, digits, '_', '.', '-')")
        if self.release and not re.fullmatch(r"[\w.-]+", self.release):
            raise ValueError(f"release {self.release!r} is not a docker tag, e.g. 2.21.0")


def model_name(ctx, options: TfServingOptions) -> str:
    return options.name or default_name(ctx.config.source)


def write(ctx, options: TfServingOptions, out_dir: Path) -> None:
    name = model_name(ctx, options)
    root = out_dir / "tf_serving"
    folder = root / name / str(options.version or 1)
    folder.parent.mkdir(parents=True)
    link_tree(ctx.saved_model(), folder)
    if options.warmup:
        checked = ctx.cases()
        keys = signature_input_keys([value.name for value in real_inputs(ctx.model)],
                                    [value.name for value in ctx.model.graph.output])
        write_warmup(folder / WARMUP_FILE, name, list(keys.values()), [case_feed(ctx.model, case) for case in checked])
        ctx.report["tf_serving_warmup"] = {"file": str(WARMUP_FILE),
                                           "batch_sizes": list(dict.fromkeys(case.batch for case in checked))}
    (root / MODELS_CONFIG).write_text(models_config(name))
    # the same SavedModel as OUT/saved_model (and triton's entry): verify it once, whichever writer has it
    if not any(writer.name in ("saved_model", "triton") for writer, _ in ctx.plan.writers):
        ctx.served_models["tf_serving"] = folder


def publish_run(ctx, options: TfServingOptions, out_dir: Path) -> None:
    """After the run: publish into ``options.base`` when set, then log where the servable is and how to serve it."""
    name = model_name(ctx, options)
    base = out_dir / "tf_serving" / name
    folder = base / str(options.version or 1)
    mount = f"{base.parent.resolve()}:{CONTAINER_MODELS}"  # OUT/tf_serving holds <name>/: the image's layout
    if options.base:
        base = Path(options.base)
        folder = publish_version(folder, base, options.version)
        ctx.report["tf_serving_published"] = str(folder)
        mount = f"{base.resolve()}:{CONTAINER_MODELS}/{name}"  # the base path itself is the model folder
    signature = signatures(read_meta_graph(folder))[SIGNATURE_NAME]
    release = options.release or serving_release(ctx.report.get("stack", {}).get("tensorflow"))
    commands = {
        "model": name,
        "version": int(folder.name),
        "servable": str(folder.resolve()),
        "base_path": str(base.resolve()),
        "release": release,
        "docker": shlex.join(docker_command(mount, name, release)),
        "request": request_commands(name, signature),
        "models_config": str((out_dir / "tf_serving" / MODELS_CONFIG).resolve()),
    }
    ctx.report["tf_serving_commands"] = commands
    for line in commands_text(commands):
        log.info("%s", line)


def publish_version(folder: Path, base: Path, version: int = 0) -> Path:
    """Copy the version ``folder`` into the model base path ``base`` as a new version; return it. All or nothing."""
    if not base.parent.is_dir():
        raise SurgeonError(f"tf_serving.base {base}: no such folder, nor its parent {base.parent}")
    if (base / "saved_model.pb").exists():
        raise SurgeonError(f"tf_serving.base {base} holds a saved_model.pb: that is a version folder; "
                           "give the model folder that holds the versions", hint=f"--set tf_serving.base={base.parent}")
    entry = publish.Entry(version_source=folder, target=base, version=version)
    return publish.publish_versions([entry], "tf_serving.base", base, noun="the base path")[0]


def serving_release(tensorflow: str | None) -> str:
    """The tensorflow/serving tag for a SavedModel written by ``tensorflow``: the same minor version (``2.21.0``)."""
    minor = stack.minor_version(tensorflow)
    return f"{minor}.0" if minor else "latest"


def docker_command(mount: str, name: str, release: str) -> list[str]:
    """``docker run`` of TF Serving ``release`` serving model ``name`` from the mounted folder, gRPC and REST."""
    return ["docker", "run", "--rm", "-p", f"{GRPC_PORT}:{GRPC_PORT}", "-p", f"{REST_PORT}:{REST_PORT}",
            "-v", mount, "-e", f"MODEL_NAME={name}", IMAGE.format(release=release)]


def models_config(name: str) -> str:
    """The ModelServerConfig (text format) serving ``name`` from ``/models/<name>``, the latest version."""
    return ("model_config_list {\n"
            "  config {\n"
            f'    name: "{name}"\n'
            f'    base_path: "{CONTAINER_MODELS}/{name}"\n'
            '    model_platform: "tensorflow"\n'
            "  }\n"
            "}\n")


def commands_text(commands: dict[str, Any]) -> list[str]:
    """The lines logged at the end of the run."""
    return [f"tf_serving: serve {commands['model']} version {commands['version']} ({commands['servable']}) "
            f"with TF Serving {commands['release']}, gRPC on {GRPC_PORT}, REST on {REST_PORT}, and send it a request:",
            f"  {commands['docker']}",
            *(f"  {line}" for line in commands["request"])]


# --- warm-up records ---------------------------------------------------------------------------------------------
# tensorflow_serving/apis: PredictionLog.predict_log = 6; PredictLog.request = 1; PredictRequest.model_spec = 1,
# .inputs = 2 (map<string, TensorProto>: entries of key = 1, value = 2); ModelSpec.name = 1, .signature_name = 3.


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _message_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes or a message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log(model: str, inputs: Mapping[str, bytes], signature_name: str = SIGNATURE_NAME) -> bytes:
    """A serialized ``PredictionLog`` holding a predict request for ``model``.

    ``inputs``: input name -> serialized ``tensorflow.TensorProto``. The bytes are those of
    ``tensorflow-serving-api``'s ``SerializeToString(deterministic=True)``: fields in number order, map entries
    sorted by key, empty strings left out.
    """
    spec = b"".join(_message_field(number, text.encode()) for number, text in ((1, model), (3, signature_name))
                    if text)
    entries = b"".join(_message_field(2, _message_field(1, key.encode()) + _message_field(2, tensor))
                       for key, tensor in sorted(inputs.items(), key=lambda item: item[0].encode()))
    request = _message_field(1, spec) + entries
    return _message_field(6, _message_field(1, request))


def warmup_records(model: str, input_names: Sequence[str], feeds: Sequence[Sequence[np.ndarray]]) -> list[bytes]:
    """One serialized ``PredictionLog`` per feed."""
    from surgeon.device import quiet_tensorflow

    with quiet_tensorflow() as tf:
        return [prediction_log(model, {name: tf.make_tensor_proto(np.asarray(array)).SerializeToString()
                                       for name, array in zip(input_names, feed)})
                for feed in feeds]


def write_warmup(path: Path, model: str, input_names: Sequence[str], feeds: Sequence[Sequence[np.ndarray]]) -> None:
    """Write the warm-up TFRecord file TF Serving replays when it loads the version."""
    from surgeon.device import quiet_tensorflow

    records = warmup_records(model, input_names, feeds)
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_tensorflow() as tf:
        with tf.io.TFRecordWriter(str(path)) as writer:
            for record in records:
                writer.write(record)


@hookimpl
def surgeon_writers():
    return [Writer(name="tf_serving", doc="OUT/tf_serving: <name>/<version>/, the SavedModel in the layout TF "
                   "Serving loads, with warm-up requests at the verified batch sizes, and models.config.",
                   options=TfServingOptions, write=write, publish=publish_run, needs_saved_model=True)]
