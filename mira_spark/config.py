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
    """One MIRA student scorer: its model, rubric files, endpoint pool and the sources routed to it."""

    family: str = Field(description="Scorer family, e.g. text or code.")
    model: str = Field(description="Model name sent in requests, e.g. whw06/MIRA-Text-Group1.")
    anchors: Path = Field(description="Dimension anchors JSONL (15 slots).")
    calibration: Path | None = Field(default=None, description="Calibration references JSONL.")
    pool: str = Field(description="Name of an entry under pools:.")
    sources: tuple[str, ...] = Field(min_length=1, description="Sources scored by this group.")
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
    groups: dict[str, ScorerGroupConfig] = Field(min_length=1)
    pools: dict[str, PoolConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> ScorersConfig:
        owner: dict[str, str] = {}
        for name, group in self.groups.items():
            if group.pool not in self.pools:
                raise ValueError(
                    f"group {name!r} uses pool {group.pool!r}, which is not defined; defined pools: "
                    f"{sorted(self.pools)}"
                )
            for source in group.sources:
                if source in owner:
                    raise ValueError(f"source {source!r} is routed to both {owner[source]!r} and {name!r}")
                owner[source] = name
        return self

    def group_for_source(self) -> dict[str, str]:
        return {s: name for name, g in self.groups.items() for s in g.sources}


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

    @model_validator(mode="after")
    def _constraint_fits_server(self) -> ScoringConfig:
        problem = check_mode(self.constrained_output, self.structured_output_api)
        if problem is not None:
            raise ValueError(problem)
        return self


# Failures a later run may fix: overload, outages and timeouts (not 4xx, bad input or bad outputs).
TRANSIENT_ERRORS = ("http_408", "http_429", "http_500", "http_502", "http_503", "http_504", "timeout",
                    "connection_error")


class ReliabilityConfig(_Frozen):
    max_mae: float = Field(default=2.0, gt=0, description="Mask a (source, dimension) whose teacher-student MAE exceeds this.")
    min_spearman: float = Field(default=0.3, ge=-1, le=1, description="Mask when Spearman rho is below this.")
    min_n: int = Field(default=20, ge=2, description="Fewer validation pairs than this: use the group-wide decision.")


class SelectionConfig(_Frozen):
    retain_ratio: dict[str, float] = Field(default_factory=dict, description="Fraction kept per source.")
    default_retain_ratio: float = Field(default=0.5, ge=0, le=1, description="For sources not listed.")

    @field_validator("retain_ratio")
    @classmethod
    def _ratios(cls, value: dict[str, float]) -> dict[str, float]:
        for source, ratio in value.items():
            if not 0 <= ratio <= 1:
                raise ValueError(f"retain_ratio[{source}] = {ratio} must be between 0 and 1")
        return value

    def ratio_for(self, source: str) -> float:
        return self.retain_ratio.get(source, self.default_retain_ratio)


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
                           "flush_s before a kill are sent again).")
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


def load_scorers(path: str | Path) -> ScorersConfig:
    path = Path(path).resolve()
    raw = _read_yaml(path)
    for group in (raw.get("groups") or {}).values():
        if isinstance(group, dict):
            for key in ("anchors", "calibration"):
                if group.get(key):
                    group[key] = _resolve(path.parent, str(group[key]))
    try:
        return ScorersConfig.model_validate(raw)
    except ValidationError as exc:
        raise _explain(path, exc) from None


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
    if isinstance(raw.get("delta_jars"), list):
        raw["delta_jars"] = [_resolve(path.parent, str(jar)) for jar in raw["delta_jars"]]
    scorers_ref = raw.get("scorers_file", "scorers.yaml")
    scorers_path = Path(_resolve(path.parent, str(scorers_ref)) or "")
    raw["scorers_file"] = str(scorers_path)
    scorers_raw = raw.pop("scorers", None)
    scorers = load_scorers(scorers_path)
    if scorers_raw:  # inline overrides of the scorers file (tests, notebooks)
        merged = deep_merge(scorers.model_dump(mode="json"), scorers_raw)
        try:
            scorers = ScorersConfig.model_validate(merged)
        except ValidationError as exc:
            raise _explain(scorers_path, exc) from None
    raw["scorers"] = scorers
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise _explain(path, exc) from None
