"""One live holder per directory: a lease with run_id, host, start and heartbeat, taken over when stale.

Used twice: one live **run** per table root (``<root>/_lease``; the pipeline holds it from ``open_run`` to
``finish_run``) and one live **attempt** per scoring partition (:mod:`mira_spark.store.journal`, so a
speculative or retried duplicate of a task waits for the first one's journal instead of paying again).

Layout (a directory; every name is a generation ``G``): ``g<G>.json`` is the holder record, created with
:func:`~mira_spark.store.files.create_exclusive` (race-free: two acquirers of the same generation cannot
both win); ``g<G>.heartbeat`` is overwritten by the holder only; ``g<G>.released`` marks a clean release.
The live lease is the highest generation. Acquiring means creating generation ``G + 1`` when ``G`` is
released, its heartbeat is older than ``stale_after_s``, or its holder ran on this host and its process is
gone (a SIGKILLed driver restarted on the same machine need not wait; a takeover is logged with the old
holder), so
a holder that was only slow finds a higher generation at its next heartbeat and knows it lost
(:meth:`Lease.check` raises :class:`~mira_spark.errors.LeaseLostError`).

Heartbeats carry wall-clock seconds from the holder's host, so ``stale_after_s`` must exceed the clock
skew between hosts plus a few heartbeat intervals (the default run lease: 10 minutes, heartbeat 30 s).

The decision is pure (:func:`decide`) and tested with a fake clock; :class:`Lease` adds files and a
heartbeat thread.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import pyarrow.fs as pafs

from mira_spark.errors import LeaseHeldError, LeaseLostError
from mira_spark.store import files

if TYPE_CHECKING:
    from mira_spark.config import Settings

log = logging.getLogger(__name__)

WAIT_POLL_S = 5.0  # how often a waiting acquirer looks again

Action = Literal["acquire", "takeover", "held"]


@dataclass(frozen=True)
class LeaseRecord:
    """Who holds a lease: written once when a generation is created."""

    holder: str  # run_id, or a task attempt's id
    host: str
    pid: int
    started_at: float  # wall-clock seconds


@dataclass(frozen=True)
class LeaseView:
    """The live generation as read from the directory."""

    generation: int
    record: LeaseRecord
    heartbeat_at: float
    released: bool


@dataclass(frozen=True)
class Decision:
    action: Action
    generation: int  # the generation to create (acquire / takeover) or the live one (held)
    holder: LeaseRecord | None = None
    age_s: float = 0.0  # seconds since the live holder's last heartbeat


def decide(view: LeaseView | None, now: float, stale_after_s: float, holder_dead: bool = False) -> Decision:
    """What an acquirer does given the live generation; ``holder_dead``: the holder is known dead (its
    process is gone from this very host), so there is nothing to wait for.

    >>> rec = LeaseRecord("run-a", "h", 1, 0.0)
    >>> decide(None, 5.0, 60.0).action
    'acquire'
    >>> decide(LeaseView(3, rec, heartbeat_at=50.0, released=False), 100.0, 60.0)
    Decision(action='held', generation=3, holder=LeaseRecord(holder='run-a', host='h', pid=1, started_at=0.0), age_s=50.0)
    >>> decide(LeaseView(3, rec, heartbeat_at=30.0, released=False), 100.0, 60.0).action
    'takeover'
    >>> d = decide(LeaseView(3, rec, heartbeat_at=99.0, released=True), 100.0, 60.0)
    >>> d.action, d.generation
    ('acquire', 4)
    """
    if view is None:
        return Decision("acquire", 1)
    age = max(0.0, now - view.heartbeat_at)
    if view.released:
        return Decision("acquire", view.generation + 1, view.record, age)
    if age > stale_after_s or holder_dead:
        return Decision("takeover", view.generation + 1, view.record, age)
    return Decision("held", view.generation, view.record, age)


def describe(record: LeaseRecord, age_s: float, now: float) -> str:
    """One line naming a holder, e.g. ``run 2026...-ab12 on host h (pid 7), started 40 s ago, heartbeat 3 s ago``."""
    return (f"{record.holder} on host {record.host} (pid {record.pid}), started {now - record.started_at:.0f} s ago, "
            f"last heartbeat {age_s:.0f} s ago")


def process_gone(record: LeaseRecord, host: str) -> bool:
    """True when ``record``'s holder ran on ``host`` (this host) and its process no longer exists."""
    if record.host != host:
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False


def _gen(name: str) -> int | None:
    if name.startswith("g") and name.endswith(".json") and name[1:-5].isdigit():
        return int(name[1:-5])
    return None


