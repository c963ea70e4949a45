"""A fake LLM provider over real HTTP on loopback, with a script of planned responses.

It speaks the Anthropic Messages API (``POST /v1/messages``) and the OpenAI-compatible chat completions
API (``POST /v1/chat/completions``). Each API request takes the next planned response for its path (or,
when that queue is empty, for any path); with nothing planned it answers success, echoing the last
user message, with token counts derived from the text and ``latency_s`` of delay.

Like a real provider it can enforce rate limits over short intervals (``requests_per_minute``,
``input_tokens_per_minute``: see ``fake_limits.ProviderLimits``), answering 429 with ``retry-after`` and
Anthropic's error JSON; planned responses bypass them. It emulates Anthropic's prompt cache for system
blocks marked ``cache_control`` (the first request writes, later ones read), and puts rate-limit headers
(``anthropic-ratelimit-*``, or ``x-ratelimit-*`` on the OpenAI path) on every answer. ``served`` lists
every API request with its arrival time, status and counted tokens, to measure achieved rates.

In a test (a background thread, independent of any event loop)::

    with FakeProvider() as server:
        server.plan(status=429, headers={"retry-after": "2"})
        server.plan(delay_s=5)          # provoke a client read timeout
        server.plan(reset=True)         # close the socket with an RST, no response
        ...  # point a client at server.url (OpenAI-compatible: f"{server.url}/v1")
        assert len(server.requests) == 1

As a process (for worker subprocesses)::

    python tests/support/fake_provider.py --port 0 --latency-s 0.1  # prints its port, serves until SIGTERM

and script it over HTTP: ``POST /_fake/plan`` with ``plan()``'s keywords as a JSON object,
``GET /_fake/requests`` for the recorded requests, ``GET /_fake/served`` for ``served``,
``POST /_fake/clear`` to forget plans and requests.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if not __package__:  # run as a script (python tests/support/fake_provider.py): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.fake_limits import (
    Admission,
    PromptCache,
    ProviderLimits,
    Served,
    retry_after_header,
)

__all__ = [
    "ANTHROPIC_PATH",
    "OPENAI_PATH",
    "FakeProvider",
    "Plan",
    "RecordedRequest",
    "Served",
    "refused_port",
]

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"
CONTROL_PREFIX = "/_fake/"

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_REASONS = {529: "Overloaded"}


@dataclass(frozen=True)
class Plan:
    """One scripted response. ``body=None`` means a realistic body for the status and API."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # a str is sent as is (e.g. malformed JSON); anything else as JSON
    message: str | None = None  # the error message, in the API's own error format
    delay_s: float = 0.0  # before answering (or resetting)
    reset: bool = False  # close the connection with an RST instead of answering


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or the raw text when it was not JSON


def count_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def _text_of(content: Any) -> str:
    """A message's text: a plain string, or the text blocks of a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _echo(body: dict[str, Any], system: str) -> tuple[str, int, int, bool]:
    """(text, input_tokens, output_tokens, truncated) for a successful reply to ``body``."""
    messages = body.get("messages") or []
    texts = [_text_of(m.get("content")) for m in messages if isinstance(m, dict)]
    last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    # A few tokens of framing per message, as real tokenizers count roles and separators.
    input_tokens = (count_tokens(system) if system else 0) + sum(count_tokens(t) + 3 for t in texts)
    text = f"echo: {last_user}"
    max_tokens = int(body.get("max_tokens") or 1024)
    truncated = count_tokens(text) > max_tokens
    if truncated:
        text = text[: max_tokens * 4]
    return text, input_tokens, count_tokens(text), truncated


def anthropic_reply(
    body: dict[str, Any], number: int, *, cache_read: int = 0, cache_write: int = 0
) -> dict[str, Any]:
    """A Messages API reply; like Anthropic's, ``input_tokens`` excludes the cached prefix."""
    system = _text_of(body.get("system", ""))
    text, input_tokens, output_tokens, truncated = _echo(body, system)
    return {
        "id": f"msg_fake_{number:06d}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", ""),
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if truncated else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": max(0, input_tokens - cache_read - cache_write),
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
        },
    }


def openai_reply(body: dict[str, Any], number: int) -> dict[str, Any]:
    messages = body.get("messages") or []
    system = "".join(_text_of(m.get("content")) for m in messages if m.get("role") == "system")
    conversation = {**body, "messages": [m for m in messages if m.get("role") != "system"]}
    text, input_tokens, output_tokens, truncated = _echo(conversation, system)
    return {
        "id": f"chatcmpl-fake-{number:06d}",
        "object": "chat.completion",
        "created": 1_700_000_000 + number,
        "model": body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length" if truncated else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
    }


