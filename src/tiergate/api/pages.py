"""Pages for people: the live dashboard and the API docs, with nothing from the internet.

:func:`install_pages` adds to an app:

* ``GET /dashboard`` — one page (``api/static/dashboard.*``) that polls
  ``GET /dashboard/data`` (a :func:`tiergate.monitor.snapshot.snapshot`) every second;
* ``GET /docs``, ``GET /docs/oauth2-redirect`` and ``GET /redoc`` — Swagger UI and ReDoc
  served from the ``fastapi-offline`` package's copies, not a CDN (FastAPI's own pages
  stay blank on a machine without internet). Build the app with ``docs_url=None,
  redoc_url=None`` so these take over.

All of them are left out of the OpenAPI schema.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from tiergate.errors import NotReadyError
from tiergate.monitor.snapshot import snapshot
from tiergate.service import Service

__all__ = ["DASHBOARD_ASSETS", "DOCS_ASSETS", "install_pages"]

log = logging.getLogger("tiergate")

DASHBOARD_ASSETS = "/dashboard/static"
"""Where the dashboard's own script and style sheet are served."""
DOCS_ASSETS = "/docs/static"
"""Where Swagger UI's and ReDoc's bundles are served."""

_STATIC = Path(__file__).with_name("static")
_NO_STORE = {"cache-control": "no-store"}
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
# The dashboard loads only what tiergate serves (the icon is an empty data: URL).
_DASHBOARD_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'none'",
}
_DOCS_HINT = (
    "<!DOCTYPE html><title>API docs unavailable</title><p>The offline API docs need the "
    "<code>fastapi-offline</code> package (<code>pip install fastapi-offline</code>). The "
    "schema itself is at <a href='{openapi}'>{openapi}</a>.</p>"
)


def install_pages(app: FastAPI, service: Callable[[], Service]) -> None:
    """Register the dashboard and offline docs routes on ``app``.

    ``service()`` returns the loaded service or raises
    :class:`~tiergate.errors.NotReadyError` (then ``/dashboard/data`` answers 503 and the
    page says so until the service is up).
    """
    page = (_STATIC / "dashboard.html").read_bytes()
    app.mount(DASHBOARD_ASSETS, StaticFiles(directory=_STATIC), name="dashboard-static")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> Response:
        return HTMLResponse(page, headers=_DASHBOARD_HEADERS)

    @app.get("/dashboard/data", include_in_schema=False)
    async def dashboard_data() -> Response:
        try:
            data = snapshot(service())
        except NotReadyError as exc:
            return _json({"error": exc.to_dict()}, 503)
        return _json(data, 200)

    _install_docs(app)


def _install_docs(app: FastAPI) -> None:
    openapi = app.openapi_url
    if openapi is None:  # no schema, nothing to document
        return
    redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    assets = _docs_assets()
    if assets is not None:
        redoc_js = _offline_redoc(assets)

        @app.get(f"{DOCS_ASSETS}/redoc.standalone.js", include_in_schema=False)
        async def redoc_bundle() -> Response:  # ahead of the mount below
            return Response(redoc_js, media_type="text/javascript",
                            headers={"cache-control": "public, max-age=3600"})  # fmt: skip

        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-static")
    else:
        log.warning("fastapi-offline is not installed: /docs and /redoc show an install hint")
    # Swagger UI's own validator badge would call out to the internet.
    parameters = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        if assets is None:
            return HTMLResponse(_DOCS_HINT.format(openapi=root + openapi), status_code=503)
        return get_swagger_ui_html(
            openapi_url=root + openapi,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + redirect,
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters=parameters,
        )

    @app.get(redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> Response:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        if assets is None:
            return HTMLResponse(_DOCS_HINT.format(openapi=root + openapi), status_code=503)
        return get_redoc_html(
            openapi_url=root + openapi,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def _docs_assets() -> Path | None:
    """The folder of fastapi-offline's Swagger UI and ReDoc bundles, if installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).with_name("static")
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _offline_redoc(assets: Path) -> bytes:
    """ReDoc's bundle without its one call out: the sidebar's Redocly logo from a CDN.

    ``data:,`` is no image, so ReDoc's own ``onError`` hides the logo (as it would
    offline), and the browser never asks the internet for it.
    """
    return (assets / "redoc.standalone.js").read_bytes().replace(_REDOC_LOGO, b"data:,")


def _json(data: Any, status: int) -> Response:
    # orjson writes NaN (an estimate with no samples yet) as null; numpy scalars as numbers.
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)
    return Response(body, status, _NO_STORE, media_type="application/json")


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    return str(value)
