"""Typed service configuration, loaded from YAML.

The only module that reads config files (and, via :func:`tiergate_home` and
:func:`multiprocess_metrics_dir`, the environment). Every knob is a frozen pydantic
model with ``extra="forbid"`` so a typo is an error, not a silently ignored key;
:func:`load_config` turns every validation failure into one
:class:`~tiergate.errors.ConfigError` whose message lists each problem with its
location in the file.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tiergate.errors import ConfigError

__all__ = [
    "AdmissionConfig",
    "AuthConfig",
    "BatchingConfig",
    "BreakerConfig",
    "CacheConfig",
    "CallableModelConfig",
    "DriftConfig",
    "ExactCacheConfig",
    "FallbackConfig",
    "FaultConfig",
    "FeedbackConfig",
    "HttpConfig",
    "LimitsConfig",
    "MiniLMStackModelConfig",
    "ModelConfig",
    "MonitorConfig",
    "OnnxEmbeddingClassifierConfig",
    "OpenAIChatModelConfig",
    "OpenAICompletionsModelConfig",
    "PricingConfig",
    "RetryConfig",
    "SLOConfig",
    "SemanticCacheConfig",
    "ServiceConfig",
    "ShadowConfig",
    "SklearnModelConfig",
    "TierConfig",
    "TokenPricing",
    "V2InferModelConfig",
    "format_validation_error",
    "load_config",
    "multiprocess_metrics_dir",
    "tiergate_home",
    "worker_environ",
]


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    path = value if value.is_absolute() or base is None else Path(base) / value
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path.resolve()


ExistingFile = Annotated[Path, AfterValidator(_existing_file)]


def _calibration_file(value: Path, info: ValidationInfo) -> Path:
    # `tiergate calibrate` loads the config whose `calibration:` names the very file it is
    # about to write: there the file may not exist yet.
    if (info.context or {}).get("calibrating"):
        base = (info.context or {}).get("base_dir")
        path = value if value.is_absolute() or base is None else Path(base) / value
        return path.resolve()
    return _existing_file(value, info)


CalibrationFile = Annotated[Path, AfterValidator(_calibration_file)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SklearnModelConfig(_Frozen):
    """A scikit-learn pipeline with ``predict_proba``, saved with joblib."""

    kind: Literal["sklearn"] = Field(description="Model adapter kind.")
    path: ExistingFile = Field(description="joblib file, relative to the config file.")


class OnnxEmbeddingClassifierConfig(_Frozen):
    """An ONNX sentence-embedding model followed by a scikit-learn classifier head."""

    kind: Literal["onnx-embedding-classifier"] = Field(description="Model adapter kind.")
    path: ExistingFile = Field(description="ONNX transformer returning token embeddings.")
    tokenizer: ExistingFile = Field(description="HuggingFace tokenizers `tokenizer.json`.")
    head: ExistingFile = Field(
        description="joblib classifier over the pooled embedding (with `stack`: over "
        "`[embedding, log p(stack)]`)."
    )
    stack: ExistingFile | None = Field(
        None,
        description="joblib scikit-learn pipeline over raw texts whose clipped log-probabilities "
        "are appended to the embedding (e.g. the first tier's model).",
    )
    max_length: int = Field(128, ge=8, le=4096, description="Truncate inputs to this many tokens.")
    intra_op_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="onnxruntime threads inside one call (default: 1 for dynamically "
        "quantised models, which run one text per call; the CPU count otherwise).",
    )
    parallel_calls: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Calls of one batch run at once (default: CPU count / intra_op_threads "
        "for one-text-per-call models, else 1).",
    )


class MiniLMStackModelConfig(_Frozen):
    """A classifier head over the semantic cache's MiniLM embedding, optionally stacked
    with another model's log-probabilities (a cheap middle tier: with the semantic cache
    on, the embedding is shared with the cache and computed once per request)."""

    kind: Literal["minilm-stack"] = Field(description="Model adapter kind.")
    head: ExistingFile = Field(
        description="joblib classifier over `[embedding, log p(stack)]` (or the embedding alone)."
    )
    stack: ExistingFile | None = Field(
        None,
        description="joblib scikit-learn pipeline over raw texts whose clipped log-probabilities "
        "are appended to the embedding (e.g. the first tier's model).",
    )


class CallableModelConfig(_Frozen):
    """A Python callable ``f(texts) -> probabilities``, imported as ``module:attr``."""

    kind: Literal["callable"] = Field(description="Model adapter kind.")
    target: str = Field(
        description="Import path `package.module:function`.", pattern=r"^[\w.]+:[\w.]+$"
    )
    labels: tuple[str, ...] = Field(min_length=2, description="Class labels, in column order.")


class HttpConfig(_Frozen):
    """The pooled HTTP client of one remote tier."""

    connect_timeout_ms: float = Field(1000, gt=0, description="TCP connect timeout.")
    read_timeout_ms: float = Field(30_000, gt=0, description="Wait for a response this long.")
    max_connections: int = Field(32, ge=1, le=4096, description="Pool size (kept alive).")
    max_concurrency: int = Field(
        16, ge=1, le=4096, description="Most upstream calls in flight; more wait their turn."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers (never secrets: see api_key_env)."
    )


class TokenPricing(_Frozen):
    """Price of an LLM tier's tokens, per million, in currency units."""

    prompt_per_million: float = Field(0.0, ge=0, description="Price of 1M prompt tokens.")
    completion_per_million: float = Field(0.0, ge=0, description="Price of 1M completion tokens.")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What a call with these token counts costs."""
        return (
            prompt_tokens * self.prompt_per_million
            + completion_tokens * self.completion_per_million
        ) / 1e6


class _RemoteModelConfig(_Frozen):
    base_url: str = Field(
        description="Server root, e.g. `http://10.0.0.5:8080` (no trailing route).",
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
    )
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable holding the API key (sent as "
        "`Authorization: Bearer`). The key itself never goes in a file.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )
    http: HttpConfig = Field(HttpConfig(), description="Connection pool and timeouts.")

    def api_key(self) -> str | None:
        """The key from the environment (``None`` without ``api_key_env``)."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {self.api_key_env} (api_key_env) is not set")
        return key


