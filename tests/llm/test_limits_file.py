"""The limits file: JSON or TOML, strict, every problem named by file and field in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coditect.config_files import field_path
from coditect.errors import ConfigurationError
from coditect.llm.limits import RateLimit, load_limits_file

GOOD = {"provider": "anthropic", "model": "claude-sonnet-4-5", "requests_per_minute": 50}


def write(tmp_path: Path, data: Any, name: str = "limits.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_json_file_with_model_and_provider_limits(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "limits": [
                {"provider": "anthropic", "requests_per_minute": 1000, "input_tokens_per_minute": 400000},
                {
                    "provider": "anthropic",
                    "model": "claude-sonnet-4-5",
                    "requests_per_minute": 50,
                    "input_tokens_per_minute": 30000,
                    "output_tokens_per_minute": 8000,
                },
                {"provider": "openai", "model": "llama", "output_tokens_per_minute": 1},
            ]
        },
    )

    assert load_limits_file(path) == (
        RateLimit("anthropic", None, 1000, 400000, None),
        RateLimit("anthropic", "claude-sonnet-4-5", 50, 30000, 8000),
        RateLimit("openai", "llama", None, None, 1),
    )


def test_toml_file_by_suffix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[limits]]\nprovider = "anthropic"\nmodel = "claude-haiku-4-5"\ninput_tokens_per_minute = 50000\n',
        "limits.toml",
    )

    assert load_limits_file(path) == (
        RateLimit("anthropic", "claude-haiku-4-5", input_tokens_per_minute=50000),
    )


def test_an_empty_list_is_no_limits(tmp_path: Path) -> None:
    assert load_limits_file(write(tmp_path, {"limits": []})) == ()


@pytest.mark.parametrize(
    ("entry", "where", "message"),
    [
        (
            {**GOOD, "provider": "mistral"},
            "limits[1].provider",
            "Input should be 'offline', 'anthropic' or 'openai'",
        ),
        ({**GOOD, "model": ""}, "limits[1].model", "at least 1 character"),
        ({**GOOD, "model": 7}, "limits[1].model", "valid string"),
        ({**GOOD, "requests_per_minute": 0}, "limits[1].requests_per_minute", "greater than 0"),
        ({**GOOD, "input_tokens_per_minute": -5}, "limits[1].input_tokens_per_minute", "greater than 0"),
        ({**GOOD, "output_tokens_per_minute": "8000"}, "limits[1].output_tokens_per_minute", "valid integer"),
        ({**GOOD, "requests_per_minute": 1.5}, "limits[1].requests_per_minute", "valid integer"),
        ({**GOOD, "requests_per_minute": True}, "limits[1].requests_per_minute", "valid integer"),
        ({**GOOD, "requests_per_day": 5}, "limits[1].requests_per_day", "Extra inputs are not permitted"),
        ({"model": "m", "requests_per_minute": 5}, "limits[1].provider", "Field required"),
        ({"provider": "anthropic", "model": "m"}, "limits[1]", "set at least one of requests_per_minute"),
        ("anthropic", "limits[1]", "valid dictionary"),
    ],
)
def test_every_bad_field_is_named(tmp_path: Path, entry: Any, where: str, message: str) -> None:
    path = write(tmp_path, {"limits": [GOOD, entry]})

    with pytest.raises(ConfigurationError) as caught:
        load_limits_file(path)

    text = str(caught.value)
    assert text.startswith(f"{path}: {where}: ")
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "limits: Field required"),
        ({"limits": {"provider": "anthropic"}}, "limits: Input should be a valid list"),
        ([GOOD], "Input should be a valid dictionary"),
        ({"limits": [], "extra": 1}, "extra: Extra inputs are not permitted"),
        ("{not json", "not valid JSON"),
    ],
)
def test_the_shape_of_the_file_is_checked(tmp_path: Path, data: Any, expected: str) -> None:
    path = write(tmp_path, data)

    with pytest.raises(ConfigurationError, match=expected) as caught:
        load_limits_file(path)

    assert str(caught.value).startswith(f"{path}: ")


def test_a_repeated_scope_names_both_entries(tmp_path: Path) -> None:
    other = {"provider": "anthropic", "requests_per_minute": 5}
    path = write(tmp_path, {"limits": [GOOD, other, {**GOOD, "requests_per_minute": 9}]})

    with pytest.raises(ConfigurationError) as caught:
        load_limits_file(path)

    assert str(caught.value) == f"{path}: limits[2]: repeats limits[0] for anthropic claude-sonnet-4-5"


def test_a_repeated_provider_wide_limit(tmp_path: Path) -> None:
    other = {"provider": "anthropic", "requests_per_minute": 5}
    path = write(tmp_path, {"limits": [other, other]})

    with pytest.raises(
        ConfigurationError, match=r"limits\[1\]: repeats limits\[0\] for anthropic \(provider-wide\)"
    ):
        load_limits_file(path)


def test_bad_toml_and_unreadable_files(tmp_path: Path) -> None:
    toml = write(tmp_path, "[[limits]\nprovider =", "limits.toml")

    with pytest.raises(ConfigurationError, match=rf"^{toml}: not valid TOML: "):
        load_limits_file(toml)
    with pytest.raises(ConfigurationError, match=r"missing.json: cannot read: No such file or directory"):
        load_limits_file(tmp_path / "missing.json")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"limits": ["\xff"]}')
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        load_limits_file(latin)


@pytest.mark.parametrize(
    ("loc", "text"),
    [((), ""), (("limits",), "limits"), (("limits", 2, "model"), "limits[2].model"), ((0, "a"), "[0].a")],
)
def test_field_path(loc: tuple[int | str, ...], text: str) -> None:
    assert field_path(loc) == text
