"""``mira-spark bench routing``: the real runner against modelled vLLM servers, over a matrix of regimes.

Takes ``[--quick] [--services 1,2,8,30,120] [--polls 1,5,10] [--tasks 1,2,4] [--slots S]
[--distribution lognormal] [--json-only]``; runs every cell of service time x poll interval x pool
(uniform, speeds 1:1:2:4, one endpoint at half its configured weight) x tasks sharing the pool x
(no foreign load, a foreign client holding half of endpoint 0), plus two independent jobs sharing
the pool, in the discrete-event bench :mod:`mira_spark.devtools.simulator.des` (virtual time: the whole matrix
takes seconds of CPU). Prints a table, the cells below target, and a JSON line
``{"bench": "routing", "cells": [...], "worst": {...}}``.

Targets (issue 7): utilization >= 0.99 on uniform pools and >= 0.97 on mixed-speed pools, mean
requests queued at the servers <= 0.1 x slots, and (near) none queued while another server has a free
slot; two jobs sharing the pool >= 0.97.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from mira_spark.devtools.bench.common import print_table
from mira_spark.devtools.simulator.des import Outcome, Scenario, run_scenario

POOLS: dict[str, tuple[tuple[float, ...], tuple[float, ...] | None]] = {
    "uniform": ((1.0, 1.0, 1.0, 1.0), None),
    "1:1:2:4": ((1.0, 1.0, 2.0, 4.0), None),
    "half-weight": ((1.0, 1.0, 1.0, 0.5), (1.0, 1.0, 1.0, 1.0)),  # endpoint 3 at half its weight
}
SERVICES = (1.0, 2.0, 8.0, 30.0, 120.0)
POLLS = (1.0, 5.0, 10.0)
TASKS = (1, 2, 4)
DEFAULT_SLOTS = 16
UNIFORM_TARGET = 0.99
MIXED_TARGET = 0.97
JOBS_TARGET = 0.97
QUEUED_PER_SLOT_MAX = 0.1
QUEUED_WHILE_IDLE_PER_SLOT_MAX = 0.01


def target_for(sc: Scenario) -> float:
    """Utilization the cell must reach."""
    if sc.jobs > 1:
        return JOBS_TARGET
    speeds = sc.true_speeds()
    return UNIFORM_TARGET if len(set(speeds)) == 1 else MIXED_TARGET


def check(outcome: Outcome) -> list[str]:
    """What the cell misses of its targets (empty: all met)."""
    sc = outcome.scenario
    misses = []
    if outcome.failed:
        misses.append(f"{outcome.failed} failed rows")
    if outcome.utilization < target_for(sc):
        misses.append(f"utilization {outcome.utilization:.4f} < {target_for(sc)}")
    slots = outcome.slots_total
    if sc.jobs == 1 and outcome.mean_queued > QUEUED_PER_SLOT_MAX * slots:
        misses.append(f"mean queued {outcome.mean_queued:.2f} > {QUEUED_PER_SLOT_MAX} x {slots} slots")
    if outcome.mean_queued_while_idle > QUEUED_WHILE_IDLE_PER_SLOT_MAX * slots:
        misses.append(f"queued while another server idles {outcome.mean_queued_while_idle:.3f}")
    return misses


def matrix(services: Sequence[float] = SERVICES, polls: Sequence[float] = POLLS,
           tasks: Sequence[int] = TASKS, slots: int = DEFAULT_SLOTS, distribution: str = "lognormal",
           foreign: bool = True, jobs: bool = True) -> Iterator[Scenario]:
    """Every cell: service x poll x pool x tasks x foreign, then two jobs on each service x poll."""
    for service in services:
        for poll in polls:
            for speeds, weights in POOLS.values():
                for t in tasks:
                    for f in ((0, slots // 2) if foreign else (0,)):
                        yield Scenario(slots=slots, speeds=speeds, weights=weights, service_s=service,
                                       poll_s=poll, tasks=t, foreign=f, distribution=distribution)
            if jobs:
                yield Scenario(slots=slots, service_s=service, poll_s=poll, jobs=2, distribution=distribution)


def quick_matrix(slots: int = DEFAULT_SLOTS) -> list[Scenario]:
    """The corners of the matrix (shortest and longest service against slowest and fastest poll) with
    every pool, task count and foreign load, plus the full service x poll grid on the uniform pool."""
    cells = list(matrix(services=(1.0, 120.0), polls=(1.0, 10.0), slots=slots))
    cells += list(matrix(services=(2.0, 8.0, 30.0), polls=(5.0,), tasks=(1,), foreign=False, slots=slots))
    return cells


def _row(outcome: Outcome) -> dict[str, Any]:
    sc = outcome.scenario
    pool = next((name for name, (s, w) in POOLS.items() if s == sc.true_speeds() and w == sc.weights),
                "uniform")
    return {
        "service_s": sc.service_s, "poll_s": sc.poll_s, "pool": pool, "tasks": sc.tasks, "jobs": sc.jobs,
        "foreign": sc.foreign, "utilization": round(outcome.utilization, 4),
        "queued_per_slot": round(outcome.mean_queued / outcome.slots_total, 4),
        "queued_while_idle": round(outcome.mean_queued_while_idle, 3),
        "min_busy": round(min(outcome.busy_fraction), 3), "requests": outcome.requests,
        "misses": "; ".join(check(outcome)),
    }


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mira-spark bench routing", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="corners of the matrix only (what make test runs)")
    p.add_argument("--services", default=",".join(f"{s:g}" for s in SERVICES), help="mean service times, s")
    p.add_argument("--polls", default=",".join(f"{p:g}" for p in POLLS), help="/metrics poll intervals, s")
    p.add_argument("--tasks", default=",".join(str(t) for t in TASKS), help="tasks of one job sharing the pool")
    p.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help="slots per endpoint (4 endpoints)")
    p.add_argument("--distribution", default="lognormal", help="constant | exponential | lognormal")
    p.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.quick:
            cells = quick_matrix(args.slots)
        else:
            cells = list(matrix(_floats(args.services), _floats(args.polls),
                                [int(t) for t in args.tasks.split(",") if t.strip()], args.slots,
                                args.distribution))
        outcomes = [run_scenario(sc) for sc in cells]
    except ValueError as exc:
        print(f"bench routing: {exc}", file=sys.stderr)
        return 2
    rows = [_row(o) for o in outcomes]
    if not args.json_only:
        print_table(rows, [
            ("service_s", "service s", "g"), ("poll_s", "poll s", "g"), ("pool", "pool", ""),
            ("tasks", "tasks", "d"), ("jobs", "jobs", "d"), ("foreign", "foreign", "d"),
            ("utilization", "util", ".4f"), ("queued_per_slot", "queued/slots", ".3f"),
            ("queued_while_idle", "queued-while-idle", ".3f"), ("min_busy", "min busy", ".3f"),
            ("requests", "requests", "d"), ("misses", "below target", ""),
        ])
        missed = [r for r in rows if r["misses"]]
        print(f"\n{len(rows)} cells, {len(missed)} below target")
    worst = min(outcomes, key=lambda o: o.utilization - target_for(o.scenario))
    print(json.dumps({"bench": "routing", "slots_per_endpoint": args.slots, "endpoints": 4,
                      "cells": rows, "below_target": sum(bool(r["misses"]) for r in rows),
                      "worst": worst.as_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