class _OpenAIModelConfig(_RemoteModelConfig):
    model: str = Field(description="Model name the server knows (`model` in the request).")
    labels: dict[str, str] = Field(
        description="Each label and the single word the model answers it with, e.g. "
        "`{positive: positive, negative: negative}`; columns follow this order.",
        min_length=2,
    )
    top_logprobs: int = Field(
        10, ge=2, le=20, description="Alternatives asked for the one output token."
    )
    pricing: TokenPricing = Field(TokenPricing(), description="Token prices.")

    @field_validator("labels")
    @classmethod
    def _one_token_each(cls, v: dict[str, str]) -> dict[str, str]:
        # What can be told without the model's tokenizer (the start-up probe checks
        # the rest against the server's own tokenizer when it offers one).
        words = {label: word.strip() for label, word in v.items()}
        for label, word in words.items():
            if not word or any(c.isspace() for c in word):
                raise ValueError(
                    f"label {label!r} is answered with {word!r}: it must be one word, since "
                    "the class is read from the probability of a single output token"
                )
        folded = sorted((w.lower(), label) for label, w in words.items())
        for (a, la), (b, lb) in itertools.pairwise(folded):
            if b.startswith(a):
                raise ValueError(
                    f"labels {la!r} and {lb!r} are answered with {words[la]!r} and "
                    f"{words[lb]!r}, which start alike: their first tokens would be shared, "
                    "so one token's probability could not tell them apart"
                )
        return words


class OpenAIChatModelConfig(_OpenAIModelConfig):
    """An instruction-tuned LLM behind an OpenAI-compatible `/v1/chat/completions`."""

    kind: Literal["openai-chat"] = Field(description="Model adapter kind.")
    system: str = Field(
        description="The instructions (system message); name the answer words in it."
    )
    prompt: str = Field(
        "{input}", description="User message template; `{input}` is replaced by the input."
    )

    @field_validator("prompt")
    @classmethod
    def _has_input(cls, v: str) -> str:
        return _one_input_slot(v)


class OpenAICompletionsModelConfig(_OpenAIModelConfig):
    """A base LLM behind an OpenAI-compatible `/v1/completions` (few-shot prompt)."""

    kind: Literal["openai-completions"] = Field(description="Model adapter kind.")
    prompt: str = Field(
        description="The whole prompt (e.g. a few examples), with `{input}` where the input "
        "goes; the model's next token is the answer word."
    )

    @field_validator("prompt")
    @classmethod
    def _has_input(cls, v: str) -> str:
        return _one_input_slot(v)


