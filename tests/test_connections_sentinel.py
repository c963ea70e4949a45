"""``redis+sentinel://`` URLs to ARQ settings, and redaction of passwords that are not URL-encoded.

Plain and TLS URLs: ``tests/test_connections.py``. A real failover: ``tests/integration/test_sentinel.py``.
"""

from __future__ import annotations

import time

import pytest

from coditect.connections import create_redis_pool, redact_url, redis_settings_from
from coditect.errors import BackendUnavailableError, ConfigurationError
from coditect.settings import Settings
from tests.support.fake_provider import refused_port


def settings_for(url: str) -> Settings:
    return Settings(_env_file=None, redis_url=url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pa/ss@host/0", "redis://:***@host/0"),
        ("redis://:p@ss@host/0", "redis://:***@host/0"),
        (
            "redis+sentinel://:hunter2@s1:26379,s2:26380/mymaster/2",
            "redis+sentinel://:***@s1:26379,s2:26380/mymaster/2",
        ),
        ("redis+sentinel://s1,s2/mymaster", "redis+sentinel://s1,s2/mymaster"),
    ],
)
def test_redact_url_with_sentinels_and_unencoded_passwords(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    url = "redis+sentinel://app:s%40cret@10.0.0.1:26379,sentinel-b,[::1]:26380/my-master/3"
    redis_settings = redis_settings_from(settings_for(url), conn_retries=2)
    assert redis_settings.sentinel
    assert redis_settings.host == [("10.0.0.1", 26379), ("sentinel-b", 26379), ("::1", 26380)]
    assert redis_settings.sentinel_master == "my-master"
    assert redis_settings.database == 3
    assert (redis_settings.username, redis_settings.password) == ("app", "s@cret")
    assert not redis_settings.ssl
    assert (redis_settings.conn_retries, redis_settings.conn_timeout) == (2, 5)


def test_sentinel_url_defaults() -> None:
    redis_settings = redis_settings_from(settings_for("redis+sentinel://127.0.0.1/mymaster"))
    assert redis_settings.host == [("127.0.0.1", 26379)]
    assert (redis_settings.database, redis_settings.username, redis_settings.password) == (0, None, None)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://:pw@h:1", "after the sentinels"),
        ("redis+sentinel://:pw@h:1/", "after the sentinels"),
        ("redis+sentinel://:pw@h:1/m/0/extra", "after the sentinels"),
        ("redis+sentinel://:pw@h:1/m/zero", "database must be a number"),
        ("redis+sentinel://:pw@h:1,:2/m", "has no host"),
        ("redis+sentinel://:pw@h:99999/m", "invalid port"),
        ("redis+sentinel://:pw@h:port/m", "invalid port"),
        ("redis+sentinel://:pw@h:1/m?db=2", "query parameters"),
        ("rediss+sentinel://:pw@h:1/m", "TLS through Sentinel is not supported"),
        ("sentinel://:pw@h:1/m", "must start with redis:// or rediss:// (or redis+sentinel://"),
    ],
)
def test_bad_sentinel_urls_are_refused_without_showing_the_password(url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        redis_settings_from(settings_for(url))
    assert expected in str(caught.value)
    assert ":***@" in str(caught.value)
    assert ":pw@" not in str(caught.value)


async def test_unreachable_sentinels_fail_fast_naming_the_url() -> None:
    with refused_port() as first, refused_port() as second:
        url = f"redis+sentinel://:pw@127.0.0.1:{first},127.0.0.1:{second}/mymaster"
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError) as caught:
            await create_redis_pool(settings_for(url), conn_retries=0)
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert message.startswith(
        f"cannot reach Redis at redis+sentinel://:***@127.0.0.1:{first},127.0.0.1:{second}/"
    )
    assert "No master found for 'mymaster'" in message
    assert ":pw@" not in message
