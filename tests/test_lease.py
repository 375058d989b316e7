"""The lease (one live holder per directory): the pure decision, files under a fake clock, and races.

No Spark. Races use real threads against a real directory: exactly one acquirer may win a generation,
both through ``link(2)`` (local filesystems) and through claim-then-list (object stores; exercised on a
local directory seen through ``SubTreeFileSystem``, which this module treats as non-local).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from mira_spark.errors import LeaseHeldError, LeaseLostError, cli_outcome
from mira_spark.store import files
from mira_spark.store.lease import Lease, LeaseRecord, LeaseView, decide

STALE = 60.0
REC = LeaseRecord("run-a", "host-a", 11, 0.0)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("view", "now", "action", "generation"),
    [
        (None, 0.0, "acquire", 1),
        (LeaseView(4, REC, heartbeat_at=100.0, released=False), 100.0, "held", 4),
        (LeaseView(4, REC, heartbeat_at=100.0, released=False), 160.0, "held", 4),  # exactly at the limit
        (LeaseView(4, REC, heartbeat_at=100.0, released=False), 160.5, "takeover", 5),
        (LeaseView(4, REC, heartbeat_at=100.0, released=True), 101.0, "acquire", 5),
        (LeaseView(4, REC, heartbeat_at=200.0, released=False), 100.0, "held", 4),  # holder clock ahead
    ],
)
def test_decide(view: LeaseView | None, now: float, action: str, generation: int) -> None:
    decision = decide(view, now, STALE)
    assert (decision.action, decision.generation) == (action, generation)


def _lease(tmp_path: Path, holder: str, clock: FakeClock, fs: pafs.FileSystem | None = None) -> Lease:
    directory = "lease" if fs is not None else str(tmp_path / "lease")
    return Lease(directory, holder, what="table root /t", stale_after_s=STALE, heartbeat_s=10.0,
                 clock=clock, sleep=clock.sleep, fs=fs)


def test_second_holder_refused_with_holder_named_then_takes_over_when_stale(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    a, b = _lease(tmp_path, "run-a", clock), _lease(tmp_path, "run-b", clock)
    assert a.try_acquire().action == "acquire" and a.generation == 1
    clock.now += 30
    a.beat()
    clock.now += 30  # 30 s since a's heartbeat: still live
    with pytest.raises(LeaseHeldError) as err:
        b.acquire(wait=False)
    message = cli_outcome(err.value)[1]
    assert "\n" not in message and "run-a on host" in message and "last heartbeat 30 s ago" in message
    assert b.generation is None
    clock.now += 31  # 61 s without a heartbeat: stale
    with caplog.at_level(logging.WARNING, logger="mira_spark.store.lease"):
        decision = b.try_acquire()
    assert (decision.action, b.generation) == ("takeover", 2)
    assert any("took over the lease of run-a" in r.message for r in caplog.records)
    a.check()  # a has not noticed yet ...
    a.beat()  # ... its next heartbeat does
    with pytest.raises(LeaseLostError, match="taken over by run-b"):
        a.check()
    assert b.view().record.holder == "run-b"  # a's late heartbeat did not touch b's generation


def test_release_frees_at_once_and_waiting_acquirer_gets_it(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = _lease(tmp_path, "run-a", clock), _lease(tmp_path, "run-b", clock)
    a.try_acquire()
    slept: list[float] = []

    def sleep_then_release(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        if len(slept) == 3:
            a.release()

    b.sleep = sleep_then_release
    assert b.acquire(wait=True).action == "acquire"
    b.release()
    assert len(slept) == 3 and b.view().generation == 2 and b.view().released


def test_wait_limit_gives_up_naming_the_holder(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = _lease(tmp_path, "run-a", clock), _lease(tmp_path, "run-b", clock)
    a.try_acquire()
    b.sleep = lambda s: None  # the holder stays fresh: time does not move
    with pytest.raises(LeaseHeldError, match="run-a"):
        b.acquire(wait=True, wait_limit_s=20.0)


def test_old_generations_are_cleaned_up(tmp_path: Path) -> None:
    clock = FakeClock()
    for i in range(5):
        lease = _lease(tmp_path, f"run-{i}", clock)
        lease.try_acquire()
        lease.release()
    names = files.list_names(pafs.LocalFileSystem(), str(tmp_path / "lease"))
    assert {n.split(".")[0] for n in names} <= {"g4", "g5"} and "g5.json" in names


def _race(create: list, rounds: int, contenders: int) -> list[int]:
    winners_per_round = []
    for r in range(rounds):
        barrier = threading.Barrier(contenders)
        won: list[int] = []

        def go(i: int, r: int = r, barrier: threading.Barrier = barrier, won: list[int] = won) -> None:
            barrier.wait()
            if create[0](r, i):
                won.append(i)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(contenders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners_per_round.append(len(won))
    return winners_per_round


def test_create_exclusive_local_has_exactly_one_winner(tmp_path: Path) -> None:
    fs = pafs.LocalFileSystem()
    create = [lambda r, i: files.create_exclusive(fs, f"{tmp_path}/r{r}/lock", b"%d" % i, stale_after_s=STALE)]
    assert _race(create, rounds=20, contenders=6) == [1] * 20


def test_create_exclusive_claim_then_list_never_has_two_winners(tmp_path: Path) -> None:
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    assert not files.is_local(fs)  # the object-store code path
    create = [lambda r, i: files.create_exclusive(fs, f"r{r}/lock", b"%d" % i, stale_after_s=STALE)]
    winners = _race(create, rounds=30, contenders=4)
    assert max(winners) == 1  # safety: never two
    assert sum(winners) > 0  # and the election does elect (simultaneous claimants may all withdraw)
    # no claim files are left behind
    assert not [n for r in range(30) for n in files.list_names(fs, f"r{r}") if files.CLAIM_MARK in n]


def test_claim_then_list_ignores_a_dead_claimants_stale_claim(tmp_path: Path) -> None:
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    clock = FakeClock()
    files.write_bytes(fs, f"d/lock{files.CLAIM_MARK}dead", b'{"at": 1000.0}')
    assert not files.create_exclusive(fs, "d/lock", b"x", stale_after_s=STALE, clock=clock)  # live rival
    clock.now += STALE + 1
    assert files.create_exclusive(fs, "d/lock", b"x", stale_after_s=STALE, clock=clock)


def test_claim_then_list_withdraws_when_a_listed_rival_claim_vanishes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaving CI once hit (two winners): B lists while A's claim exists, A then creates the file
    and deletes its claim, B reads the vanished claim. A vanished claim is not a dead claimant's: B withdraws."""
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    files.write_bytes(fs, f"d/lock{files.CLAIM_MARK}rival", b'{"at": 1000.0}')
    real_read = files.read_bytes

    def rival_finishes(fs_: Any, path: str) -> bytes | None:
        if files.CLAIM_MARK + "rival" in path:
            files.write_bytes(fs, "d/lock", b"A")  # the rival created the file after our listing ...
            files.delete(fs, path)  # ... and removed its claim
            return None
        return real_read(fs_, path)

    monkeypatch.setattr(files, "read_bytes", rival_finishes)
    assert not files.create_exclusive(fs, "d/lock", b"B", stale_after_s=STALE, clock=FakeClock())
    assert real_read(fs, "d/lock") == b"A"  # the winner's file stands


