"""Plugins are found through the entry-point group `surgeon` and through files."""

import json
import os
import textwrap
from pathlib import Path

import pytest

from surgeon import UsageError
from surgeon.discovery import discover

IDENTITY_PASS = """
    from surgeon import RewritePass, hookimpl

    @hookimpl
    def surgeon_passes():
        return [RewritePass(name="{name}", doc="Does nothing.", run=lambda graph, options: None)]
"""


def install_distribution(site: Path, module: str, source: str, entry_name: str) -> None:
    """A real installed distribution: a module plus a dist-info folder with entry_points.txt."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{module}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[surgeon]\n{entry_name} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


def test_builtins_are_registered_through_the_entry_point_group():
    registry = discover()
    assert registry.origin["rename_outputs"].startswith("entry point 'rename_outputs'")
    assert "onnx_file" in registry.sources and "onnx" in registry.writers


def test_a_third_party_distribution_is_found_through_its_entry_point(site):
    install_distribution(site, "thirdparty_fix", IDENTITY_PASS.format(name="thirdparty_fix"), "thirdparty")
    registry = discover()
    assert "thirdparty_fix" in registry.passes
    assert registry.origin["thirdparty_fix"] == "entry point 'thirdparty' (thirdparty_fix)"


def test_a_broken_distribution_does_not_hide_the_others(site):
    install_distribution(site, "broken_fix", "import not_a_module_anywhere\n", "broken")
    install_distribution(site, "healthy_fix", IDENTITY_PASS.format(name="healthy_fix"), "healthy")
    registry = discover()
    assert "healthy_fix" in registry.passes and "rename_outputs" in registry.passes
    (broken,) = [b for b in registry.broken if "broken_fix" in b.origin]
    assert "ModuleNotFoundError" in broken.reason
    with pytest.raises(UsageError, match="unknown rewrite plugin 'broken_fix'") as error:
        registry.get(type(registry.passes["healthy_fix"]), "broken_fix")
    assert "failed to load" in str(error.value)


def test_a_hook_that_raises_or_returns_garbage_is_reported_by_module(site):
    install_distribution(site, "raising_fix", """
        from surgeon import hookimpl

        @hookimpl
        def surgeon_passes():
            raise RuntimeError("boom")
    """, "raising")
    install_distribution(site, "garbage_fix", """
        from surgeon import hookimpl

        @hookimpl
        def surgeon_writers():
            return ["not a writer"]
    """, "garbage")
    reasons = {b.origin.split()[2]: b.reason for b in discover().broken}
    assert reasons["'raising'"] == "surgeon_passes: RuntimeError: boom"
    assert "not a Writer" in reasons["'garbage'"]


def test_duplicate_names_are_refused_and_name_both(site):
    install_distribution(site, "dup_fix", IDENTITY_PASS.format(name="rename_outputs"), "dup")
    registry = discover()
    assert registry.origin["rename_outputs"].startswith("entry point 'rename_outputs'")
    (clash,) = [b for b in registry.broken if "dup_fix" in b.origin]
    assert "already provided by entry point 'rename_outputs'" in clash.reason


def test_plugin_file(write_plugin):
    path = write_plugin("my_fix", IDENTITY_PASS.format(name="my_fix"))
    registry = discover([path])
    assert registry.origin["my_fix"] == f"plugin file {path}"


@pytest.mark.parametrize(("source", "message"), [
    ("import nope_not_here\n", "failed to import: ModuleNotFoundError"),
    ("def broken(:\n", "failed to import: SyntaxError"),
    ("from surgeon import hookimpl\n@hookimpl\ndef surgeon_passes(wrong_arg):\n    return []\n", "surgeon_passes"),
])
def test_a_bad_plugin_file_is_named(write_plugin, source, message):
    path = write_plugin("bad", source)
    with pytest.raises(UsageError, match=message) as error:
        discover([path])
    assert str(path) in str(error.value)


def test_missing_plugin_file():
    with pytest.raises(UsageError, match="plugin file nowhere.py: no such file"):
        discover(["nowhere.py"])


def test_surgeon_plugins_lists_third_party_and_broken_in_a_fresh_process(tmp_path, cli):
    site = tmp_path / "site"
    site.mkdir()
    install_distribution(site, "healthy_fix", IDENTITY_PASS.format(name="healthy_fix"), "healthy")
    install_distribution(site, "broken_fix", "raise ImportError('cannot load me')\n", "broken")
    env = {**os.environ, "PYTHONPATH": str(site)}
    listing = cli("plugins", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    plugins = json.loads(listing.stdout)
    by_name = {p["name"]: p for p in plugins}
    assert by_name["healthy_fix"]["kind"] == "pass"
    assert by_name["rename_outputs"]["options"][0] == {
        "name": "names", "type": "dict[str, str]", "default": {}, "doc": "explicit renames OLD:NEW"}
    assert any(p["kind"] == "broken" and "cannot load me" in p["doc"] for p in plugins)
    text = cli("plugins", env=env)
    assert "healthy_fix" in text.stdout and "(broken)" in text.stdout and "Traceback" not in text.stderr
