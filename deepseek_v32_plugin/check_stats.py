"""Measured statistics of the test suites' numeric checks, for the seed sweep (scripts/sweep.py) and the mutation
check (scripts/mutation_check.py): a check calls record_stat with what it measured and its limits before it
asserts, so those scripts can report how close each check comes to its bound (or, for a planted bug, by how
many times it exceeds it)."""
from __future__ import annotations

import json
import os


def record_stat(check: str, limits: dict, **values) -> None:
    """Print one `STAT {json}` line (shown with a failing test's output) and append it to $DSV32_STATS_FILE if
    set. limits: {stat: bound} for the values that are bounded from above (value / bound <= 1 passes)."""
    row = {"check": check, "seed": os.environ.get("DSV32_TEST_SEED", "0"), "values": values, "limits": limits}
    print("STAT", json.dumps(row))
    path = os.environ.get("DSV32_STATS_FILE")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
