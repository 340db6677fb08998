"""Issue 18: client state that scales. Each client's state is a content-addressed blob,
written once when it changes and referenced by every manifest; retention removes exactly the
blobs no kept manifest references, after the commit; the server reads back only the states
a round needs, through a bounded cache; a crash anywhere (blob writes, garbage collection)
resumes bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runner.checkpoint.blobs import BLOBS_DIR, blob_entries, referenced_blobs
from runner.checkpoint.formats import save_arrays
from runner.checkpoint.policy import CheckpointPolicy
from runner.checkpoint.store import CheckpointData, load_checkpoint, read_manifest, scan, verify, write_checkpoint
from runner.checkpoint.writer import CheckpointWriter
from runner.client_state import ClientStateStore
from runner.stateful import pack
from tests.helpers import FAST, ROOT, read_metrics, run_cli, run_dirs

W = {"w": np.arange(1000, dtype=np.float32)}


def _state(pid: int, rnd: int) -> dict[str, Any]:
    return {"ci": {"w": np.full(1000, pid + rnd / 10, dtype=np.float32)}, "steps": rnd, "tag": f"c{pid}"}


def _data(rnd: int, store: ClientStateStore, **kw: Any) -> CheckpointData:
    return CheckpointData(
        round=rnd,
        phase="fit",
        weights=W,
        state={"layout": 3, "components": {"clients": {}}},
        metrics={"loss": 1.0 / rnd},
        clients=store.records(),
        **kw,
    )


def _blob_files(ckpt: Path) -> set[str]:
    return {p.name for p in (ckpt / BLOBS_DIR).iterdir()} if (ckpt / BLOBS_DIR).is_dir() else set()


def _referenced(ckpt: Path) -> set[str]:
    return {name for info in scan(ckpt) for name, _ in blob_entries(info.manifest or {})}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a == b)


@pytest.mark.parametrize("fmt", ["npz", "torch", "safetensors"])
def test_a_state_is_written_once_when_it_changes_and_reads_back_exactly(tmp_path: Path, fmt: str) -> None:
    store = ClientStateStore(cache_size=2)
    for pid in range(5):
        store.put(pid, _state(pid, 1))
    m1 = write_checkpoint(tmp_path, _data(1, store), fmt)
    assert len(_blob_files(tmp_path)) == 5 and store.in_memory() == 0  # written, then dropped from memory
    store.put(3, _state(3, 2))  # one client changes
    m2 = write_checkpoint(tmp_path, _data(2, store), fmt)
    assert len(_blob_files(tmp_path)) == 6  # one new blob, not five
    r1, r2 = referenced_blobs(read_manifest(m1)), referenced_blobs(read_manifest(m2))
    assert sorted(r1) == sorted(r2) == ["0", "1", "2", "3", "4"]
    assert [p for p in r1 if r1[p] != r2[p]] == ["3"]
    assert verify(m1) == [] and verify(m2) == []
    # the logical checkpoint, as the older layout stored it
    loaded = load_checkpoint(m2)
    skeleton, arrays = pack({str(p): (_state(p, 2) if p == 3 else _state(p, 1)) for p in range(5)}, prefix="clients")
    assert loaded.manifest["state"]["components"]["clients"] == skeleton
    assert loaded.state_arrays.keys() == arrays.keys()
    assert all(np.array_equal(loaded.state_arrays[k], arrays[k]) for k in arrays)
    # read back from disk, through the bounded cache
    reads = store.reads
    for pid in range(5):
        assert _same(store.get(pid), _state(pid, 2 if pid == 3 else 1))
    assert store.reads == reads + 5 and store.in_memory() == 2
    assert _same(store.get(4), _state(4, 1)) and store.reads == reads + 5  # cached
    # resume: a fresh store from the references reads nothing until a client is needed
    fresh = ClientStateStore()
    fresh.load_state_dict(load_checkpoint(m2, clients="refs").manifest["state"]["components"]["clients"])
    assert len(fresh) == 5 and fresh.reads == 0 and fresh.in_memory() == 0
    assert _same(fresh.get(3), _state(3, 2)) and fresh.reads == 1


def test_gc_under_keep_last_2_leaves_exactly_the_referenced_blobs(tmp_path: Path) -> None:
    """Every save changes two of eight clients; the best round (2) and the last two stay, and
    so do exactly the blobs they reference, also those shared between rounds."""
    store = ClientStateStore()
    for pid in range(8):
        store.put(pid, _state(pid, 0))
    policy = CheckpointPolicy(keep_last=2, monitor="acc", mode="max")
    with CheckpointWriter(tmp_path, "npz", policy) as writer:
        for rnd in range(1, 9):
            for pid in (rnd % 8, (rnd + 3) % 8):
                store.put(pid, _state(pid, rnd))
            is_best = policy.update_best(rnd, {"acc": 1.0 if rnd == 2 else 0.5})
            writer.submit(_data(rnd, store, is_best=is_best))
            writer.wait()
            assert _blob_files(tmp_path) == _referenced(tmp_path), rnd
    assert [i.round for i in scan(tmp_path)] == [2, 7, 8]
    assert len(writer.gc_removed) > 0
    assert all(verify(i.path) == [] for i in scan(tmp_path))
    # round 2 still reads back whole: its clients' states as they were then
    states = load_checkpoint(tmp_path / "round-0002.json").manifest["state"]["components"]["clients"]
    assert sorted(states, key=int) == [str(p) for p in range(8)]


def test_gc_never_removes_a_blob_while_a_manifest_cannot_be_read(tmp_path: Path) -> None:
    store = ClientStateStore()
    store.put(0, _state(0, 1))
    write_checkpoint(tmp_path, _data(1, store), "npz")
    (tmp_path / "round-0005.json").write_text("{ torn")
    save_arrays(tmp_path / BLOBS_DIR / ("0" * 64 + ".npz"), {"x": np.zeros(3)}, "npz")  # an orphan
    with CheckpointWriter(tmp_path, "npz", CheckpointPolicy(keep_last=1, monitor=None)) as writer:
        store.put(0, _state(0, 2))
        writer.submit(_data(2, store))
    assert "0" * 64 + ".npz" in _blob_files(tmp_path) and writer.gc_removed == []


def test_verify_checks_every_referenced_blob(tmp_path: Path) -> None:
    store = ClientStateStore()
    for pid in range(3):
        store.put(pid, _state(pid, 1))
    path = write_checkpoint(tmp_path, _data(1, store), "safetensors")
    name = referenced_blobs(read_manifest(path))["1"]
    blob = tmp_path / BLOBS_DIR / name
    raw = bytearray(blob.read_bytes())
    raw[-1] ^= 0xFF  # same size, one bit pattern changed
    blob.write_bytes(bytes(raw))
    (problem,) = verify(path)
    assert problem.startswith(f"{BLOBS_DIR}/{name}: checksum mismatch (sha256")
    assert verify(path, blobs="size") == []  # resume's cheap check; the read checks the digest
    fresh = ClientStateStore()
    fresh.load_state_dict(load_checkpoint(path, clients="refs").manifest["state"]["components"]["clients"])
    with pytest.raises(Exception, match="checksum mismatch"):
        fresh.get(1)
    blob.unlink()
    assert verify(path) == [f"{BLOBS_DIR}/{name}: missing"]
    proc = subprocess.run(
        [sys.executable, "-m", "runner.ckpt", "verify", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 1 and f"{BLOBS_DIR}/{name}: missing" in proc.stdout


def test_ckpt_list_shows_sizes_and_export_writes_one_self_contained_round(tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "checkpoints"
    store = ClientStateStore()
    for rnd in (1, 2):
        for pid in range(4):
            store.put(pid, _state(pid, rnd))
        write_checkpoint(ckpt, _data(rnd, store), "npz")
    cli = [sys.executable, "-m", "runner.ckpt"]
    proc = subprocess.run([*cli, "list", str(tmp_path / "run"), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    blob_bytes = sum(p.stat().st_size for p in (ckpt / BLOBS_DIR).iterdir()) // 2
    assert [(r["clients"], r["blobs"], r["blob_size"]) for r in rows] == [(4, 4, blob_bytes)] * 2
    assert all(r["size"] > r["blob_size"] for r in rows)
    out = tmp_path / "copy" / "checkpoints"
    proc = subprocess.run(
        [*cli, "export", str(ckpt / "round-0001.json"), "--round-dir", "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["blobs", "last.json", "round-0001.json", "round-0001.npz"]
    assert _blob_files(out) == _referenced(out) and len(_blob_files(out)) == 4
    assert verify(out / "round-0001.json") == []
    a, b = load_checkpoint(out / "round-0001.json"), load_checkpoint(ckpt / "round-0001.json")
    assert _same(a.state_arrays, b.state_arrays) and a.manifest["state"] == b.manifest["state"]


# --------------------------------------------------------------------------- end to end

SCAFFOLD = ["strategy=scaffold", "train.local_epochs=1", "progress=log"]


def _weights_bytes(ckpt: Path, rnd: int) -> int:
    return int(read_manifest(ckpt / f"round-{rnd:04d}.json")["files"]["weights"]["size"])


def round_bytes(ckpt: Path) -> dict[int, int]:
    """Bytes each round's save wrote: its files, its manifest and the blobs it added."""
    seen: set[str] = set()
    out = {}
    for info in scan(ckpt):
        m = info.manifest or {}
        new = {n: e["size"] for n, e in blob_entries(m) if n not in seen}
        seen |= set(new)
        files = sum(e["size"] for e in m["files"].values() if e)
        out[info.round] = files + info.path.stat().st_size + sum(new.values())
    return out