class V2InferModelConfig(_RemoteModelConfig):
    """A model behind the Open Inference Protocol (KServe V2 REST: Triton, MLServer, ...)."""

    kind: Literal["v2-infer"] = Field(description="Model adapter kind.")
    model: str = Field(description="Model name in `/v2/models/{name}/infer`.")
    model_version: str | None = Field(None, description="Model version, if the server has several.")
    input_name: str = Field("text", description="Name of the BYTES input tensor.")
    output_name: str = Field(
        "probabilities", description="Name of the output holding class probabilities."
    )
    labels: tuple[str, ...] = Field(
        min_length=2,
        description="Class labels in the order of the output's columns (the protocol does "
        "not return class names).",
    )


def _one_input_slot(template: str) -> str:
    if template.count("{input}") != 1:
        raise ValueError("the template must contain `{input}` exactly once")
    return template


ModelConfig = Annotated[
    SklearnModelConfig
    | OnnxEmbeddingClassifierConfig
    | MiniLMStackModelConfig
    | CallableModelConfig
    | OpenAIChatModelConfig
    | OpenAICompletionsModelConfig
    | V2InferModelConfig,
    Field(discriminator="kind"),
]


class BatchingConfig(_Frozen):
    """Micro-batching of concurrent requests to one tier."""

    max_batch: int = Field(32, ge=1, le=4096, description="Most inputs in one model call.")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="Hold a non-full batch this long for more inputs (0: dispatch as soon "
        "as the model is free; batches still form under load).",
    )
    max_queue: int = Field(
        1024, ge=1, description="Most inputs waiting for this tier; beyond it, shed (429)."
    )
    policy: Literal["deadline", "aimd"] = Field(
        "deadline",
        description="How big a batch may grow: 'deadline' (the online latency model keeps "
        "every batch within its earliest deadline) or 'aimd' (Clipper: +1 after a full "
        "batch within aimd_target_ms, x0.9 after a slower one).",
    )
    aimd_target_ms: float = Field(
        100.0, gt=0, le=60_000, description="Batch latency objective of the 'aimd' policy."
    )


class BreakerConfig(_Frozen):
    """Circuit breaker of one tier (see `tiergate.resilience.breaker`)."""

    failure_rate: float = Field(0.5, gt=0, le=1, description="Failure share that opens it.")
    min_calls: int = Field(10, ge=1, description="Outcomes needed in the window to judge.")
    window_s: float = Field(10.0, gt=0, description="Sliding window of outcomes, seconds.")
    cooldown_s: float = Field(2.0, gt=0, description="Open this long before probing.")
    max_cooldown_s: float = Field(30.0, gt=0, description="Cap of the doubling cooldown.")
    probes: int = Field(3, ge=1, description="Successful probes needed to close again.")


class RetryConfig(_Frozen):
    """Retries of transient model errors, bounded by a budget."""

    max_retries: int = Field(1, ge=0, le=5, description="Extra attempts after an error.")
    budget_ratio: float = Field(
        0.1, ge=0, le=1, description="Retries may be at most this share of calls (+ burst)."
    )
    budget_burst: float = Field(10.0, ge=0, description="Token bucket size of the budget.")
    backoff_ms: float = Field(5.0, ge=0, description="Base of the jittered exponential backoff.")


class FaultConfig(_Frozen):
    """Injected faults, for chaos testing only (never in production)."""

    delay_ms: float = Field(0.0, ge=0, description="Added latency per call.")
    delay_rate: float = Field(1.0, ge=0, le=1, description="Share of calls delayed.")
    hang_rate: float = Field(0.0, ge=0, le=1, description="Share of calls that never return.")
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of calls that raise.")
    garbage_rate: float = Field(0.0, ge=0, le=1, description="Share returning malformed output.")
    flap_period_s: float | None = Field(
        None, gt=0, description="Alternate healthy/failing phases of this length."
    )
    seed: int = Field(0, description="Random seed of the fault draws.")


