"""Which GPU TensorFlow may see, decided before TensorFlow is imported (DESIGN.md F7)."""

from __future__ import annotations

import logging
import os
import sys

from surgeon.errors import UsageError

log = logging.getLogger("surgeon")


def select(device: str | None) -> None:
    """Restrict CUDA_VISIBLE_DEVICES to ``device`` ('cpu' or a GPU index).

    Several visible GPUs make XLA fail during conversion, so this must run
    before TensorFlow is first imported.
    """
    if device is None:
        return
    if device != "cpu" and not device.isdigit():
        raise UsageError(f"--device {device!r}: expected 'cpu' or a GPU index such as 0")
    if "tensorflow" in sys.modules:
        log.warning("TensorFlow is already imported; --device %s may not take effect", device)
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if device == "cpu" else device
