"""All-or-nothing output directories.

Everything is written into a hidden staging folder beside the target and
renamed into place at the end, so an error, Ctrl-C or a killed process never
leaves a half-written OUT: it is either absent, as it was, or complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from surgeon.errors import SurgeonError, UsageError


def check_target(target: Path, force: bool) -> None:
    """Refuse a target that exists as a file, or as a non-empty folder without ``force``."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UsageError(f"output {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise UsageError(f"output folder {target} is not empty", hint="pass --force to replace it")


@contextmanager
def staged(target: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``target``."""
    check_target(target, force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_abandoned(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".partial",
                                        dir=target.parent))
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; servers often run as another user
    except OSError as error:
        raise SurgeonError(f"cannot write output beside {target}: {error.strerror or error}") from None
    try:
        yield staging
        replace(staging, target, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def sweep_abandoned(target: Path) -> None:
    """Remove staging folders of ``target`` left by killed runs (their process is gone)."""
    for folder in target.parent.glob(f".{target.name}.*.partial"):
        pid = folder.name[len(target.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace(staging: Path, target: Path, force: bool) -> None:
    """Rename ``staging`` to ``target``, moving a previous ``target`` aside first."""
    check_target(target, force)
    if not target.exists():
        staging.rename(target)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".previous", dir=target.parent))
    previous.rmdir()
    target.rename(previous)
    try:
        staging.rename(target)
    except OSError:
        previous.rename(target)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def link_tree(source: Path, target: Path) -> None:
    """Copy a folder as hard links (instant, no extra disk); copy bytes where links are refused."""
    shutil.copytree(source, target, copy_function=_link_or_copy)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
