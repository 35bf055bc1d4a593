"""Tally what surgeon answers to mutated models: the counts behind RELIABILITY.md.

Seeded mutations of a small CNN, half byte edits (surgeon.fuzzing.mutate), half
structural changes (surgeon.fuzzing.mutate_model), go through
`surgeon inspect` and `surgeon run --no-verify` in this process, with a time
bound per case; a sample of them also through the default SavedModel format.

    python bench/fuzz_outcomes.py --cases 1000 --convert 40

Results go to bench/results/fuzz_outcomes.md.
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

from surgeon.fuzzing import Hang, cli_in_process, mutate, mutate_model, small_cnn

RESULTS = Path(__file__).parent / "results" / "fuzz_outcomes.md"
SEED = small_cnn()


def outcome(code: int, stderr: str) -> str:
    """exit code and the kind of message, with paths and numbers folded away."""
    errors = [line for line in stderr.splitlines() if line.startswith("surgeon: error: ")]
    if code == 0:
        return "0: done"
    if "Traceback" in stderr:
        return f"{code}: TRACEBACK"
    message = errors[0].removeprefix("surgeon: error: ") if errors else "(no message)"
    message = re.sub(r"/\S*fuzzed\.onnx", "MODEL", message)
    message = re.sub(r"\(.*", "(...)", message)
    return f"{code}: {message[:90]}"


def tally(cases: int, convert: int, seconds: int) -> dict[str, Counter]:
    rng = random.Random(0)
    counts = {"inspect": Counter(), "run --no-verify --format onnx": Counter(), "run --no-verify (SavedModel)": Counter()}
    with tempfile.TemporaryDirectory() as folder:
        path, out = Path(folder) / "fuzzed.onnx", Path(folder) / "out"
        for index in range(cases):
            # half byte edits, half structural changes that still parse
            data = mutate(SEED.SerializeToString(), rng, edits=2) if index % 2 else \
                mutate_model(SEED, rng).SerializeToString()
            path.write_bytes(data)
            commands = {"inspect": ["inspect", path],
                        "run --no-verify --format onnx": ["run", path, "-o", out, "--no-verify", "--format", "onnx",
                                                          "--force"]}
            if index < convert:
                commands["run --no-verify (SavedModel)"] = ["run", path, "-o", out, "--no-verify", "--force"]
            for name, args in commands.items():
                try:
                    counts[name][outcome(*cli_in_process(*args, seconds=seconds))] += 1
                except Hang:
                    counts[name]["HANG"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--convert", type=int, default=40, help="how many also go through the SavedModel")
    parser.add_argument("--seconds", type=int, default=60, help="time bound per command")
    args = parser.parse_args()
    started = time.perf_counter()
    counts = tally(args.cases, args.convert, args.seconds)
    lines = ["# Fuzzing outcomes: mutated models (a small CNN)", "",
             f"`python bench/fuzz_outcomes.py --cases {args.cases} --convert {args.convert}` "
             f"({time.perf_counter() - started:.0f} s). Exit 0: accepted (the mutation left a valid model); "
             "1: one message naming the file; 2: usage; 70 or TRACEBACK or HANG would be bugs.", ""]
    for command, counter in counts.items():
        lines += [f"## surgeon {command} ({sum(counter.values())} cases)", "", "| outcome | cases |", "|---|---:|"]
        lines += [f"| {name} | {count} |" for name, count in counter.most_common()]
        lines.append("")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
