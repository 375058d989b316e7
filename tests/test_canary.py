"""Canary drift guard (issue 10 item 4): calibration references on every endpoint before the corpus.

Pure tests of the verdict (serving/canary_rules.py) and of the simulator's reference recall and score shift;
then runs on the embedded engine with two simulated endpoints: one shifted is quarantined and gets no corpus
request, a whole shifted pool stops the run before any corpus request, and a node that starts drifting after
the first check is quarantined at the next one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, write_config

from mira_spark.config import CanaryConfig, load_settings
from mira_spark.devtools.simulator.judge import judge_reference, reference_scores, shift_scores
from mira_spark.errors import CanaryDriftError, PoolUnavailableError, cli_outcome
from mira_spark.prompting.prompts import system_prompt
from mira_spark.prompting.rubric import Rubric, load_rubric
from mira_spark.serving.canary_rules import (
    REASON_DRIFT,
    REASON_UNREACHABLE,
    REASON_UNSCORED,
    CanaryCell,
    canary_rows,
    check_due,
    judge_endpoint,
    pool_failed_message,
    reference_cells,
    select_references,
)
from mira_spark.store.schemas import CANARY

N_REFS = 12  # calibration references of text group B
SLOTS = 15


@pytest.fixture(scope="module")
def rubric() -> Rubric:
    anchors = REPO / "anchors" / "text"
    return load_rubric("text_group_b", anchors / "group_B_dim_anchors.jsonl", anchors / "group_B_calibration.jsonl")


def _cells(scores: list[float | None], reference: float = 5.0) -> list[CanaryCell]:
    return [CanaryCell("http://e/v1", "r1", f"A{i}", reference, s) for i, s in enumerate(scores, start=1)]


# ---------------------------------------------------------------------------------------------- pure

@pytest.mark.parametrize(("scores", "quarantined", "reason", "mad"), [
    ([5.0, 5.5, 4.5, 5.0], False, None, 0.25),  # rounding noise
    ([6.5, 6.5, 6.5, 6.5], False, None, 1.5),  # exactly at the bound passes
    ([7.0, 6.5, 6.5, 6.5], True, REASON_DRIFT, 1.625),  # just above it
    ([2.0, 2.0, 8.0, 8.0], True, REASON_DRIFT, 3.0),  # no net shift, but scrambled
    ([5.0, 5.0, None, None], False, None, 0.0),  # half the cells scored is enough
    ([5.0, None, None, None], True, REASON_UNSCORED, 0.0),  # fewer cannot be judged
])
def test_verdict_from_mean_absolute_deviation(scores: list[float | None], quarantined: bool, reason: str | None,
                                              mad: float) -> None:
    v = judge_endpoint("http://e/v1", _cells(scores), max_deviation=1.5)
    assert (v.quarantined, v.reason) == (quarantined, reason)
    assert v.mean_abs_deviation == pytest.approx(mad)
    assert v.cells == 4 and v.scored == sum(s is not None for s in scores)


def test_unreachable_endpoint_is_quarantined_and_described() -> None:
    v = judge_endpoint("http://down/v1", _cells([None] * 3), 1.5, unreachable="connection refused")
    assert v.quarantined and v.reason == REASON_UNREACHABLE and v.mean_abs_deviation is None
    assert v.describe() == "http://down/v1: unreachable (connection refused)"


def test_signed_shift_and_deviation_per_cell() -> None:
    cells = _cells([8.0, 7.0, None], reference=5.0)
    assert [c.deviation for c in cells] == [3.0, 2.0, None]
    v = judge_endpoint("http://e/v1", cells, 1.5)
    assert v.mean_shift == pytest.approx(2.5) and "shift +2.50" in v.describe()


@pytest.mark.parametrize(("every", "due"), [(0, [0]), (1, list(range(7))), (3, [0, 3, 6]), (10, [0])])
def test_check_due_before_first_and_every_nth_wave(every: int, due: list[int]) -> None:
    assert [w for w in range(7) if check_due(w, every)] == due


def test_reference_cells_cover_every_reference_and_slot(rubric: Rubric) -> None:
    refs = select_references(rubric.calibration, 3)
    assert [r.ref_id for r in refs] == [r.ref_id for r in rubric.calibration[:3]]
    answered = {refs[0].ref_id: dict(refs[0].scores), refs[1].ref_id: {"A1": 1.0}}  # refs[2] unanswered
    cells = reference_cells("http://e/v1", refs, answered, rubric.slots)
    assert len(cells) == 3 * SLOTS
    assert all(c.deviation == 0 for c in cells[:SLOTS])
    assert cells[SLOTS].score == 1.0 and all(c.score is None for c in cells[SLOTS + 1:])
    assert select_references(rubric.calibration, None) == rubric.calibration


def test_rows_match_the_table_schema(rubric: Rubric) -> None:
    cells = _cells([5.0, 9.0])
    verdicts = {"http://e/v1": judge_endpoint("http://e/v1", cells, 1.5)}
    rows = canary_rows("run", 0, "text_group_b", cells, verdicts)
    names = [c.name for c in CANARY]
    assert len(rows) == 2 and all(len(r) == len(names) - 1 for r in rows)  # + checked_at when written
    row = dict(zip(names, rows[1], strict=False))
    assert row["deviation"] == 4.0 and row["quarantined"] is True and row["reason"] == REASON_DRIFT


def test_pool_failed_message_is_one_actionable_line() -> None:
    verdicts = [judge_endpoint("http://a/v1", _cells([8.0] * 4), 1.5),
                judge_endpoint("http://b/v1", _cells([None] * 4), 1.5, unreachable="HTTP 503")]
    msg = pool_failed_message("text_group_b", "whw06/MIRA-Text-Group1", verdicts, 1.5, wave=0, n_waves=3)
    assert "\n" not in msg and "before any document was sent" in msg
    assert "http://a/v1: mean |deviation| 3.00 (shift +3.00)" in msg and "http://b/v1: unreachable (HTTP 503)" in msg
    assert "scoring.canary.max_deviation" in msg and "whw06/MIRA-Text-Group1" in msg
    later = pool_failed_message("g", "m", verdicts, 1.5, wave=2, n_waves=3)
    assert "before wave 3/3 (waves 1-2 are committed" in later
    code, line = cli_outcome(CanaryDriftError(msg)) or (0, "")
    assert code == 2 and line.startswith("mira-spark: canary drift: group text_group_b")
    assert issubclass(CanaryDriftError, PoolUnavailableError)


def test_config_defaults_and_errors(tmp_path: Path) -> None:
    cfg = CanaryConfig()
    assert cfg.enabled and cfg.max_deviation == 1.5 and cfg.every_waves == 5 and cfg.references is None
    path = write_config(tmp_path / "run.yaml", tmp_path / "t", "/d", None, ["http://a/v1"],
                        scoring={"canary": {"max_deviation": 0, "every_wave": 2}})
    with pytest.raises(Exception) as info:
        load_settings(path)
    text = str(info.value)
    assert "run.yaml" in text and "scoring.canary.max_deviation" in text and "scoring.canary.every_wave" in text


def test_simulator_recalls_references_within_the_bound_and_shift_exceeds_it(rubric: Rubric) -> None:
    """The default bound separates the simulator's well-served answers from a 2-point shift (either way)."""
    refs = reference_scores(system_prompt(rubric, "m"))
    assert len(refs) == N_REFS
    dims = [(d.slot, d.dimension) for d in rubric.dimensions]

    def mad(shift: float) -> float:
        devs = []
        for ref in rubric.calibration:
            j = judge_reference(ref.excerpt, "calibration", dims, refs)
            assert j is not None
            devs += [shift_scores(j, shift).scores[s] - ref.scores[s] for s in rubric.slots]
        return sum(abs(d) for d in devs) / len(devs)

    bound = CanaryConfig().max_deviation
    assert mad(0) < 0.5 < bound
    assert min(mad(2), mad(-2), mad(3), mad(-3)) > bound
    assert judge_reference("<p>not a reference</p>", "s", dims, refs) is None


