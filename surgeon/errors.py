"""The one exception type users see: a message that names what is at fault."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class SurgeonError(Exception):
    """Bad input, a failing plugin or a failed check.

    The command line prints the message alone (no traceback) and exits with
    ``exit_code``. The message names the file, plugin or option at fault.
    ``hazard`` (a ``surgeon.plugin.Hazard``), when the failure is one a rewrite
    pass may fix, and ``nodes``, the names of the ONNX nodes at fault: the host
    then names the passes that fix it there.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, hazard: str | None = None,
                 nodes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.hint = hint
        self.hazard = hazard
        self.nodes = tuple(nodes)

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message}\n  hint: {self.hint}" if self.hint else message


class UsageError(SurgeonError):
    """The command line or a pipeline file asks for something impossible."""

    exit_code = 2


class PluginError(SurgeonError):
    """A plugin failed: it raised, or it broke the graph."""

    def __init__(self, plugin: str, message: str, *, hint: str | None = None, hazard: str | None = None,
                 nodes: Sequence[str] = ()) -> None:
        super().__init__(f"plugin {plugin!r}: {message}", hint=hint, hazard=hazard, nodes=nodes)
        self.plugin = plugin


def describe(error: BaseException) -> str:
    """One line for an unexpected exception: its type and message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


@contextmanager
def blamed_on(plugin: str, action: str) -> Iterator[None]:
    """Turn an unexpected exception inside a plugin into a ``PluginError`` naming it.

    A ``SurgeonError`` is the plugin's own message for the user and passes unchanged.
    """
    try:
        yield
    except SurgeonError:
        raise
    except OSError as error:  # a full disk, a permission: the file says more than a traceback
        where = f" ({error.filename})" if error.filename else ""
        raise PluginError(plugin, f"{action} failed: {error.strerror or describe(error)}{where}") from error
    except Exception as error:
        raise PluginError(plugin, f"{action} failed: {describe(error)}", hint="--debug shows the traceback") from error
