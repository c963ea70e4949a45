"""Who may see the dashboard and act on it: the token, sessions, CSRF, hosts and response headers.

- **Binding.** 127.0.0.1 (or another loopback address) by default; any other address needs
  ``CODITECT_DASHBOARD_TOKEN`` (``check_bind``).
- **Token.** When set, every request but the login form and the static files needs it: a session
  cookie set by the login form (HttpOnly, SameSite=Strict) or ``Authorization: Bearer <token>``.
  Compared in constant time; never part of a URL.
- **Sessions.** Every browser gets a signed session cookie (a random id, whether it logged in, an
  HMAC with a key born with the process): a restart logs everyone out.
- **Cross-site requests.** Actions are POSTs that must carry the session's CSRF token (an HMAC of
  the session id) in the form, and an ``Origin`` (or ``Referer``) naming this host. A request with a
  bearer token is exempt: browsers never send that header on their own.
- **DNS rebinding.** Without a token, only loopback host names are answered, so a page whose name
  resolves to 127.0.0.1 cannot read the dashboard.
- **Headers.** A strict Content-Security-Policy (scripts and styles only from this server's files),
  ``nosniff``, ``Referrer-Policy: same-origin``, no framing, no caching of pages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coditect.errors import ConfigurationError

__all__ = [
    "COOKIE",
    "MIN_TOKEN_CHARS",
    "SECURITY_HEADERS",
    "Guard",
    "SecurityMiddleware",
    "Session",
    "check_bind",
    "is_loopback",
]

COOKIE = "coditect_session"
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}

LoginPage = Callable[[Request], Awaitable[Response]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only reaches this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token, and any token shorter than ``MIN_TOKEN_CHARS``."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigurationError(
            f"CODITECT_DASHBOARD_TOKEN is too short: use at least {MIN_TOKEN_CHARS} random characters "
            '(python3 -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    if token is None and not is_loopback(host):
        raise ConfigurationError(
            f"serving the dashboard on {host} needs CODITECT_DASHBOARD_TOKEN (anyone who can reach it "
            "could cancel batches); set it, or keep the default --host 127.0.0.1"
        )


@dataclass(frozen=True, slots=True)
class Session:
    """A browser's session: a random id, and whether it logged in with the token."""

    id: str
    authenticated: bool


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Guard:
    """The dashboard's secrets and the checks made with them."""

    def __init__(self, token: str | None, *, bound_host: str = "127.0.0.1") -> None:
        self.token = token
        self._key = secrets.token_bytes(32)
        # With a token, a rebinding page cannot log in; without one, only loopback names are answered.
        self.allowed_hosts: frozenset[str] | None = None
        if token is None:
            self.allowed_hosts = LOOPBACK_NAMES | {bound_host.lower().strip("[]")}

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())

    def new_session(self, *, authenticated: bool = False) -> Session:
        return Session(secrets.token_urlsafe(18), authenticated)

    def cookie_value(self, session: Session) -> str:
        body = f"{session.id}.{int(session.authenticated)}"
        return f"{body}.{self._sign(body)}"

    def session_from(self, cookie: str | None) -> Session | None:
        """The session a cookie names, if this process signed it."""
        if not cookie or cookie.count(".") != 2:
            return None
        session_id, authenticated, signature = cookie.split(".")
        if authenticated not in ("0", "1"):
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(f"{session_id}.{authenticated}").encode()):
            return None
        return Session(session_id, authenticated == "1")

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf.{session.id}")

    def csrf_ok(self, session: Session, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.csrf_token(session).encode())

    def token_ok(self, value: str | None) -> bool:
        if self.token is None or value is None:
            return False
        return hmac.compare_digest(value.encode(), self.token.encode())

    def bearer_ok(self, authorization: str | None) -> bool:
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    def host_ok(self, host_header: str | None) -> bool:
        if self.allowed_hosts is None:
            return True
        return _hostname(host_header or "") in self.allowed_hosts

    @staticmethod
    def same_origin(headers: Headers) -> bool:
        """Whether a POST comes from a page of this dashboard: its Origin (or, without one, its
        Referer) names the host the request was sent to. Only the host and port are compared, so
        that a TLS-terminating proxy in front does not break it."""
        host = (headers.get("host") or "").lower()
        source = headers.get("origin") or headers.get("referer")
        if not host or not source or source == "null":
            return False
        return urlsplit(source).netloc.lower() == host


def _hostname(host_header: str) -> str:
    """The host name of a Host header without its port: ``[::1]:8000`` -> ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _add_headers(headers: MutableHeaders, extra: Iterable[tuple[str, str]]) -> None:
    for name, value in extra:
        headers.append(name, value)


class SecurityMiddleware:
    """Checks every HTTP request (host, token, origin of POSTs) and adds the security headers.

    Sets ``request.state.session`` (the browser's session, new when it had none) and
    ``request.state.bearer`` (whether it carried the token as a bearer token).
    """

    def __init__(self, app: ASGIApp, *, guard: Guard, login_page: LoginPage) -> None:
        self.app = app
        self.guard = guard
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        request = Request(scope, receive)
        session = guard.session_from(request.cookies.get(COOKIE))
        fresh = session is None
        if session is None:
            session = guard.new_session()
        bearer = guard.bearer_ok(request.headers.get("authorization"))
        scope.setdefault("state", {}).update(session=session, bearer=bearer)
        path: str = scope["path"]
        secure = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not path.startswith("/static/"):
                    headers.setdefault("cache-control", "no-store")
                if fresh and "set-cookie" not in headers:
                    _add_headers(headers, [("set-cookie", session_cookie(guard, session, secure=secure))])
            await send(message)

        refusal: Response | None = None
        if not guard.host_ok(request.headers.get("host")):
            refusal = PlainTextResponse("unknown host: open the dashboard at 127.0.0.1", status_code=400)
        elif guard.token is not None and not (session.authenticated or bearer) and not _public(path):
            if scope["method"] == "GET" and not path.endswith("/live"):
                refusal = await self.login_page(request)
            else:
                refusal = PlainTextResponse("log in first", status_code=401)
        elif scope["method"] not in ("GET", "HEAD") and not bearer and not guard.same_origin(request.headers):
            refusal = PlainTextResponse("cross-site request refused", status_code=403)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _public(path: str) -> bool:
    """Reachable without the token: the login form and the files it needs."""
    return path == "/login" or path.startswith("/static/")


def session_cookie(guard: Guard, session: Session, *, secure: bool) -> str:
    """The Set-Cookie value of a session: HttpOnly, SameSite=Strict, for the whole dashboard."""
    attributes = "; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
    return f"{COOKIE}={guard.cookie_value(session)}{attributes}"
