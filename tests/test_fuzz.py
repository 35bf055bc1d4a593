"""Mutated bytes of valid models through `surgeon inspect` and `surgeon run --no-verify`.

Never a traceback (exit 70 is an internal error), never a hang past a bound. A bounded number of
cases runs by default; `pytest -m slow` runs many more.
"""

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgeon.fuzzing import cli_in_process, mutate, mutate_model, small_cnn

SEED = small_cnn()
SEED_MODEL = SEED.SerializeToString()


def check(data, folder):
    path = folder / "fuzzed.onnx"
    path.write_bytes(data)
    out = folder / "out"
    for args in (["inspect", path], ["run", path, "-o", out, "--no-verify", "--format", "onnx", "--force"]):
        code, stderr = cli_in_process(*args)
        assert code in (0, 1, 2), f"{args[0]} exited {code}: {stderr}"
        assert "Traceback" not in stderr
        if code == 0 and args[0] == "run":
            onnx.checker.check_model(str(out / "model.onnx"))
        if code != 0 and args[0] == "run":
            assert not out.exists() or (out / "model.onnx").exists()


def test_the_seed_model_runs(tmp_path):
    assert cli_in_process("run", tmp_path / "x.onnx", "-o", tmp_path / "o")[0] == 1  # missing file: one message
    (tmp_path / "seed.onnx").write_bytes(SEED_MODEL)
    assert cli_in_process("run", tmp_path / "seed.onnx", "-o", tmp_path / "out", "--format", "onnx")[0] == 0


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_mutated_models_get_a_clear_answer(tmp_path, rng):
    check(mutate(SEED_MODEL, rng, edits=8), tmp_path)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_structurally_mutated_models_get_a_clear_answer(tmp_path, rng):
    check(mutate_model(SEED, rng).SerializeToString(), tmp_path)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_many_mutated_models_get_a_clear_answer(tmp_path, rng):
    check(mutate(SEED_MODEL, rng, edits=8), tmp_path)
    check(mutate_model(SEED, rng).SerializeToString(), tmp_path)