class TierConfig(_Frozen):
    """One tier of the cascade: a model, its price and its protection."""

    name: str = Field(description="Tier name, used in responses and metrics.")
    model: ModelConfig = Field(description="Which model serves this tier.")
    cost_per_call: float | None = Field(
        None,
        ge=0,
        description="Cost of one call in currency units; if absent, derived from the CPU "
        "time measured at start-up times `pricing.cpu_second`.",
    )
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Manual confidence threshold; overrides the calibration artifact.",
    )
    timeout_ms: float = Field(
        2000, gt=0, description="Give up on this tier after this long and degrade."
    )
    batching: BatchingConfig = Field(BatchingConfig(), description="Micro-batching.")
    breaker: BreakerConfig = Field(BreakerConfig(), description="Circuit breaker.")
    retry: RetryConfig = Field(RetryConfig(), description="Retries under a budget.")
    executor: Literal["auto", "thread", "inline"] = Field(
        "auto",
        description="Where the model runs: 'thread' (the tier's own thread; the event loop "
        "stays free), 'inline' (on the event loop: no thread hop; only for models that "
        "take about a millisecond and cannot hang), 'auto' (inline for sklearn and "
        "callable models whose batch-1 call measured at start-up used under "
        "`inline_below_ms` of CPU, with no faults injected; remote tiers are always "
        "awaited on the event loop).",
    )
    inline_below_ms: float = Field(
        2.0, ge=0, le=100, description="Most CPU per batch-1 call that 'auto' runs inline, ms."
    )
    fault: FaultConfig | None = Field(None, description="Chaos testing: injected faults.")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", v):
            raise ValueError("tier names are 1-32 chars of a-z, 0-9, '_' or '-', starting a-z")
        return v


class PricingConfig(_Frozen):
    """How tiergate prices tiers that declare no ``cost_per_call``."""

    cpu_second: float = Field(
        1.25e-5,
        ge=0,
        description="Price of one CPU-second (default: an on-demand cloud vCPU, ~0.045/h).",
    )


class FallbackConfig(_Frozen):
    """What to answer when the policy's answer cannot be had."""

    default_output: str | None = Field(
        None, description="Answer with this label if no tier could answer at all."
    )
    on_deadline: Literal["best_so_far", "error"] = Field(
        "best_so_far",
        description="At the deadline, return the best answer computed so far, or a 504.",
    )


class LimitsConfig(_Frozen):
    """Input size limits enforced before any model runs."""

    max_input_chars: int = Field(5000, ge=1, description="Longest accepted input, in characters.")
    max_input_bytes: int = Field(20000, ge=1, description="Longest accepted input, in UTF-8 bytes.")
    max_batch_items: int = Field(256, ge=1, description="Most inputs in one batch request.")
    max_body_bytes: int = Field(
        2_000_000, ge=1024, description="Largest accepted HTTP request body."
    )


class AdmissionConfig(_Frozen):
    """Load shedding: a bound on inputs in flight across the service."""

    max_inflight: int = Field(
        512, ge=1, description="Inputs in flight beyond which requests get 429 at once."
    )
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After sent with a 429.")


class ExactCacheConfig(_Frozen):
    """Exact cache: whole answers by normalised input and every model/calibration version."""

    enabled: bool = Field(True, description="Serve repeated inputs from the cache.")
    backend: Literal["memory", "redis", "layered"] = Field(
        "memory", description="memory (per process), redis (shared), layered (memory + redis)."
    )
    max_items: int = Field(100_000, ge=1, description="In-memory LRU capacity.")
    ttl_s: float = Field(3600.0, gt=0, description="Entry lifetime, seconds.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis server URL.")
    near_ttl_s: float = Field(60.0, gt=0, description="Lifetime in the memory layer (layered).")


class SemanticCacheConfig(_Frozen):
    """Semantic cache: answer from the nearest cached input above a calibrated similarity."""

    enabled: bool = Field(False, description="Consult the semantic cache on exact misses.")
    calibration: ExistingFile | None = Field(
        None, description="Threshold artifact from the semantic-cache calibration."
    )
    threshold: float | None = Field(
        None, gt=0, le=1, description="Manual similarity threshold (overrides calibration)."
    )
    capacity: int = Field(10_000, ge=1, description="Most cached entries (oldest evicted).")
    audit_rate: float = Field(
        0.02, ge=0, le=1, description="Share of hits re-checked against the cascade."
    )
    false_hit_bound: float = Field(
        0.01, gt=0, lt=1, description="Tighten the threshold if false hits exceed this."
    )

    @model_validator(mode="after")
    def _threshold_source(self) -> SemanticCacheConfig:
        if self.enabled and self.calibration is None and self.threshold is None:
            raise ValueError("an enabled semantic cache needs `calibration:` or `threshold:`")
        return self


class CacheConfig(_Frozen):
    """Caches consulted before the cascade; only non-degraded answers are stored."""

    exact: ExactCacheConfig = Field(ExactCacheConfig(), description="Exact cache.")
    semantic: SemanticCacheConfig = Field(SemanticCacheConfig(), description="Semantic cache.")


