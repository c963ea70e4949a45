"""Redis connections: URL to ARQ settings, pools with coditect's serializers, clear errors."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.exceptions import RedisError

from coditect.errors import BackendUnavailableError, ConfigurationError
from coditect.serialization import job_deserializer, job_serializer
from coditect.settings import Settings

__all__ = ["create_redis_pool", "redact_url", "redis_settings_from"]

logger = logging.getLogger(__name__)

ARQ_DEFAULT_URL = "redis://localhost:6379"


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``: safe for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}{port}"))


def redis_settings_from(settings: Settings, *, conn_retries: int = 5) -> RedisSettings:
    """ARQ ``RedisSettings`` for ``CODITECT_REDIS_URL`` (ARQ's localhost default when it is empty).

    For ``rediss://`` the server certificate and its host name are always verified.
    """
    url = settings.redis_url or ARQ_DEFAULT_URL
    if urlsplit(url).scheme not in ("redis", "rediss"):
        raise ConfigurationError(
            f"CODITECT_REDIS_URL must start with redis:// or rediss://, got {redact_url(url)}"
        )
    try:
        redis_settings = RedisSettings.from_dsn(url)
    except ValueError as err:
        raise ConfigurationError(f"CODITECT_REDIS_URL is not a valid Redis URL: {redact_url(url)}") from err
    redis_settings.conn_retries = conn_retries
    redis_settings.conn_timeout = 5
    if redis_settings.ssl:
        redis_settings.ssl_cert_reqs = "required"
        redis_settings.ssl_check_hostname = True
        if settings.redis_tls_ca_file is not None:
            redis_settings.ssl_ca_certs = str(settings.redis_tls_ca_file)
    return redis_settings


async def create_redis_pool(settings: Settings, *, conn_retries: int = 5) -> ArqRedis:
    """A pool on ``CODITECT_REDIS_URL`` that speaks coditect's JSON jobs; BackendUnavailableError if down."""
    url = redact_url(settings.redis_url or ARQ_DEFAULT_URL)
    redis_settings = redis_settings_from(settings, conn_retries=conn_retries)
    try:
        return await create_pool(
            redis_settings,
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
            default_queue_name=settings.queue_name,
        )
    except (RedisError, OSError, TimeoutError) as err:
        raise BackendUnavailableError(f"cannot reach Redis at {url}: {err}") from err
