"""Which stack a benchmark runs on, and where its figures go, for the scripts beside this one.

Results are kept per TensorFlow major.minor, so that running on one stack leaves the other's figures alone:
the stack that constraints.txt pins (the default) writes NAME.md, any other NAME-tfX.Y.md
(constraints-tf2.15.txt's: NAME-tf2.15.md).
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def stack(results: Path) -> tuple[str, Path]:
    """The stack this runs on, in words, and the results file for the figures ``results`` names."""
    tensorflow = version("tensorflow")
    minor = ".".join(tensorflow.split(".")[:2])
    pinned = re.search(r"^tensorflow==(\d+\.\d+)", CONSTRAINTS.read_text(), re.M) if CONSTRAINTS.exists() else None
    suffix = "" if pinned and pinned.group(1) == minor else f"-tf{minor}"
    return (f"TensorFlow {tensorflow}, onnx {version('onnx')}, numpy {version('numpy')}",
            results.with_name(f"{results.stem}{suffix}{results.suffix}"))
