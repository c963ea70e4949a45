"""What a call cost in US dollars, from a price table per model.

The defaults are Anthropic's list prices; ``CODITECT_PRICES_FILE`` (JSON, or TOML by suffix) adds
models or overrides them::

    {"prices": [{"model": "claude-sonnet-4-5", "input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0,
                 "cache_read_usd_per_mtok": 0.3, "cache_write_usd_per_mtok": 3.75}]}

A model matches an entry by its name or as a dated snapshot of it (``claude-sonnet-4-5-20250929``
costs what ``claude-sonnet-4-5`` costs). The offline provider's models cost 0.0. Any other model
without a price costs ``None``, with one warning per model and process: never a made-up number.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from coditect.config_files import load_config_file
from coditect.errors import ConfigurationError
from coditect.llm.base import snapshot_of
from coditect.models import TokenUsage
from coditect.settings import Settings

__all__ = ["DEFAULT_PRICES", "Price", "PriceTable", "load_prices_file"]

logger = logging.getLogger(__name__)

FREE_PROVIDERS = frozenset({"offline"})
_MTOK = 1_000_000
_warned: set[str] = set()


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens of each kind. ``cache_write`` is the 5-minute cache write price."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float
    cache_read_usd_per_mtok: float
    cache_write_usd_per_mtok: float

    def cost_usd(self, usage: TokenUsage) -> float:
        """The cost of ``usage``, rounded to a billionth of a dollar."""
        total = (
            usage.input_tokens * self.input_usd_per_mtok
            + usage.output_tokens * self.output_usd_per_mtok
            + usage.cache_read_tokens * self.cache_read_usd_per_mtok
            + usage.cache_write_tokens * self.cache_write_usd_per_mtok
        ) / _MTOK
        return round(total, 9)


def _family(price: Price, *models: str) -> dict[str, Price]:
    return dict.fromkeys(models, price)


# Anthropic's list prices in USD per million tokens: input, output, cache read, 5-minute cache write.
# From the model pages of Anthropic's docs (platform.claude.com/docs/en/models/<model>/overview and the
# models overview), read 2026-11-30. Two figures come from the price change notes of projects that track
# that page rather than from a page read here: Claude Fable 5.2's cache prices (its $8/$40 is on the
# models overview), and Claude Sonnet 5.5's cache read at $0.10 from 2026-10-07 (its model page still
# showed $0.20). Claude Haiku 5.5 is priced at its band for prompts up to 100,000 tokens; longer prompts
# cost five times as much and are under-counted here, as are Sonnet 4.x prompts over 200,000 tokens.
DEFAULT_PRICES: dict[str, Price] = {
    # Current models
    "claude-fable-5-2": Price(8.0, 40.0, 0.20, 10.0),
    "claude-opus-5-5": Price(4.0, 20.0, 0.20, 5.0),
    "claude-sonnet-5-5": Price(2.0, 10.0, 0.10, 2.50),
    "claude-haiku-5-5": Price(0.10, 0.50, 0.01, 0.125),
    # Earlier models still served
    "claude-fable-5-1": Price(10.0, 50.0, 0.25, 12.50),
    "claude-fable-5": Price(10.0, 50.0, 1.00, 12.50),
    "claude-opus-5": Price(5.0, 25.0, 0.50, 6.25),
    "claude-sonnet-5": Price(2.0, 10.0, 0.20, 2.50),
    **_family(
        Price(5.0, 25.0, 0.50, 6.25),
        "claude-opus-4-8",
        "claude-opus-4-7",
        "claude-opus-4-6",
        "claude-opus-4-5",
    ),
    **_family(Price(15.0, 75.0, 1.50, 18.75), "claude-opus-4-1", "claude-opus-4", "claude-opus-4-0"),
    **_family(
        Price(3.0, 15.0, 0.30, 3.75),
        "claude-sonnet-4-6",
        "claude-sonnet-4-5",
        "claude-sonnet-4",
        "claude-sonnet-4-0",
    ),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.10, 1.25),
    "claude-3-5-haiku": Price(0.80, 4.0, 0.08, 1.0),
    "claude-3-haiku": Price(0.25, 1.25, 0.03, 0.30),
}

_PRICE = Field(ge=0, allow_inf_nan=False)


class PriceEntry(BaseModel):
    """One entry of the prices file."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=200)
    input_usd_per_mtok: float = _PRICE
    output_usd_per_mtok: float = _PRICE
    cache_read_usd_per_mtok: float = _PRICE
    cache_write_usd_per_mtok: float = _PRICE


class PricesFile(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    prices: list[PriceEntry]


def load_prices_file(path: Path) -> dict[str, Price]:
    """The prices in ``path`` by model; a bad file raises ``ConfigurationError`` naming file and field."""
    parsed = load_config_file(path, PricesFile)
    prices: dict[str, Price] = {}
    first: dict[str, int] = {}
    for index, entry in enumerate(parsed.prices):
        if entry.model in first:
            raise ConfigurationError(
                f"{path}: prices[{index}].model: repeats prices[{first[entry.model]}] ({entry.model})"
            )
        first[entry.model] = index
        prices[entry.model] = Price(**entry.model_dump(exclude={"model"}))
    return prices


class PriceTable:
    """Prices by model: the defaults, or what it is given."""

    def __init__(self, prices: Mapping[str, Price] = DEFAULT_PRICES) -> None:
        self.prices = dict(prices)

    @classmethod
    def from_settings(cls, settings: Settings) -> PriceTable:
        """The defaults with ``CODITECT_PRICES_FILE``'s entries added or overriding them."""
        if settings.prices_file is None:
            return cls()
        return cls({**DEFAULT_PRICES, **load_prices_file(settings.prices_file)})

    def price(self, model: str) -> Price | None:
        """The price of ``model``, or of the model it is a dated snapshot of; None when unknown."""
        found = self.prices.get(model)
        if found is None and (base := snapshot_of(model)) is not None:
            found = self.prices.get(base)
        return found

    def cost_usd(
        self, model: str, usage: TokenUsage, *, provider: str | None = None, warn: bool = True
    ) -> float | None:
        """What ``usage`` of ``model`` cost; None (and one warning per model) when its price is unknown."""
        if provider in FREE_PROVIDERS:
            return 0.0
        price = self.price(model)
        if price is not None:
            return price.cost_usd(usage)
        if warn and model not in _warned:
            _warned.add(model)
            logger.warning(
                "no price for model %r: its results carry cost_usd null (add it to CODITECT_PRICES_FILE)",
                model,
            )
        return None

    def __repr__(self) -> str:
        return f"<PriceTable models={len(self.prices)}>"
