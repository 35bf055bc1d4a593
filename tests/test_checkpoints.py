"""Checkpoints: every accepted layout loads; anything that would run code is refused before it runs."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from surgeon import SurgeonError
from surgeon_plugins.sources.torch.checkpoints import load_weights


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 3)


def trained() -> Net:
    torch.manual_seed(1)
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
    return net


def assert_same_weights(model: nn.Module, expected: nn.Module) -> None:
    state, want = model.state_dict(), expected.state_dict()
    assert state.keys() == want.keys()
    for key in want:
        assert torch.equal(state[key], want[key]), key


def fresh() -> Net:
    torch.manual_seed(2)
    return Net()


class WritesMarker:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("layout", ["bare", "training", "model", "model_state_dict", "data_parallel", "legacy"])
def test_accepted_layouts_load_the_weights(tmp_path: Path, layout: str) -> None:
    source = trained()
    state = source.state_dict()
    path = tmp_path / "ckpt.pth"
    if layout == "bare":
        torch.save(state, path)
    elif layout == "training":
        torch.save({"epoch": 9, "arch": "net", "state_dict": state,
                    "optimizer": torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9).state_dict()}, path)
    elif layout in ("model", "model_state_dict"):
        torch.save({layout: state, "epoch": 3}, path)
    elif layout == "data_parallel":
        wrapped = nn.DataParallel(source).state_dict()
        assert all(key.startswith("module.") for key in wrapped)
        torch.save({"epoch": 9, "arch": "net", "state_dict": wrapped}, path)
    else:
        torch.save(state, path, _use_new_zipfile_serialization=False)
    model = fresh()
    load_weights(model, path)
    assert_same_weights(model, source)


def test_checkpoint_without_batch_counters_loads(tmp_path: Path) -> None:
    source = trained()
    state = {key: value for key, value in source.state_dict().items() if not key.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    model = fresh()
    load_weights(model, tmp_path / "old.pth")
    assert torch.equal(model.bn.running_mean, source.bn.running_mean)


def test_payload_is_live_when_unpickled_unsafely(tmp_path: Path) -> None:
    """The payload the refusal tests use really runs code under plain pickle."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(WritesMarker(marker)))
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("container", ["zip", "legacy", "raw_pickle"])
def test_code_running_checkpoint_is_refused_and_never_runs(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "ran"
    payload = {"state_dict": trained().state_dict(), "extra": WritesMarker(marker)}
    path = tmp_path / "evil.pth"
    if container == "raw_pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=container == "zip")
    with pytest.raises(SurgeonError) as caught:
        load_weights(fresh(), path)
    message = str(caught.value)
    assert re.search(r"refused: unpickling it would run code \(it calls (\S+, )*(builtins\.)?exec\)", message)
    assert str(path) in message and "torch.save(model.state_dict()" in message
    assert not marker.exists()


def test_whole_pickled_model_is_refused_naming_its_class(tmp_path: Path) -> None:
    torch.save(nn.Linear(2, 3), tmp_path / "whole.pth")
    with pytest.raises(SurgeonError, match=r"would run code \(it calls torch\.nn\.modules\.linear\.Linear\)") as caught:
        load_weights(nn.Linear(2, 3), tmp_path / "whole.pth")
    assert "whole pickled model" in str(caught.value)


def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(nn.Linear(2, 3)), str(tmp_path / "scripted.pt"))
    with pytest.raises(SurgeonError, match="TorchScript archive: loading it would run the code it carries") as caught:
        load_weights(nn.Linear(2, 3), tmp_path / "scripted.pt")
    assert "torch.save(model.state_dict()" in str(caught.value)


def test_missing_unexpected_and_reshaped_keys_are_listed(tmp_path: Path) -> None:
    state = trained().state_dict()
    del state["fc.bias"]
    state["head.weight"] = torch.zeros(3)
    state["conv.weight"] = torch.zeros(4, 1, 3, 3)
    torch.save(state, tmp_path / "partial.pth")
    model = fresh()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(SurgeonError) as caught:
        load_weights(model, tmp_path / "partial.pth")
    message = str(caught.value)
    assert f"checkpoint {tmp_path / 'partial.pth'} does not fit the model" in message
    assert "1 missing: fc.bias" in message
    assert "1 unexpected: head.weight" in message
    assert "1 with the wrong shape: conv.weight (4, 1, 3, 3) (the model has (2, 1, 3, 3))" in message
    assert "torch.kwargs" in message
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


def test_many_missing_keys_are_counted(tmp_path: Path) -> None:
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "other.pth")
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(8)])
    with pytest.raises(SurgeonError, match="16 missing: 0.weight, 0.bias, .* and 6 more; 1 unexpected: unrelated"):
        load_weights(model, tmp_path / "other.pth")


def test_dict_without_state_dict_lists_its_keys(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "arch": "net", "best_prec1": torch.tensor(0.9), "notes": "x"}, tmp_path / "meta.pth")
    with pytest.raises(SurgeonError, match="holds no state_dict: its top-level keys are 'epoch', 'arch'"):
        load_weights(fresh(), tmp_path / "meta.pth")


@pytest.mark.parametrize("content, expected", [
    (b"", "not a PyTorch checkpoint"),
    (b"\x00\x01garbage" * 10, "not a PyTorch checkpoint"),
    (None, "no such file"),
])
def test_unreadable_files(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "bad.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SurgeonError, match=expected):
        load_weights(fresh(), path)


def test_a_tensor_alone_is_not_a_state_dict(tmp_path: Path) -> None:
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(SurgeonError, match="holds a Tensor, not a state_dict"):
        load_weights(fresh(), tmp_path / "tensor.pth")
