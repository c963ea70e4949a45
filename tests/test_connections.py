"""Redis URLs to ARQ settings, password redaction, and a clear error when Redis is down."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest
from arq.connections import RedisSettings
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

import coditect.connections as connections
from coditect.connections import create_arq_pool, create_redis_pool, redact_url, redis_settings_from
from coditect.errors import BackendUnavailableError, ConfigurationError
from coditect.settings import Settings

SECRET = "s3cr3t-p4ss"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (f"redis://:{SECRET}@cache.internal:6380/2", "redis://:***@cache.internal:6380/2"),
        (f"rediss://admin:{SECRET}@cache.internal/0", "rediss://admin:***@cache.internal/0"),
        (f"redis://admin:{SECRET}@cache.internal:6379?db=3", "redis://admin:***@cache.internal:6379?db=3"),
        ("redis://cache.internal:6379/0", "redis://cache.internal:6379/0"),
        ("redis://admin@cache.internal", "redis://admin@cache.internal"),
        (f"redis://cache.internal:6379/0?password={SECRET}", "redis://cache.internal:6379/0?password=***"),
        (
            f"redis://cache.internal/0?db=1&password={SECRET}&x=1",
            "redis://cache.internal/0?db=1&password=***&x=1",
        ),
        (f"redis://cache.internal/0?PASSWORD={SECRET}", "redis://cache.internal/0?PASSWORD=***"),
        (f"redis://cache.internal/0?password={SECRET}@x", "redis://cache.internal/0?password=***"),
        (
            f"redis://u:{SECRET}@cache.internal/0?password={SECRET}",
            "redis://u:***@cache.internal/0?password=***",
        ),
        (f"redis+sentinel://s1,s2/master?password={SECRET}", "redis+sentinel://s1,s2/master?password=***"),
    ],
)
def test_redact_url_hides_the_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (f"redis://:{SECRET}@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        (f"redis://:{SECRET}@cache.internal:notaport", "redis://:***@cache.internal:notaport"),
        (f"redis://:{SECRET}@[::1", "redis://:***@[::1"),
    ],
    ids=["ipv6", "bad-port", "unclosed-bracket"],
)
def test_redact_url_never_raises_and_keeps_the_host_as_written(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def with_url(settings: Settings, url: str, **update: object) -> Settings:
    return settings.model_copy(update={"redis_url": url, **update})


def test_redis_url_becomes_arq_redis_settings(settings: Settings) -> None:
    redis_settings = redis_settings_from(with_url(settings, f"redis://app:{SECRET}@cache.internal:6390/4"))

    assert (redis_settings.host, redis_settings.port, redis_settings.database) == ("cache.internal", 6390, 4)
    assert (redis_settings.username, redis_settings.password) == ("app", SECRET)
    assert redis_settings.ssl is False
    assert (redis_settings.conn_retries, redis_settings.conn_timeout) == (5, 5)


def test_an_empty_url_means_arq_default_localhost(settings: Settings) -> None:
    redis_settings = redis_settings_from(settings, conn_retries=1)

    assert (redis_settings.host, redis_settings.port, redis_settings.database) == ("localhost", 6379, 0)
    assert redis_settings.conn_retries == 1


def test_rediss_always_verifies_the_certificate_and_host_name(settings: Settings) -> None:
    redis_settings = redis_settings_from(with_url(settings, "rediss://cache.internal:6380"))

    assert redis_settings.ssl is True
    assert redis_settings.ssl_cert_reqs == "required"
    assert redis_settings.ssl_check_hostname is True
    assert redis_settings.ssl_ca_certs is None


def test_rediss_uses_the_ca_file_from_settings(settings: Settings, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"

    redis_settings = redis_settings_from(
        with_url(settings, "rediss://cache.internal", redis_tls_ca_file=ca_file)
    )

    assert redis_settings.ssl_ca_certs == str(ca_file)


@pytest.mark.parametrize(
    "url",
    [
        f"http://:{SECRET}@cache.internal:6379",
        "unix:///var/run/redis.sock",
        "cache.internal:6379",
        "not a url",
        "redis://cache.internal:notaport",
        "redis://cache.internal/notadb",
    ],
)
def test_other_schemes_and_garbage_raise_configuration_error(settings: Settings, url: str) -> None:
    with pytest.raises(ConfigurationError, match="CODITECT_REDIS_URL") as caught:
        redis_settings_from(with_url(settings, url))

    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("url", ["redis://[::1", f"redis://:{SECRET}@cache.internal:notaport"])
def test_garbage_that_breaks_urlsplit_raises_configuration_error(settings: Settings, url: str) -> None:
    with pytest.raises(ConfigurationError, match="CODITECT_REDIS_URL") as caught:
        redis_settings_from(with_url(settings, url))

    assert SECRET not in str(caught.value)


async def test_create_redis_pool_on_a_closed_port_fails_fast_naming_the_url_without_password(
    settings: Settings,
) -> None:
    started = time.monotonic()

    with pytest.raises(BackendUnavailableError) as caught:
        await create_redis_pool(with_url(settings, f"redis://:{SECRET}@127.0.0.1:1"), conn_retries=1)

    # one retry after ARQ's 1 s conn_retry_delay, then the error
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert message.startswith("cannot reach Redis at redis://:***@127.0.0.1:1: ")
    assert SECRET not in message
    assert caught.value.__cause__ is not None


# -- connecting: what is retried, and the hints ---------------------------------------------------


class _FlakyCreatePool:
    """Stands in for ``arq.connections.create_pool``: raises the planned errors, then connects."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[RedisSettings] = []

    async def __call__(self, redis_settings: RedisSettings, **kwargs: object) -> str:
        self.calls.append(redis_settings)
        if self.errors:
            raise self.errors.pop(0)
        return "pool"


