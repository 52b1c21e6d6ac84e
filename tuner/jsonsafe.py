"""Plain JSON values out of results: what the CLI's ``--json``, the dashboard's JSON API and the
verdicts stored with nightly studies share."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None``, numpy scalars as Python numbers, tuples as
    lists and dict keys as strings, recursively; anything else is returned as it is."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
