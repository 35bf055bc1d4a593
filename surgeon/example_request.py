"""An example request for a SavedModel's serving signature: the TF Serving REST body and the commands that send it.

Built from the signature alone (``surgeon.saved_model_info.signatures``), so
neither TensorFlow nor a server is needed: batch 1, zeros of each input's
dtype, a symbolic dimension other than the batch at the size verification
feeds it. The body is TF Serving's row form (``"instances"``: one object per
sample, keyed by input name) when every input has a batch dimension, else the
columnar form (``"inputs"``: whole tensors).

A body small enough is sent inline (``curl -d '{...}'``); a larger one is
written to ``request.json`` by a one-line ``python3 -c`` command (a CT volume
of zeros is megabytes of JSON) and sent with ``curl -d @request.json``.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from surgeon.errors import SurgeonError
from surgeon.feeds import SYMBOLIC_DIM_SIZE

SIGNATURE_NAME = "serving_default"
REST_PORT, GRPC_PORT = 8501, 8500
PREDICT_URL = "http://localhost:{port}/v1/models/{name}:predict"
REQUEST_FILE = "request.json"
INLINE_LIMIT = 400  # characters of body sent inline by curl
INTEGER_DTYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


def zero(dtype: str) -> Any:
    """The JSON zero of a signature dtype (``float32`` -> 0.0, ``int64`` -> 0, ``bool`` -> false, ``string`` -> "")."""
    if dtype in FLOAT_DTYPES:
        return 0.0
    if dtype in INTEGER_DTYPES:
        return 0
    if dtype == "bool":
        return False
    if dtype == "string":
        return ""
    raise SurgeonError(f"no example value for dtype {dtype!r} in a JSON request")


def row_form(signature: dict[str, Any]) -> bool:
    """Whether every input has a batch dimension (symbolic or 1): then the body lists instances."""
    inputs = signature["inputs"]
    return bool(inputs) and all(tensor["shape"] and tensor["shape"][0] in (None, 1) for tensor in inputs)


def example_shape(tensor: dict[str, Any], batch: int = 1) -> list[int]:
    """The shape sent for ``tensor``: ``batch`` for a symbolic leading dimension, SYMBOLIC_DIM_SIZE elsewhere."""
    if tensor["shape"] is None:
        raise SurgeonError(f"input {tensor['name']!r} has an unknown rank: no example request can be built")
    return [(batch if index == 0 else SYMBOLIC_DIM_SIZE) if size is None else size
            for index, size in enumerate(tensor["shape"])]


def example_inputs(signature: dict[str, Any]) -> list[dict[str, Any]]:
    """Each input of the example request: name, dtype and the shape sent (batch 1)."""
    return [{"name": tensor["name"], "dtype": tensor["dtype"], "shape": example_shape(tensor)}
            for tensor in signature["inputs"]]


def _zeros(shape: list[int], value: Any) -> Any:
    for size in reversed(shape):
        value = [value] * size
    return value


def _zeros_expression(shape: list[int], value: Any) -> str:
    """A short Python expression for nested lists of zeros: ``[[0.0]*64]*32``."""
    text = json.dumps(value) if not isinstance(value, bool) else repr(value)
    for size in reversed(shape):
        text = f"[{text}]" if size == 1 else f"[{text}]*{size}"
    return text


def request_body(signature: dict[str, Any]) -> dict[str, Any]:
    """The REST body of a batch-1 request of zeros for ``signature`` (a ``signatures()`` entry)."""
    inputs = example_inputs(signature)
    if row_form(signature):
        instance = {tensor["name"]: _zeros(tensor["shape"][1:], zero(tensor["dtype"])) for tensor in inputs}
        return {"signature_name": SIGNATURE_NAME, "instances": [instance]}
    return {"signature_name": SIGNATURE_NAME,
            "inputs": {tensor["name"]: _zeros(tensor["shape"], zero(tensor["dtype"])) for tensor in inputs}}


def _body_expression(signature: dict[str, Any]) -> str:
    """``request_body`` as a compact Python expression (the same value)."""
    inputs = example_inputs(signature)
    if row_form(signature):
        fields = ", ".join(f"{json.dumps(t['name'])}: {_zeros_expression(t['shape'][1:], zero(t['dtype']))}"
                           for t in inputs)
        return f'{{"signature_name": "{SIGNATURE_NAME}", "instances": [{{{fields}}}]}}'
    fields = ", ".join(f"{json.dumps(t['name'])}: {_zeros_expression(t['shape'], zero(t['dtype']))}" for t in inputs)
    return f'{{"signature_name": "{SIGNATURE_NAME}", "inputs": {{{fields}}}}}'


def predict_url(name: str) -> str:
    return PREDICT_URL.format(port=REST_PORT, name=name)


def request_commands(name: str, signature: dict[str, Any], inline_limit: int = INLINE_LIMIT) -> list[str]:
    """The shell lines that send the example request to TF Serving's REST API for model ``name``."""
    body = json.dumps(request_body(signature))
    if len(body) <= inline_limit:
        return [shlex.join(["curl", "-d", body, predict_url(name)])]
    code = f'import json; open("{REQUEST_FILE}", "w").write(json.dumps({_body_expression(signature)}))'
    return [shlex.join(["python3", "-c", code]), shlex.join(["curl", "-d", f"@{REQUEST_FILE}", predict_url(name)])]


def example_request(name: str, signature: dict[str, Any]) -> dict[str, Any]:
    """What ``surgeon inspect`` shows: the model name, URL, form, inputs sent and the commands."""
    return {"model": name, "url": predict_url(name), "form": "instances" if row_form(signature) else "inputs",
            "inputs": example_inputs(signature), "commands": request_commands(name, signature)}
