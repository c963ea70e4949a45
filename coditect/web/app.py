"""The dashboard's ASGI application (Starlette): its routes, its security middleware, its errors."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from coditect.web import actions, live, pages
from coditect.web.rendering import build_templates, render
from coditect.web.security import SecurityMiddleware
from coditect.web.state import Dashboard

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return render(request, "error.html", status_code=exc.status_code, message=exc.detail)


async def _redis_error(request: Request, exc: Exception) -> Response:
    logger.warning("%s %s: Redis: %s", request.method, request.url.path, exc)
    return render(request, "error.html", status_code=503, message="Redis is not answering; try again soon.")


def create_app(dashboard: Dashboard) -> Starlette:
    """The dashboard on ``dashboard``'s orchestrator (opened and closed by the caller)."""
    routes = [
        Route("/", pages.batches_page),
        Route("/live", live.all_batches_live),
        Route("/batches/{batch_id}", pages.batch_page),
        Route("/batches/{batch_id}/live", live.batch_live),
        Route("/batches/{batch_id}/cancel", actions.cancel_batch, methods=["POST"]),
        Route("/batches/{batch_id}/rerun", actions.rerun_batch, methods=["POST"]),
        Route("/batches/{batch_id}/tasks/{task_id}", pages.task_page),
        Route("/workers", pages.workers_page),
        Route("/login", actions.login, methods=["GET", "POST"]),
        Route("/logout", actions.logout, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("coditect.web", "static")]), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityMiddleware, guard=dashboard.guard, login_page=pages.login_page)],
        exception_handlers={HTTPException: _http_error, RedisError: _redis_error},
    )
    app.state.dashboard = dashboard
    app.state.templates = build_templates()
    return app
