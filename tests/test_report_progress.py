import io
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from runner.report.progress import RoundProgress, format_duration, key_metrics

REPO = Path(__file__).resolve().parents[1]

ANSI = re.compile(r"\x1b\[")


def test_non_interactive_subprocess_one_plain_line_per_round():
    code = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="[%(name)s][%(levelname)s] %(message)s")
        from runner.report.progress import RoundProgress
        p = RoundProgress(5)  # interactive=None: stderr is a pipe here
        assert p.interactive is False
        for r in range(1, 6):
            p.update(r, {"centralized_accuracy": 0.5 + r / 20, "centralized_loss": 1.0 / r,
                         "train_loss": 2.0 / r, "evaluate_loss": 9.0})
        p.close()
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CI", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [s for s in r.stderr.splitlines() if s.strip()]
    assert len(lines) == 5, r.stderr
    for i, line in enumerate(lines, start=1):
        assert line.startswith("[runner][INFO] ")
        assert f"round {i}/5" in line
        assert "centralized_accuracy=" in line and "train_loss=" in line
        assert "evaluate_loss" not in line  # centralized ones are shown instead
        assert "elapsed " in line and "ETA " in line
        assert not ANSI.search(line)
    assert "ETA 0:00:00" in lines[-1]
    assert r.stdout == ""


def test_resumed_run_counts_from_start_round(caplog):
    p = RoundProgress(10, start_round=7, interactive=False)
    t = [100.0]
    p._clock = lambda: t[0]
    p._t0 = 100.0
    with caplog.at_level(logging.INFO, logger="runner"):
        t[0] = 110.0
        line = p.update(7, {"evaluate_accuracy": 0.8, "evaluate_loss": float("nan")})
        p.close()
        p.close()  # idempotent
    assert line == ("round 7/10 | evaluate_accuracy=0.8000 evaluate_loss=nan | elapsed 0:00:10 | ETA 0:00:30")
    assert [r.getMessage() for r in caplog.records] == [line]


def test_interactive_bar_draws_on_its_stream_and_not_in_the_log(caplog):
    buf = io.StringIO()
    with caplog.at_level(logging.INFO, logger="runner"):
        with RoundProgress(3, interactive=True, stream=buf) as p:
            assert p.interactive
            for r in range(1, 4):
                p.update(r, {"centralized_accuracy": 0.9, "train_loss": 0.1})
    assert "round 3/3" in buf.getvalue()
    assert "acc 0.9000" in buf.getvalue()
    assert caplog.records == []


def test_helpers():
    assert format_duration(3725) == "1:02:05"
    assert format_duration(None) == "?"
    assert key_metrics({"b": 1, "a": 2, "c": 3, "d": 4}) == {"a": 2, "b": 1, "c": 3}
    assert key_metrics({"train_loss": 1, "evaluate_accuracy": 0.5}) == {"train_loss": 1, "evaluate_accuracy": 0.5}


def test_eta_leaves_out_start_up_time(caplog):
    t = [0.0]
    p = RoundProgress(10, interactive=False)
    p._clock = lambda: t[0]
    p._t0 = 0.0
    with caplog.at_level(logging.INFO, logger="runner"):
        t[0] = 30.0  # 28 s of start-up, then a 2 s round
        p.update(1, {})
        t[0] = 32.0
        p.update(2, {})
    first, second = (r.getMessage() for r in caplog.records)
    assert first == "round 1/10 | elapsed 0:00:30 | ETA 0:04:30"  # nothing better known yet
    assert second == "round 2/10 | elapsed 0:00:32 | ETA 0:00:16"  # 8 rounds x 2 s
