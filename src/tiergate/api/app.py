"""FastAPI face: translates HTTP to service calls and errors to status codes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse, Response

from tiergate.api.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    PredictRequest,
    PredictResponse,
)
from tiergate.config import LimitsConfig
from tiergate.errors import (
    ConfigError,
    DeadlineExceededError,
    InputError,
    InputTooLargeError,
    ModelError,
    NotReadyError,
    OverloadError,
    TiergateError,
)
from tiergate.service import Service

__all__ = ["create_app"]

_STATUS: dict[type[TiergateError], int] = {
    InputTooLargeError: 413,
    InputError: 422,
    NotReadyError: 503,
    OverloadError: 429,
    DeadlineExceededError: 504,
    ModelError: 503,
    ConfigError: 500,
}
_MAX_DEPTH = 8


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(exc: TiergateError) -> JSONResponse:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 500)
    headers = {}
    if isinstance(exc, OverloadError):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return JSONResponse({"error": exc.to_dict()}, status_code=status, headers=headers)


def _errors_doc(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse} for c in codes}


# A text the guard accepts has at least one visible character.
_VISIBLE = r"[^\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]"


def _schema_body(model: type[Any], limits: LimitsConfig) -> dict[str, Any]:
    # The documented schema carries the configured limits, so clients (and fuzzers)
    # know exactly what is valid.
    schema = model.model_json_schema()
    props = schema["properties"]
    text = {"type": "string", "minLength": 1, "maxLength": limits.max_input_chars,
            "pattern": _VISIBLE}  # fmt: skip
    if "input" in props:
        props["input"] = {**props["input"], **text}
    if "inputs" in props:
        items = {**props["inputs"]["items"], **text}
        props["inputs"] = {**props["inputs"], "items": items, "maxItems": limits.max_batch_items}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def create_app(
    service: Service | None = None,
    *,
    loader: Callable[[], Service] | None = None,
    limits: LimitsConfig | None = None,
) -> FastAPI:
    """The HTTP app around a service, or around a loader run in the background.

    With ``loader``, ``/healthz`` answers at once and ``/readyz`` says 503 until the
    models are loaded.
    """
    state: dict[str, Any] = {"service": service, "error": None}
    limits = limits or (service.config.limits if service is not None else LimitsConfig())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = None
        if state["service"] is None and loader is not None:

            async def load() -> None:
                try:
                    state["service"] = await asyncio.to_thread(loader)
                except TiergateError as exc:
                    state["error"] = exc

            task = asyncio.create_task(load())
        yield
        if task is not None:
            task.cancel()
        if state["service"] is not None:
            await state["service"].aclose()

    app = FastAPI(
        title="tiergate",
        summary="Tiered inference gateway: fast model first, accurate model when unsure.",
        version="0.1.0",
        lifespan=lifespan,
    )

    def svc() -> Service:
        s = state["service"]
        if s is None:
            if state["error"] is not None:
                raise NotReadyError(f"service failed to load: {state['error'].message}")
            raise NotReadyError("models are still loading")
        return s  # type: ignore[no-any-return]

    async def body(request: Request) -> dict[str, Any]:
        # Parse ourselves: accept JSON whatever the Content-Type (curl -d sends a form
        # type), bound the size, and give a precise message for each kind of garbage.
        limit = svc().config.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise InputTooLargeError(f"request body is {declared} bytes; the limit is {limit}")
        raw = await request.body()
        if len(raw) > limit:
            raise InputTooLargeError(f"request body is {len(raw)} bytes; the limit is {limit}")
        if not raw.strip():
            raise InputError("request body is empty; send a JSON object")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"request body is not valid JSON (UTF-8): {exc}") from None
        if not isinstance(data, dict):
            raise InputError("request body must be a JSON object")
        if _depth(data) > _MAX_DEPTH:
            raise InputError(f"request body is nested deeper than {_MAX_DEPTH} levels")
        return data

    def deadline_of(request: Request, data: dict[str, Any]) -> float | None:
        value = data.get("deadline_ms", request.headers.get("x-request-deadline-ms"))
        if value is None:
            return None
        try:
            ms = float(value)
        except (TypeError, ValueError):
            raise InputError("deadline_ms must be a number of milliseconds") from None
        if isinstance(value, bool) or not 10 <= ms <= 600_000:
            raise InputError("deadline_ms must be a number of milliseconds in [10, 600000]")
        return ms

    def unknown_keys(data: dict[str, Any], allowed: set[str]) -> None:
        extra = sorted(set(data) - allowed)
        if extra:
            raise InputError(f"unknown field(s): {', '.join(extra)}")

    @app.exception_handler(TiergateError)
    async def _tiergate_error(_: Request, exc: TiergateError) -> Response:
        s = state["service"]
        if s is not None:
            s.metrics.rejected.labels(exc.type).inc()
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        msg = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(InputError(msg))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": {"type": kind, "message": str(exc.detail)}}, status_code=exc.status_code
        )

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=_errors_doc(413, 422, 429, 503, 504),
        openapi_extra=_schema_body(PredictRequest, limits),
        summary="Classify one input",
    )
    async def predict(request: Request) -> Response:
        data = await body(request)
        unknown_keys(data, {"input", "deadline_ms"})
        if "input" not in data:
            raise InputError("missing field: input", field="input")
        result = await svc().predict(data["input"], deadline_of(request, data))
        return JSONResponse(result.to_dict())

    @app.post(
        "/v1/predict/batch",
        response_model=BatchResponse,
        responses=_errors_doc(413, 422, 429, 503, 504),
        openapi_extra=_schema_body(BatchRequest, limits),
        summary="Classify many inputs",
    )
    async def predict_batch(request: Request) -> Response:
        data = await body(request)
        unknown_keys(data, {"inputs", "deadline_ms"})
        if "inputs" not in data:
            raise InputError("missing field: inputs", field="inputs")
        results = await svc().predict_batch(data["inputs"], deadline_of(request, data))
        return JSONResponse({"results": [r.to_dict() for r in results]})

    @app.get("/healthz", summary="Process is up")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="Models loaded, ready to serve", responses=_errors_doc(503))
    async def readyz() -> Response:
        return JSONResponse({"status": "ready", **svc().describe()})

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        s = state["service"]
        payload = s.metrics_text() if s is not None else b"tiergate_ready 0\n"
        return Response(payload, media_type="text/plain; version=0.0.4; charset=utf-8")

    app.state.tiergate = state
    return app


def _depth(obj: Any, level: int = 1) -> int:
    if level > _MAX_DEPTH:
        return level
    if isinstance(obj, dict):
        return max((_depth(v, level + 1) for v in obj.values()), default=level)
    if isinstance(obj, list):
        return max((_depth(v, level + 1) for v in obj), default=level)
    return level