def test_claim_then_list_survives_a_listing_that_is_not_a_snapshot(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaving CI hit next (two winners): a listing is not a snapshot. While B's first listing runs,
    rival A creates the file (after the listing passed its name) and removes its claim (before the listing
    reached it), so that listing shows neither. B's second listing, which starts after both, sees the file."""
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    rival_claim = f"d/lock{files.CLAIM_MARK}rival"
    files.write_bytes(fs, rival_claim, b'{"at": 1000.0}')  # A claimed first
    real_list = files.list_names
    calls: list[list[str]] = []

    def rival_finishes_mid_listing(fs_: Any, directory: str) -> list[str]:
        names = real_list(fs_, directory)
        calls.append(names)
        if len(calls) == 2:  # B's first listing after its claim (the first call is the check before it)
            files.write_bytes(fs, "d/lock", b"A")
            files.delete(fs, rival_claim)
            return [n for n in names if files.CLAIM_MARK in n and not n.endswith("rival")]  # B's own claim only
        return names

    monkeypatch.setattr(files, "list_names", rival_finishes_mid_listing)
    assert not files.create_exclusive(fs, "d/lock", b"B", stale_after_s=STALE, clock=FakeClock())
    assert len(calls) >= 3  # the case was created: the torn listing happened and another followed it
    assert files.read_bytes(fs, "d/lock") == b"A"  # the winner's file stands
    assert not [n for n in real_list(fs, "d") if files.CLAIM_MARK in n]  # B withdrew its claim


def test_two_leases_race_on_object_store_path_one_holds(tmp_path: Path) -> None:
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    clock = FakeClock()
    leases = [_lease(tmp_path, f"run-{i}", clock, fs=fs) for i in range(4)]
    barrier = threading.Barrier(len(leases))
    actions: list[str] = []

    def go(lease: Lease) -> None:
        barrier.wait()
        actions.append(lease.try_acquire().action)

    threads = [threading.Thread(target=go, args=(x,)) for x in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    holders = [x for x in leases if x.generation is not None]
    assert len(holders) <= 1 and actions.count("acquire") == len(holders)


def test_holder_whose_process_is_gone_from_this_host_is_taken_over_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import json
    import socket
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(done.stdout)  # a process of this host that has exited
    clock = FakeClock()
    (tmp_path / "lease").mkdir()
    record = {"holder": "run-killed", "host": socket.gethostname(), "pid": dead_pid, "started_at": clock.now}
    (tmp_path / "lease" / "g1.json").write_text(json.dumps(record))
    other_host = {**record, "host": "elsewhere", "holder": "run-remote"}
    lease = _lease(tmp_path, "run-b", clock)
    with caplog.at_level(logging.WARNING, logger="mira_spark.store.lease"):
        assert lease.try_acquire().action == "takeover"  # heartbeat fresh, but its process is gone
    assert any("its process is gone from this host" in r.message for r in caplog.records)
    lease.release()
    (tmp_path / "lease" / "g3.json").write_text(json.dumps(other_host))  # same pid, another host: alive for all we know
    assert _lease(tmp_path, "run-c", clock).try_acquire().action == "held"
