"""PyTorch checkpoints loaded without running anyone's code.

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors
and plain containers come back, and a file whose unpickling would call
anything else is refused before it runs. Accepted layouts:

- a bare state_dict (``torch.save(model.state_dict(), path)``);
- a training checkpoint holding one under ``state_dict``, ``model`` or
  ``model_state_dict`` (e.g. ``{'epoch', 'arch', 'state_dict', 'optimizer'}``);
- either of them with the ``module.`` prefix that ``nn.DataParallel`` and
  ``DistributedDataParallel`` add to every key.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon import SurgeonError
from surgeon.errors import describe

if TYPE_CHECKING:
    import torch

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
PARALLEL_PREFIX = "module."
SHOWN_KEYS = 10
REMEDY = "save the weights alone: torch.save(model.state_dict(), 'weights.pth')"


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load the state_dict stored in the checkpoint at ``path`` into ``model``, or raise SurgeonError."""
    path = Path(path)
    state = state_dict_from(read_checkpoint(path), path)
    wanted = model.state_dict()
    if all(key.startswith(PARALLEL_PREFIX) for key in state) and not all(
        key.startswith(PARALLEL_PREFIX) for key in wanted
    ):
        state = {key[len(PARALLEL_PREFIX):]: value for key, value in state.items()}
    check_keys(state, wanted, path)
    model.load_state_dict(state, strict=False)


def read_checkpoint(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``, with refusals that say why and what to do instead."""
    import torch

    if not path.is_file():
        raise SurgeonError(f"checkpoint {path}: no such file")
    if is_torchscript(path):
        raise SurgeonError(
            f"checkpoint {path} is a TorchScript archive: loading it would run the code it carries, "
            "and surgeon builds the model from your factory instead",
            hint=REMEDY,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols; the errors below say more
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        imports = refused_globals(error) or pickle_imports(path)
        if not imports:
            raise SurgeonError(f"checkpoint {path}: not a PyTorch checkpoint ({describe(error)})") from None
        raise SurgeonError(
            f"checkpoint {path} is refused: unpickling it would run code (it calls {', '.join(imports)}), "
            "and surgeon only loads tensors and plain containers (weights_only=True); "
            "it probably holds a whole pickled model",
            hint=REMEDY,
        ) from None
    except Exception as error:
        raise SurgeonError(f"checkpoint {path}: not a PyTorch checkpoint ({describe(error)})") from None


def is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def refused_globals(error: Exception) -> list[str]:
    """The callable that torch's safe unpickler refused, as its message names it."""
    return re.findall(r"Unsupported global: GLOBAL (\S+)", str(error))[:1]


def pickle_imports(path: Path) -> list[str]:
    """What the pickles in ``path`` would import beyond what torch allows, read by disassembly.

    Nothing is unpickled. Importing is the only way a pickle can run code;
    garbage yields nothing.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            data = b"".join(archive.read(name) for name in archive.namelist() if name.endswith("data.pkl"))
    else:
        data = path.read_bytes()
    stream = io.BytesIO(data)
    imports: list[str] = []
    strings: list[str] = []
    try:
        while stream.tell() < len(data):  # a legacy torch.save file is several pickles in a row
            for opcode, argument, _ in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST") and isinstance(argument, str):  # pickletools: "module name"
                    imports.append(argument.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    imports.append(".".join(strings[-2:]))
                elif isinstance(argument, str):
                    strings.append(argument)
    except Exception:
        pass  # the stream ends in something that is not pickle: keep what came before
    allowed = safely_loadable()
    return [name for name in dict.fromkeys(imports) if name not in allowed]


def safely_loadable() -> set[str]:
    """The globals torch's weights_only unpickler allows (tensor rebuilders, OrderedDict, ...)."""
    from torch import _weights_only_unpickler

    return set(getattr(_weights_only_unpickler, "_get_allowed_globals", dict)())


def state_dict_from(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint of any accepted layout."""
    if is_state_dict(checkpoint):
        return dict(checkpoint)
    if isinstance(checkpoint, Mapping):
        for key in STATE_DICT_KEYS:
            if is_state_dict(checkpoint.get(key)):
                return dict(checkpoint[key])
        found = ", ".join(repr(key) for key in list(checkpoint)[:SHOWN_KEYS])
        raise SurgeonError(
            f"checkpoint {path} holds no state_dict: its top-level keys are {found}; expected a state_dict, "
            f"or a dict holding one under {', '.join(repr(key) for key in STATE_DICT_KEYS)}",
            hint=REMEDY,
        )
    raise SurgeonError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a state_dict", hint=REMEDY)


def is_state_dict(value: Any) -> bool:
    import torch

    return (isinstance(value, Mapping) and bool(value)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def check_keys(state: Mapping[str, torch.Tensor], wanted: Mapping[str, torch.Tensor], path: Path) -> None:
    """One error listing every missing, unexpected and wrongly shaped entry."""
    problems = []
    # BatchNorm's batch counter is unused in eval mode, and checkpoints from torch < 0.4.1 lack it
    missing = [key for key in wanted if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in wanted]
    reshaped = [f"{key} {tuple(state[key].shape)} (the model has {tuple(wanted[key].shape)})"
                for key in wanted if key in state and state[key].shape != wanted[key].shape]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", reshaped)):
        if keys:
            more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:SHOWN_KEYS])}{more}")
    if problems:
        raise SurgeonError(
            f"checkpoint {path} does not fit the model: " + "; ".join(problems),
            hint="check that the factory and its kwargs (--set torch.kwargs=...) build the architecture "
            "the checkpoint was trained with",
        )
