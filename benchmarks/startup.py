"""How long a `tuner` command takes before it does its work: the wall time of short commands,
as a ratio to the Python interpreter starting and importing typer and rich (the CLI framework
every command needs), measured in the same run.

    .venv/bin/python benchmarks/startup.py              # 5 runs of each, median
    .venv/bin/python benchmarks/startup.py --repeats 9

Commands timed: `tuner --help`, `tuner run --help`, `tuner check studies/digits.toml --no-data`
(parse and validate a study file, sample configurations), `tuner check studies/digits.toml`
(also load and split the data) and `tuner ls` on an empty SQLite file (open the storage).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def wall(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tuner = [sys.executable, "-m", "tuner"]
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'empty.db'}"
        subprocess.run([*tuner, "init", "--storage", db], cwd=REPO, check=True, capture_output=True)
        cases = {
            "reference: python -c 'import typer, rich'": [sys.executable, "-c", "import typer, rich.console"],
            "tuner --help": [*tuner, "--help"],
            "tuner run --help": [*tuner, "run", "--help"],
            "tuner check --no-data": [*tuner, "check", "studies/digits.toml", "--no-data"],
            "tuner check (loads digits)": [*tuner, "check", "studies/digits.toml"],
            "tuner ls (empty SQLite)": [*tuner, "ls", "--storage", db],
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):  # interleaved, so load changes hit every case alike
            for name, argv in cases.items():
                times[name].append(wall(argv))
    reference = statistics.median(next(iter(times.values())))
    print(f"{'command':<44} {'median s':>9} {'min s':>7} {'x reference':>12}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<44} {median:>9.3f} {min(values):>7.3f} {median / reference:>12.1f}")


if __name__ == "__main__":
    main()
