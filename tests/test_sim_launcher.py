"""Simulator launcher: distinct free ports, and the counters of a stopped endpoint include every request
that reached it (the fault suite's key accounting relies on it across endpoint restarts)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from mira_spark.devtools.bench.faults import Fleet
from mira_spark.devtools.simulator.faults import FaultProfile, FaultRule
from mira_spark.devtools.simulator.launcher import SimHandle, free_ports, start_in_thread, start_processes
from mira_spark.devtools.simulator.server import SimConfig


def _send(handle: SimHandle, request_id: str, timeout: float = 10.0) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
    req = urllib.request.Request(handle.url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "X-Request-Id": request_id},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except (urllib.error.URLError, OSError):
        pass  # hung and cut off at stop, or an error answer: counted either way


def test_free_ports_are_distinct() -> None:
    for n in (1, 2, 8, 32):
        ports = free_ports(n)
        assert len(ports) == len(set(ports)) == n
        assert all(0 < p < 65536 for p in ports)


def test_fleet_counts_a_request_that_lands_while_stopping(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that reaches the endpoint after the last poll but before the listener closes is counted
    (the old order, stats() then stop(), lost it from the totals)."""
    configs = [SimConfig(name=f"fleet-{i}", time_scale=2000.0) for i in range(2)]
    fleet = Fleet(configs, free_ports(len(configs)))
    fleet.start()

    def late_request_before_stop(handle: SimHandle, request_id: str) -> None:
        real_stop = handle.stop

        def stop() -> None:
            _send(handle, request_id)  # lands just before the server goes down
            real_stop()

        monkeypatch.setattr(handle, "stop", stop)

    try:
        for i, handle in enumerate(fleet.handles):
            late_request_before_stop(handle, f"late-{i}")
        fleet.restart(0, down_s=0.0)  # the first instance of endpoint 0 is retired
        assert fleet.retired[0]["requests_by_id"] == {"late-0": 1}
        late_request_before_stop(fleet.handles[0], "late-0b")
    finally:
        fleet.stop()
    seen: dict[str, int] = {}
    for s in fleet.retired:
        for key, n in s["requests_by_id"].items():
            seen[key] = seen.get(key, 0) + n
    assert seen == {"late-0": 1, "late-0b": 1, "late-1": 1}


def test_thread_handle_keeps_counters_after_stop() -> None:
    """A hung request in flight at stop() is counted in the final counters."""
    hang = FaultProfile(rules=(FaultRule(kind="hang", probability=1.0),), hang_s=30.0)
    handle = start_in_thread(SimConfig(name="stop-thread", time_scale=2000.0, faults=hang))
    sender = threading.Thread(target=_send, args=(handle, "hung-1", 30.0), daemon=True)
    sender.start()
    try:
        while handle.stats()["requests"] < 1:
            sender.join(0.02)
    finally:
        handle.stop()
    stats = handle.stats()
    assert stats["requests_by_id"] == {"hung-1": 1} and stats["faults"]["hang"] == 1
    assert "changes" in handle.stats(changes=True)
    sender.join(10)


def test_process_handle_binds_its_own_port_and_keeps_counters_after_stop() -> None:
    handles = start_processes([SimConfig(name=f"stop-proc-{i}", time_scale=2000.0) for i in range(2)])
    try:
        assert len({h.port for h in handles}) == 2 and all(h.port > 0 for h in handles)
        _send(handles[0], "p-1")
        _send(handles[0], "p-2")
    finally:
        for h in handles:
            h.stop()
    assert handles[0].stats()["requests_by_id"] == {"p-1": 1, "p-2": 1}
    assert handles[1].stats()["requests"] == 0
    assert "changes" not in handles[0].stats() and "changes" in handles[0].stats(changes=True)
