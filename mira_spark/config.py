"""Settings: frozen pydantic models loaded from YAML in ``conf/``.

Takes ``conf/<name>.yaml`` (engine, tables, scoring, selection...) and the scorers file it names
(``conf/scorers.yaml``: source -> scorer group -> model -> anchors -> endpoint pool); gives one validated
:class:`Settings`. Relative paths are resolved against the directory of the YAML file that contains
them, so a run does not depend on the working directory. Errors are :class:`ConfigError` with the file,
the key and what to change. Pure logic: imports no Spark.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mira_spark.errors import ConfigError
from mira_spark.prompting.constrained import (
    CONSTRAINT_KEYS,
    ConstrainedOutput,
    StructuredOutputAPI,
    check_mode,
)
from mira_spark.store.schemas import MAX_SLOTS

Engine = Literal["sail", "local", "connect", "active"]
TableFormat = Literal["delta", "parquet"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SecretRef(_Frozen):
    """A Databricks secret scope entry, read with ``dbutils.secrets.get`` when running there."""

    scope: str = Field(description="Secret scope name.")
    key: str = Field(description="Key inside the scope.")


class EndpointConfig(_Frozen):
    url: str = Field(description="OpenAI-compatible base URL ending in /v1, e.g. http://10.0.0.5:8000/v1.")
    weight: float = Field(default=1.0, gt=0, description="Relative capacity; a 2x faster replica gets 2.")
    gpus: int = Field(default=8, ge=1, description="GPUs behind this endpoint (the seed serves TP=8 on one node); "
                                                   "progress and cost lines count GPU-hours with it.")

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"endpoint url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class PoolConfig(_Frozen):
    """A pool of interchangeable vLLM endpoints serving the same model."""

    endpoints: tuple[EndpointConfig, ...] = Field(min_length=1, description="Endpoints of the pool.")
    api_key_env: str | None = Field(
        default="MIRA_API_KEY", description="Environment variable holding the API key (never written anywhere)."
    )
    api_key_secret: SecretRef | None = Field(default=None, description="Databricks secret scope entry for the key.")
    verify_tls: bool = Field(default=True, description="Verify TLS certificates of https endpoints.")
    supports_n: bool = Field(
        default=True,
        description="The server answers a request's n with n choices (vLLM, OpenAI): a document's extra samples "
        "(scoring.samples) go in one request, prefilled once; false: one request per sample (distinct seeds). A "
        "server that returns fewer choices is detected: the missing samples are asked one by one.",
    )
    slots_per_endpoint: int = Field(
        default=256, ge=1, description="Sequences one endpoint runs at once (vLLM --max-num-seqs)."
    )
    in_flight_target: int | None = Field(
        default=None, ge=1, description="Total requests in flight across the pool; default slots x endpoints x 1.1."
    )
    request_timeout_s: float = Field(default=900.0, gt=0, description="Whole-request timeout, seconds.")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP connect timeout, seconds.")
    max_attempts: int = Field(default=6, ge=1, le=50, description="Attempts per request for retryable errors.")
    backoff_initial_s: float = Field(default=0.5, ge=0, description="First retry delay before jitter.")
    backoff_max_s: float = Field(default=30.0, ge=0, description="Cap of the retry delay.")
    metrics_poll_s: float = Field(default=5.0, ge=0, description="How often /metrics is read (0 = never).")
    breaker_failures: int = Field(default=5, ge=1, description="Consecutive failures that take an endpoint out.")
    breaker_probe_s: float = Field(default=5.0, gt=0, description="Seconds before an open endpoint is probed.")
    startup_check: bool = Field(default=True, description="Fail fast when no endpoint answers /health at start.")
    exact_token_count: bool = Field(
        default=False,
        description="Count truncated prompts exactly with the server's /tokenize and keep more of the document.",
    )
    request_id_header: bool = Field(
        default=True,
        description="Send each row's key as X-Request-Id (joins server logs to rows); off for servers that "
        "require a UUID there (llama-cpp-python's server answers any other value with an empty HTTP 400).",
    )


class ScorerGroupConfig(_Frozen):
    """One MIRA student scorer: its model, rubric files, endpoint pool and the sources routed to it.

    Only groups with ``enabled: true`` (the default) are used by a run, so only theirs must be complete:
    anchors file present, pool defined, at least one source. A listed but disabled group (the siblings
    whose anchors a user has not supplied yet) is parsed and kept in :attr:`ScorersConfig.disabled`.
    """

    enabled: bool = Field(
        default=True,
        description="Use this group in runs; false: listed only (its anchors, pool and sources are not needed).",
    )
    family: str = Field(description="Scorer family, e.g. text, qa, agent or code.")
    model: str = Field(description="Model name sent in requests, e.g. whw06/MIRA-Text-Group1.")
    anchors: Path | None = Field(
        default=None,
        description="Dimension anchors JSONL (one line per slot A1..A<dimensions>); required when enabled.",
    )
    calibration: Path | None = Field(default=None, description="Calibration references JSONL.")
    pool: str = Field(description="Name of an entry under pools: (needed only when enabled).")
    sources: tuple[str, ...] = Field(
        default=(), description="Sources scored by this group; at least one when enabled."
    )
    dimensions: int = Field(
        default=15, ge=1, description=f"Number of anchor slots expected; at most {MAX_SLOTS}, what the score table holds."
    )

    @field_validator("dimensions")
    @classmethod
    def _fits_the_tables(cls, value: int) -> int:
        if value > MAX_SLOTS:
            raise ValueError(
                f"{value} slots do not fit the score table, which holds {MAX_SLOTS} "
                f"(a1_score .. a{MAX_SLOTS}_score); use a rubric of at most {MAX_SLOTS} slots"
            )
        return value


class ScorersConfig(_Frozen):
    """Routing: the groups a run uses (``groups``), the listed but disabled ones, and the endpoint pools.

    The YAML lists every group under ``groups:``; loading splits them by ``enabled`` so that everything
    downstream (routing, prompts, scoring, estimates) sees only the groups a run uses.
    """

    groups: dict[str, ScorerGroupConfig] = Field(
        min_length=1, description="Enabled scorer groups: the ones a run routes sources to."
    )
    disabled: dict[str, ScorerGroupConfig] = Field(
        default_factory=dict, description="Groups listed with enabled: false (not used by runs)."
    )
    pools: dict[str, PoolConfig] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _split_by_enabled(cls, data: Any) -> Any:
        """``groups:`` may hold enabled and disabled groups; an override may enable a disabled one."""
        if not isinstance(data, Mapping):
            return data
        listed = data.get("groups") or {}
        parked = data.get("disabled") or {}
        if not isinstance(listed, Mapping) or not isinstance(parked, Mapping):
            return data
        enabled: dict[str, Any] = {}
        disabled: dict[str, Any] = {}
        for name in [*parked, *(n for n in listed if n not in parked)]:
            entry = listed.get(name)
            base = parked.get(name)
            if isinstance(base, Mapping) and isinstance(entry, Mapping):
                entry = deep_merge(base, entry)
            elif entry is None:
                entry = base
            is_on = entry.get("enabled", True) if isinstance(entry, Mapping) else True
            (enabled if is_on else disabled)[name] = entry
        if listed and not enabled:
            names = ", ".join(sorted(disabled))
            raise ValueError(f"every group is enabled: false ({names}); enable at least one group a run can use")
        return {**data, "groups": enabled, "disabled": disabled}

    @model_validator(mode="after")
    def _references(self) -> ScorersConfig:
        owner: dict[str, str] = {}
        for name, group in self.groups.items():
            if group.pool not in self.pools:
                raise ValueError(
                    f"group {name!r} uses pool {group.pool!r}, which is not defined; defined pools: "
                    f"{sorted(self.pools)}; add pools.{group.pool} with its endpoints, or set "
                    f"groups.{name}.enabled: false"
                )
            if not group.sources:
                raise ValueError(f"group {name!r} is enabled but lists no sources; add the source ids it "
                                 f"scores under groups.{name}.sources, or set enabled: false")
            for source in group.sources:
                if source in owner:
                    raise ValueError(f"source {source!r} is routed to both {owner[source]!r} and {name!r}")
                owner[source] = name
        return self

    def group_for_source(self) -> dict[str, str]:
        return {s: name for name, g in self.groups.items() for s in g.sources}


def check_group_files(scorers: ScorersConfig, where: Path, inline: Mapping[str, Path] | None = None) -> None:
    """Every enabled group's rubric files exist; otherwise one line naming group, file and the fix.

    Disabled groups are not checked: the shipped ``conf/scorers.yaml`` lists all 12 MIRA scorers, and
    only the groups whose anchors a user has supplied are switched on. ``where`` is the scorers file;
    ``inline`` names the run config of groups set inline there.
    """
    for name, group in scorers.groups.items():
        where = (inline or {}).get(name, where)
        fix = (f"put the group's file there or point groups.{name}.{{key}} at it, or set "
               f"groups.{name}.enabled: false to run without this group")
        if group.anchors is None:
            raise ConfigError(f"{where}: group {name!r} is enabled but has no anchors file (its model card does "
                              f"not name one); set groups.{name}.anchors to its *_dim_anchors.jsonl, or set "
                              f"groups.{name}.enabled: false")
        for key in ("anchors", "calibration"):
            path = getattr(group, key)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{where}: group {name!r} is enabled but its {key} file {path} does not exist; "
                                  + fix.format(key=key))


class SamplingConfig(_Frozen):
    """Sampling parameters; defaults are the model card's."""

    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=2048, ge=64, description="Completion budget per request.")
    seed: int | None = Field(default=None, description="Sampling seed sent to the server (vLLM honours it).")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra fields merged into every request body (server-specific options such as top_k); "
        "scoring.constrained_output adds its structured-output field here per scorer group.",
    )

    @field_validator("extra_body")
    @classmethod
    def _extra_body_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        core = {"model", "messages", "temperature", "top_p", "max_tokens", "seed"}
        clash = sorted(core & set(value))
        if clash:
            raise ValueError(f"extra_body may not set {clash}: set sampling.<key> (or the group's model) instead")
        return value


