"""The dynamo exporter (``--set torch.dynamo=true``), run beside TensorFlow rather than with it.

torch's dynamo exporter translates a ``torch.export`` program to ONNX with
onnxscript and onnx-ir, which need ml-dtypes >= 0.5; TensorFlow 2.15 (which
onnx-tf needs) pins ml-dtypes 0.3. They cannot share one environment, so:

- ``surgeon setup-dynamo`` installs onnxscript, onnx-ir and ml-dtypes 0.5
  (``PACKAGES``) into a folder of their own (``home()``), not into the
  environment;
- the model is captured with ``torch.export`` here, saved as a ``.pt2``
  program, and translated to ONNX by this module run in a child process
  (``python -m surgeon_plugins.dynamo_export PROGRAM OUT.onnx ...``) whose
  path puts that folder first. TensorFlow is never imported there.

The result is at the dynamo exporter's own opset (18) unless torch manages
the opset asked for; ``opset_compat`` brings it within onnx-tf's reach.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon.errors import SurgeonError, UsageError, describe
from surgeon.output import staged

if TYPE_CHECKING:
    import onnx
    import torch

log = logging.getLogger("surgeon")

# checked together with torch 2.13 and onnx 1.18 on Python 3.11
PACKAGES = ("onnxscript==0.7.2", "onnx-ir==1.1.0", "ml-dtypes==0.5.4")
NATIVE_OPSET = 18
HOME_VARIABLE = "SURGEON_DYNAMO_HOME"
MANIFEST = "surgeon-dynamo.json"
BATCH_AXIS = "batch"
CHILD_TIMEOUT_S = 3600


def home() -> Path:
    """Where ``surgeon setup-dynamo`` installs: $SURGEON_DYNAMO_HOME, else a per-Python folder in the user cache."""
    if os.environ.get(HOME_VARIABLE):
        return Path(os.environ[HOME_VARIABLE])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "surgeon" / f"dynamo-exporter-py{sys.version_info.major}.{sys.version_info.minor}"


def is_installed(folder: Path) -> bool:
    manifest = folder / MANIFEST
    try:
        return json.loads(manifest.read_text()).get("packages") == list(PACKAGES)
    except (OSError, ValueError, AttributeError):
        return False


def install(folder: Path | None = None, *, force: bool = False) -> Path:
    """Install ``PACKAGES`` into ``folder`` (default ``home()``) with pip, all at once; return the folder."""
    folder = (folder or home()).resolve()
    if is_installed(folder) and not force:
        log.info("the dynamo exporter's packages are already in %s", folder)
        return folder
    if folder.exists() and not (folder / MANIFEST).is_file() and not is_empty_folder(folder):
        raise UsageError(f"{folder} exists and holds something else than the dynamo exporter's packages",
                         hint="name a new or empty folder: setup-dynamo replaces the folder it installs into")
    try:
        with staged(folder, force=True) as staging:  # all at once: a broken install never replaces a good one
            log.info("installing %s into %s ...", ", ".join(PACKAGES), folder)
            command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                       "--disable-pip-version-check", "--target", str(staging), *PACKAGES]
            finished = subprocess.run(command, capture_output=True, text=True, cwd=staging)
            if finished.returncode != 0:
                raise SurgeonError(f"pip could not install the dynamo exporter's packages: {last_message(finished)}",
                                   hint=f"pip needs to reach a package index with {', '.join(PACKAGES)}")
            (staging / MANIFEST).write_text(json.dumps({"packages": list(PACKAGES)}, indent=1))
            check_imports(staging)
    except OSError as error:
        raise SurgeonError(f"cannot install into {folder}: {error.strerror or error}") from None
    log.info("installed the dynamo exporter's packages in %s", folder)
    return folder


def is_empty_folder(folder: Path) -> bool:
    try:
        return folder.is_dir() and not any(folder.iterdir())
    except OSError:
        return False


def check_imports(folder: Path) -> None:
    """Import onnxscript in a child process with ``folder`` first on its path, as an export will."""
    finished = subprocess.run([sys.executable, "-c", "import onnxscript, onnx_ir, torch.onnx"],
                              env=child_environment(folder), capture_output=True, text=True, cwd=folder)
    if finished.returncode != 0:
        raise SurgeonError(f"the dynamo exporter's packages in {folder} do not import: {last_message(finished)}")


def child_environment(folder: Path) -> dict[str, str]:
    inherited = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), *([inherited] if inherited else [])])}


def export(model: torch.nn.Module, args: list[torch.Tensor], path: Path, input_names: list[str],
           output_names: list[str], opset: int | None, dynamic_batch: bool) -> None:
    """Capture ``model`` with torch.export here, then translate it to ONNX at ``path`` in a child process."""
    folder = home()
    if not is_installed(folder):
        raise UsageError(f"option torch.dynamo: the dynamo exporter's packages are not installed in {folder}",
                         hint="run `surgeon setup-dynamo` once (it installs onnxscript, onnx-ir and ml-dtypes 0.5 "
                              f"into that folder, apart from TensorFlow; {HOME_VARIABLE} picks another)")
    # torch.export.load unpickles: the program lives in a folder only this user can write to
    with tempfile.TemporaryDirectory(prefix="surgeon-dynamo-") as private:
        program = Path(private) / "model.pt2"
        capture(model, args, dynamic_batch, program)
        settings = {"opset": opset or NATIVE_OPSET, "input_names": input_names, "output_names": output_names}
        command = [sys.executable, "-m", "surgeon_plugins.dynamo_export", str(program), str(path.resolve()),
                   json.dumps(settings)]
        try:  # run in the private folder: `python -m` puts the working folder first on the module path
            finished = subprocess.run(command, env=child_environment(folder), capture_output=True, text=True,
                                      timeout=CHILD_TIMEOUT_S, cwd=private)
        except subprocess.TimeoutExpired:
            raise SurgeonError(f"the dynamo exporter did not finish in {CHILD_TIMEOUT_S} s") from None
    log.debug("dynamo exporter:\n%s%s", finished.stdout, finished.stderr)
    if finished.returncode != 0 or not path.is_file():
        raise SurgeonError(f"the dynamo exporter failed: {last_message(finished)}", hint="--verbose shows its "
                           "output; leaving torch.dynamo off uses the TorchScript exporter") from None


def last_message(finished: subprocess.CompletedProcess) -> str:
    """The last line of a failed child's stderr that is a message rather than a traceback's indented source."""
    lines = finished.stderr.strip().splitlines()
    return next((line for line in reversed(lines) if line[:1].isalpha()), f"exit status {finished.returncode}")


def capture(model: torch.nn.Module, args: list[torch.Tensor], dynamic_batch: bool, program: Path) -> None:
    """``torch.export`` the model into ``program``; a dynamic batch is traced at batch 2 at least, since torch
    specializes sizes 0 and 1."""
    import torch

    dynamic_shapes = None
    if dynamic_batch:
        args = [tensor.expand(max(2, tensor.shape[0]), *tensor.shape[1:]).contiguous() for tensor in args]
        batch = torch.export.Dim(BATCH_AXIS)
        dynamic_shapes = tuple({0: batch} for _ in args)
    try:
        exported = torch.export.export(model, tuple(args), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as error:
        hint = ("without torch.dynamic_batch_export the batch is captured fixed, and dynamic_batch frees it"
                if dynamic_batch else "leaving torch.dynamo off uses the TorchScript exporter")
        raise SurgeonError(f"torch.export cannot capture the model ({describe(error)})", hint=hint) from None
    torch.export.save(exported, program)


def name_batch_axis(model: onnx.ModelProto) -> None:
    """Call the first input's symbolic batch dim ``batch`` in the graph's inputs, outputs and value_info
    (torch names it after its symbol, e.g. ``s31``)."""
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
    symbol = dims[0].dim_param if dims else ""
    if not symbol:
        return
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = BATCH_AXIS


def translate(program: Path, path: Path, opset: int, input_names: list[str], output_names: list[str]) -> None:
    """The child process: the saved program to ONNX with the dynamo exporter."""
    import torch

    exported = torch.export.load(program)
    torch.onnx.export(exported, (), str(path), dynamo=True, opset_version=opset, input_names=input_names,
                      output_names=output_names, external_data=False)


if __name__ == "__main__":
    settings = json.loads(sys.argv[3])
    translate(Path(sys.argv[1]), Path(sys.argv[2]), settings["opset"], settings["input_names"],
              settings["output_names"])
