"""What TensorFlow sees: the one GPU it may use (DESIGN.md F7), and how loud it is.

Several visible GPUs make XLA fail during conversion, and CUDA_VISIBLE_DEVICES
only takes effect when set before TensorFlow is first imported; so the GPUs
are counted without TensorFlow, from CUDA_VISIBLE_DEVICES or ``nvidia-smi -L``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from surgeon.errors import UsageError

log = logging.getLogger("surgeon")

NVIDIA_SMI_TIMEOUT_S = 10


def select(device: str | None) -> None:
    """Restrict CUDA_VISIBLE_DEVICES to ``device`` ('cpu' or a GPU index).

    Without ``device``, when several GPUs are visible, TensorFlow gets the
    first of them, and the log says so.
    """
    if device is not None and device != "cpu" and not device.isdigit():
        raise UsageError(f"--device {device!r}: expected 'cpu' or a GPU index such as 0")
    present = installed_gpus()
    if device is not None and device.isdigit() and present is not None and int(device) >= len(present):
        listed = ", ".join(f"GPU {index}" for index, _ in present) or "none"
        raise UsageError(f"--device {device}: no such GPU (nvidia-smi -L lists {listed})",
                         hint="--device cpu converts without a GPU")
    if device is None:
        gpus = visible_gpus()
        if len(gpus) < 2:
            return
        device = gpus[0]
        log.info("%d GPUs are visible (%s); TensorFlow will use only GPU %s, since several GPUs make XLA fail "
                 "during conversion (--device picks another)", len(gpus), ",".join(gpus), device)
    if "tensorflow" in sys.modules:
        log.warning("TensorFlow is already imported; --device %s may not take effect", device)
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if device == "cpu" else device


def visible_gpus() -> list[str]:
    """The GPUs CUDA would show TensorFlow now, by index or UUID, without importing it.

    CUDA reads CUDA_VISIBLE_DEVICES up to the first entry that names no GPU
    of this machine (``-1``, or index 1 on a one-GPU machine: read off an H200,
    tests/data/cuda_visibility.json). Without nvidia-smi, any index or UUID
    counts as a GPU.
    """
    present = installed_gpus()
    restricted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if restricted is None:
        return [index for index, _ in present or []]
    gpus = []
    for entry in (part.strip() for part in restricted.split(",")):
        if not names_a_gpu(entry, present):
            break
        gpus.append(entry)
    return gpus


def names_a_gpu(entry: str, present: list[tuple[str, str]] | None) -> bool:
    if entry.startswith("MIG-"):
        return True
    if present is None:
        return entry.isdigit() or entry.startswith("GPU-")
    if entry.isdigit():
        return int(entry) < len(present)
    return entry.startswith("GPU-") and any(uuid.startswith(entry) for _, uuid in present)


def installed_gpus() -> list[tuple[str, str]] | None:
    """(index, UUID) of each GPU ``nvidia-smi -L`` lists, whatever CUDA_VISIBLE_DEVICES says; None without it."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return None
    try:
        listing = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if listing.returncode != 0:
        return None
    found = re.findall(r"^GPU (\d+):.*\(UUID: (GPU-[\w-]+)\)", listing.stdout, flags=re.MULTILINE)
    return [(index, uuid) for index, uuid in found]


def verbose() -> bool:
    """Whether surgeon logs at DEBUG (``--verbose``), and so lets TensorFlow speak."""
    return log.isEnabledFor(logging.DEBUG)


@contextmanager
def quiet_tensorflow() -> Iterator[ModuleType]:
    """Import TensorFlow and hide its, absl's and TensorFlow Addons' log noise in this block, unless verbose.

    TensorFlow's C++ logging can only be silenced before TensorFlow is first
    imported. TensorFlow resets absl's log level while it works, so records
    are filtered rather than levels set.
    """
    loud = verbose()
    if not loud:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    loggers = [] if loud else [logging.getLogger(name) for name in ("tensorflow", "absl", "onnx-tf")]
    with warnings.catch_warnings():
        if not loud:
            # TensorFlow Addons' end-of-life notice, Keras' notes on the layers onnx-tf uses, ...
            warnings.filterwarnings("ignore", module="(tensorflow|tensorflow_addons|keras|onnx_tf)(\\.|$)")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
        import tensorflow

        for logger in loggers:
            logger.addFilter(_errors_only)
        try:
            yield tensorflow
        finally:
            for logger in loggers:
                logger.removeFilter(_errors_only)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR
