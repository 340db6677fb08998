"""Save policy: when to save, which round is best, what retention keeps."""

from __future__ import annotations

import json

import pytest

from runner.checkpoint.policy import CheckpointPolicy


def test_should_save_every_n_and_always_the_final_round() -> None:
    every = CheckpointPolicy(every_n_rounds=1)
    assert all(every.should_save(r, 5) for r in range(1, 6))
    third = CheckpointPolicy(every_n_rounds=3)
    assert [r for r in range(1, 11) if third.should_save(r, 10)] == [3, 6, 9, 10]
    assert [r for r in range(1, 10) if third.should_save(r, 9)] == [3, 6, 9]


def test_best_with_max() -> None:
    p = CheckpointPolicy(monitor="acc", mode="max")
    assert p.update_best(1, {"acc": 0.5})
    assert not p.update_best(2, {"acc": 0.4})
    assert not p.update_best(3, {"acc": 0.5})  # a tie keeps the earlier round
    assert p.update_best(4, {"acc": 0.7})
    assert (p.best_round, p.best_value) == (4, 0.7)


def test_best_with_min_nan_and_missing() -> None:
    p = CheckpointPolicy(monitor="loss", mode="min")
    assert not p.update_best(1, {"loss": float("nan")})  # NaN is never best, even first
    assert not p.update_best(2, {"acc": 0.9})  # monitor missing
    assert not p.update_best(3, {"loss": "n/a"})
    assert p.best_round is None
    assert p.update_best(4, {"loss": 2.0})
    assert not p.update_best(5, {"loss": float("nan")})
    assert p.update_best(6, {"loss": 1.5})
    assert not p.update_best(7, {"loss": 1.6})
    assert (p.best_round, p.best_value) == (6, 1.5)
    assert not CheckpointPolicy(monitor=None).update_best(1, {"acc": 1.0})


def test_keep_last_two_plus_best_and_protected() -> None:
    p = CheckpointPolicy(keep_last=2, monitor="acc")
    p.update_best(3, {"acc": 0.99})
    existing = list(range(1, 9))
    remove = p.rounds_to_remove(existing, protected={1})  # round 1: resumed from
    assert sorted(set(existing) - set(remove)) == [1, 3, 7, 8]
    assert p.should_remove(2, existing, {1})
    assert not p.should_remove(7, existing, {1})
    assert not p.should_remove(3, existing, set())
    assert CheckpointPolicy(keep_last=None).rounds_to_remove(existing, set()) == []


def test_invalid_settings_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="every_n_rounds"):
        CheckpointPolicy(every_n_rounds=0)
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointPolicy(keep_last=0)
    with pytest.raises(ValueError, match="mode"):
        CheckpointPolicy(mode="maximum")


def test_state_dict_round_trip_through_json() -> None:
    p = CheckpointPolicy(every_n_rounds=2, keep_last=3, monitor="acc", mode="max")
    p.update_best(4, {"acc": 0.8})
    state = json.loads(json.dumps(p.state_dict()))
    q = CheckpointPolicy(every_n_rounds=2, keep_last=3, monitor="acc", mode="max")
    q.load_state_dict(state)
    assert (q.best_round, q.best_value) == (4, 0.8)
    assert not q.update_best(5, {"acc": 0.7})  # the restored best still counts
    other = CheckpointPolicy(monitor="loss", mode="min")
    other.load_state_dict(state)  # a best for another metric means nothing here
    assert other.best_round is None
