"""FastAPI face: translates HTTP to service calls and errors to status codes."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse, Response

from tiergate.api.pages import install_pages
from tiergate.api.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    PredictRequest,
    PredictResponse,
    UsageResponse,
)
from tiergate.config import LimitsConfig
from tiergate.errors import (
    BudgetExceededError,
    ConfigError,
    DeadlineExceededError,
    DrainingError,
    ForbiddenError,
    InputError,
    InputTooLargeError,
    ModelError,
    NotFoundError,
    NotReadyError,
    OverloadError,
    TiergateError,
    UnauthorizedError,
    _RetryAfter,
)
from tiergate.heap import GcPolicy, GcWatch, prepare_for_serving
from tiergate.requestlog import access_line, request_id
from tiergate.service import Service
from tiergate.tenancy import Tenant

__all__ = ["create_app"]

log = logging.getLogger("tiergate")

_STATUS: dict[type[TiergateError], int] = {
    UnauthorizedError: 401,
    BudgetExceededError: 402,
    ForbiddenError: 403,
    NotFoundError: 404,
    InputTooLargeError: 413,
    InputError: 422,
    NotReadyError: 503,
    OverloadError: 429,
    DeadlineExceededError: 504,
    ModelError: 503,
    ConfigError: 500,
}
_MAX_DEPTH = 8
_SERVING_GC = GcPolicy()


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _reload_on_hup(service: Service) -> None:
    """SIGHUP reloads the calibration (the supervisor of ``--workers`` forwards it)."""

    def reload() -> None:
        try:
            service.reload()
        except TiergateError as exc:
            log.error("reload on SIGHUP failed; keeping calibration %s: %s",
                      service.cascade.calibration_version, exc.message)  # fmt: skip

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread (tests)
        log.debug("SIGHUP reload not installed: not in the main thread")


def _error(exc: TiergateError) -> JSONResponse:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 500)
    headers = {}
    if isinstance(exc, OverloadError | BudgetExceededError):
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


def _feedback_body(labels: tuple[str, ...] | None) -> dict[str, Any]:
    # The label set is the service's: documented as an enum when it is known up front.
    schema = FeedbackRequest.model_json_schema()
    props = schema["properties"]
    props["request_id"] = {**props["request_id"], "maxLength": 200}
    if labels is not None:
        props["label"] = {**props["label"], "enum": list(labels)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def create_app(
    service: Service | None = None,
    *,
    loader: Callable[[], Service] | None = None,
    limits: LimitsConfig | None = None,
    gc_policy: GcPolicy | None = _SERVING_GC,
) -> FastAPI:
    """The HTTP app around a service, or around a loader run in the background.

    With ``loader``, ``/healthz`` answers at once and ``/readyz`` says 503 until the
    models are loaded. The predict routes are answered by plain ASGI handlers ahead of
    the framework (see :class:`_App`); FastAPI still documents them and serves the rest.
    Once the service is loaded, the process's heap is frozen and the collector tuned
    (``gc_policy``, see :mod:`tiergate.heap`; ``None`` leaves the collector alone), and
    every collection's pause is exported as ``tiergate_gc_pause_seconds`` (wall) and
    ``tiergate_gc_cpu_seconds`` (the collector's CPU time).
    """
    state: dict[str, Any] = {"service": service, "error": None}
    limits = limits or (service.config.limits if service is not None else LimitsConfig())

    watches: list[GcWatch] = []

    def loaded(s: Service) -> None:
        _reload_on_hup(s)
        if gc_policy is not None:
            frozen = prepare_for_serving(gc_policy)
            log.info("heap frozen after loading (%d objects); %r", frozen, gc_policy)
        # Installed after the start-up collection: the histogram shows pauses in service.
        watches.append(GcWatch(s.metrics.observe_gc_pause).install())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = None
        if state["service"] is not None:
            await state["service"].start()  # remote tiers: a failed probe stops start-up
            loaded(state["service"])
        elif loader is not None:

            async def load() -> None:
                try:
                    s = await asyncio.to_thread(loader)
                    await s.start()
                except TiergateError as exc:
                    state["error"] = exc
                    return
                state["service"] = s
                loaded(s)

            task = asyncio.create_task(load())
        yield
        if task is not None:
            task.cancel()
        for watch in watches:
            watch.uninstall()
        if state["service"] is not None:
            await state["service"].aclose()

    app = _App(
        title="tiergate",
        summary="Tiered inference gateway: fast model first, accurate model when unsure.",
        version="0.1.0",
        lifespan=lifespan,
        # /docs and /redoc are served offline by install_pages (FastAPI's use a CDN).
        docs_url=None,
        redoc_url=None,
    )
    handlers = _Handlers(state)
    install_pages(app, handlers.service)

    @app.exception_handler(TiergateError)
    async def _tiergate_error(_: Request, exc: TiergateError) -> Response:
        status, payload, headers = handlers.error(exc)
        return _framework_response(status, payload, headers)

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

    async def _framework_route(request: Request, handle: _Handle) -> Response:
        # Reached only when the fast dispatch did not take the request (e.g. the app
        # is mounted under a prefix): same handler, same answers.
        deadline = request.headers.get("x-request-deadline-ms")
        rid = request_id(request.headers.get("x-request-id", "").encode("latin-1") or None)
        status, payload, headers = await handlers.run(
            handle,
            await request.body(),
            request.headers.get("content-length"),
            deadline,
            request.headers.get("authorization"),
            rid=rid.decode("latin-1"),
        )
        return _framework_response(status, payload, headers)

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=_errors_doc(413, 422, 429, 503, 504),
        openapi_extra=_schema_body(PredictRequest, limits),
        summary="Classify one input",
    )
    async def predict(request: Request) -> Response:
        return await _framework_route(request, handlers.predict)

    @app.post(
        "/v1/predict/batch",
        response_model=BatchResponse,
        responses=_errors_doc(413, 422, 429, 503, 504),
        openapi_extra=_schema_body(BatchRequest, limits),
        summary="Classify many inputs",
    )
    async def predict_batch(request: Request) -> Response:
        return await _framework_route(request, handlers.predict_batch)

    app.handlers = handlers
    app.hot_routes = {
        "/v1/predict": handlers.asgi(handlers.predict),
        "/v1/predict/batch": handlers.asgi(handlers.predict_batch),
    }

    @app.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        responses=_errors_doc(401, 403, 404, 422, 503),
        openapi_extra=_feedback_body(service.labels if service is not None else None),
        summary="Attach a true label to a recent answer (by its X-Request-Id)",
    )
    async def feedback(request: Request) -> Response:
        s = handlers.service()
        if s.tenancy.enabled:
            await s.tenancy.admit(request.headers.get("authorization"), "predict")
        data = _parse(await request.body(), s.config.limits.max_body_bytes)
        _unknown_keys(data, ("request_id", "label"))
        for name in ("request_id", "label"):
            if name not in data:
                raise InputError(f"missing field: {name}", field=name)
        return JSONResponse(await s.feedback(data["request_id"], data["label"]))

    @app.post(
        "/admin/reload",
        responses=_errors_doc(401, 403, 409, 503),
        summary="Load the calibration file again, without a restart (also: SIGHUP)",
    )
    async def reload(request: Request) -> Response:
        s = handlers.service()
        if s.tenancy.enabled:
            s.tenancy.check(request.headers.get("authorization"), "admin")
        try:
            return JSONResponse(s.reload())
        except ConfigError as exc:  # the running calibration stays
            return JSONResponse({"error": exc.to_dict()}, status_code=409)

    @app.get(
        "/v1/usage",
        response_model=UsageResponse,
        responses=_errors_doc(401, 403, 404, 503),
        summary="The calling key's limits, budget and spend this period",
    )
    async def usage(request: Request) -> Response:
        s = handlers.service()
        if not s.tenancy.enabled:
            raise NotFoundError("no API keys are configured, so there is no usage per key")
        tenant = s.tenancy.check(request.headers.get("authorization"), "usage")
        assert tenant is not None
        return JSONResponse(await s.tenancy.usage(tenant))

    @app.get("/healthz", summary="Process is up")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="Models loaded, ready to serve", responses=_errors_doc(503))
    async def readyz() -> Response:
        s = handlers.service()
        if s.draining:
            raise DrainingError("this replica is shutting down", retry_after_s=1.0)
        return JSONResponse({"status": "ready", **s.describe()})

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


_Send = Callable[[dict[str, Any]], Awaitable[None]]
_Receive = Callable[[], Awaitable[dict[str, Any]]]
_ASGI = Callable[[dict[str, Any], _Receive, _Send], Awaitable[None]]
_Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
_Handle = Callable[
    [Service, dict[str, Any], float | None, dict[str, Any] | None, str | None, Tenant | None],
    Awaitable[bytes],
]
_JSON_HEADERS = [(b"content-type", b"application/json")]
# Routes besides predict that a key needs a right for, when `auth.protect` names it.
# The dashboard's page holds no data (it asks /dashboard/data, with a key when needed).
_PROTECTED = {"/metrics": "metrics", "/dashboard/data": "metrics",
              "/docs": "docs", "/redoc": "docs", "/openapi.json": "docs",
              "/docs/oauth2-redirect": "docs"}  # fmt: skip


class _App(FastAPI):
    """FastAPI with the predict routes dispatched before the framework's stack.

    The framework's middleware, routing and dependency machinery cost about as much
    per request as a cache hit itself; the hot routes parse their own bodies anyway,
    so they are plain ASGI handlers looked up by exact path. Everything else (docs,
    OpenAPI, probes, metrics, 404/405) goes through FastAPI as usual.
    """

    hot_routes: dict[str, _ASGI]
    handlers: _Handlers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if scope["method"] == "POST":
            handler = self.hot_routes.get(scope["path"])
            if handler is not None and not scope.get("root_path"):
                await handler(scope, receive, send)
                return
        rid_header = authorization = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid_header = value
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        rid = request_id(rid_header)

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"x-request-id", rid)]
                message = {**message, "headers": headers}
            await send(message)

        right = _PROTECTED.get(scope["path"])
        service = self.state.tiergate["service"]
        if right is not None and service is not None and right in service.tenancy.protect:
            try:
                service.tenancy.check(authorization, right)
            except TiergateError as exc:
                status, payload, headers = self.handlers.error(exc)
                headers = [*headers, (b"content-length", b"%d" % len(payload))]
                await send_with_id(
                    {"type": "http.response.start", "status": status, "headers": headers}
                )
                await send({"type": "http.response.body", "body": payload})
                return
        await super().__call__(scope, receive, send_with_id)


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class _Handlers:
    """Request → answer for the predict routes, shared by both dispatch paths."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def service(self) -> Service:
        s = self._state["service"]
        if s is None:
            if self._state["error"] is not None:
                raise NotReadyError(f"service failed to load: {self._state['error'].message}")
            raise NotReadyError("models are still loading")
        return s  # type: ignore[no-any-return]

    def error(self, exc: TiergateError) -> _Answer:
        s = self._state["service"]
        if s is not None:
            s.metrics.rejected_by(exc.type).inc()
        status = next((c for cls, c in _STATUS.items() if isinstance(exc, cls)), 500)
        headers = list(_JSON_HEADERS)
        if isinstance(exc, _RetryAfter):
            headers.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
        return status, orjson.dumps({"error": exc.to_dict()}), headers

    async def run(
        self, handle: _Handle, raw: bytes, declared: str | None, deadline: str | None,
        authorization: str | None = None, ctx: dict[str, Any] | None = None,
        rid: str | None = None,
    ) -> _Answer:  # fmt: skip
        try:
            s = self.service()
            tenant = None
            if s.tenancy.enabled:
                tenant = await s.tenancy.admit(authorization, "predict")
                if ctx is not None and tenant is not None:
                    ctx["key"] = tenant.name
            limit = s.config.limits.max_body_bytes
            if declared and declared.isdigit() and int(declared) > limit:
                raise InputTooLargeError(f"request body is {declared} bytes; the limit is {limit}")
            payload = await handle(s, _parse(raw, limit), _deadline(deadline), ctx, rid, tenant)
        except TiergateError as exc:
            return self.error(exc)
        return 200, payload, _JSON_HEADERS

    @staticmethod
    async def predict(
        s: Service, data: dict[str, Any], header: float | None, ctx: dict[str, Any] | None,
        rid: str | None, tenant: Tenant | None,
    ) -> bytes:  # fmt: skip
        _unknown_keys(data, ("input", "deadline_ms"))
        if "input" not in data:
            raise InputError("missing field: input", field="input")
        result = await s.predict(
            data["input"], _body_deadline(data, header), request_id=rid, tenant=tenant
        )
        if ctx is not None:
            ctx.update(tier=result.tier, cache=result.cache, degraded=result.degraded,
                       cost=result.cost)  # fmt: skip
        return orjson.dumps(result.to_dict())

    @staticmethod
    async def predict_batch(
        s: Service, data: dict[str, Any], header: float | None, ctx: dict[str, Any] | None,
        rid: str | None, tenant: Tenant | None,
    ) -> bytes:  # fmt: skip
        _unknown_keys(data, ("inputs", "deadline_ms"))
        if "inputs" not in data:
            raise InputError("missing field: inputs", field="inputs")
        results = await s.predict_batch(
            data["inputs"], _body_deadline(data, header), request_id=rid, tenant=tenant
        )
        if ctx is not None:
            ctx.update(n=len(results), cost=sum(r.cost for r in results),
                       degraded=sum(r.degraded is not None for r in results))  # fmt: skip
        return orjson.dumps({"results": [r.to_dict() for r in results]})

    def asgi(self, handle: _Handle) -> _ASGI:
        """``handle`` as a plain ASGI app (the fast dispatch of :class:`_App`)."""

        async def endpoint(scope: dict[str, Any], receive: _Receive, send: _Send) -> None:
            declared = deadline = authorization = None
            rid_header: bytes | None = None
            for name, value in scope["headers"]:
                if name == b"content-length":
                    declared = value.decode("latin-1")
                elif name == b"x-request-deadline-ms":
                    deadline = value.decode("latin-1")
                elif name == b"authorization":
                    authorization = value.decode("latin-1")
                elif name == b"x-request-id":
                    rid_header = value
            rid = request_id(rid_header)
            s = self._state["service"]
            logging_on = s is not None and s.config.access_log
            ctx: dict[str, Any] | None = {} if logging_on else None
            started = time.perf_counter()
            try:
                raw = await _read_body(receive, self._body_limit())
                status, payload, headers = await self.run(
                    handle, raw, declared, deadline, authorization, ctx, rid.decode("latin-1")
                )
            except _ClientGone:
                return
            except TiergateError as exc:
                status, payload, headers = self.error(exc)
            except Exception as exc:  # never an unexplained 500: typed, and logged
                log.exception("unhandled error in %s", scope["path"])
                status, payload, headers = 500, _internal(exc), _JSON_HEADERS
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        *headers,
                        (b"content-length", b"%d" % len(payload)),
                        (b"x-request-id", rid),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            if ctx is not None:
                access_line(rid, scope["path"], status, ctx.pop("key", None), started, ctx)

        return endpoint

    def _body_limit(self) -> int:
        s = self._state["service"]
        return s.config.limits.max_body_bytes if s is not None else LimitsConfig().max_body_bytes


async def _read_body(receive: _Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InputTooLargeError(f"request body is over {limit} bytes; the limit is {limit}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _parse(raw: bytes, limit: int) -> dict[str, Any]:
    # Parse ourselves: accept JSON whatever the Content-Type (curl -d sends a form
    # type), bound the size, and give a precise message for each kind of garbage.
    if len(raw) > limit:
        raise InputTooLargeError(f"request body is {len(raw)} bytes; the limit is {limit}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if not raw.strip():
            raise InputError("request body is empty; send a JSON object") from None
        raise InputError(f"request body is not valid JSON (UTF-8): {exc}") from None
    if not isinstance(data, dict):
        raise InputError("request body must be a JSON object")
    if _depth(data) > _MAX_DEPTH:
        raise InputError(f"request body is nested deeper than {_MAX_DEPTH} levels")
    return data


def _deadline(value: Any) -> float | None:
    if value is None:
        return None
    try:
        ms = float(value)
    except (TypeError, ValueError):
        raise InputError("deadline_ms must be a number of milliseconds") from None
    if isinstance(value, bool) or not 10 <= ms <= 600_000:
        raise InputError("deadline_ms must be a number of milliseconds in [10, 600000]")
    return ms


def _body_deadline(data: dict[str, Any], header: float | None) -> float | None:
    return _deadline(data["deadline_ms"]) if "deadline_ms" in data else header


def _unknown_keys(data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = [k for k in data if k not in allowed]
    if extra:
        raise InputError(f"unknown field(s): {', '.join(sorted(extra))}")


def _framework_response(
    status: int, payload: bytes, headers: list[tuple[bytes, bytes]]
) -> Response:
    extra = {k.decode(): v.decode() for k, v in headers if k != b"content-type"}
    return Response(payload, status, extra, media_type="application/json")


def _internal(exc: Exception) -> bytes:
    return orjson.dumps(
        {"error": {"type": "internal_error", "message": f"internal error: {type(exc).__name__}"}}
    )


def _depth(obj: Any, level: int = 1) -> int:
    if level > _MAX_DEPTH:
        return level
    if isinstance(obj, dict):
        return max((_depth(v, level + 1) for v in obj.values()), default=level)
    if isinstance(obj, list):
        return max((_depth(v, level + 1) for v in obj), default=level)
    return level