# ------------------------------------------------------------------------------------- Spark runs

@pytest.fixture(scope="module")
def few_docs(spark: Any, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """24 scorable documents of the sample corpus as a Delta table."""
    from pyspark.sql import functions as F

    out = str(tmp_path_factory.mktemp("canary-docs") / "documents")
    docs = spark.read.format("delta").load(str(sample_dir / "documents"))
    picked = docs.filter(F.col("source").isin("html_cpt", "html_cpt_web") & (F.length("text") > 200))
    picked.orderBy("doc_id").limit(24).write.format("delta").mode("overwrite").save(out)
    return out


@pytest.fixture
def sims(request: pytest.FixtureRequest) -> Iterator[list[Any]]:
    """Two simulated endpoints; ``request.param``: (score_shift, score_shift_after) per endpoint."""
    from mira_spark.devtools.simulator.launcher import start_in_thread
    from mira_spark.devtools.simulator.server import SimConfig

    handles = [start_in_thread(SimConfig(name=f"canary{i}", time_scale=400.0, score_shift=shift,
                                         score_shift_after=after))
               for i, (shift, after) in enumerate(request.param)]
    yield handles
    for h in handles:
        h.stop()


def _run(spark: Any, tmp_path: Path, few_docs: str, sample_dir: Path, sims: list[Any], run_id: str,
         every_waves: int = 5, **scoring: Any) -> tuple[Any, Any]:
    from mira_spark.pipeline import run_pipeline

    cfg = write_config(tmp_path / "run.yaml", tmp_path / "tables", few_docs, str(sample_dir / "validation"),
                       [h.url for h in sims],
                       scoring={"canary": {"enabled": True, "every_waves": every_waves}, **scoring})
    settings = load_settings(cfg)
    return settings, lambda: run_pipeline(spark, settings, run_id=run_id)


def _keys(sim: Any) -> dict[str, int]:
    return sim.stats()["requests_by_id"]


def _canary_keys(sim: Any) -> int:
    return sum(n for k, n in _keys(sim).items() if k.startswith("canary|"))


def _table(spark: Any, settings: Any, name: str) -> Any:
    from mira_spark.store.tables import Tables

    return Tables(spark, settings).read(name).toPandas()


@pytest.mark.spark
@pytest.mark.parametrize("sims", [[(0.0, 0), (3.0, 0)]], indirect=True)
def test_shifted_endpoint_is_quarantined_and_gets_no_corpus(spark: Any, tmp_path: Path, few_docs: str,
                                                            sample_dir: Path, sims: list[Any]) -> None:
    good, shifted = sims
    settings, run = _run(spark, tmp_path, few_docs, sample_dir, sims, "one-shifted", wave_size=100)
    summary = run()
    assert summary.rows_scored == 24 and summary.scored_ok == 24  # every document scored once
    # The shifted endpoint answered only the 12 canary requests; the good one those and the whole corpus.
    assert _canary_keys(shifted) == sum(_keys(shifted).values()) == N_REFS
    assert _canary_keys(good) == N_REFS and sum(_keys(good).values()) == N_REFS + 24
    raw = _table(spark, settings, "raw_outputs")
    assert set(raw["endpoint"]) == {good.url}
    canary = _table(spark, settings, "canary")
    assert len(canary) == 2 * N_REFS * SLOTS and set(canary["run_id"]) == {"one-shifted"}
    by_endpoint = canary.groupby("endpoint").agg(q=("quarantined", "all"), any_q=("quarantined", "any"),
                                                 mad=("deviation", lambda d: d.abs().mean()))
    assert bool(by_endpoint.loc[shifted.url, "q"]) and not bool(by_endpoint.loc[good.url, "any_q"])
    assert by_endpoint.loc[shifted.url, "mad"] > settings.scoring.canary.max_deviation
    assert by_endpoint.loc[good.url, "mad"] < 0.5
    assert set(canary[canary["endpoint"] == shifted.url]["reason"]) == {REASON_DRIFT}
    assert summary.canary["checks"] == 1 and summary.canary["requests"] == 2 * N_REFS
    assert [(q["endpoint"], q["reason"]) for q in summary.canary["quarantined"]] == [(shifted.url, REASON_DRIFT)]
    assert summary.as_dict()["canary"] == summary.canary  # in the run's JSON line (mira-spark run)
    from mira_spark.pipeline import read_run_stats
    from mira_spark.store.tables import Tables

    stages = read_run_stats(Tables(spark, settings), "one-shifted")  # and a row of run_stats, in the summary
    assert list(stages)[:3] == ["route", "canary", "score"]
    assert (stages["canary"].rows_out, stages["canary"].requests) == (1, 2 * N_REFS)
    assert stages["canary"].counts == {"quarantined": 1, f"quarantined:{REASON_DRIFT}": 1}


@pytest.mark.spark
@pytest.mark.parametrize("sims", [[(3.0, 0), (-3.0, 0)]], indirect=True)
def test_whole_pool_shifted_stops_before_any_corpus_request(spark: Any, tmp_path: Path, few_docs: str,
                                                            sample_dir: Path, sims: list[Any]) -> None:
    settings, run = _run(spark, tmp_path, few_docs, sample_dir, sims, "all-shifted")
    with pytest.raises(CanaryDriftError) as info:
        run()
    for sim in sims:
        assert _canary_keys(sim) == sum(_keys(sim).values()) == N_REFS  # nothing of the corpus was billed
    message = str(info.value)
    assert "\n" not in message and "before any document was sent" in message
    assert all(f"{sim.url}: mean |deviation|" in message for sim in sims)
    assert "shift +" in message and "shift -" in message
    assert _table(spark, settings, "raw_outputs").empty
    canary = _table(spark, settings, "canary")
    assert len(canary) == 2 * N_REFS * SLOTS and canary["quarantined"].all()


@pytest.mark.spark
@pytest.mark.parametrize("sims", [[(0.0, 0), (3.0, N_REFS)]], indirect=True)
def test_node_drifting_after_the_first_check_is_quarantined_at_the_next(
        spark: Any, tmp_path: Path, few_docs: str, sample_dir: Path, sims: list[Any]) -> None:
    """The second endpoint answers its first 12 requests (the first check) unshifted, then drifts."""
    good, drifting = sims
    settings, run = _run(spark, tmp_path, few_docs, sample_dir, sims, "drift-later", every_waves=1,
                         wave_size=8, tasks=1)
    summary = run()
    assert summary.waves == 3 and summary.rows_scored == 24
    canary = _table(spark, settings, "canary")
    verdict = canary.groupby(["wave", "endpoint"])["quarantined"].all()
    assert not verdict[(0, drifting.url)] and not verdict[(0, good.url)]  # passed before the corpus
    assert verdict[(1, drifting.url)] and verdict[(2, drifting.url)] and not verdict[(1, good.url)]
    raw = _table(spark, settings, "raw_outputs")
    first_wave = raw[raw["wave"] == 0]
    assert (first_wave["endpoint"] == drifting.url).any(), "the drifting node was in the pool for wave 1"
    assert set(raw[raw["wave"] > 0]["endpoint"]) == {good.url}  # nothing after its quarantine
    corpus_on_drifting = sum(n for k, n in _keys(drifting).items() if not k.startswith("canary|"))
    assert corpus_on_drifting == (first_wave["endpoint"] == drifting.url).sum()
    assert _canary_keys(drifting) == 3 * N_REFS and summary.canary["checks"] == 3


# ------------------------------------------------------------------ the guard, without Spark

def _plan(rubric: Rubric, urls: list[str]) -> Any:
    from mira_spark.config import EndpointConfig, PoolConfig, SamplingConfig, ScoringConfig
    from mira_spark.scoring.stage import GroupPlan, ScoringPlan

    pool = PoolConfig(endpoints=tuple(EndpointConfig(url=u) for u in urls), api_key_env=None,
                      slots_per_endpoint=8, backoff_initial_s=0.01, backoff_max_s=0.1, breaker_probe_s=0.5)
    group = GroupPlan(name=rubric.group, model="whw06/MIRA-Text-Group1", rubric=rubric, pool=pool,
                      prompt_version="v")
    return ScoringPlan(groups={rubric.group: group}, sampling=SamplingConfig(), scoring=ScoringConfig(),
                       max_model_len=65536, in_flight_per_task={rubric.group: 1})


def test_group_without_references_is_skipped_without_a_request() -> None:
    from mira_spark.prompting.rubric import rubric_from_names
    from mira_spark.serving.canary import CanaryGuard

    plan = _plan(rubric_from_names("plain", ["Clarity"]), ["http://127.0.0.1:9/v1"])  # nothing listens there
    summary: dict[str, Any] = {}
    guard = CanaryGuard(plan, CanaryConfig(), "r", 1, summary)
    assert guard.before_wave(0, plan, write=lambda rows: pytest.fail("no rows to write")) is plan
    assert summary == {"checks": 0, "requests": 0, "quarantined": [], "skipped": ["plain"]}


@pytest.mark.parametrize("sims", [[(0.0, 0), (0.0, 0)]], indirect=True)
def test_every_check_scores_the_configured_pool_so_a_passing_node_rejoins(rubric: Rubric, sims: list[Any]) -> None:
    """A node left out of the current plan (quarantined earlier, then replaced) is checked and rejoins."""
    from mira_spark.serving.canary import CanaryGuard

    first, replaced = sims
    full = _plan(rubric, [first.url, replaced.url])
    guard = CanaryGuard(full, CanaryConfig(references=2, every_waves=1), "r", 4, {})
    current = _plan(rubric, [first.url])  # as a quarantine at an earlier check left it
    written: list[list[tuple]] = []
    after = guard.before_wave(1, current, write=written.append)
    assert [e.url for e in after.groups[rubric.group].pool.endpoints] == [first.url, replaced.url]
    assert after.in_flight_per_task[rubric.group] > current.in_flight_per_task[rubric.group]  # re-planned
    assert len(written) == 1 and len(written[0]) == 2 * 2 * SLOTS  # 2 endpoints x 2 references x 15 slots
    assert {k.split("|")[0] for k in _keys(replaced)} == {"canary"} and sum(_keys(replaced).values()) == 2


@pytest.mark.spark
@pytest.mark.parametrize("sims", [[(3.0, N_REFS), (-3.0, N_REFS)]], indirect=True)
def test_whole_pool_drifting_mid_run_stops_with_committed_waves_kept(
        spark: Any, tmp_path: Path, few_docs: str, sample_dir: Path, sims: list[Any]) -> None:
    """Both endpoints pass the first check, then drift: the run stops before wave 2, wave 1 stays committed."""
    settings, run = _run(spark, tmp_path, few_docs, sample_dir, sims, "pool-drifts", every_waves=1,
                         wave_size=8, tasks=1)
    with pytest.raises(CanaryDriftError) as info:
        run()
    assert "before wave 2/3 (wave 1 is committed; a rerun scores the rest)" in str(info.value)
    raw = _table(spark, settings, "raw_outputs")
    assert len(raw) > 0 and set(raw["wave"]) == {0}  # nothing of waves 2 and 3 was sent
    corpus = sum(n for sim in sims for k, n in _keys(sim).items() if not k.startswith("canary|"))
    assert corpus == len(raw) and all(_canary_keys(sim) == 2 * N_REFS for sim in sims)
    scores = _table(spark, settings, "scores")
    assert set(scores["doc_id"]) == set(raw["doc_id"])  # the committed wave was merged
    canary = _table(spark, settings, "canary")
    assert set(canary[canary["quarantined"]]["wave"]) == {1} and not canary[canary["wave"] == 0]["quarantined"].any()


@pytest.mark.parametrize("sims", [[(0.0, 0)]], indirect=True)
def test_endpoint_without_health_is_unreachable_and_leaves_the_pool(rubric: Rubric, sims: list[Any]) -> None:
    from mira_spark.devtools.simulator.launcher import free_port
    from mira_spark.serving.canary import CanaryGuard

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    plan = _plan(rubric, [sims[0].url, dead])
    summary: dict[str, Any] = {}
    after = CanaryGuard(plan, CanaryConfig(references=1), "r", 1, summary).before_wave(0, plan, write=lambda r: None)
    assert [e.url for e in after.groups[rubric.group].pool.endpoints] == [sims[0].url]
    assert [(q["endpoint"], q["reason"]) for q in summary["quarantined"]] == [(dead, REASON_UNREACHABLE)]
    assert summary["requests"] == 1  # the live endpoint's one reference; none to the dead one
