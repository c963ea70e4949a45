"""Redis connections: URL to ARQ settings, pools with coditect's serializers, clear errors.

``CODITECT_REDIS_URL`` takes three forms:

- ``redis://[[user]:password@]host[:port][/db]``: one Redis server.
- ``rediss://...``: the same over TLS. The server certificate and its host name are always
  verified, against ``CODITECT_REDIS_TLS_CA_FILE`` when set, else the system's CA store.
- ``redis+sentinel://[[user]:password@]host1:port1[,host2:port2...]/<master-name>[/<db>]``: the
  master that Redis Sentinel names ``<master-name>``; the hosts are sentinels (port 26379 when
  left out). The credentials are the master's; the sentinels are contacted without any. TLS
  through Sentinel is not supported.

Why Sentinel pools are built here, not by ARQ: ``arq.connections.create_pool`` builds one with
``Sentinel(sentinels, ssl=..., db=..., username=..., password=...)`` and nothing more. It has no
connect timeout (a master gone from the network blocks each connect for minutes, not 5 s), it
ignores ``RedisSettings``' retry options, TLS options and ``max_connections``, and closing the
pool leaves its connections to the sentinels open (a ``ResourceWarning`` per orchestrator).
``create_arq_pool`` builds it with redis-py's ``Sentinel(...).master_for(name, redis_class=...)``
instead, with all of those; a wrong sentinel address or master name fails at once ("No master
found for ...", with each sentinel's answer).

During a failover (Sentinel needs ``down-after-milliseconds`` plus a few seconds) commands fail
with connection errors or "No master found"; the callers' own retry loops (worker engine, result
flusher, the orchestrator's wait) ride it out, and each new connection asks the sentinels where
the master is now.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import default_queue_name as ARQ_DEFAULT_QUEUE
from arq.constants import expires_extra_ms as ARQ_EXPIRES_EXTRA_MS
from arq.jobs import Deserializer, Serializer
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError

from coditect.errors import BackendUnavailableError, ConfigurationError
from coditect.secrets import MASK, QUERY_PASSWORD
from coditect.serialization import job_deserializer, job_serializer
from coditect.settings import Settings

__all__ = [
    "SENTINEL_SCHEME",
    "SentinelArqRedis",
    "close_pool",
    "create_arq_pool",
    "create_redis_pool",
    "redact_url",
    "redis_settings_from",
]

logger = logging.getLogger(__name__)

ARQ_DEFAULT_URL = "redis://localhost:6379"
SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
CONNECT_TIMEOUT_S = 5


def redact_url(url: str) -> str:
    """The URL with any password (``user:password@``, ``?password=``, ``&password=``) replaced by
    ``***``: safe for messages and logs.

    Never raises, and needs no valid URL: an unencoded ``/`` or ``@`` in a password is masked too.
    """
    url = QUERY_PASSWORD.sub(r"\1" + MASK, url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:{MASK}@{hosts}"


def redis_settings_from(settings: Settings, *, conn_retries: int = 5) -> RedisSettings:
    """ARQ ``RedisSettings`` for ``CODITECT_REDIS_URL`` (ARQ's localhost default when it is empty).

    For ``rediss://`` the server certificate and its host name are always verified.
    """
    url = settings.redis_url or ARQ_DEFAULT_URL
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == SENTINEL_SCHEME:
        redis_settings = _sentinel_settings(url)
    elif scheme in ("redis", "rediss"):
        try:
            redis_settings = RedisSettings.from_dsn(url)
        except ValueError as err:
            raise ConfigurationError(
                f"CODITECT_REDIS_URL is not a valid Redis URL: {redact_url(url)}"
            ) from err
    elif scheme == "rediss+sentinel":
        raise ConfigurationError(
            f"TLS through Sentinel is not supported: use redis+sentinel:// ({redact_url(url)})"
        )
    else:
        raise ConfigurationError(
            "CODITECT_REDIS_URL must start with redis:// or rediss:// (or redis+sentinel:// for a "
            f"Sentinel-managed master), got {redact_url(url)}"
        )
    redis_settings.conn_retries = conn_retries
    redis_settings.conn_timeout = CONNECT_TIMEOUT_S
    if redis_settings.ssl:
        redis_settings.ssl_cert_reqs = "required"
        redis_settings.ssl_check_hostname = True
        if settings.redis_tls_ca_file is not None:
            redis_settings.ssl_ca_certs = str(settings.redis_tls_ca_file)
    return redis_settings


def _sentinel_settings(url: str) -> RedisSettings:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/<master>[/<db>]``."""

    def invalid(problem: str) -> ConfigurationError:
        return ConfigurationError(f"CODITECT_REDIS_URL: {problem}: {redact_url(url)}")

    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise invalid("not a valid URL") from err
    if parts.query or parts.fragment:
        raise invalid("query parameters and fragments are not supported with redis+sentinel://")
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    sentinels = [_host_port(item, invalid) for item in hostlist.split(",")]
    path = parts.path.strip("/").split("/")
    if not path[0] or len(path) > 2:
        raise invalid("expected /<master-name> or /<master-name>/<db> after the sentinels")
    database = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise invalid(f"database must be a number, got {path[1]!r}")
        database = int(path[1])
    return RedisSettings(
        host=sentinels,
        sentinel=True,
        sentinel_master=unquote(path[0]),
        database=database,
        username=username,
        password=password,
    )


def _host_port(item: str, invalid: Callable[[str], ConfigurationError]) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    if not host:
        raise invalid(f"sentinel address {item!r} has no host")
    if not port:
        return host, DEFAULT_SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise invalid(f"sentinel address {item!r} has an invalid port")
    return host, int(port)


class SentinelArqRedis(ArqRedis):
    """An ``ArqRedis`` on a Sentinel-managed master; closing it also closes its sentinel clients."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if close_connection_pool or (close_connection_pool is None and self.auto_close_connection_pool):
            await _close_sentinels(self)


async def close_pool(pool: ArqRedis) -> None:
    """Close ``pool`` and its connections, to the sentinels too (ARQ's own Sentinel pools leave those)."""
    await pool.aclose(close_connection_pool=True)
    await _close_sentinels(pool)


async def _close_sentinels(pool: ArqRedis | Sentinel) -> None:
    manager = pool if isinstance(pool, Sentinel) else getattr(pool.connection_pool, "sentinel_manager", None)
    if isinstance(manager, Sentinel):
        for client in manager.sentinels:
            await client.aclose()


async def create_arq_pool(
    redis_settings: RedisSettings | None = None,
    *,
    job_serializer: Serializer | None = None,
    job_deserializer: Deserializer | None = None,
    default_queue_name: str = ARQ_DEFAULT_QUEUE,
    expires_extra_ms: int = ARQ_EXPIRES_EXTRA_MS,
) -> ArqRedis:
    """``arq.connections.create_pool`` with Sentinel done properly (see the module docstring).

    Retries ``conn_retries`` times, ``conn_retry_delay`` apart, except for errors that waiting
    cannot fix: a refused password, a server certificate that does not verify.
    """
    redis_settings = redis_settings or RedisSettings()
    attempt, conn_retries = 0, redis_settings.conn_retries
    while True:
        try:
            if not redis_settings.sentinel:
                return await create_pool(
                    dataclasses.replace(redis_settings, conn_retries=0),
                    job_serializer=job_serializer,
                    job_deserializer=job_deserializer,
                    default_queue_name=default_queue_name,
                    expires_extra_ms=expires_extra_ms,
                )
            pool = await _sentinel_pool(redis_settings)
            pool.job_serializer = job_serializer
            pool.job_deserializer = job_deserializer
            pool.default_queue_name = default_queue_name
            pool.expires_extra_ms = expires_extra_ms
            return pool
        except (RedisError, OSError, TimeoutError) as err:
            if attempt >= conn_retries or _permanent(err):
                raise
            attempt += 1
            delay_s = redis_settings.conn_retry_delay
            logger.info(
                "redis not reachable (%s); retry %d of %d in %d s", err, attempt, conn_retries, delay_s
            )
            await asyncio.sleep(delay_s)


async def _sentinel_pool(redis_settings: RedisSettings) -> SentinelArqRedis:
    assert not isinstance(redis_settings.host, str)
    timeout_s = redis_settings.conn_timeout
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves its __init__ unannotated
        redis_settings.host,
        sentinel_kwargs={"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s},
    )
    try:
        pool = sentinel.master_for(
            redis_settings.sentinel_master,
            redis_class=SentinelArqRedis,
            db=redis_settings.database,
            username=redis_settings.username,
            password=redis_settings.password,
            socket_connect_timeout=timeout_s,
            socket_keepalive=True,
            retry=redis_settings.retry,
            retry_on_timeout=redis_settings.retry_on_timeout,
            retry_on_error=list(redis_settings.retry_on_error or ()),
            max_connections=redis_settings.max_connections,
        )
    except BaseException:
        await _close_sentinels(sentinel)
        raise
    assert isinstance(pool, SentinelArqRedis)
    try:
        await pool.ping()
    except BaseException:
        await pool.aclose(close_connection_pool=True)
        raise
    return pool


def _permanent(err: BaseException) -> bool:
    """A refused password or a certificate that does not verify: retrying cannot help."""
    return isinstance(err, AuthenticationError | AuthorizationError) or _cert_error(err) is not None


def _cert_error(err: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = err
    for _ in range(5):  # redis-py raises ConnectionError while handling the SSL error
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _hint(err: BaseException) -> str:
    cert = _cert_error(err)
    if cert is not None:
        if "mismatch" in (cert.verify_message or ""):
            return " (connect by a host name that the server's certificate lists)"
        return " (set CODITECT_REDIS_TLS_CA_FILE to the CA that signed the server's certificate)"
    if isinstance(err, AuthenticationError):
        return " (check the user name and password in the URL)"
    return ""


async def create_redis_pool(settings: Settings, *, conn_retries: int = 5) -> ArqRedis:
    """A pool on ``CODITECT_REDIS_URL`` that speaks coditect's JSON jobs; BackendUnavailableError if down."""
    url = redact_url(settings.redis_url or ARQ_DEFAULT_URL)
    redis_settings = redis_settings_from(settings, conn_retries=conn_retries)
    try:
        return await create_arq_pool(
            redis_settings,
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
            default_queue_name=settings.queue_name,
        )
    except (RedisError, OSError, TimeoutError) as err:
        raise BackendUnavailableError(f"cannot reach Redis at {url}: {err}{_hint(err)}") from err