class ServingConfig(_Frozen):
    max_model_len: int = Field(default=65536, ge=1024, description="Server context length (vLLM --max-model-len).")


class CanaryConfig(_Frozen):
    """Drift guard: the group's calibration references scored on every endpoint before the corpus is sent."""

    enabled: bool = Field(
        default=True,
        description="Score the calibration references on every endpoint before the first wave (and every "
        "every_waves waves) and take endpoints that drift out of the pool; groups without references skip it.",
    )
    max_deviation: float = Field(
        default=1.5, gt=0, le=10,
        description="Largest mean absolute deviation (score points, 0-10 scale) of an endpoint's scores from the "
        "references' scores; an endpoint above it is quarantined (README: why 1.5).",
    )
    every_waves: int = Field(
        default=5, ge=0,
        description="Check again before every N-th wave, so a replaced or restarted node is checked too "
        "(0 = only before the first wave).",
    )
    references: int | None = Field(
        default=None, ge=1,
        description="Calibration references sent to each endpoint per check (the first N of the file); "
        "default all.",
    )


class AdaptiveSamplesConfig(_Frozen):
    """Spend the extra samples only where they can change a decision (README "k samples")."""

    enabled: bool = Field(
        default=False,
        description="After a first selection on sample 0, request samples 1..k-1 only for documents whose "
        "composite lies within `band` of their unit's cut (in any score variant), then select again.",
    )
    band: float = Field(
        default=1.5, gt=0, le=100,
        description="Half-width of the band around each unit's cut, in composite points (0-100): the scale "
        "of one sample's spread (decisions.composite_sd), so documents farther from the cut than the band "
        "rarely flip.",
    )
    max_share: float = Field(
        default=0.15, gt=0, le=1,
        description="At most this share of the scored documents get extra samples: when more lie within "
        "the band, exactly that many: the ones nearest their cut (0.01-point steps; the step the cap splits is taken in the order of xxhash64(doc_id, scorer)). Bounds the extra requests on any "
        "corpus, however densely it crowds its cuts.",
    )


