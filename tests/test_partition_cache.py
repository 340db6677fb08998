"""Issue 20: client processes read their own rows from the partition cache the server side
published (runner.partition_cache), import no loader or partitioner library (a query
process not even torch), and train bit for bit as a process that partitions the data itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runner import data as data_mod
from runner import partition_cache
from runner.config import to_container
from runner.data import client_split, partition_key, publish_partitions
from tests.helpers import ROOT, compose_cfg

USER_LOADER = "dataset._target_=tests.fixture_data.digits_with_writers"


def _cfg(tmp_path: Path, *overrides: str) -> dict:
    return to_container(compose_cfg(["num_clients=6", f"data_cache.dir={tmp_path / 'cache'}", *overrides]))


def _probe(cfg: dict | None, tmp_path: Path, label: str, pid: int) -> dict:
    path = tmp_path / f"{label}.json"
    path.write_text(json.dumps(cfg))
    what = "query" if cfg is None else str(path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.client_probe", what, str(pid)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _rewrite(path: Path, content: bytes) -> None:
    """Change a file as a writer does (a new file renamed into place): a process that keeps
    entries it read notices by the file's identity."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def _same_split(a: tuple, b: tuple) -> None:
    for sa, sb in zip(a, b, strict=True):
        assert np.array_equal(sa.idx, sb.idx)
        assert sa.x.tobytes() == sb.x.tobytes() and sa.y.tobytes() == sb.y.tobytes()
        got = [(x.numpy().tobytes(), y.numpy().tobytes()) for x, y in sa.batches(16)]
        want = [(x.numpy().tobytes(), y.numpy().tobytes()) for x, y in sb.batches(16)]
        assert got == want


def test_a_training_client_reads_its_rows_and_imports_no_loader(tmp_path: Path):
    """The real train handler in fresh processes: with the published cache it imports
    neither scikit-learn, datasets nor flwr-datasets, and replies the same weights and
    metrics as a process with the cache off (which partitions, as before issue 20)."""
    cfg = _cfg(tmp_path)
    sent = {**cfg, "data_cache": publish_partitions(cfg)}
    off = {**cfg, "data_cache": {"enabled": False, "dir": None}}
    cached, uncached = _probe(sent, tmp_path, "sent", 4), _probe(off, tmp_path, "off", 4)
    assert cached["imported"] == ["torch"]
    assert {"sklearn", "datasets", "flwr_datasets"} <= set(uncached["imported"])  # the probe can see them
    assert cached["weights"] == uncached["weights"]
    assert cached["metrics"] == uncached["metrics"]


def test_a_query_process_imports_no_torch(tmp_path: Path):
    """Node discovery: a deployment query process answers with its partition id and imports
    flwr only (no torch, no data libraries)."""
    got = _probe(None, tmp_path, "query", 5)
    assert got == {"partition": 5, "imported": []}


def test_cached_split_is_the_uncached_one(tmp_path: Path):
    cfg = _cfg(tmp_path, "partitioner=dirichlet")
    sent = {**cfg, "data_cache": publish_partitions(cfg)}
    for pid in range(6):
        _same_split(client_split(sent, pid), client_split(cfg, pid))


