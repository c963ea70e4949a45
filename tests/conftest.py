"""Shared fixtures: a clean environment for every test, so a developer's CODITECT_* never leaks in."""

from __future__ import annotations

import os
from collections.abc import Iterator
from unittest import mock

import pytest

from coditect.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CODITECT_", "ANTHROPIC_", "OPENAI_"))}
    with mock.patch.dict(os.environ, keep, clear=True):
        # A .env in the working directory must not leak into tests either.
        cwd = os.getcwd()
        os.chdir(tmp_path_factory.mktemp("cwd"))
        try:
            yield
        finally:
            os.chdir(cwd)


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]