def test_bytes_per_round_follow_the_sampled_clients_at_50_clients(tmp_path: Path) -> None:
    """SCAFFOLD, cnn, 50 clients, 5 sampled: once clients have state, a round writes the
    weights, the server variate and the sampled clients' states, not every client's."""
    sampled, rounds = 5, 4
    proc = run_cli(
        [
            *SCAFFOLD,
            "model=cnn",
            "num_clients=50",
            "strategy.fraction_train=0.1",
            "strategy.fraction_evaluate=0.1",
            f"num_rounds={rounds}",
            "checkpoint.format=safetensors",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "outputs")
    ckpt = run / "checkpoints"
    weights = _weights_bytes(ckpt, 1)
    per_round = round_bytes(ckpt)
    assert sorted(per_round) == list(range(1, rounds + 1))
    for rnd, size in per_round.items():
        assert size / weights <= 1.2 * (sampled + 2), (rnd, size / weights)
    on_disk = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert on_disk <= 1.2 * rounds * (sampled + 2) * weights
    clients = referenced_blobs(read_manifest(ckpt / f"round-{rounds:04d}.json"))
    assert sampled < len(clients) <= sampled * rounds  # every client that ever trained, sampled now or not
    print(f"\nbytes per round / weights: { {r: round(s / weights, 2) for r, s in per_round.items()} }")


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(run)]


