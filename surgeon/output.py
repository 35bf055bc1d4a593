"""All-or-nothing output directories.

Everything is written into a hidden staging folder beside the target and
renamed into place at the end, so an error, Ctrl-C or a killed process never
leaves a half-written OUT: it is either absent, as it was, or complete.

``--force`` replaces only a previous surgeon output (a folder holding
surgeon's report.json), and never one that holds a file the run reads, the
current folder, the home folder or a filesystem root.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from surgeon.errors import SurgeonError, UsageError


REPORT = "report.json"


def check_target(target: Path, force: bool, keep: Sequence[Path] = ()) -> None:
    """Refuse a target that exists as a file, or as a non-empty folder unless ``force`` may replace it.

    ``keep``: the files the run reads (its source, checkpoint, plugin files, pipeline file), which must survive.
    """
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UsageError(f"output {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        if not force:
            raise UsageError(f"output folder {target} is not empty",
                             hint="pass --force to replace it, if it holds a previous surgeon output")
        check_replaceable(target, keep)


def check_replaceable(target: Path, keep: Sequence[Path]) -> None:
    """``--force`` may replace ``target``: a previous surgeon output holding nothing that must survive."""
    folder = target.resolve()
    if folder == Path(folder.anchor):
        raise UsageError(f"--force will not replace {target}: it is a filesystem root")
    protected = [("the current folder", Path.cwd()), ("the home folder", Path.home())]
    protected += [(f"{path}, which this run reads", path) for path in keep]
    for what, path in protected:
        if path.resolve().is_relative_to(folder):
            raise UsageError(f"--force will not replace {target}: it holds {what}")
    if not is_surgeon_output(folder):
        raise UsageError(f"--force will not replace {target}: it is not a previous surgeon output "
                         f"(those hold surgeon's {REPORT})", hint="choose another -o, or empty the folder yourself")


def is_surgeon_output(folder: Path) -> bool:
    try:
        report = json.loads((folder / REPORT).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "surgeon" in report


@contextmanager
def staged(target: Path, force: bool, keep: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``target`` (see ``check_target`` for ``keep``).

    ``target`` is made absolute, ``..`` resolved, first: ``out/../out`` would otherwise stop naming the folder
    once ``out/`` is created as its parent and moved aside as a previous output."""
    target = Path(os.path.abspath(target))
    check_target(target, force, keep)
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
        replace(staging, target, force, keep)
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


def replace(staging: Path, target: Path, force: bool, keep: Sequence[Path] = ()) -> None:
    """Rename ``staging`` to ``target``, moving a previous ``target`` aside first."""
    check_target(target, force, keep)
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
    shutil.copytree(source, target, copy_function=link_or_copy)


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """``source`` at ``target`` as a hard link, or a copy where links are refused."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
