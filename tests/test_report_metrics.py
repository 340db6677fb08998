import json
import logging
import math

import pytest

from runner.report.metrics import (
    final_and_best,
    final_metrics,
    read_metrics,
    rounds_done,
    series,
    split_flat,
)
from tests.report_fixtures import make_rows, write_metrics


def test_read_metrics_roundtrip_with_nan(tmp_path):
    rows = make_rows(3, nan=[("evaluate", 2, "loss")])
    write_metrics(tmp_path, rows)
    assert "NaN" in (tmp_path / "metrics.jsonl").read_text()
    got = read_metrics(tmp_path)
    assert len(got) == len(rows) == 1 + 3 * 3
    ev2 = [r for r in got if r["phase"] == "evaluate" and r["round"] == 2][0]
    assert math.isnan(ev2["loss"])
    assert got[0] == rows[0]


def test_read_metrics_missing_file_is_empty(tmp_path):
    assert read_metrics(tmp_path) == []


def test_torn_last_line_is_skipped_with_warning(tmp_path, caplog):
    rows = make_rows(2)
    write_metrics(tmp_path, rows, torn_tail='{"round": 3, "phase": "tra')
    with caplog.at_level(logging.WARNING, logger="runner.report.metrics"):
        got = read_metrics(tmp_path)
    assert got == rows
    assert any("torn last line" in r.getMessage() for r in caplog.records)


def test_bad_middle_line_and_rows_without_round_are_skipped(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"round": 1, "phase": "train", "loss": 1.0}\n'
        "garbage\n"
        '{"phase": "train", "loss": 2.0}\n'
        '{"round": 2, "phase": "train", "loss": 0.5}\n'
    )
    with caplog.at_level(logging.WARNING):
        got = read_metrics(path)  # the file itself is accepted too
    assert [r["round"] for r in got] == [1, 2]
    assert len(caplog.records) == 2


def test_final_and_best_max_min_nan_and_ties(tmp_path):
    rows = [
        {"round": 0, "phase": "centralized", "accuracy": 0.1, "loss": 2.0},
        {"round": 1, "phase": "centralized", "accuracy": 0.7, "loss": 0.9},
        {"round": 2, "phase": "centralized", "accuracy": float("nan"), "loss": 0.4},
        {"round": 3, "phase": "centralized", "accuracy": 0.7, "loss": 0.6},
        {"round": 3, "phase": "train", "loss": 0.1},
    ]
    fb = final_and_best(rows, "centralized_accuracy", "max")
    assert (fb.final, fb.final_round, fb.best, fb.best_round) == (0.7, 3, 0.7, 1)
    fb = final_and_best(rows, "centralized_loss", "min")
    assert (fb.final, fb.best, fb.best_round) == (0.6, 0.4, 2)
    rows.append({"round": 4, "phase": "centralized", "accuracy": float("nan")})
    fb = final_and_best(rows, "centralized_accuracy", "max")
    assert math.isnan(fb.final) and fb.final_round == 4 and fb.best == 0.7
    fb = final_and_best(rows, "evaluate_accuracy", "max")  # phase absent
    assert fb.final is None and fb.best is None and fb.best_round is None
    with pytest.raises(ValueError):
        final_and_best(rows, "accuracy", "max")
    with pytest.raises(ValueError):
        final_and_best(rows, "centralized_accuracy", "highest")


def test_final_metrics_last_write_wins_and_flat_names():
    rows = [
        {"round": 1, "phase": "train", "loss": 1.0, "num_replies": 5},
        {"round": 2, "phase": "train", "loss": 0.5},
        {"round": 2, "phase": "train", "loss": 0.4},  # the same round written again
        {"round": 1, "phase": "evaluate", "accuracy": 0.3},
    ]
    fm = final_metrics(rows)
    assert fm["train_loss"] == 0.4
    assert fm["train_num_replies"] == 5  # last round that recorded it
    assert fm["evaluate_accuracy"] == 0.3
    assert "train_round" not in fm and "train_phase" not in fm
    assert series(rows, "train", "loss") == ([1, 2], [1.0, 0.4])
    assert rounds_done(rows) == 2
    assert split_flat("centralized_accuracy") == ("centralized", "accuracy")
    assert split_flat("train_num_examples") == ("train", "num_examples")


def test_reader_accepts_the_core_documented_row_shape(tmp_path):
    line = {
        "round": 1,
        "phase": "train",
        "loss": 0.52,
        "accuracy": 0.81,
        "num_replies": 5,
        "num_failures": 0,
        "elapsed_s": 3.2,
    }
    (tmp_path / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    assert read_metrics(tmp_path) == [line]
