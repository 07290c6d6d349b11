"""The Images view's FastAPI app, built on the API server's first request to ``/imggen``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse

log = logging.getLogger(__name__)


def create_app() -> FastAPI:
    from airflow_provider_imggen.ui.routes import router

    app = FastAPI(title="imggen: Images view", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> PlainTextResponse:
        return PlainTextResponse("Bad request", status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> PlainTextResponse:
        # Logged server-side; the browser gets no stack trace and nothing of the error's text.
        log.error("Images view: %s on %s", type(error).__name__, request.url.path, exc_info=error)
        return PlainTextResponse("Internal error", status_code=500)

    return app