class Lease:
    """A lease over ``directory`` for ``holder``; see the module docstring.

    ``what`` names the guarded thing in messages ("table root /x"); ``clock`` gives wall-clock seconds and
    ``sleep`` waits (both replaced in tests).
    """

    def __init__(self, directory: str, holder: str, *, what: str, stale_after_s: float, heartbeat_s: float,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 fs: pafs.FileSystem | None = None) -> None:
        if fs is None:
            fs, directory = files.filesystem(directory)
        self.fs, self.dir, self.holder, self.what = fs, directory.rstrip("/"), holder, what
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self.clock, self.sleep = clock, sleep
        self.generation: int | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading -------------------------------------------------------------------------------------
    def view(self) -> LeaseView | None:
        """The live (highest) generation, or None when the directory holds none."""
        names = set(files.list_names(self.fs, self.dir))
        gens = sorted((g for g in map(_gen, names) if g is not None), reverse=True)
        for g in gens:
            raw = files.read_bytes(self.fs, f"{self.dir}/g{g}.json")
            if raw is None:
                continue
            record = LeaseRecord(**json.loads(raw))
            beat = files.read_bytes(self.fs, f"{self.dir}/g{g}.heartbeat")
            heartbeat_at = float(beat) if beat else record.started_at
            return LeaseView(g, record, heartbeat_at, released=f"g{g}.released" in names)
        return None

    # -- acquiring -----------------------------------------------------------------------------------
    def try_acquire(self) -> Decision:
        """One attempt: the decision taken; ``self.generation`` is set when it was acquire or takeover."""
        now = self.clock()
        view = self.view()
        dead = view is not None and not view.released and process_gone(view.record, socket.gethostname())
        decision = decide(view, now, self.stale_after_s, holder_dead=dead)
        if decision.action == "held":
            return decision
        record = LeaseRecord(self.holder, socket.gethostname(), os.getpid(), now)
        path = f"{self.dir}/g{decision.generation}.json"
        if not files.create_exclusive(self.fs, path, json.dumps(asdict(record)).encode(),
                                      stale_after_s=self.stale_after_s, clock=self.clock):
            # another acquirer created this generation first: it holds the lease now
            view = self.view()
            if view is None:  # pragma: no cover - the winner's file vanished (cleaned up by hand)
                return Decision("held", decision.generation)
            return Decision("held", view.generation, view.record, max(0.0, self.clock() - view.heartbeat_at))
        self.generation = decision.generation
        self.beat()
        if decision.action == "takeover" and decision.holder is not None:
            why = "its process is gone from this host" if dead else f"stale beyond {self.stale_after_s:.0f} s"
            log.warning("%s: took over the lease of %s (%s)", self.what, describe(decision.holder, decision.age_s, now),
                        why)
        self._drop_old(decision.generation)
        return decision

    def acquire(self, wait: bool = False, wait_limit_s: float | None = None) -> Decision:
        """Acquire or raise :class:`LeaseHeldError` naming the holder; ``wait``: poll until it is free."""
        waited = 0.0
        while True:
            decision = self.try_acquire()
            if decision.action != "held":
                self.start_heartbeat()
                return decision
            holder = describe(decision.holder, decision.age_s, self.clock()) if decision.holder else "another holder"
            if not wait or (wait_limit_s is not None and waited >= wait_limit_s):
                raise LeaseHeldError(
                    f"{self.what} is in use by {holder}; wait for it (--wait-for-lease) or, if that holder is "
                    f"dead, its lease is taken over once its heartbeat is {self.stale_after_s:.0f} s old"
                )
            log.info("%s is in use by %s; waiting", self.what, holder)
            step = min(WAIT_POLL_S, self.heartbeat_s)
            self.sleep(step)
            waited += step

    # -- holding -------------------------------------------------------------------------------------
    def beat(self) -> None:
        """Write the heartbeat; note a loss when a higher generation exists (someone took over)."""
        if self.generation is None or self.lost:
            return
        view = self.view()
        if view is not None and (view.generation != self.generation or view.record.holder != self.holder):
            self.lost = f"{self.what}: lease taken over by {describe(view.record, 0.0, self.clock())}"
            log.error("%s", self.lost)
            return
        files.write_bytes(self.fs, f"{self.dir}/g{self.generation}.heartbeat", repr(self.clock()).encode())

    def start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.beat()
                except OSError as exc:  # a transient filesystem error: the next beat retries
                    log.warning("%s: heartbeat failed: %s", self.what, exc)

        self._thread = threading.Thread(target=loop, name=f"lease-heartbeat-{self.holder}", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise :class:`LeaseLostError` when another holder took the lease over (call before committing)."""
        if self.lost:
            raise LeaseLostError(self.lost + "; this run stops before committing more (rerun when it is free)")

    def release(self) -> None:
        """Stop the heartbeat and mark the generation released (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
            self._thread = None
        if self.generation is not None and not self.lost:
            files.write_bytes(self.fs, f"{self.dir}/g{self.generation}.released", b"")
        self.generation = None

    def _drop_old(self, generation: int) -> None:
        for name in files.list_names(self.fs, self.dir):
            g = _gen(name) if name.endswith(".json") else _gen(name.split(".", 1)[0] + ".json")
            if g is not None and g < generation - 1:
                files.delete(self.fs, f"{self.dir}/{name}")

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


LEASE_DIR = "_lease"


def run_lease(settings: Settings, run_id: str) -> Lease | None:
    """The table root's run lease for ``run_id`` (``<tables.root>/_lease``, or ``<tables.staging>/_lease``
    with catalog tables); None when disabled or when no directory is configured."""
    cfg = settings.lease
    base = settings.tables.root or settings.tables.staging
    if not cfg.enabled or not base:
        return None
    return Lease(f"{base.rstrip('/')}/{LEASE_DIR}", run_id, what=f"table root {base}",
                 stale_after_s=cfg.stale_after_s, heartbeat_s=cfg.heartbeat_s)