def _logical(run: Path, rnd: int) -> tuple[dict, dict, dict]:
    loaded = load_checkpoint(run / "checkpoints" / f"round-{rnd:04d}.json")
    comps = {k: v for k, v in loaded.manifest["state"]["components"].items() if k != "policy"}
    return loaded.weights, loaded.state_arrays, comps


def _assert_same_run(run: Path, ref: Path, rnd: int, what: str) -> None:
    (w, s, c), (rw, rs, rc) = _logical(run, rnd), _logical(ref, rnd)
    assert _same(w, rw), f"{what}: weights"
    assert _same(s, rs), f"{what}: strategy and client state arrays"
    assert c == rc, f"{what}: state skeletons"
    assert _rows(run) == _rows(ref), f"{what}: metrics rows"


DRILL = [*SCAFFOLD, "num_clients=4", "strategy.fraction_train=1.0", "num_rounds=4", "checkpoint.monitor=null"]


def _kill_when_stalled(cwd: Path, mode: str, at: int, args: list[str]) -> Path:
    marker = cwd / "stalled"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "STALL_MARKER": str(marker)}
    victim = subprocess.Popen(
        [sys.executable, "-m", "tests.slow_blobs", mode, str(at), *args],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert victim.poll() is None, f"{mode}: the run ended before it stalled"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
    (crashed,) = run_dirs(cwd / "outputs")
    return crashed / "checkpoints"


def test_sigkill_during_blob_writes_and_during_gc_resumes_bit_for_bit(tmp_path: Path) -> None:
    (tmp_path / "ref").mkdir()
    proc = run_cli(DRILL, cwd=tmp_path / "ref")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ref,) = run_dirs(tmp_path / "ref" / "outputs")

    # 4 clients train every round: blobs 1-4 are round 1's; kill after the 6th (mid round 2)
    # and, with keep_last=1, after GC removed the 2nd of round 1's blobs (round 2 committed).
    for mode, at, extra in (("write", 6, []), ("gc", 2, ["checkpoint.keep_last=1"])):
        cwd = tmp_path / mode
        cwd.mkdir()
        ckpt = _kill_when_stalled(cwd, mode, at, [*DRILL, *extra])
        infos = scan(ckpt)
        assert infos and all(verify(i.path) == [] for i in infos), mode  # nothing referenced is torn or gone
        if mode == "write":
            assert [i.round for i in infos] == [1]
            assert len(_blob_files(ckpt) - _referenced(ckpt)) == 2  # round 2's, without a manifest
        else:
            assert [i.round for i in infos] == [2]
            assert len(_blob_files(ckpt)) == 4 + 2  # round 2's four, and two of round 1's not yet removed
        time.sleep(1.1)
        proc = run_cli([*DRILL, *extra, "resume=latest"], cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        resumed = next(r for r in run_dirs(cwd / "outputs") if r / "checkpoints" != ckpt)
        assert json.loads((resumed / "summary.json").read_text())["resumed_from"].startswith(str(ckpt.parent))
        _assert_same_run(resumed, ref, 4, mode)
        assert _blob_files(resumed / "checkpoints") == _referenced(resumed / "checkpoints"), mode


def _to_layout_2(src: Path, dst: Path) -> Path:
    """Round ``src`` rewritten as the layout before blobs: every client's arrays in the state
    file, their skeletons in the manifest."""
    loaded = load_checkpoint(src)
    dst.mkdir(parents=True)
    m = dict(loaded.manifest)
    m.pop("blobs", None)
    m["state"] = {**m["state"], "layout": 2}
    stem = src.name.removesuffix(".json")
    for what, entry in m["files"].items():
        if entry:
            arrays = loaded.weights if what == "weights" else loaded.state_arrays
            sha, size = save_arrays(dst / entry["name"], arrays, "npz")
            m["files"][what] = {**entry, "sha256": sha, "size": size, "arrays": len(arrays)}
    (dst / f"{stem}.json").write_text(json.dumps(m))
    return dst / f"{stem}.json"


def test_a_checkpoint_of_the_older_layout_still_resumes_exactly(tmp_path: Path) -> None:
    args = [*SCAFFOLD, "num_clients=4", "num_rounds=3"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ref,) = run_dirs(tmp_path / "outputs")
    old = _to_layout_2(ref / "checkpoints" / "round-0002.json", tmp_path / "old" / "checkpoints")
    assert verify(old) == [] and "blobs" not in read_manifest(old)
    assert any(k.startswith("clients/") for k in np.load(old.parent / "round-0002.state.npz"))
    time.sleep(1.1)
    proc = run_cli([*args, f"resume={old}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = next(r for r in run_dirs(tmp_path / "outputs") if r != ref)
    (w, s, c), (rw, rs, rc) = _logical(resumed, 3), _logical(ref, 3)
    assert _same(w, rw) and _same(s, rs) and c == rc
    assert _blob_files(resumed / "checkpoints") == _referenced(resumed / "checkpoints")


def test_the_round_loop_holds_only_the_sampled_clients_states(tmp_path: Path) -> None:
    """A store of 200 written states: a round that samples 5 reads 5 and keeps at most the
    cache in memory."""
    store = ClientStateStore(cache_size=8)
    for pid in range(200):
        store.put(pid, _state(pid, 1))
    write_checkpoint(tmp_path, _data(1, store), "npz")
    assert store.in_memory() == 0
    for rnd in range(2, 6):
        sampled = [(rnd * 7 + i * 13) % 200 for i in range(5)]
        for pid in sampled:
            assert store.get(pid) is not None
            store.put(pid, _state(pid, rnd))
        assert store.in_memory() <= 5 + 8
        write_checkpoint(tmp_path, _data(rnd, store), "npz")
        assert store.in_memory() <= 8
    assert store.reads <= 4 * 5


def test_fedavg_without_client_state_writes_no_blobs(tmp_path: Path) -> None:
    proc = run_cli([*FAST, "num_rounds=1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "outputs")
    m = read_manifest(run / "checkpoints" / "round-0001.json")
    assert "blobs" not in m and m["state"]["components"]["clients"] == {}
    assert not (run / "checkpoints" / BLOBS_DIR).exists()
