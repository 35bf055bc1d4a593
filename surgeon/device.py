"""What TensorFlow sees: the one GPU it may use, and how loud it is.

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
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from types import ModuleType

from surgeon.errors import UsageError

log = logging.getLogger("surgeon")

NVIDIA_SMI_TIMEOUT_S = 10
DIGITS = re.compile(r"[0-9]+")
INDEX_PREFIX = re.compile(r"[+-]?[0-9]+")


def select(device: str | None) -> None:
    """Restrict CUDA_VISIBLE_DEVICES to ``device`` ('cpu' or a GPU index).

    Without ``device``, when several GPUs are visible, TensorFlow gets the
    first of them, and the log says so.
    """
    if device is not None and device != "cpu" and not DIGITS.fullmatch(device):
        raise UsageError(f"--device {device!r}: expected 'cpu' or a GPU index such as 0")
    if device is None:
        gpus = visible_gpus()
        if len(gpus) < 2:
            return
        device = gpus[0]
        log.info("%d GPUs are visible (%s); TensorFlow will use only GPU %s, since several GPUs make XLA fail "
                 "during conversion (--device picks another)", len(gpus), ",".join(gpus), device)
    elif device != "cpu":
        installed = installed_gpus()
        if installed is not None and int(device) >= len(installed.indices):
            listed = ", ".join(f"GPU {index}" for index in installed.indices) or "none"
            raise UsageError(f"--device {device}: no such GPU (nvidia-smi -L lists {listed})",
                             hint="--device cpu converts without a GPU")
    if "tensorflow" in sys.modules:
        log.warning("TensorFlow is already imported; --device %s may not take effect", device)
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if device == "cpu" else device


@dataclass(frozen=True)
class Installed:
    """What ``nvidia-smi -L`` lists, whatever CUDA_VISIBLE_DEVICES says: GPU indices, and every GPU and MIG
    UUID (lower case)."""

    indices: list[str]
    uuids: list[str]


def visible_gpus() -> list[str]:
    """The GPUs CUDA would show TensorFlow now, by index or UUID, without importing it.

    CUDA reads CUDA_VISIBLE_DEVICES up to the first entry that names no GPU
    of this machine (``-1``, or index 1 on a one-GPU machine: read off an H200,
    tests/data/cuda_visibility.json). Without nvidia-smi, any index or UUID
    counts as a GPU.
    """
    installed = installed_gpus()
    restricted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if restricted is None:
        return list(installed.indices) if installed else []
    gpus = []
    for entry in (part.strip() for part in restricted.split(",")):
        if not names_a_gpu(entry, installed):
            break
        gpus.append(entry)
    return gpus


def names_a_gpu(entry: str, installed: Installed | None) -> bool:
    index = INDEX_PREFIX.match(entry)  # CUDA reads an index as strtol does: "00", "+0", "0a" are GPU 0
    if index:
        return int(index.group()) >= 0 and (installed is None or int(index.group()) < len(installed.indices))
    if not entry.upper().startswith(("GPU-", "MIG-")) or len(entry) <= len("GPU-"):
        return False
    return installed is None or any(uuid.startswith(entry.lower()) for uuid in installed.uuids)


def installed_gpus() -> Installed | None:
    """What ``nvidia-smi -L`` lists; None where it cannot be run."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return None
    try:
        listing = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if listing.returncode != 0:
        return None
    return Installed(indices=re.findall(r"^GPU ([0-9]+):", listing.stdout, flags=re.MULTILINE),
                     uuids=[uuid.lower() for uuid in re.findall(r"\(UUID: ((?:GPU|MIG)-[\w-]+)\)", listing.stdout)])


def verbose() -> bool:
    """Whether surgeon logs at DEBUG (``--verbose``), and so lets TensorFlow speak."""
    return log.isEnabledFor(logging.DEBUG)


@contextmanager
def quiet_tensorflow() -> Iterator[ModuleType]:
    """Import TensorFlow and hide its, absl's and TensorFlow Addons' log noise in this block, unless verbose.

    TensorFlow's C++ logging can only be silenced before TensorFlow is first
    imported (TF_CPP_MIN_LOG_LEVEL), and on TensorFlow 2.21 not even then:
    its libraries log through absl while they load, which no environment
    variable quiets ("All log messages before absl::InitializeLog() is called
    are written to STDERR", then oneDNN's and CUDA's notes, once per library),
    so what the first import writes to stderr is held back (see
    ``import_tensorflow``). TensorFlow resets absl's log level while it works,
    so records are filtered rather than levels set.
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
        tensorflow = import_tensorflow()

        # a block inside another (a conversion inside the layout rewrite) leaves the outer block's filter alone
        filtered = [logger for logger in loggers if _errors_only not in logger.filters]
        for logger in filtered:
            logger.addFilter(_errors_only)
        try:
            yield tensorflow
        finally:
            for logger in filtered:
                logger.removeFilter(_errors_only)


def import_tensorflow() -> ModuleType:
    """``import tensorflow``, holding back what its C++ libraries write to stderr while they load unless that is
    asked for (see ``holds_back_import_logs``); a failed import shows everything it wrote."""
    first = "tensorflow" not in sys.modules
    with stderr_held_back() if first and holds_back_import_logs() else nullcontext():
        import tensorflow
    return tensorflow


def holds_back_import_logs() -> bool:
    """Whether what TensorFlow's first import writes to stderr is held back: not with ``--verbose``, nor with
    TF_CPP_MIN_LOG_LEVEL=0 (TensorFlow's INFO logs; its default when unset, but surgeon sets 3 unless verbose)."""
    return not verbose() and tensorflow_log_level() >= 1


def tensorflow_log_level() -> int:
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it: 0 (everything) when unset or not a number."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip())
    except ValueError:
        return 0


@contextmanager
def stderr_held_back() -> Iterator[None]:
    """Send what this process writes to file descriptor 2 in this block (C++ libraries included) to a temporary
    file; drop it if the block succeeds, write it to stderr if the block fails."""
    for stream in (sys.stdout, sys.stderr):
        _flush(stream)
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to hold back
        saved = None
    with tempfile.TemporaryFile() as held:
        if saved is not None:
            os.dup2(held.fileno(), 2)
        succeeded = False
        try:
            yield
            succeeded = True
        finally:
            _flush(sys.stderr)
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
                if not succeeded:
                    held.seek(0)
                    _write_all(2, held.read())


def _flush(stream: object) -> None:
    try:
        stream.flush()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            written = os.write(fd, data)
        except OSError:
            return
        data = data[written:]


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR
