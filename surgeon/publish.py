"""Publishing a new model version into a live model store, all entries or none.

TF Serving (a model's base path) and Triton (a model folder in a repository)
both load ``<model folder>/<integer version>/`` and ignore folders whose names
are not integers. So a version is published by copying it into a hidden
folder inside the model folder, then renaming it into place: a server polling
the folder sees the whole version or none of it. With several entries (Triton's
SavedModel and ONNX entries), every one is staged before any is renamed, and if
any step fails, or the run is interrupted, what was staged, renamed, replaced
or created is taken back. Other versions are never touched; an existing
version number is never overwritten.
"""

from __future__ import annotations

import logging
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgeon.errors import SurgeonError

log = logging.getLogger("surgeon")

STAGING_PREFIX = ".surgeon-"  # hidden and not an integer: servers skip it


def default_name(source: str) -> str:
    """A model name from SOURCE: ``m.onnx`` -> ``m``, ``net.py:build`` -> ``build``,
    ``example:ct-position`` -> ``ct_position``."""
    stem = Path(source.rsplit(":", 1)[-1]).stem
    return re.sub(r"\W+", "_", stem).strip("_") or "model"


def next_version(folder: Path) -> int:
    """One more than the highest integer version folder in ``folder`` (1 when it has none, or does not exist)."""
    if not folder.is_dir():
        return 1
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


@dataclass
class Entry:
    """One model version to publish.

    ``version_source``: the folder copied as the new version; ``target``: the model folder (created when
    missing; its parent must exist); ``version``: the version number, 0 for the next free one; ``files``:
    files copied beside the versions (Triton's ``config.pbtxt``), replacing those of the same name.
    """

    version_source: Path
    target: Path
    version: int = 0
    files: Sequence[Path] = ()
    staging: Path | None = field(default=None, repr=False)


def staging_of(entry: Entry) -> Path:
    if entry.staging is None:
        raise SurgeonError(f"{entry.target}: published before it was staged")
    return entry.staging


def publish_versions(entries: Sequence[Entry], label: str, place: Path, noun: str = "the repository") -> list[Path]:
    """Publish every entry, or none; return the new version folders.

    ``label`` names the option in messages (``triton.repository``), ``place`` the folder published into
    and ``noun`` what it is called ("the repository was left as it was").
    """
    for entry in entries:
        if entry.target.exists() and not entry.target.is_dir():
            raise SurgeonError(f"{label}: {entry.target} is not a folder; nothing was published")
        entry.version = entry.version or next_version(entry.target)
        if os.path.lexists(entry.target / str(entry.version)):
            raise SurgeonError(f"{label}: {entry.target / str(entry.version)} exists; versions are never overwritten")
    undo: list[tuple[str, Callable[[], Any]]] = []  # what to take back, in the order it was done
    try:
        for entry in entries:  # stage everything before anything is visible to the server
            if not entry.target.exists():
                entry.target.mkdir()
                undo.append((f"remove {entry.target}", functools.partial(shutil.rmtree, entry.target)))
            staging = entry.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=entry.target))
            shutil.copytree(entry.version_source, staging / "version")
            for file in entry.files:
                shutil.copy2(file, staging / file.name)
        for entry in entries:  # then rename each into place
            for file in entry.files:
                undo.append(_replace_file(entry, file.name))
            published = entry.target / str(entry.version)
            (staging_of(entry) / "version").rename(published)
            undo.append((f"remove {published}", functools.partial(shutil.rmtree, published)))
    except BaseException as error:
        left = _take_back(undo, label)
        if isinstance(error, OSError):
            state = f"could not take back: {'; '.join(left)}" if left else f"{noun} was left as it was"
            raise SurgeonError(f"{label} {place}: publishing failed: {_why(error)}; {state}") from error
        raise
    finally:
        for entry in entries:
            if entry.staging is not None:
                shutil.rmtree(entry.staging, ignore_errors=True)
    return [entry.target / str(entry.version) for entry in entries]


def _why(error: OSError) -> str:
    """What went wrong, and on which file: the first of the errors ``shutil.copytree`` collects."""
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list) and error.args[0]:
        failures = error.args[0]
        source, _, why = failures[0]
        why = re.sub(r"^\[Errno \d+\] ", "", str(why)).split(":", 1)[0]
        more = f", and {len(failures) - 1} more" if len(failures) > 1 else ""
        return f"{why} (copying {source}{more})"
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror or error}{where}"


def _replace_file(entry: Entry, name: str) -> tuple[str, Callable[[], Any]]:
    """Put the staged file ``name`` in place; return how to put the previous one back."""
    staging = staging_of(entry)
    current = entry.target / name
    previous = staging / f"{name}.previous"
    had_one = current.is_file()
    if had_one:
        shutil.copy2(current, previous)
    os.replace(staging / name, current)
    if had_one:
        return f"restore {current}", lambda: os.replace(previous, current)
    return f"remove {current}", lambda: current.unlink(missing_ok=True)


def _take_back(undo: list[tuple[str, Callable[[], Any]]], label: str) -> list[str]:
    """Undo the steps, last first; return those that failed."""
    failed = []
    for what, action in reversed(undo):
        try:
            action()
        except OSError as error:
            failed.append(f"{what} ({error.strerror or error})")
            log.warning("%s: could not %s: %s", label, what, error.strerror or error)
    return failed