class SLOConfig(_Frozen):
    """Declared service level objectives, checked by `tiergate check`."""

    p99_ms: float | None = Field(None, gt=0, description="99th percentile latency bound.")
    accuracy: float | None = Field(None, gt=0, le=1, description="Minimum accuracy.")
    availability: float | None = Field(
        None, gt=0, le=1, description="Minimum share of non-5xx responses."
    )
    cost_per_1k: float | None = Field(None, ge=0, description="Maximum cost per 1k requests.")
    rate: float | None = Field(None, gt=0, description="Arrival rate (req/s) the SLOs hold at.")


class AuthConfig(_Frozen):
    """API keys, their rights and rate limits (see README: Keys and rate limits)."""

    keys_file: Path | None = Field(
        None, description="Keys file written by `tiergate keys add` (relative to this config)."
    )
    keys_file_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Name of an environment variable holding the keys file's path "
        "(used when `keys_file` is not set).",
    )
    protect: tuple[Literal["metrics", "docs"], ...] = Field(
        ("metrics", "docs"),
        description="Routes besides predict that need a key with that right "
        "(`docs`: /docs, /redoc, /openapi.json). /healthz and /readyz stay open.",
    )
    rate_limit_store: Literal["memory", "redis"] = Field(
        "memory",
        description="memory: buckets per process (N replicas give a key N times its limit); "
        "redis: shared by every replica.",
    )
    budget_store: Literal["memory", "redis"] | None = Field(
        None,
        description="Where keys' cost budgets are accounted: memory (per process: N "
        "replicas let a key spend N times its budget) or redis (shared, atomic "
        "reservations). Default: the same as rate_limit_store.",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis for shared limits and budgets."
    )

    @model_validator(mode="after")
    def _one_source(self) -> AuthConfig:
        if self.keys_file is not None and self.keys_file_env is not None:
            raise ValueError("give keys_file or keys_file_env, not both")
        return self

    def resolved_keys_file(self, base: Path | None) -> Path | None:
        """The keys file to load, or None when the service is open."""
        path = self.keys_file
        if path is None and self.keys_file_env is not None:
            value = os.environ.get(self.keys_file_env)
            if not value:
                raise ConfigError(
                    f"auth.keys_file_env names {self.keys_file_env}, which is not set"
                )
            path = Path(value)
        if path is None:
            return None
        return path if path.is_absolute() or base is None else base / path


class ShadowConfig(_Frozen):
    """Re-answer a share of the cheaper tiers' accepted answers with the last tier."""

    rate: float = Field(
        0.0, ge=0, le=1, description="Share of accepted answers re-answered (0: off)."
    )
    max_per_s: float = Field(5.0, gt=0, description="Most shadow calls per second.")
    max_cost_per_hour: float | None = Field(
        None, ge=0, description="Most shadow spend per hour (currency units; none: no cap)."
    )
    max_inflight: int = Field(4, ge=1, description="Most shadow calls in flight at once.")


