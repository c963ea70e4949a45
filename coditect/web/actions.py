"""What the dashboard does, all POSTs with the session's CSRF token: cancel a batch, re-run what
did not succeed, log in and out. Each answers with a redirect (303), so a reload never sends twice."""

from __future__ import annotations

from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from coditect.client.orchestrator import BATCH_ID_PATTERN, new_batch_id
from coditect.errors import TaskInputError
from coditect.web.pages import login_page
from coditect.web.rendering import batch_id_param, dashboard_of
from coditect.web.rerun import rerun_failed
from coditect.web.security import Session, session_cookie

__all__ = ["cancel_batch", "login", "logout", "rerun_batch"]

MAX_FIELDS = 8


async def checked_form(request: Request) -> FormData:
    """The posted form, once its CSRF token matches the session's (not asked of bearer requests)."""
    form = await request.form(max_files=0, max_fields=MAX_FIELDS)
    if request.state.bearer:
        return form
    csrf = form.get("csrf")
    if not dashboard_of(request).guard.csrf_ok(
        request.state.session, csrf if isinstance(csrf, str) else None
    ):
        raise HTTPException(403, "this form has expired or did not come from the dashboard; reload the page")
    return form


def _see(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


async def cancel_batch(request: Request) -> Response:
    batch_id = batch_id_param(request)
    await checked_form(request)
    try:
        await dashboard_of(request).orchestrator.cancel(batch_id)
    except TaskInputError as err:
        raise HTTPException(404, str(err)) from err
    return _see(f"/batches/{batch_id}?notice=cancelled")


async def rerun_batch(request: Request) -> Response:
    batch_id = batch_id_param(request)
    form = await checked_form(request)
    # The id comes with the form, so that sending it twice makes one batch.
    wanted = form.get("new_batch_id")
    new_id = wanted if isinstance(wanted, str) and BATCH_ID_PATTERN.match(wanted) else new_batch_id()
    if new_id == batch_id:
        raise HTTPException(400, "a re-run needs a new batch id")
    dashboard = dashboard_of(request)
    if not await dashboard.store.exists(batch_id):
        raise HTTPException(404, f"no batch {batch_id}")
    if await rerun_failed(dashboard.store, batch_id, new_id) == 0:
        return _see(f"/batches/{batch_id}?notice=nothing-to-rerun")
    return _see(f"/batches/{new_id}?notice=rerun")


def _local_path(target: str) -> str:
    """Where to go after logging in: a path of this dashboard, never another site."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return quote(target, safe="/?=&-_.:~%")


def _with_session(response: Response, request: Request, session: Session) -> Response:
    cookie = session_cookie(dashboard_of(request).guard, session, secure=request.url.scheme == "https")
    response.headers.append("set-cookie", cookie)
    return response


async def login(request: Request) -> Response:
    if request.method != "POST":
        return await login_page(request)
    form = await checked_form(request)
    guard = dashboard_of(request).guard
    token = form.get("token")
    if guard.token is None:
        return _see("/")
    target = form.get("next")
    if not guard.token_ok(token if isinstance(token, str) else None):
        return await login_page(request, failed=True, target=target if isinstance(target, str) else "/")
    # A new session id on login: one planted before it is worth nothing after.
    response = _see(_local_path(target if isinstance(target, str) else "/"))
    return _with_session(response, request, guard.new_session(authenticated=True))


async def logout(request: Request) -> Response:
    await checked_form(request)
    guard = dashboard_of(request).guard
    target = "/login?notice=logged-out" if guard.token is not None else "/"
    return _with_session(_see(target), request, guard.new_session())