async def test_a_transient_connection_error_is_retried_conn_retries_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _FlakyCreatePool(RedisConnectionError("refused"), OSError("unreachable"))
    monkeypatch.setattr(connections, "create_pool", fake)

    pool = await create_arq_pool(RedisSettings(conn_retries=2, conn_retry_delay=0))

    assert pool == "pool"
    assert len(fake.calls) == 3
    assert all(call.conn_retries == 0 for call in fake.calls), "ARQ's own retry loop is not used"


async def test_connection_errors_beyond_conn_retries_are_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FlakyCreatePool(*(RedisConnectionError(f"refused {n}") for n in range(3)))
    monkeypatch.setattr(connections, "create_pool", fake)

    with pytest.raises(RedisConnectionError, match="refused 1"):
        await create_arq_pool(RedisSettings(conn_retries=1, conn_retry_delay=0))

    assert len(fake.calls) == 2


def _cert_failure(verify_message: str) -> RedisConnectionError:
    cert_error = ssl.SSLCertVerificationError(1, f"certificate verify failed: {verify_message}")
    cert_error.verify_message = verify_message
    try:
        raise RedisConnectionError("Error connecting to cache.internal:6380") from cert_error
    except RedisConnectionError as err:
        return err


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (
            AuthenticationError("invalid username-password pair"),
            "check the user name and password in the URL",
        ),
        (
            _cert_failure("unable to get local issuer certificate"),
            "set CODITECT_REDIS_TLS_CA_FILE to the CA that signed the server's certificate",
        ),
        (
            _cert_failure("Hostname mismatch, certificate is not valid for 'cache.internal'."),
            "connect by a host name that the server's certificate lists",
        ),
    ],
    ids=["password", "unknown-ca", "host-name"],
)
async def test_errors_that_waiting_cannot_fix_fail_at_once_with_a_hint(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, error: BaseException, hint: str
) -> None:
    fake = _FlakyCreatePool(error)
    monkeypatch.setattr(connections, "create_pool", fake)

    with pytest.raises(BackendUnavailableError) as caught:
        await create_redis_pool(with_url(settings, f"rediss://:{SECRET}@cache.internal:6380"), conn_retries=5)

    assert len(fake.calls) == 1, "not retried"
    assert str(caught.value).startswith("cannot reach Redis at rediss://:***@cache.internal:6380: ")
    assert str(caught.value).endswith(f" ({hint})")
    assert SECRET not in str(caught.value)
