import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from runner.report.plots import plot_run
from tests.report_fixtures import make_rows, write_run

REPO = Path(__file__).resolve().parents[1]


def assert_real_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000, path
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= 400 and h >= 300, im.size
        colours = im.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 10, "image is (nearly) one colour"


def test_plot_run_writes_loss_and_accuracy(tmp_path):
    run = write_run(tmp_path / "run", make_rows(5), overrides=["strategy=fedadam"])
    written = plot_run(run)
    assert written == [run / "plots" / "loss.png", run / "plots" / "accuracy.png"]
    for p in written:
        assert_real_png(p)
    # atomic writes leave no temp files behind
    assert sorted(os.listdir(run / "plots")) == ["accuracy.png", "loss.png"]


def test_plot_run_missing_phases_nan_and_torn_line(tmp_path):
    rows = make_rows(4, phases=("centralized",), nan=[("centralized", 2, "loss")])
    for r in rows:
        if r["round"] == 3:
            del r["accuracy"]
    run = write_run(tmp_path / "run", rows, torn_tail='{"round": 5, "pha')
    for p in plot_run(run):
        assert_real_png(p)


def test_plot_run_with_no_metrics_yet_still_writes_both(tmp_path):
    run = write_run(tmp_path / "run", [], summary=None)
    paths = plot_run(run)
    assert [p.name for p in paths] == ["loss.png", "accuracy.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.size[0] >= 400


def test_plot_run_is_cheap_for_100_rounds(tmp_path):
    run = write_run(tmp_path / "run", make_rows(100))
    plot_run(run)  # warm-up: first use of matplotlib loads fonts
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        plot_run(run)
        best = min(best, time.perf_counter() - t)
    assert best < 0.5, f"plot_run took {best:.2f}s for 100 rounds"


def test_plot_run_does_not_touch_pyplot_or_the_backend(tmp_path):
    run = write_run(tmp_path / "run", make_rows(2))
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from runner.report.plots import plot_run\n"
        f"plot_run({str(run)!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_partitions_plot_of_1000_clients_is_bands_not_10000_bars(tmp_path, monkeypatch):
    """Issue 20: a bar per client and label took ~18 s at 1,000 clients (the run's last step);
    past BARS_UP_TO clients the plot draws one filled band per label."""
    import json

    from runner.report import plots

    run = tmp_path / "run"
    run.mkdir()
    clients = [{"partition_id": i, "label_counts": {str(k): (i + k) % 3 for k in range(10)}} for i in range(1000)]
    (run / "partitions.json").write_text(json.dumps({"labels": list(range(10)), "clients": clients}))
    bars: list[int] = []
    monkeypatch.setattr("matplotlib.axes.Axes.bar", lambda *a, **k: bars.append(1))
    path = plots.plot_partitions(run)
    assert path == run / "plots" / "partitions.png" and bars == []
    assert_real_png(path)
    small = tmp_path / "small"
    small.mkdir()
    (small / "partitions.json").write_text(json.dumps({"labels": list(range(10)), "clients": clients[:10]}))
    plots.plot_partitions(small)
    assert len(bars) == 10  # few clients: a stacked bar per client, as before
