"""Batch graph checks: repeated ids, unknown agents and dependencies, cycles, missing legacy scripts,
and the dependency waves; linear, so a chain of 10,000 tasks is checked in milliseconds."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from coditect.agents import AgentRegistry
from coditect.client.graph import check_batch, dependency_waves
from coditect.errors import TaskInputError
from coditect.models import AgentConfig, AgentTask
from coditect.settings import Settings


def tasks(*entries: dict[str, Any]) -> list[AgentTask]:
    return [AgentTask.model_validate(entry) for entry in entries]


def check_error(batch: list[AgentTask], agents: AgentRegistry | None = None, **kwargs: Any) -> TaskInputError:
    with pytest.raises(TaskInputError) as caught:
        check_batch(batch, agents or AgentRegistry(), **kwargs)
    return caught.value


def wave_ids(waves: Sequence[Sequence[AgentTask]]) -> list[list[str]]:
    return [[task.id for task in wave] for wave in waves]


def chain(count: int) -> list[AgentTask]:
    return [AgentTask(id=f"t{i}", title="x", depends_on=[f"t{i - 1}"] if i else []) for i in range(count)]


def test_check_batch_accepts_a_valid_graph_and_returns_its_waves() -> None:
    waves = check_batch(
        tasks(
            {"id": "a", "title": "a", "agent": "writer"},
            {"id": "b", "title": "b", "agent": "reviewer", "depends_on": ["a"]},
            {"id": "c", "title": "c", "depends_on": ["a", "b"]},
        ),
        AgentRegistry(),
    )
    assert wave_ids(waves) == [["a"], ["b"], ["c"]]


def test_check_batch_repeated_id() -> None:
    err = check_error(tasks({"id": "a", "title": "x"}, {"id": "b", "title": "y"}, {"id": "a", "title": "z"}))
    assert err.field == "tasks[2].id"
    assert "'a' appears more than once" in str(err)


def test_check_batch_unknown_dependency() -> None:
    err = check_error(tasks({"id": "a", "title": "x"}, {"id": "b", "title": "y", "depends_on": ["nope"]}))
    assert err.field == "tasks[1].depends_on"
    assert "'nope'" in str(err)


def test_check_batch_cycle() -> None:
    err = check_error(
        tasks(
            {"id": "free", "title": "w"},
            {"id": "a", "title": "x", "depends_on": ["c"]},
            {"id": "b", "title": "y", "depends_on": ["a"]},
            {"id": "c", "title": "z", "depends_on": ["b"]},
        )
    )
    assert err.field == "depends_on"
    assert "cycle among tasks a, b, c" in str(err)


def test_check_batch_self_dependency_is_a_cycle() -> None:
    err = check_error(tasks({"id": "a", "title": "x", "depends_on": ["a"]}))
    assert err.message == "dependency cycle among tasks a"


def test_a_cycle_is_named_without_the_tasks_that_merely_wait_on_it() -> None:
    err = check_error(
        tasks(
            {"id": "before", "title": "w", "depends_on": ["b"]},
            {"id": "a", "title": "x", "depends_on": ["b"]},
            {"id": "b", "title": "y", "depends_on": ["ok", "a"]},
            {"id": "ok", "title": "z"},
            {"id": "after", "title": "v", "depends_on": ["before", "ok"]},
        )
    )
    assert err.message == "dependency cycle among tasks a, b"


def test_check_batch_unknown_agent() -> None:
    err = check_error(tasks({"id": "a", "title": "x"}, {"id": "b", "title": "y", "agent": "poet"}))
    assert err.field == "tasks[1].agent"
    assert "unknown agent 'poet'" in str(err)
    assert "writer" in str(err)


# -- waves ------------------------------------------------------------------------------------------


def quadratic_waves(batch: Sequence[AgentTask]) -> list[list[str]]:
    """The waves as the first version computed them, round by round: the reference for the new one."""
    level: dict[str, int] = {}
    remaining = list(batch)
    while remaining:
        progressed = [t for t in remaining if all(dep in level for dep in t.depends_on)]
        assert progressed, "the reference takes acyclic graphs only"
        for task in progressed:
            level[task.id] = 1 + max((level[dep] for dep in task.depends_on), default=-1)
        remaining = [t for t in remaining if t.id not in level]
    waves: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for task in batch:
        waves[level[task.id]].append(task.id)
    return waves


def test_waves_keep_input_order_and_repeated_dependencies_count_once() -> None:
    batch = tasks(
        {"id": "z", "title": "z", "depends_on": ["y", "x", "y"]},
        {"id": "y", "title": "y"},
        {"id": "w", "title": "w", "depends_on": ["y"]},
        {"id": "x", "title": "x"},
        {"id": "v", "title": "v", "depends_on": ["z", "y"]},
    )
    assert wave_ids(dependency_waves(batch)) == [["y", "x"], ["z", "w"], ["v"]]
    assert dependency_waves([]) == []


@pytest.mark.parametrize("seed", range(20))
def test_waves_are_those_of_the_first_version_on_random_graphs(seed: int) -> None:
    rng = random.Random(seed)
    count = rng.randint(1, 60)
    order = [f"t{i}" for i in range(count)]
    # Each task may depend on tasks before it in a hidden order; the batch lists them shuffled.
    batch = [
        AgentTask(id=task_id, title="x", depends_on=rng.sample(order[:i], k=rng.randint(0, min(i, 4))))
        for i, task_id in enumerate(order)
    ]
    rng.shuffle(batch)
    assert wave_ids(check_batch(batch, AgentRegistry())) == quadratic_waves(batch)
    assert wave_ids(dependency_waves(batch)) == quadratic_waves(batch)


def test_a_chain_of_10000_tasks_is_checked_in_well_under_a_second() -> None:
    batch = chain(10_000)
    started = time.perf_counter()
    waves = check_batch(batch, AgentRegistry())
    again = dependency_waves(batch)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, f"{elapsed:.2f} s"  # the quadratic version took about 20 s
    assert len(waves) == 10_000
    assert wave_ids(waves) == wave_ids(again) == [[f"t{i}"] for i in range(10_000)]


def test_a_cycle_of_10000_tasks_is_found_quickly_and_named_in_one_short_line() -> None:
    batch = [AgentTask(id=f"t{i}", title="x", depends_on=[f"t{(i - 1) % 10_000}"]) for i in range(10_000)]
    started = time.perf_counter()
    err = check_error(batch)
    assert time.perf_counter() - started < 2.0
    assert err.message == "dependency cycle among tasks t0, t1, t2, t3, t4, t5, t6, t7, t8, t9 and 9990 more"


# -- legacy scripts -----------------------------------------------------------------------------------


@pytest.fixture
def script_settings(tmp_path: Path) -> Settings:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "execute_present.py").write_text("print('hi')\n")
    return Settings(_env_file=None, scripts_dir=scripts)  # type: ignore[call-arg]


SCRIPT_AGENTS = AgentRegistry(
    [
        AgentConfig(name="writer"),
        AgentConfig(name="present", mode="script"),
        AgentConfig(name="absent", mode="script"),
        AgentConfig(name="renamed", mode="script", script="tool_missing.py"),
    ]
)


@pytest.mark.parametrize(
    ("agent", "script"), [("absent", "execute_absent.py"), ("renamed", "tool_missing.py")]
)
def test_a_script_agent_whose_script_is_missing_is_refused_naming_field_and_path(
    script_settings: Settings, agent: str, script: str
) -> None:
    batch = tasks({"id": "a", "title": "x", "agent": "present"}, {"id": "b", "title": "y", "agent": agent})
    err = check_error(batch, SCRIPT_AGENTS, settings=script_settings)
    assert err.field == "tasks[1].agent"
    path = script_settings.scripts_dir.resolve() / script
    assert err.message == f"agent {agent!r} runs a legacy script: script not found: {path}"


def test_llm_agents_need_their_scripts_when_direct_llm_is_off(script_settings: Settings) -> None:
    batch = tasks({"id": "a", "title": "x", "agent": "present"}, {"id": "b", "title": "y", "agent": "writer"})
    check_batch(batch, SCRIPT_AGENTS, settings=script_settings)  # llm mode: no script needed

    err = check_error(
        batch, SCRIPT_AGENTS, settings=script_settings.model_copy(update={"use_direct_llm": False})
    )
    assert err.field == "tasks[1].agent"
    assert "(CODITECT_USE_DIRECT_LLM is false)" in err.message
    assert str(script_settings.scripts_dir.resolve() / "execute_writer.py") in err.message


def test_many_tasks_of_a_script_agent_that_exists_pass(script_settings: Settings) -> None:
    batch = [AgentTask(id=f"t{i}", title="x", agent="present") for i in range(500)]
    assert len(check_batch(batch, SCRIPT_AGENTS, settings=script_settings)) == 1


def test_without_settings_scripts_are_not_looked_for() -> None:
    # The orchestrator's own call: the workers may have scripts this process cannot see.
    check_batch(tasks({"id": "a", "title": "x", "agent": "absent"}), SCRIPT_AGENTS)


PYTHON_AGENTS = AgentRegistry(
    [
        AgentConfig(name="planner", mode="python", entrypoint="tests.support.python_agents:planner"),
        AgentConfig(name="ghost", mode="python", entrypoint="nowhere.at_all:plan"),
        AgentConfig(name="typo", mode="python", entrypoint="tests.support.python_agents:no_such_agent"),
    ]
)


@pytest.mark.parametrize(
    ("agent", "why"),
    [
        ("ghost", "cannot import nowhere.at_all"),
        ("typo", "tests.support.python_agents has no 'no_such_agent'"),
    ],
)
def test_a_python_agent_that_cannot_be_loaded_here_is_refused_naming_field_and_entrypoint(
    script_settings: Settings, agent: str, why: str
) -> None:
    batch = tasks({"id": "a", "title": "x", "agent": "planner"}, {"id": "b", "title": "y", "agent": agent})
    err = check_error(batch, PYTHON_AGENTS, settings=script_settings)
    assert err.field == "tasks[1].agent"
    assert err.message.startswith(f"agent {agent!r}: python agent entrypoint ")
    assert why in err.message
    check_batch(batch, PYTHON_AGENTS)  # workers elsewhere may have the module this process lacks