def error_body(path: str, status: int, message: str | None) -> dict[str, Any]:
    message = message or f"fake provider error {status}"
    if path == ANTHROPIC_PATH:
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": "fake_error", "code": status}}


class FakeProvider:
    """The server, its plans and its recorded requests. Bound on construction; ``start()`` serves."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_s: float = 0.0,
        requests_per_minute: int | None = None,
        input_tokens_per_minute: int | None = None,
        input_token_burst: int | None = None,
    ) -> None:
        self.latency_s = latency_s
        self.limits = ProviderLimits(requests_per_minute, input_tokens_per_minute, input_token_burst)
        self.cache = PromptCache()
        self._lock = threading.Lock()
        self._plans: defaultdict[str | None, deque[Plan]] = defaultdict(deque)
        self._requests: list[RecordedRequest] = []
        self._served: list[Served] = []
        self._arrived = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._httpd = _Server((host, port), self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The Anthropic base URL; the OpenAI-compatible one is ``f"{url}/v1"``."""
        host = self._httpd.server_address[0]
        return f"http://{host!s}:{self.port}"

    def plan(self, path: str | None = None, *, times: int = 1, **response: Any) -> None:
        """Queue ``times`` copies of a response (``Plan``'s fields) for ``path``, or for any path."""
        planned = Plan(**response)
        with self._lock:
            self._plans[path].extend([planned] * times)

    @property
    def requests(self) -> list[RecordedRequest]:
        """API requests received so far (control requests are not recorded)."""
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> list[RecordedRequest]:
        """Block until ``count`` API requests have arrived (from a test: ``asyncio.to_thread``)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._requests) >= count, timeout_s):
                raise TimeoutError(f"expected {count} request(s), got {len(self._requests)}")
            return list(self._requests)

    @property
    def served(self) -> list[Served]:
        """Every API request as it was answered, in arrival order."""
        with self._lock:
            return list(self._served)

    def clear(self) -> None:
        """Forget plans, requests, what was served and the prompt cache (not the rate-limit state)."""
        with self._lock:
            self._plans.clear()
            self._requests.clear()
            self._served.clear()
        self.cache.clear()

    def _take(self, request: RecordedRequest) -> tuple[Plan | None, int]:
        """The planned response for ``request`` (None: answer as the API would) and its number."""
        with self._lock:
            self._requests.append(request)
            self._arrived.notify_all()
            queue = self._plans[request.path] or self._plans[None]
            return (queue.popleft() if queue else None), len(self._requests)

    def _serve(self, served: Served) -> None:
        with self._lock:
            self._served.append(served)

    def _reply(self, path: str, body: Any, number: int, now: float) -> tuple[dict[str, Any], int, int, str]:
        """The API's reply to ``body``, the input tokens it counts toward the limit, its output tokens,
        and the prompt-cache key it uses ("" for none)."""
        body = body if isinstance(body, dict) else {}
        if path == OPENAI_PATH:
            reply = openai_reply(body, number)
            usage = reply["usage"]
            return reply, usage["prompt_tokens"], usage["completion_tokens"], ""
        prefix = PromptCache.cacheable_prefix(body.get("system"))
        key = f"{body.get('model', '')}\0{prefix}" if prefix else ""
        size = count_tokens(prefix) if prefix else 0
        hit = bool(key) and self.cache.is_cached(key, now)
        reply = anthropic_reply(body, number, cache_read=size if hit else 0, cache_write=0 if hit else size)
        usage = reply["usage"]
        # Like Anthropic: cache reads do not count toward the input-token limit, cache writes do.
        counted = usage["input_tokens"] + usage["cache_creation_input_tokens"]
        return reply, counted, usage["output_tokens"], key

    def start(self) -> FakeProvider:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-provider"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections and join every handler thread."""
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.close_open_connections()
        self._httpd.server_close()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    # Non-daemon handler threads, joined by server_close(): nothing outlives stop().
    daemon_threads = False
    block_on_close = True
    request_queue_size = 128  # the default backlog of 5 resets bursts of concurrent connections

    def __init__(self, address: tuple[str, int], fake: FakeProvider) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        # Wakes handlers blocked reading the next keep-alive request.
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out or hang up are the point of this server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real providers
    # Headers and body go out in two writes: with Nagle on, the client's delayed ACK holds every
    # keep-alive reply back by ~40 ms (fresh connections escape it), which made pooled clients look slow.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        route = urlsplit(self.path).path
        if route == CONTROL_PREFIX + "requests":
            self._send(200, {}, [asdict(r) for r in self.server.fake.requests])
        elif route == CONTROL_PREFIX + "served":
            self._send(200, {}, [asdict(s) for s in self.server.fake.served])
        else:
            self._send(404, {}, {"error": {"message": f"no route for GET {self.path}"}})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if path.startswith(CONTROL_PREFIX):
            self._control(path, body)
            return
        fake = self.server.fake
        arrived = time.monotonic()
        headers = {name.lower(): value for name, value in self.headers.items()}
        client = headers.get("x-fake-client", "")
        planned, number = fake._take(RecordedRequest(path, headers, body))
        api = path in (ANTHROPIC_PATH, OPENAI_PATH)
        if planned is None and api:
            self._answer(path, body, number, arrived, client)
            return
        plan = planned or Plan(delay_s=fake.latency_s)
        if plan.delay_s > 0 and fake._stopping.wait(plan.delay_s):
            self.close_connection = True
            return
        if plan.reset:
            self._reset()
            return
        if not api:
            self._send(404, {}, error_body(path, 404, f"no route for POST {path}"))
            return
        limit_headers = fake.limits.headers(time.monotonic(), openai=path == OPENAI_PATH)
        fake._serve(Served(arrived, plan.status, client, 0, 0, rate_limited=False))
        if plan.status >= 300:
            payload = plan.body if plan.body is not None else error_body(path, plan.status, plan.message)
        elif plan.body is not None:
            payload = plan.body
        else:
            payload, _, _, cache_key = fake._reply(path, body, number, arrived)
            if cache_key:
                fake.cache.use(cache_key, arrived)
        self._send(plan.status, {**limit_headers, **plan.headers}, payload)

    def _answer(self, path: str, body: Any, number: int, arrived: float, client: str) -> None:
        """Answer as the API would: admitted by the rate limits, then after ``latency_s``."""
        fake = self.server.fake
        reply, counted, output, cache_key = fake._reply(path, body, number, arrived)
        admission = fake.limits.admit(arrived, counted) if fake.limits.enforced else Admission(True)
        openai = path == OPENAI_PATH
        if not admission.admitted:
            fake._serve(Served(arrived, 429, client, counted, 0, rate_limited=True))
            headers = fake.limits.headers(arrived, openai=openai, refused=admission)
            headers["retry-after"] = retry_after_header(admission.retry_after_s)
            message = f"rate limit exceeded ({admission.exhausted} per minute); retry after the reset"
            self._send(429, headers, error_body(path, 429, message))
            return
        if cache_key:
            fake.cache.use(cache_key, arrived)
        fake.limits.record(arrived, counted, output)
        fake._serve(Served(arrived, 200, client, counted, output, rate_limited=False))
        if fake.latency_s > 0 and fake._stopping.wait(fake.latency_s):
            self.close_connection = True
            return
        self._send(200, fake.limits.headers(time.monotonic(), openai=openai), reply)

    def _control(self, path: str, body: Any) -> None:
        fake = self.server.fake
        if path == CONTROL_PREFIX + "plan" and isinstance(body, dict):
            try:
                fake.plan(**body)
            except TypeError as err:
                self._send(400, {}, {"error": {"message": str(err)}})
                return
        elif path == CONTROL_PREFIX + "clear":
            fake.clear()
        else:
            self._send(404, {}, {"error": {"message": f"no route for POST {path}"}})
            return
        self._send(200, {}, {"ok": True})

    def _send(self, status: int, headers: dict[str, str], payload: Any) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        try:
            self.send_response(status, _REASONS.get(status))
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", f"req_fake_{threading.get_ident()}")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client gave up (timed out) before the answer

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout turns close() into an RST; the real close happens in finish().
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Anthropic / OpenAI-compatible provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed on stdout)")
    parser.add_argument("--latency-s", type=float, default=0.0, help="delay of every successful reply")
    parser.add_argument("--requests-per-minute", type=int, default=None, help="enforce a request limit")
    parser.add_argument("--input-tokens-per-minute", type=int, default=None, help="enforce a token limit")
    parser.add_argument("--input-token-burst", type=int, default=None, help="token bucket capacity")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with FakeProvider(
        args.host,
        args.port,
        latency_s=args.latency_s,
        requests_per_minute=args.requests_per_minute,
        input_tokens_per_minute=args.input_tokens_per_minute,
        input_token_burst=args.input_token_burst,
    ) as server:
        print(server.port, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
