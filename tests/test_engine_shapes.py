"""Shape checks of the engine's fast paths (runner/engine/fastpaths.py): no Ray, < 5 s.

Each fast path replaces a Flower (or Ray) internal; at start the engine checks that the
internal still has the shape the replacement relies on, and runs Flower's own code with
one log line when it does not. These tests pin the checks themselves: they pass on the
installed Flower, and each kind of change (missing attribute, renamed parameter, caller
that no longer looks the function up, attribute no longer set) is caught.
"""

from __future__ import annotations

import logging
import types

import pytest

from runner.engine import fastpaths as fp


def test_every_piece_fits_the_installed_flower():
    assert fp.verdicts() == dict.fromkeys(fp.PIECES), fp.verdicts()


def test_resolve_reports_the_missing_part():
    assert fp.resolve("flwr.server.superlink.fleet.vce.vce_api:run_api") is not None
    with pytest.raises(fp.ShapeError, match="'nope' not found"):
        fp.resolve("flwr.server.superlink.fleet.vce.vce_api:nope")
    with pytest.raises(fp.ShapeError, match="cannot import"):
        fp.resolve("flwr.no_such_module:x")


def test_parameter_names_are_checked():
    fp.require_callable(f"{fp.VCE}:add_messages_to_queue", ["state", "queue", "nodes_mapping", "f_stop"])
    with pytest.raises(fp.ShapeError, match=r"takes \(state, queue, nodes_mapping, f_stop\)"):
        fp.require_callable(f"{fp.VCE}:add_messages_to_queue", ["state", "queue", "node_mapping"])
    with pytest.raises(fp.ShapeError, match="not callable"):
        fp.require_callable("flwr.supercore.constant:DEFAULT_SIMULATION_CONFIG")


def test_code_names_see_nested_code_and_attributes():
    def outer(state):
        def inner():
            return state.message_ins_store

        return inner, state.lock

    assert {"message_ins_store", "lock"} <= fp.code_names(outer)
    # start_vce imports RayBackend inside a nested function: still found
    assert "RayBackend" in fp.code_names(fp.resolve(f"{fp.VCE}:start_vce"))


def test_names_missing_from_code_fail(monkeypatch: pytest.MonkeyPatch):
    from flwr.server.superlink.fleet.vce import vce_api

    def run_api(app_fn, backend_fn, nodes_mapping, state_factory, node_info_stores, f_stop, metrics):
        return None  # a future run_api that starts its threads some other way

    monkeypatch.setattr(vce_api, "run_api", run_api)
    with pytest.raises(fp.ShapeError, match="no longer starts add_messages_to_queue"):
        fp._check_one_pass_pump()
    with pytest.raises(fp.ShapeError, match="no longer starts"):
        fp._check_prompt_stop()


def test_attribute_no_longer_set_fails(monkeypatch: pytest.MonkeyPatch):
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    def __init__(self, federation_manager, object_store):  # stores messages elsewhere
        self.messages = {}
        self.lock = None

    monkeypatch.setattr(InMemoryLinkState, "__init__", __init__)
    with pytest.raises(fp.ShapeError, match="no longer sets message_ins_store"):
        fp._check_one_pass_pump()


def test_a_piece_that_does_not_fit_is_off_with_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from flwr.server.superlink.fleet.vce import vce_api

    def worker(queue_in, queue_out, *args):  # renamed parameters
        return None

    monkeypatch.setattr(vce_api, "worker", worker)
    with caplog.at_level(logging.WARNING, logger="runner"):
        assert fp.available("prompt-stop") is False
        assert fp.available("prompt-stop") is False  # checked again, said once
        assert fp.available("one-pass-pump") is True
    lines = [r.getMessage() for r in caplog.records if "prompt-stop" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "using Flower's own" in lines[0] and "messageins_queue" in lines[0]


def test_a_check_that_crashes_counts_as_a_mismatch(monkeypatch: pytest.MonkeyPatch):
    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(fp.PIECES, "reply-events", fp.Piece("reply-events", "x", broken))
    assert fp.available("reply-events") is False


def test_ray_params_switches_are_applied():
    class Params:
        def __init__(self, **kw):
            self.no_monitor = False
            self.include_log_monitor = None

    make = fp.lean_ray_params(Params, log_to_driver=True)
    p = make()
    assert p.no_monitor is True and p.include_log_monitor is None  # log monitor kept: output reaches the driver
    p = fp.lean_ray_params(Params, log_to_driver=False)()
    assert p.include_log_monitor is False


def test_notifying_state_reports_only_stored_replies():
    seen: list[str] = []
    msg = types.SimpleNamespace(metadata=types.SimpleNamespace(reply_to_message_id="m1"))
    state = types.SimpleNamespace(store_message_res=lambda m: "r1", other=7)
    view = fp.NotifyingState(state, seen.append)
    assert view.store_message_res(msg) == "r1" and seen == ["m1"] and view.other == 7
    rejected = fp.NotifyingState(types.SimpleNamespace(store_message_res=lambda m: None), seen.append)
    assert rejected.store_message_res(msg) is None and seen == ["m1"]
