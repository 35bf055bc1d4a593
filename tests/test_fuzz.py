"""Mutated models, renamed inputs and outputs, and odd output folders through `surgeon inspect` and `surgeon run`.

Never a traceback (exit 70 is an internal error), never a hang past a bound, never a file the user had destroyed.
A bounded number of cases runs by default; `pytest -m slow` runs many more.
"""

import json
import os
import tempfile
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from surgeon.fuzzing import (cli_in_process, mutate, mutate_model, mutate_names, renamed, renamings, small_cnn,
                              two_inputs)

SEED = small_cnn()
SEED_MODEL = SEED.SerializeToString()
NAMES_SEED = two_inputs()
WRITTEN = ["model.onnx", "report.json"]  # with --format onnx: no SavedModel
FUZZ = settings(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def check(data: bytes, folder: Path) -> tuple[int, str]:
    """``data`` as a model file through ``surgeon inspect`` and ``surgeon run``: a clear answer each time, and a
    checked model (no SavedModel) from a run that succeeds; return the run's exit code and stderr."""
    path = folder / "fuzzed.onnx"
    path.write_bytes(data)
    out = folder / "out"
    for args in (["inspect", path], ["run", path, "-o", out, "--no-verify", "--format", "onnx", "--force"]):
        code, stderr = cli_in_process(*args)
        assert code in (0, 1, 2), f"{args[0]} exited {code}: {stderr}"
        assert "Traceback" not in stderr
        if code == 0 and args[0] == "run":
            onnx.checker.check_model(str(out / "model.onnx"))
            assert sorted(os.listdir(out)) == WRITTEN
        if code != 0 and args[0] == "run":
            assert not out.exists() or (out / "model.onnx").exists()
    return code, stderr


def test_the_seed_model_runs(tmp_path):
    assert cli_in_process("run", tmp_path / "x.onnx", "-o", tmp_path / "o")[0] == 1  # missing file: one message
    (tmp_path / "seed.onnx").write_bytes(SEED_MODEL)
    assert cli_in_process("run", tmp_path / "seed.onnx", "-o", tmp_path / "out", "--format", "onnx")[0] == 0


@settings(FUZZ, max_examples=60)
@given(rng=st.randoms(use_true_random=False))
def test_mutated_models_get_a_clear_answer(tmp_path, rng):
    check(mutate(SEED_MODEL, rng, edits=8), tmp_path)


@settings(FUZZ, max_examples=40)
@given(rng=st.randoms(use_true_random=False))
def test_structurally_mutated_models_get_a_clear_answer(tmp_path, rng):
    check(mutate_model(SEED, rng).SerializeToString(), tmp_path)


@pytest.mark.parametrize("name, new", renamings(NAMES_SEED))
def test_every_odd_or_colliding_name_gets_a_clear_answer(tmp_path, name, new):
    """Any name is legal ONNX, equal ignoring case included; two values of one name, or an empty one, are not."""
    code, stderr = check(renamed(NAMES_SEED, name, new).SerializeToString(), tmp_path)
    taken = {value.name for value in (*NAMES_SEED.graph.input, *NAMES_SEED.graph.output)}
    if new in taken or not new:
        assert code == 1 and "fuzzed.onnx: invalid ONNX model" in stderr
    else:
        assert code == 0, stderr


@settings(FUZZ, max_examples=30)
@given(rng=st.randoms(use_true_random=False))
def test_inputs_and_outputs_renamed_twice_get_a_clear_answer(tmp_path, rng):
    check(mutate_names(NAMES_SEED, rng).SerializeToString(), tmp_path)


@pytest.mark.slow
@settings(FUZZ, max_examples=2000, derandomize=False)
@given(rng=st.randoms(use_true_random=False))
def test_many_mutated_models_get_a_clear_answer(tmp_path, rng):
    check(mutate(SEED_MODEL, rng, edits=8), tmp_path)
    check(mutate_model(SEED, rng).SerializeToString(), tmp_path)
    check(mutate_names(NAMES_SEED, rng, renames=4).SerializeToString(), tmp_path)


# ---------------------------------------------------------------- the output folder argument


def user_files(root: Path) -> Path:
    """A user's folder below ``root``: models/ holds the source model.onnx and notes.txt, beside readme.txt;
    return models/, where surgeon runs."""
    models = root.resolve() / "models"
    models.mkdir()
    onnx.save(NAMES_SEED, str(models / "model.onnx"))
    (models / "notes.txt").write_text("the user's notes")
    (root / "readme.txt").write_text("the user's readme")
    return models


def snapshot(root: Path) -> dict[Path, bytes]:
    """Every file below ``root``, with its bytes."""
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


def check_output(models: Path, out: str, force: bool) -> int:
    """``surgeon run model.onnx -o OUT [--force]`` in ``models``: a clear answer; every file that was there is
    still there, byte for byte; a success adds OUT/model.onnx and OUT/report.json, a failure adds nothing."""
    root = models.parent
    before = snapshot(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(models)
        code, stderr = cli_in_process("run", "model.onnx", "-o", out, "--no-verify", "--format", "onnx",
                                      *(["--force"] if force else []))
    assert code in (0, 1, 2), f"-o {out!r} exited {code}: {stderr}"
    assert "Traceback" not in stderr
    after = snapshot(root)
    assert {path: after.get(path) for path in before} == before, f"-o {out!r} changed the user's files"
    added = sorted(str(path.relative_to(root)) for path in set(after) - set(before))
    if code == 0:
        written = (models / out).resolve()
        assert added == [str((written / name).relative_to(root)) for name in WRITTEN]
        onnx.checker.check_model(str(written / "model.onnx"))
        assert json.loads((written / "report.json").read_text())["source"] == "model.onnx"
    else:
        assert added == [], stderr
    assert not list(root.rglob("*.partial")), "a staging folder was left"
    return code


# OUT as typed in models/, and whether the run writes it
OUTPUTS = [
    pytest.param("notes.txt", False, id="an existing file"),
    pytest.param("model.onnx/", False, id="the source file"),
    pytest.param("notes.txt/out", False, id="inside a file"),
    pytest.param("my out", True, id="spaces"),
    pytest.param("出力 フォルダ", True, id="non-ASCII"),
    pytest.param(".", False, id="the source's folder"),
    pytest.param("../models", False, id="the source's folder, spelled otherwise"),
    pytest.param("..", False, id="the folder holding the source's folder"),
    pytest.param("a/b/c/out", True, id="nested parents that do not exist"),
    pytest.param("out/", True, id="a trailing slash"),
    pytest.param("", False, id="none"),
    pytest.param("out/../out", True, id="back out of a folder that does not exist"),
]


@pytest.mark.parametrize("force", [False, True], ids=["", "--force"])
@pytest.mark.parametrize("out, writes", OUTPUTS)
def test_an_odd_output_folder_gets_a_clear_answer_and_destroys_nothing(tmp_path, out, writes, force):
    assert (check_output(user_files(tmp_path), out, force) == 0) is writes


PARTS = [".", "..", "models", "model.onnx", "notes.txt", "readme.txt", "out", "my out", "出力"]


def fuzz_outputs(parts: list[str], trailing_slash: bool, force: bool) -> None:
    """OUT joined from ``parts``, kept inside a fresh user's folder."""
    with tempfile.TemporaryDirectory() as folder:
        models = user_files(Path(folder))
        out = "/".join(parts) + ("/" if trailing_slash else "")
        assume(Path(os.path.normpath(models / out)).is_relative_to(models.parent))
        check_output(models, out, force)


@settings(FUZZ, max_examples=40)
@given(parts=st.lists(st.sampled_from(PARTS), min_size=1, max_size=4), trailing_slash=st.booleans(),
       force=st.booleans())
def test_output_folders_joined_from_odd_parts_get_a_clear_answer(parts, trailing_slash, force):
    fuzz_outputs(parts, trailing_slash, force)


@pytest.mark.slow
@settings(FUZZ, max_examples=1000, derandomize=False)
@given(parts=st.lists(st.sampled_from(PARTS), min_size=1, max_size=6), trailing_slash=st.booleans(),
       force=st.booleans())
def test_many_output_folders_get_a_clear_answer(parts, trailing_slash, force):
    fuzz_outputs(parts, trailing_slash, force)


# ---------------------------------------------------------------- names through a SavedModel


@pytest.mark.tf
def test_a_keyword_and_names_equal_ignoring_case_convert_to_a_saved_model(cli, tmp_path):
    """Inputs ``class`` (a Python keyword) and ``Class``, outputs ``class_1`` and ``入力``: Class keeps its name,
    and class gets the next key no other input or output has, ignoring case."""
    model = NAMES_SEED
    for name, new in {"x": "class", "y": "Class", "total": "class_1", "product": "入力"}.items():
        model = renamed(model, name, new)
    onnx.save(model, str(tmp_path / "names.onnx"))
    done = cli("run", tmp_path / "names.onnx", "-o", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["signature_names"] == {"class": "class_2"}
    assert {row["stage"] for row in report["parity"]} == {"onnx", "saved_model"}