class ExpectedScoresConfig(_Frozen):
    """Expected scores from the score tokens' logprobs (README "Expected scores"; parsing/expected.py)."""

    enabled: bool = Field(
        default=False,
        description="Ask the server for logprobs (logprobs: true, top_logprobs) and store each slot's expected "
        "score, the mean of the scorer's distribution over its score tokens, in expected_scores beside the "
        "sampled score; the selection uses it (selection.score_basis). No extra request, no extra decode.",
    )
    top_logprobs: int = Field(
        default=10, ge=1, le=20,
        description="Alternatives per generated token (vLLM allows up to its --max-logprobs, 20 by default). "
        "Ten cover the digits 0-9; each alternative adds ~40 bytes per generated token to the response.",
    )


class ScoringConfig(_Frozen):
    wave_size: int = Field(default=20000, ge=1, description="Documents per committed wave.")
    tasks: int | None = Field(
        default=None, ge=1,
        description="Spark tasks per wave; default: as few as carry the in-flight target (~2,000 per task), at most the session's parallelism.",
    )
    max_output_repairs: int = Field(default=2, ge=0, description="Re-asks for malformed or truncated outputs.")
    partial_policy: Literal["reask", "keep"] = Field(
        default="reask", description="Output missing some slots: re-ask only those slots, or keep as partial."
    )
    rescore_errors: tuple[str, ...] = Field(
        default=(),
        description="Error codes of failed score rows to send again (e.g. http_503, timeout); "
        "`mira-spark run --retry-failed` sets the transient ones.",
    )
    max_text_chars: int = Field(
        default=1_000_000, ge=1000, description="Longer texts are cut to this many characters before prompting."
    )
    constrained_output: ConstrainedOutput = Field(
        default="off",
        description="Decode under the seed's line format: off, regex or grammar (built from the rubric; "
        "mira_spark/prompting/constrained.py), sent in the field structured_output_api names.",
    )
    structured_output_api: StructuredOutputAPI = Field(
        default="structured_outputs",
        description="Request field for constrained output: structured_outputs (vLLM >= 0.10.2), guided "
        "(guided_regex/guided_grammar, vLLM < 0.12), llama_cpp (top-level GBNF grammar; no regex).",
    )
    free_text_max_chars: int = Field(
        default=120, ge=8, le=4000,
        description="Longest rationale, brief (and domain_tag, at most 32) that constrained output allows, one "
        "line each: bounds the completion so a model cannot ramble.",
    )
    canary: CanaryConfig = Field(
        default_factory=CanaryConfig,
        description="Canary drift guard: scoring.canary.enabled, max_deviation, every_waves, references.",
    )

    samples: int = Field(
        default=1, ge=1, le=15,
        description="Samples per document at the card's temperature: the composite is their mean, their spread "
        "decisions.composite_sd; samples 1..k-1 are stored in the samples table (1 = one request per document).",
    )
    adaptive_samples: AdaptiveSamplesConfig = Field(
        default_factory=AdaptiveSamplesConfig,
        description="Request samples 1..k-1 only for documents near their unit's cut.",
    )
    expected_scores: ExpectedScoresConfig = Field(
        default_factory=ExpectedScoresConfig,
        description="Store each slot's expected score from the score tokens' logprobs (no extra request).",
    )

    @model_validator(mode="after")
    def _constraint_fits_server(self) -> ScoringConfig:
        problem = check_mode(self.constrained_output, self.structured_output_api)
        if problem is not None:
            raise ValueError(problem)
        return self