class FeedbackConfig(_Frozen):
    """Where recent answers wait for a true label (``POST /v1/feedback``)."""

    max_items: int = Field(100_000, ge=1, description="Answers remembered in memory.")
    store: Literal["memory", "redis"] = Field(
        "memory", description="redis: replicas share answers, so feedback may reach any one."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis server URL.")
    ttl_s: float = Field(3600.0, gt=0, description="How long an answer awaits its label.")
    log: Path | None = Field(
        None,
        description="Append labelled answers (and shadow labels, marked) to this JSONL file, "
        "the input of `tiergate recalibrate` (relative to this config).",
    )


class DriftConfig(_Frozen):
    """Alarms on accepted-answer accuracy and on input drift; optional auto-tightening."""

    min_samples: int = Field(
        30, ge=5, description="Shadow or labelled answers of a tier before it is judged."
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="Confidence of the accuracy intervals."
    )
    auto_tighten: bool = Field(
        False, description="On an accuracy alarm, raise the tier's threshold (escalate more)."
    )
    tighten_step: float = Field(0.05, gt=0, le=0.5, description="Threshold step per tightening.")
    input_window: int = Field(
        500, ge=50, description="Recent first-tier confidences compared with calibration data."
    )
    input_every: int = Field(100, ge=10, description="Run the input-drift test every N samples.")
    input_max_per_s: float = Field(
        50.0, gt=0, description="Most confidences sampled per second for the input test."
    )
    input_pvalue: float = Field(
        0.001, gt=0, lt=0.5, description="p-value below which one input test rejects."
    )


class MonitorConfig(_Frozen):
    """Watching production: shadow evaluation, label feedback, drift alarms."""

    enabled: bool = Field(True, description="Record answers for feedback and watch drift.")
    window: int = Field(
        300, ge=10, description="Sliding window of the estimates: the last N verdicts or labels."
    )
    shadow: ShadowConfig = Field(ShadowConfig(), description="Shadow evaluation.")
    feedback: FeedbackConfig = Field(FeedbackConfig(), description="Label feedback.")
    drift: DriftConfig = Field(DriftConfig(), description="Drift alarms.")

    def resolved_log(self, base: Path | None) -> Path | None:
        path = self.feedback.log
        if path is None:
            return None
        return path if path.is_absolute() or base is None else base / path


class ServiceConfig(_Frozen):
    """A whole service: ordered tiers (cheapest first), calibration, limits, SLOs."""

    service: str = Field(description="Service name, shown in metrics and reports.")
    tiers: tuple[TierConfig, ...] = Field(
        min_length=1, description="Tiers in the order they are tried, cheapest first."
    )
    calibration: CalibrationFile | None = Field(
        None, description="Calibration artifact written by `tiergate calibrate`."
    )
    default_deadline_ms: float = Field(
        1000, gt=0, description="Deadline of a request that sets none."
    )
    limits: LimitsConfig = Field(LimitsConfig(), description="Input limits.")
    fallback: FallbackConfig = Field(FallbackConfig(), description="Fallbacks.")
    admission: AdmissionConfig = Field(AdmissionConfig(), description="Load shedding.")
    cache: CacheConfig = Field(CacheConfig(), description="Exact and semantic caches.")
    pricing: PricingConfig = Field(PricingConfig(), description="Pricing.")
    slo: SLOConfig = Field(SLOConfig(), description="Service level objectives.")
    auth: AuthConfig = Field(AuthConfig(), description="API keys and rate limits.")
    monitor: MonitorConfig = Field(MonitorConfig(), description="Watching production.")
    access_log: bool = Field(
        False, description="One JSON line per request on the `tiergate.access` logger."
    )
    drain_grace_s: float = Field(
        25.0, gt=0, le=3600,
        description="On SIGTERM: seconds to finish requests in flight before exiting "
        "(keep it under Kubernetes' terminationGracePeriodSeconds minus the preStop sleep).",
    )  # fmt: skip
    path: Path | None = Field(None, exclude=True, description="Where this config was read.")

    @model_validator(mode="after")
    def _unique_names(self) -> ServiceConfig:
        names = [t.name for t in self.tiers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tier names must be unique; repeated: {', '.join(dupes)}")
        return self

    @property
    def tier_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: ``source: tiers.1.model.kind: <what is wrong>``."""
    lines = [f"{source}: {exc.error_count()} problem(s)"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see README for the schema)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_config(path: Path | str, *, calibrating: bool = False) -> ServiceConfig:
    """Read and validate a YAML config; relative paths resolve against its folder.

    ``calibrating``: the service's ``calibration:`` file need not exist yet (for
    ``tiergate calibrate``, which writes it). Raises :class:`ConfigError` with a
    readable, complete list of problems.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data = {**data, "path": path.resolve()}
    try:
        context = {"base_dir": path.resolve().parent, "calibrating": calibrating}
        return ServiceConfig.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def tiergate_home() -> Path:
    """Root of tiergate's caches: ``$TIERGATE_HOME`` or ``~/.cache/tiergate``."""
    env = os.environ.get("TIERGATE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tiergate"


# prometheus_client's own switch: it picks mmap-backed values at import when this is set.
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_metrics_dir() -> Path | None:
    """The folder shared by ``serve --workers N`` for metrics (``$PROMETHEUS_MULTIPROC_DIR``).

    None in a single process. The variable, not a flag, is the source of truth because
    prometheus_client reads it at import to decide how every metric stores its value.
    """
    env = os.environ.get(_MULTIPROC_ENV)
    return Path(env) if env else None


def worker_environ(metrics_dir: Path) -> dict[str, str]:
    """The environment for a worker process: this one's, with the shared metrics folder."""
    return {**os.environ, _MULTIPROC_ENV: str(metrics_dir)}
