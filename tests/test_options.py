from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from surgeon import UsageError
from surgeon.options import build, merge, parse_set


@dataclass(frozen=True)
class Options:
    count: int = 1
    scale: float = 1.0
    enabled: bool = True
    label: str = "x"
    axes: list[int] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    mode: Literal["fast", "exact"] = "exact"
    limit: Optional[int] = None


def test_strings_from_the_command_line_become_typed_values():
    options = build("demo", Options, {
        "count": "3", "scale": "0.5", "enabled": "false", "axes": "0,2", "mode": "fast", "limit": "none",
        "names": "onnx::Conv_0:images,/fc/Gemm_output_0:result",
    })
    assert options == Options(count=3, scale=0.5, enabled=False, axes=[0, 2], mode="fast", limit=None,
                              names={"onnx::Conv_0": "images", "/fc/Gemm_output_0": "result"})


def test_json_and_toml_values_are_accepted():
    options = build("demo", Options, {"names": '{"a": "b"}', "axes": [1, 2], "enabled": True, "limit": 4})
    assert options.names == {"a": "b"} and options.axes == [1, 2] and options.limit == 4


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("count", "three", "demo.count"),
    ("count", "1.5", "expected int"),
    ("enabled", "maybe", "not a boolean"),
    ("mode", "slow", "must be one of"),
    ("names", "no-colon", "is not KEY:VALUE"),
    ("enabled", 3, "not a boolean"),
])
def test_wrong_values_name_the_plugin_key_and_type(key, value, expected):
    with pytest.raises(UsageError, match=expected) as error:
        build("demo", Options, {key: value})
    assert f"demo.{key}" in str(error.value)


def test_unknown_option_lists_the_known_ones():
    with pytest.raises(UsageError, match=r"plugin 'demo' has no option 'cuont' \(its options: count, scale"):
        build("demo", Options, {"cuont": "1"})


def test_set_assignments_and_layers():
    parsed = parse_set(["a.x=1", "a.y=k:v", "b.z=="])
    assert parsed == {"a": {"x": "1", "y": "k:v"}, "b": {"z": "="}}
    assert merge({"a": {"x": 0, "w": 2}}, parsed) == {"a": {"x": "1", "w": 2, "y": "k:v"}, "b": {"z": "="}}
    with pytest.raises(UsageError, match="expected PLUGIN.KEY=VALUE"):
        parse_set(["novalue"])
