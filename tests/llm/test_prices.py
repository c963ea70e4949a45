"""Prices: the default table, the prices file, snapshots, free and unknown models."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from coditect.errors import ConfigurationError
from coditect.llm.prices import DEFAULT_PRICES, Price, PriceTable, load_prices_file
from coditect.models import TokenUsage
from coditect.settings import Settings

USAGE = TokenUsage(input_tokens=1200, output_tokens=350, cache_read_tokens=10_000, cache_write_tokens=2000)
ENTRY = {
    "model": "my-model",
    "input_usd_per_mtok": 1.0,
    "output_usd_per_mtok": 2.0,
    "cache_read_usd_per_mtok": 0.1,
    "cache_write_usd_per_mtok": 1.25,
}


def write(tmp_path: Path, data: Any, name: str = "prices.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_a_hand_computed_cost() -> None:
    # claude-sonnet-4-5 at $3 in, $15 out, $0.30 cache read, $3.75 cache write per million tokens:
    # 1,200 x 3 + 350 x 15 + 10,000 x 0.30 + 2,000 x 3.75 = 3,600 + 5,250 + 3,000 + 7,500 = 19,350 / 1e6
    assert PriceTable().cost_usd("claude-sonnet-4-5", USAGE) == 0.01935


def test_a_dated_snapshot_costs_what_its_model_costs() -> None:
    table = PriceTable()

    assert table.cost_usd("claude-sonnet-4-5-20250929", USAGE) == 0.01935
    assert table.price("claude-3-5-haiku-20241022") == DEFAULT_PRICES["claude-3-5-haiku"]


def test_costs_are_rounded_to_a_billionth() -> None:
    table = PriceTable({"m": Price(1 / 3, 15.0, 0.0003, 3.75)})

    assert table.cost_usd("m", TokenUsage(input_tokens=1)) == 0.000000333
    assert table.cost_usd("m", TokenUsage(cache_read_tokens=1)) == 0.0  # $0.0000000003
    assert table.cost_usd("m", TokenUsage(input_tokens=3, cache_read_tokens=2)) == 0.000001001


def test_the_offline_provider_is_free_whatever_its_model() -> None:
    assert PriceTable().cost_usd("offline-1", USAGE, provider="offline") == 0.0
    assert PriceTable().cost_usd("anything", USAGE, provider="offline") == 0.0


def test_an_unknown_model_costs_none_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable()

    with caplog.at_level(logging.WARNING, logger="coditect.llm.prices"):
        costs = [table.cost_usd("llama-unpriced-7b", USAGE, provider="openai") for _ in range(3)]
        table.cost_usd("claude-unpriced-1", USAGE)

    assert costs == [None, None, None]
    advice = "its results carry cost_usd null (add it to CODITECT_PRICES_FILE)"
    assert [r.getMessage() for r in caplog.records] == [
        f"no price for model 'llama-unpriced-7b': {advice}",
        f"no price for model 'claude-unpriced-1': {advice}",
    ]


def test_the_defaults_cover_the_current_models_and_the_default_one() -> None:
    for model in (
        "claude-fable-5-2",
        "claude-opus-5-5",
        "claude-sonnet-5-5",
        "claude-haiku-5-5",
        "claude-sonnet-4-5",
    ):
        price = DEFAULT_PRICES[model]
        assert price.output_usd_per_mtok > price.input_usd_per_mtok > price.cache_read_usd_per_mtok > 0
        # Anthropic's 5-minute cache write is 1.25 times the input price, for every model.
        assert price.cache_write_usd_per_mtok == pytest.approx(1.25 * price.input_usd_per_mtok)
    # ... except Claude Haiku 3's, which Anthropic lists at $0.30 for $0.25 of input.
    odd = [
        m
        for m, p in DEFAULT_PRICES.items()
        if p.cache_write_usd_per_mtok != pytest.approx(1.25 * p.input_usd_per_mtok)
    ]
    assert odd == ["claude-3-haiku"]


def test_the_prices_file_adds_and_overrides(tmp_path: Path) -> None:
    override = {**ENTRY, "model": "claude-sonnet-4-5", "input_usd_per_mtok": 2}
    path = write(tmp_path, {"prices": [ENTRY, override]})

    table = PriceTable.from_settings(Settings(_env_file=None, prices_file=path))  # type: ignore[call-arg]

    assert table.price("my-model") == Price(1.0, 2.0, 0.1, 1.25)
    assert table.price("claude-sonnet-4-5") == Price(2.0, 2.0, 0.1, 1.25)
    assert table.price("claude-haiku-4-5") == DEFAULT_PRICES["claude-haiku-4-5"]
    assert table.cost_usd("my-model-20260101", TokenUsage(input_tokens=1_000_000)) == 1.0
    assert (
        repr(PriceTable.from_settings(Settings(_env_file=None)))
        == f"<PriceTable models={len(DEFAULT_PRICES)}>"
    )  # type: ignore[call-arg]


def test_toml_prices_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[prices]]\nmodel = "m"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n'
        "cache_read_usd_per_mtok = 0\ncache_write_usd_per_mtok = 0.5\n",
        "prices.toml",
    )

    assert load_prices_file(path) == {"m": Price(1.0, 2.0, 0.0, 0.5)}


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        ({"model": ""}, "prices[1].model", "at least 1 character"),
        ({"input_usd_per_mtok": -1}, "prices[1].input_usd_per_mtok", "greater than or equal to 0"),
        ({"output_usd_per_mtok": "15"}, "prices[1].output_usd_per_mtok", "valid number"),
        ({"cache_read_usd_per_mtok": None}, "prices[1].cache_read_usd_per_mtok", "valid number"),
        ({"cache_write_usd_per_mtok": True}, "prices[1].cache_write_usd_per_mtok", "valid number"),
        ({"currency": "EUR"}, "prices[1].currency", "Extra inputs are not permitted"),
    ],
)
def test_every_bad_field_is_named(tmp_path: Path, change: dict[str, Any], where: str, message: str) -> None:
    path = write(tmp_path, {"prices": [ENTRY, {**ENTRY, "model": "other", **change}]})

    with pytest.raises(ConfigurationError) as caught:
        load_prices_file(path)

    assert str(caught.value).startswith(f"{path}: {where}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize("missing", sorted(set(ENTRY) - {"model"}))
def test_every_price_is_required(tmp_path: Path, missing: str) -> None:
    entry = {k: v for k, v in ENTRY.items() if k != missing}

    with pytest.raises(ConfigurationError, match=rf"prices\[0\]\.{missing}: Field required"):
        load_prices_file(write(tmp_path, {"prices": [entry]}))


def test_a_repeated_model_and_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"prices\[1\]\.model: repeats prices\[0\] \(my-model\)"):
        load_prices_file(write(tmp_path, {"prices": [ENTRY, ENTRY]}))
    with pytest.raises(ConfigurationError, match="prices: Field required"):
        load_prices_file(write(tmp_path, {"price": []}))
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        load_prices_file(write(tmp_path, "prices"))
