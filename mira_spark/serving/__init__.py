"""Async client side of scoring: endpoint pool, retry policy, and the request runner.

Takes :class:`~mira_spark.serving.types.ScoreRequest` lists and a pool config; gives one
:class:`~mira_spark.serving.types.ScoreResult` per request (:func:`run_requests`). All async code of
the project lives here; the Spark side calls the plain function from ``mapInArrow``.
"""

from mira_spark.serving.client import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    ChatResponse,
    post_chat,
    session_factory,
)
from mira_spark.serving.endpoints import EndpointPool, EndpointState
from mira_spark.serving.health import check_pool_reachable
from mira_spark.serving.plan import default_in_flight, plan_in_flight, pool_share
from mira_spark.serving.runner import (
    PoolUnavailableError,
    RowHooks,
    RunnerOptions,
    arun_requests,
    run_requests,
)
from mira_spark.serving.secrets import (
    RedactingFilter,
    SecretUnavailableError,
    register_secret,
    resolve_api_key,
)
from mira_spark.serving.types import (
    CheckOutput,
    MergeOutputs,
    OutputVerdict,
    RunStats,
    ScoreRequest,
    ScoreResult,
    ShrinkRequest,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "ChatResponse",
    "CheckOutput",
    "EndpointPool",
    "EndpointState",
    "MergeOutputs",
    "OutputVerdict",
    "PoolUnavailableError",
    "RedactingFilter",
    "RowHooks",
    "RunStats",
    "RunnerOptions",
    "ScoreRequest",
    "ScoreResult",
    "SecretUnavailableError",
    "ShrinkRequest",
    "arun_requests",
    "check_pool_reachable",
    "default_in_flight",
    "plan_in_flight",
    "pool_share",
    "post_chat",
    "register_secret",
    "resolve_api_key",
    "run_requests",
    "session_factory",
]
