"""Generate ``machines.csv``: a small, made-up tabular classification problem for
``studies/csv-example.toml`` (the shape of a user's own CSV file).

Each row is one machine inspection: six numeric sensor readings and the inspector's verdict
``state`` (``normal``, ``worn`` or ``faulty``). The classes overlap, so a linear classifier gets
most but not all rows right; ``humidity_pct`` is pure noise. Reproducible: running this script
again rewrites the same file (NumPy ``default_rng(2024)``).

    python studies/data/make_machines.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

ROWS_PER_STATE = {"normal": 180, "worn": 120, "faulty": 60}
#            temperature_c, vibration_mm_s, pressure_bar, rpm, current_a, humidity_pct
MEANS = {
    "normal": (61.0, 2.0, 6.0, 1480.0, 11.0, 45.0),
    "worn":   (66.0, 3.4, 5.6, 1465.0, 12.2, 45.0),
    "faulty": (72.0, 5.2, 5.0, 1440.0, 13.8, 45.0),
}
SPREAD = (4.0, 0.9, 0.45, 18.0, 1.0, 12.0)
COLUMNS = ("temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "current_a", "humidity_pct")


def make_rows(seed: int = 2024) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    rows = []
    for state, count in ROWS_PER_STATE.items():
        values = rng.normal(MEANS[state], SPREAD, size=(count, len(COLUMNS)))
        for row in values:
            rows.append({**{c: round(float(v), 3) for c, v in zip(COLUMNS, row, strict=True)},
                         "state": state})
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def main() -> None:
    path = Path(__file__).with_name("machines.csv")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "state"])
        writer.writeheader()
        writer.writerows(make_rows())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