# Failures a later run may fix: overload, outages and timeouts (not 4xx, bad input or bad outputs).
TRANSIENT_ERRORS = ("http_408", "http_429", "http_500", "http_502", "http_503", "http_504", "timeout",
                    "connection_error")


MaskOn = Literal["point", "ci_strict", "ci_lenient"]
MaskMerge = Literal["replace", "union", "override"]


class ReliabilityConfig(_Frozen):
    """The reliability mask: per (source, dimension) agreement with the teacher, with CIs and shrinkage.

    Maths: mira_spark/selection/confidence.py; the defaults are justified in README "Selection".
    """

    max_mae: float = Field(default=2.0, gt=0, description="Mask a (source, dimension) whose teacher-student MAE exceeds this (0-10 scale).")
    min_spearman: float = Field(default=0.3, ge=-1, le=1, description="Mask when Spearman rho is below this.")
    min_n: int = Field(
        default=50, ge=4,
        description="Validation pairs a cell needs to be judged on its own (shrunk) estimate; fewer: its "
        "scorer group's pooled estimate (basis group), else the global one, else kept (basis none).",
    )
    mask_on: MaskOn = Field(
        default="point",
        description="What the rule compares: point (shrunk point estimates), ci_strict (masked unless the 95% "
        "interval shows reliability) or ci_lenient (masked only when the interval shows unreliability).",
    )
    kappa: float = Field(default=20.0, gt=0, description="MAE shrinkage pseudo-count toward the group's pooled MAE.")
    level: float = Field(default=0.95, gt=0.5, lt=1, description="Confidence level of every interval.")
    bootstrap_replicates: int = Field(
        default=2000, ge=200, description="Bootstrap replicates for cells with < 5 distinct teacher values."
    )
    seed: int = Field(default=20261201, description="Bootstrap seed (each cell derives its own from it).")
    published_mask: Path | None = Field(
        default=None, description="A published mask file (.csv with header source,dimension,masked, or .jsonl); "
        "dimension is the dimension name or its slot (A1..A15).",
    )
    published_mask_mode: MaskMerge = Field(
        default="union",
        description="How the published mask combines with the computed one: replace (only the file), union "
        "(masked when either masks) or override (the file where it lists a cell, computed elsewhere).",
    )