def test_every_read_checks_key_and_digests(tmp_path: Path):
    cfg = _cfg(tmp_path)
    sent = {**cfg, "data_cache": publish_partitions(cfg)}
    key = partition_key(cfg)
    entry = partition_cache.client_entry(sent, key, 2)
    assert entry is not None and partition_cache.read_entry(entry, key) is not None
    assert partition_cache.read_entry(entry, key + " ") is None  # another key: never served
    good = entry.read_bytes()
    rows, _ = partition_cache.read_entry(entry, key) or (None, None)
    assert rows is not None
    needle = rows.x[0].tobytes()
    at = good.index(needle)
    _rewrite(entry, good[:at] + bytes([good[at] ^ 1]) + good[at + 1 :])  # one flipped bit in x
    assert partition_cache.read_entry(entry, key) is None
    _same_split(client_split(sent, 2), client_split(cfg, 2))  # falls back to partitioning ...
    assert entry.read_bytes() == good  # ... and leaves a good entry for the next process
    _rewrite(entry, good[: len(good) // 2])  # truncated
    assert partition_cache.read_entry(entry, key) is None


def test_a_node_without_an_entry_partitions_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A SuperNode on another machine (no published entry): its first process partitions
    and writes the entry; the next ones read it without partitioning."""
    cfg = _cfg(tmp_path)
    sent = {**cfg, "data_cache": {**cfg["data_cache"], "scope": "remote-node"}}
    first = client_split(sent, 1)
    entry = partition_cache.client_entry(sent, partition_key(cfg), 1)
    assert entry is not None and entry.exists()

    def no_partitioning(_cfg: dict) -> None:
        raise AssertionError("partitioned again")

    monkeypatch.setattr(data_mod, "partitions", no_partitioning)
    _same_split(client_split(sent, 1), first)


def test_in_process_calls_and_disabled_cache_write_nothing(tmp_path: Path):
    off = _cfg(tmp_path, "data_cache.enabled=false")
    assert publish_partitions(off) == off["data_cache"]
    client_split({**off, "data_cache": {**off["data_cache"], "scope": "x"}}, 0)
    assert not (tmp_path / "cache").exists()
    cfg = _cfg(tmp_path)
    client_split(cfg, 0)  # no scope: not a client of a published run (it may keep the split, no entry)
    assert not list((tmp_path / "cache").rglob("client-*.npz"))


def test_an_unwritable_cache_dir_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    cfg = to_container(compose_cfg(["num_clients=6", f"data_cache.dir={blocker}"]))
    with caplog.at_level("WARNING", logger="runner"):
        node = publish_partitions(cfg)
    assert "scope" not in node  # clients partition themselves
    assert any(r.getMessage().startswith("data_cache.dir: cannot write") for r in caplog.records)
    _same_split(client_split({**cfg, "data_cache": node}, 3), client_split(cfg, 3))


def test_the_server_side_removes_its_entries_and_stale_ones(tmp_path: Path):
    root = tmp_path / "cache"
    stale, fresh = root / "stale", root / "fresh"
    for d in (stale, fresh):
        d.mkdir(parents=True)
        (d / "client-0.npz").write_bytes(b"x")
    old = time.time() - 2 * partition_cache.STALE_S
    os.utime(stale, (old, old))
    code = (
        "import json, sys\n"
        "from runner.config import to_container\n"
        "from runner.data import publish_partitions\n"
        "from tests.helpers import compose_cfg\n"
        # a user's loader: no data fingerprint, so a per-process scope (removed at exit)
        f"cfg = to_container(compose_cfg(['num_clients=6', 'data_cache.dir={root}', {USER_LOADER!r}]))\n"
        "publish_partitions(cfg)\n"
        "print(sorted(p.name for p in __import__('pathlib').Path(sys.argv[1]).iterdir()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    during = json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"'))
    assert "stale" not in during and "fresh" in during and len(during) == 2  # fresh + its own scope
    assert sorted(p.name for p in root.iterdir()) == ["fresh"]  # its own entries gone at exit


# -- the data fingerprint: one split per data, kept across processes ---------------------------
SPLIT_PROBE = (
    "import json, sys\n"
    "from runner.config import to_container\n"
    "from runner.data import partitions, publish_partitions\n"
    "from tests.helpers import compose_cfg\n"
    "cfg = to_container(compose_cfg(json.loads(sys.argv[1])))\n"
    "node = publish_partitions(cfg)\n"
    "p = partitions(cfg)\n"
    "import hashlib\n"
    "h = hashlib.sha256()\n"
    "for a in (p.data.x, p.data.y, p.test_idx, *p.parts):\n"
    "    h.update(a.tobytes())\n"
    "heavy = [m for m in ('sklearn', 'datasets', 'flwr_datasets') if m in sys.modules]\n"
    "print(json.dumps({'digest': h.hexdigest(), 'heavy': heavy, 'scope': node.get('scope')}))\n"
)


def _split_probe(overrides: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", SPLIT_PROBE, json.dumps(overrides)],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_a_second_process_on_the_same_data_reads_the_split(tmp_path: Path):
    """The first server process partitions and keeps the split under the data fingerprint;
    the next one (a new run, a resume) reads it back, importing no loader or partitioner
    library, and gets the same arrays; its clients' entries are the same scope."""
    overrides = ["num_clients=6", "partitioner=dirichlet", f"data_cache.dir={tmp_path / 'cache'}"]
    first, second = _split_probe(overrides), _split_probe(overrides)
    assert first["scope"].startswith("fp-") and second["scope"] == first["scope"]
    assert {"sklearn", "datasets", "flwr_datasets"} <= set(first["heavy"])
    assert second["heavy"] == []
    assert second["digest"] == first["digest"]
    off = _split_probe([*overrides[:2], "data_cache.enabled=false"])
    assert off["digest"] == first["digest"] and off["scope"] is None
    other = _split_probe([*overrides[:1], "partitioner=iid", overrides[2]])  # same data, another split
    assert other["scope"] == first["scope"] and other["digest"] != first["digest"]
    scopes = [d for d in (tmp_path / "cache").iterdir() if d.is_dir()]
    assert len(scopes) == 2 and all((d / "partitions.npz").exists() for d in scopes)


def test_a_corrupt_kept_split_is_recomputed(tmp_path: Path):
    cfg = _cfg(tmp_path)
    key = partition_key(cfg)
    store = partition_cache.store_entry(cfg, key)
    assert store is not None
    p = data_mod._partitions(key)
    assert partition_cache.write_partitions(store, key, p.data, p.test_idx, p.parts, p.notes)
    got = partition_cache.read_partitions(store, key)
    assert got is not None and all(np.array_equal(a, b) for a, b in zip(got[2], p.parts, strict=True))
    assert partition_cache.read_partitions(store, key + " ") is None  # another key: never served
    good = store.read_bytes()
    at = good.index(p.data.x[5].tobytes())
    _rewrite(store, good[:at] + bytes([good[at] ^ 1]) + good[at + 1 :])
    assert partition_cache.read_partitions(store, key) is None
    data_mod._partitions_via.cache_clear()
    again = data_mod.partitions(cfg)  # recomputed, and kept again
    assert np.array_equal(again.data.x, p.data.x)
    assert partition_cache.read_partitions(store, key) is not None


def test_the_fingerprint_follows_the_data_files(tmp_path: Path):
    """dataset=hf on a local CSV: changing the file changes the fingerprint (a new scope);
    a loader from the user's code has none (its scope is per process)."""
    csv = tmp_path / "data.csv"
    rows = ["f0,f1,label"] + [f"{i % 7},{i % 5},{i % 3}" for i in range(60)]
    csv.write_text("\n".join(rows) + "\n")
    hf = ["dataset=hf", "dataset.path=csv", f"dataset.data_files={csv}", "dataset.features=[f0,f1]"]
    cfg = to_container(
        compose_cfg(["num_clients=3", *hf, "model=mlp", "dataset.input_shape=[2]", "dataset.num_classes=3"])
    )
    first = partition_cache.data_fingerprint(cfg)
    assert first is not None and first == partition_cache.data_fingerprint(cfg)
    csv.write_text("\n".join(rows[:-1]) + "\n")
    assert partition_cache.data_fingerprint(cfg) not in (None, first)
    csv.unlink()
    assert partition_cache.data_fingerprint(cfg) is None  # missing: the loader reports it
    assert partition_cache.data_fingerprint(_cfg(tmp_path, USER_LOADER)) is None
    assert partition_cache.data_fingerprint(_cfg(tmp_path)) is not None  # digits: sklearn's bundled file
    hub = to_container(compose_cfg(["num_clients=3", "dataset=hf", "dataset.path=someone/some-dataset"]))
    assert partition_cache.data_fingerprint(hub) is None
