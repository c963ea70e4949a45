"""Templates (Jinja2, every value escaped) and what every page gets: the CSRF token for its forms,
where the data comes from (the Redis URL, its password masked), and a notice after an action."""

from __future__ import annotations

import re
from typing import Any

import jinja2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from coditect.client.orchestrator import BATCH_ID_PATTERN
from coditect.connections import redact_url
from coditect.models import TASK_ID_PATTERN
from coditect.web.formatting import FILTERS
from coditect.web.state import Dashboard

__all__ = ["NOTICES", "batch_id_param", "build_templates", "dashboard_of", "render", "task_id_param"]

_TASK_ID = re.compile(TASK_ID_PATTERN)
# Notices are chosen by a key in the URL, never taken from it: nothing a link carries is shown.
NOTICES = {
    "cancelled": "Cancel requested: queued tasks end now, running ones are asked to abort.",
    "rerun": "This batch re-runs the tasks that did not succeed.",
    "nothing-to-rerun": "Nothing to re-run: every task of this batch succeeded (or has not finished).",
    "logged-out": "Logged out.",
}


def build_templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("coditect.web", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return Jinja2Templates(env=env)


def dashboard_of(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    dashboard = dashboard_of(request)
    settings = dashboard.settings
    templates: Jinja2Templates = request.app.state.templates
    common = {
        "csrf": dashboard.guard.csrf_token(request.state.session),
        "where": "embedded (in this process)" if settings.embedded else redact_url(settings.redis_url),
        "token_mode": dashboard.guard.token is not None,
        "signed_in": request.state.session.authenticated,
        "notice": NOTICES.get(request.query_params.get("notice", ""), ""),
        "nav": "",
    }
    return templates.TemplateResponse(request, name, {**common, **context}, status_code=status_code)


def batch_id_param(request: Request) -> str:
    batch_id: str = request.path_params["batch_id"]
    if not BATCH_ID_PATTERN.match(batch_id):
        raise HTTPException(404, "no such batch")
    return batch_id


def task_id_param(request: Request) -> str:
    task_id: str = request.path_params["task_id"]
    if not _TASK_ID.match(task_id):
        raise HTTPException(404, "no such task")
    return task_id