Weights = Literal["uniform", "cluster_size", "custom"]
UnitKind = Literal["global", "group", "source"]
ThresholdMode = Literal["fraction", "tokens", "min_score"]
Method = Literal["score", "random"]
Semantics = Literal["never_exceed", "reach"]


class VariantConfig(_Frozen):
    """One selection written side by side with the others from the same scores (MIRA-Global/Group/Source, Random)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Variant name (the variant column).")
    unit: UnitKind = Field(default="global", description="Budget unit: global, group (scorer group) or source.")
    mode: ThresholdMode = Field(default="tokens", description="fraction of documents, tokens, or min_score.")
    method: Method = Field(default="score", description="score (composite order) or random (seeded hash order).")
    fraction: float | None = Field(default=None, ge=0, le=1, description="mode fraction: documents kept per unit.")
    unit_fractions: dict[str, float] = Field(
        default_factory=dict, description="mode fraction: per-unit fractions (others take fraction)."
    )
    token_fraction: float | None = Field(
        default=None, ge=0, le=1,
        description="mode tokens: budget as this share of the tokens of every scored document (the same base "
        "for score and random variants), split over units in proportion to their eligible tokens.",
    )
    token_budget: int | None = Field(default=None, ge=0, description="mode tokens: absolute total token budget.")
    unit_token_budgets: dict[str, int] = Field(
        default_factory=dict, description="mode tokens: a budget per unit instead of a split total."
    )
    min_score: float | None = Field(default=None, ge=0, le=100, description="mode min_score: keep composite >= this (0-100).")
    semantics: Semantics = Field(
        default="never_exceed",
        description="never_exceed: kept tokens/documents stay within the budget; reach: up to the first "
        "document that reaches it.",
    )
    tau: float | None = Field(
        default=None, gt=0, description="Gumbel top-k temperature on the composite's 0-10 scale (diversity); none: plain top-k."
    )
    seed: int = Field(default=0, description="Seed of the random order and of the Gumbel noise.")

    @model_validator(mode="after")
    def _mode_needs(self) -> VariantConfig:
        if self.mode == "fraction" and self.fraction is None and not self.unit_fractions:
            raise ValueError(f"variant {self.name!r}: mode fraction needs fraction (0-1) or unit_fractions")
        if self.mode == "tokens":
            given = [k for k in ("token_fraction", "token_budget") if getattr(self, k) is not None]
            given += ["unit_token_budgets"] if self.unit_token_budgets else []
            if len(given) != 1:
                raise ValueError(f"variant {self.name!r}: mode tokens needs exactly one of token_fraction, "
                                 f"token_budget, unit_token_budgets (got {given or 'none'})")
        if self.mode == "min_score" and self.min_score is None:
            raise ValueError(f"variant {self.name!r}: mode min_score needs min_score (0-100)")
        if self.method == "random" and self.mode == "min_score":
            raise ValueError(f"variant {self.name!r}: method random has no score; use mode fraction or tokens")
        if self.method == "random" and self.tau is not None:
            raise ValueError(f"variant {self.name!r}: tau applies to method score only")
        for unit, f in self.unit_fractions.items():
            if not 0 <= f <= 1:
                raise ValueError(f"variant {self.name!r}: unit_fractions[{unit}] = {f} must be between 0 and 1")
        return self


def _default_variants() -> tuple[VariantConfig, ...]:
    return tuple(
        VariantConfig(name=name, unit=unit, mode="tokens", token_fraction=0.5, method=method)
        for name, unit, method in (("global", "global", "score"), ("group", "group", "score"),
                                   ("source", "source", "score"), ("random", "global", "random"))
    )


class SelectionConfig(_Frozen):
    """Composite and thresholds (mira_spark/selection/aggregation.py, select.py, thresholds.py)."""

    weights: Weights = Field(
        default="uniform",
        description="Dimension weights of the composite: uniform, cluster_size (the rubric's teacher cluster "
        "sizes) or custom (custom_weights).",
    )
    custom_weights: dict[str, float] = Field(
        default_factory=dict,
        description="weights: custom: slot (A1..A15) or dimension name -> non-negative weight; unlisted: 0.",
    )
    overall_blend: float = Field(
        default=0.0, ge=0, le=1, description="Share of the scorer's overall (0-100) blended into the composite."
    )
    veto_drop: bool = Field(default=False, description="Exclude documents the scorer recommends to drop.")
    downsample_keep: float = Field(
        default=1.0, ge=0, le=1,
        description="Share of documents recommended 'downsample' that stay eligible (a hash sample of doc_id).",
    )
    seed: int = Field(default=0, description="Seed of the downsample hash.")
    score_resolution: int = Field(default=10, ge=1, description="Score quanta per point (10: tenths).")
    score_basis: Literal["auto", "sampled", "expected"] = Field(
        default="auto",
        description="Scores the reliability mask and the composite read: sampled (what the answer's text says), "
        "expected (each slot's expected score from logprobs, rounded to score_resolution; a slot without one "
        "keeps its sampled score), auto: expected when scoring.expected_scores.enabled, else sampled.",
    )
    tokens_column: str | None = Field(
        default=None,
        description="Integer column of the documents table with each document's token count; none (or null "
        "rows): the project's estimate (prompting/tokens.py), flagged tokens_estimated.",
    )
    variants: tuple[VariantConfig, ...] = Field(
        default_factory=_default_variants, min_length=1,
        description="Selections written side by side; default Global / Group / Source / Random at 50% of the tokens.",
    )

    @model_validator(mode="after")
    def _check(self) -> SelectionConfig:
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant names must be unique; repeated: {dup}")
        if self.weights == "custom" and not any(w > 0 for w in self.custom_weights.values()):
            raise ValueError("weights: custom needs custom_weights with at least one positive weight")
        bad = sorted(k for k, w in self.custom_weights.items() if w < 0)
        if bad:
            raise ValueError(f"custom_weights must be >= 0; negative for {bad}")
        return self


class TablesConfig(_Frozen):
    """Where tables live: a path root (local, Volumes, abfss://) or a catalog.schema prefix."""

    root: str | None = Field(default=None, description="Directory holding one sub-directory per table.")
    schema_name: str | None = Field(default=None, alias="schema", description="catalog.schema for named tables.")
    documents: str = Field(description="Input documents table: a path, or a name when it has no '/'.")
    validation: str | None = Field(default=None, description="Teacher scores for reliability (path or name).")
    staging: str | None = Field(
        default=None,
        description="Directory for each wave's scored rows before they are committed; default <root>/_staging. "
        "With tables.schema set it a Volume or cloud path so a commit retry never re-sends a wave.",
    )

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_location(self) -> TablesConfig:
        if (self.root is None) == (self.schema_name is None):
            raise ValueError("set exactly one of tables.root (paths) or tables.schema (catalog.schema)")
        if self.schema_name is not None:  # catalog tables: three-level names (Unity Catalog, spark_catalog.db)
            if len(_name_parts(self.schema_name)) != 2:
                raise ValueError(f"tables.schema must be catalog.schema (tables become catalog.schema.<table>), "
                                 f"got {self.schema_name!r}; e.g. main.mira, or spark_catalog.mira for Hive")
            for key in ("documents", "validation"):
                value = getattr(self, key)
                if value is not None and not _is_path(value) and len(_name_parts(value)) != 3:
                    raise ValueError(f"tables.{key} must be a path or a three-level name catalog.schema.table "
                                     f"when tables.schema is set, got {value!r}")
        return self


class JournalConfig(_Frozen):
    """The request journal (mira_spark/store/journal.py): finished answers made durable inside a wave."""

    enabled: bool = Field(
        default=True,
        description="Journal answers as they complete under <tables.root>/_journal (or <tables.staging>/_journal), "
        "so a killed driver, a retried task or a rerun re-sends only what was in flight.",
    )
    flush_s: float = Field(default=2.0, gt=0, le=300,
                           description="Seconds between journal flushes of a task (answers finished in the last "
                           "flush_s before a kill are sent again; requests sent in that window are re-sent without being counted in "
                           "resent_requests).")
    flush_rows: int = Field(default=256, ge=1, description="Flush a task's journal once this many answers wait.")
    claim_stale_s: float = Field(
        default=30.0, gt=0,
        description="A scoring partition claimed by an attempt whose heartbeat is this old is taken over by a "
        "retry (a live duplicate attempt, e.g. speculation, waits for the first one instead of paying again).",
    )
    claim_heartbeat_s: float = Field(default=5.0, gt=0, description="Heartbeat interval of a partition claim.")

    @model_validator(mode="after")
    def _beats_within_stale(self) -> JournalConfig:
        if self.claim_heartbeat_s * 2 > self.claim_stale_s:
            raise ValueError(f"journal.claim_heartbeat_s ({self.claim_heartbeat_s}) must be at most half of "
                             f"journal.claim_stale_s ({self.claim_stale_s})")
        return self


class LeaseConfig(_Frozen):
    """One live run per table root (mira_spark/store/lease.py)."""

    enabled: bool = Field(default=True, description="Hold a lease on the table root (<tables.root>/_lease) while "
                          "a run lives; a second run refuses (or waits with wait: true / --wait-for-lease).")
    stale_after_s: float = Field(
        default=600.0, gt=0,
        description="A lease whose heartbeat is older than this is taken over (logged); must exceed the clock "
        "skew between hosts plus a few heartbeats.",
    )
    heartbeat_s: float = Field(default=30.0, gt=0, description="Seconds between the driver's lease heartbeats.")
    wait: bool = Field(default=False, description="Wait for a held lease instead of refusing (--wait-for-lease).")
    wait_limit_s: float | None = Field(default=None, gt=0,
                                       description="Give up waiting after this many seconds; None: wait as long "
                                       "as the holder lives.")

    @model_validator(mode="after")
    def _beats_within_stale(self) -> LeaseConfig:
        if self.heartbeat_s * 2 > self.stale_after_s:
            raise ValueError(f"lease.heartbeat_s ({self.heartbeat_s}) must be at most half of lease.stale_after_s "
                             f"({self.stale_after_s})")
        return self


class Settings(_Frozen):
    engine: Engine = Field(default="sail", description="sail | local | connect | active")
    connect_url: str | None = Field(default=None, description="sc:// URL for engine: connect.")
    table_format: TableFormat = Field(default="delta", description="delta; parquet only for classic local parity.")
    delta_jars: tuple[str, ...] = Field(
        default=(),
        description="engine: local with delta: local Delta Lake jar files (delta-spark_<spark>_2.13-<v>.jar, "
        "delta-storage-<v>.jar) put on spark.jars; empty: fetched from Maven with spark.jars.packages.",
    )
    tables: TablesConfig
    scorers_file: Path = Field(description="YAML with groups and pools (conf/scorers.yaml).")
    scorers: ScorersConfig
    sampling: SamplingConfig = SamplingConfig()
    serving: ServingConfig = ServingConfig()
    scoring: ScoringConfig = ScoringConfig()
    reliability: ReliabilityConfig = ReliabilityConfig()
    selection: SelectionConfig = SelectionConfig()
    journal: JournalConfig = JournalConfig()
    lease: LeaseConfig = LeaseConfig()

    @model_validator(mode="after")
    def _engine_needs(self) -> Settings:
        if self.engine == "connect" and not self.connect_url:
            raise ValueError("engine: connect needs connect_url: sc://host:port")
        root = self.tables.root or ""
        local_root = bool(root) and ("://" not in root or root.startswith("file://"))
        if self.table_format == "parquet" and not (self.engine == "local" or (self.engine == "active" and local_root)):
            raise ValueError("table_format: parquet is only for classic Spark on local paths (engine: local, or "
                             "engine: active under spark-submit --master local with a local tables.root); use delta")
        if self.delta_jars and (self.engine != "local" or self.table_format != "delta"):
            raise ValueError("delta_jars is read only with engine: local and table_format: delta; with "
                             "spark-submit pass --jars or --packages instead, or remove delta_jars")
        missing_jars = [jar for jar in self.delta_jars if "://" not in jar and not Path(jar).is_file()]
        if missing_jars:
            raise ValueError(f"delta_jars: no such file {', '.join(missing_jars)}; list the downloaded "
                             "delta-spark and delta-storage jars (paths relative to this file)")
        set_by_hand = sorted(set(CONSTRAINT_KEYS) & set(self.sampling.extra_body))
        if self.scoring.constrained_output != "off" and set_by_hand:
            raise ValueError(
                f"sampling.extra_body sets {set_by_hand} and scoring.constrained_output is "
                f"{self.scoring.constrained_output!r}: remove them from extra_body, or set constrained_output: off"
            )
        return self


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None or "://" in value or value.startswith("/"):
        return value
    return str((base / value).resolve())


def _is_path(ref: str) -> bool:
    return "/" in ref or "://" in ref


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|`(?:[^`]|``)+`")


def _name_parts(name: str) -> list[str]:
    """The dot-separated identifiers of a table name (plain or `back-quoted`); [] when it is not one.

    >>> _name_parts("main.mira.documents"), _name_parts("main.`my-schema`"), _name_parts("main..x")
    (['main', 'mira', 'documents'], ['main', '`my-schema`'], [])
    """
    parts, pos = [], 0
    while True:
        match = _IDENTIFIER.match(name, pos)
        if match is None:
            return []
        parts.append(match.group(0))
        pos = match.end()
        if pos == len(name):
            return parts
        if name[pos] != ".":
            return []
        pos += 1


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overrides``, recursing into nested mappings."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys")
    return data


def _explain(path: Path, exc: ValidationError) -> ConfigError:
    lines = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"  {where}: {msg}{shown}")
    return ConfigError(f"{path}: invalid configuration\n" + "\n".join(lines))


def _resolve_group_paths(groups: Any, base: Path) -> None:
    """Resolve ``anchors`` / ``calibration`` of raw group mappings against ``base`` (in place)."""
    for group in (groups or {}).values() if isinstance(groups, Mapping) else ():
        if isinstance(group, dict):
            for key in ("anchors", "calibration"):
                if group.get(key):
                    group[key] = _resolve(base, str(group[key]))


def load_scorers(path: str | Path, check_files: bool = True) -> ScorersConfig:
    """Load the scorers file; ``check_files``: the enabled groups' anchors must exist (:func:`check_group_files`)."""
    path = Path(path).resolve()
    raw = _read_yaml(path)
    _resolve_group_paths(raw.get("groups"), path.parent)
    try:
        scorers = ScorersConfig.model_validate(raw)
    except ValidationError as exc:
        raise _explain(path, exc) from None
    if check_files:
        check_group_files(scorers, path)
    return scorers


def load_settings(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Load ``conf/<name>.yaml`` and the scorers file it names; ``overrides`` are deep-merged first."""
    path = Path(path).resolve()
    raw = deep_merge(_read_yaml(path), overrides or {})
    tables = raw.get("tables")
    if isinstance(tables, dict):
        for key in ("root", "documents", "validation", "staging"):
            value = tables.get(key)
            if isinstance(value, str) and (key in ("root", "staging") or _is_path(value)):
                tables[key] = _resolve(path.parent, value)
    reliability = raw.get("reliability")
    if isinstance(reliability, dict) and isinstance(reliability.get("published_mask"), str):
        reliability["published_mask"] = _resolve(path.parent, reliability["published_mask"])
    if isinstance(raw.get("delta_jars"), list):
        raw["delta_jars"] = [_resolve(path.parent, str(jar)) for jar in raw["delta_jars"]]
    scorers_ref = raw.get("scorers_file", "scorers.yaml")
    scorers_path = Path(_resolve(path.parent, str(scorers_ref)) or "")
    raw["scorers_file"] = str(scorers_path)
    scorers_raw = raw.pop("scorers", None)
    scorers = load_scorers(scorers_path, check_files=False)
    inline: dict[str, Path] = {}
    if scorers_raw:  # inline overrides of the scorers file (demo groups, tests, notebooks)
        if isinstance(scorers_raw, dict):  # their paths are relative to the file that holds them
            _resolve_group_paths(scorers_raw.get("groups"), path.parent)
            inline = dict.fromkeys(scorers_raw.get("groups") or {}, path)
        merged = deep_merge(scorers.model_dump(mode="json"), scorers_raw)
        try:
            scorers = ScorersConfig.model_validate(merged)
        except ValidationError as exc:
            raise _explain(scorers_path, exc) from None
    check_group_files(scorers, scorers_path, inline)
    raw["scorers"] = scorers
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise _explain(path, exc) from None
