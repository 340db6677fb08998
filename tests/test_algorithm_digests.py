"""Issue 17: FedProx, SCAFFOLD, FedPer and kept optimizer state give, for the same config,
the final weights, client states and metric values recorded on main before the client
algorithms were rebuilt on the public API (tests/data/algorithm_digests.json, written by
``python -m tests.digests record`` from the pre-refactor tree)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.digests import DATA, sweep_digests

RECORDED = json.loads(DATA.read_text())


@pytest.fixture(scope="module")
def now(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return sweep_digests(Path(tmp_path_factory.mktemp("digests")))


@pytest.mark.parametrize("case", sorted(RECORDED["cases"]))
def test_same_bits_as_before_the_refactor(now: dict[str, dict], case: str) -> None:
    before, after = RECORDED["cases"][case], now[case]
    assert after["weights"] == before["weights"], f"{case}: final weights changed"
    assert after["clients"] == before["clients"], f"{case}: client state changed"
    assert len(after["rows"]) == len(before["rows"]), f"{case}: number of metric rows changed"
    for old, new in zip(before["rows"], after["rows"], strict=True):
        for key, value in old.items():  # later issues may add keys; recorded ones keep their values
            assert key in new, f"{case}: round {old['round']} {old['phase']} lost {key}"
            same = new[key] == value or (
                isinstance(value, float) and math.isnan(value) and isinstance(new[key], float) and math.isnan(new[key])
            )
            assert same, f"{case}: round {old['round']} {old['phase']} {key}: {new[key]!r} != {value!r}"
