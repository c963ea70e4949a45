"""The public surface: exactly the documented names, imported lazily, and no event loop in the library."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import coditect

DOCUMENTED = {
    "AgentConfig": "coditect.models",
    "AgentTask": "coditect.models",
    "BaseLlm": "coditect.llm.base",
    "ExecutionResult": "coditect.models",
    "ExecutionStatus": "coditect.models",
    "LlmFactory": "coditect.llm.factory",
    "ProjectOrchestrator": "coditect.client.orchestrator",
    "Settings": "coditect.settings",
    "TaskExecutor": "coditect.execution.executor",
    "TokenUsage": "coditect.models",
}
HEAVY_MODULES = ("arq", "redis", "anthropic", "pydantic_settings")
PACKAGE_DIR = Path(coditect.__file__).parent


def test_all_is_exactly_the_documented_set() -> None:
    assert sorted(coditect.__all__) == sorted(DOCUMENTED)
    assert len(coditect.__all__) == len(set(coditect.__all__))


@pytest.mark.parametrize(("name", "module"), sorted(DOCUMENTED.items()))
def test_each_name_is_the_class_from_its_module(name: str, module: str) -> None:
    value = getattr(coditect, name)

    assert value is getattr(importlib.import_module(module), name)
    assert isinstance(value, type)
    assert value.__module__ == module
    assert name in dir(coditect)


def test_from_import_star_gives_the_documented_names() -> None:
    namespace: dict[str, object] = {}
    exec("from coditect import *", namespace)

    assert set(namespace) - {"__builtins__"} == set(DOCUMENTED)


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = coditect.Nope


def test_unknown_name_cannot_be_imported() -> None:
    with pytest.raises(ImportError):
        exec("from coditect import Nope", {})


def probe_fresh_interpreter(statement: str) -> dict[str, bool]:
    """Run ``import coditect`` then ``statement`` in a new interpreter; which heavy modules got imported."""
    code = (
        "import json, sys\n"
        "import coditect\n"
        f"{statement}\n"
        f"loaded = {{m: m in sys.modules for m in {HEAVY_MODULES!r}}}\n"
        "print(json.dumps({'file': coditect.__file__, 'loaded': loaded}))"
    )
    # Run from the project root so that the package under test is what gets imported.
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=PACKAGE_DIR.parent,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["file"] == str(PACKAGE_DIR / "__init__.py")
    return report["loaded"]  # type: ignore[no-any-return]


def test_import_coditect_is_lazy() -> None:
    assert probe_fresh_interpreter("pass") == dict.fromkeys(HEAVY_MODULES, False)


def test_the_probe_sees_an_import_when_there_is_one() -> None:
    # Guards the test above: the same probe notices pydantic_settings once Settings is used.
    loaded = probe_fresh_interpreter("coditect.Settings")

    assert loaded["pydantic_settings"] is True


def test_no_asyncio_run_in_the_library_outside_the_cli() -> None:
    sources = sorted(PACKAGE_DIR.rglob("*.py"))
    assert PACKAGE_DIR / "execution" / "executor.py" in sources  # the walk really found the package

    offenders = [
        f"{path.relative_to(PACKAGE_DIR.parent)}:{number}"
        for path in sources
        if PACKAGE_DIR / "cli" not in path.parents
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "asyncio.run(" in line
    ]
    assert offenders == []
