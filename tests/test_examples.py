"""The files in examples/ are what the README says they are: they load, and the python agent runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coditect.agents import AgentRegistry, load_agents_file
from coditect.client.batchfile import load_batch_file
from coditect.client.graph import check_batch
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.engine.schedule import load_schedules
from coditect.models import ExecutionStatus
from coditect.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["docs-refresh.json", "twenty-questions.json", "shouting.json", "plan.json"])
def test_each_example_batch_is_a_valid_batch_for_the_example_agents(name: str) -> None:
    agents = AgentRegistry.from_settings(Settings(_env_file=None, agents_file=EXAMPLES / "agents.json"))  # type: ignore[call-arg]

    spec = load_batch_file(EXAMPLES / name)

    assert spec.tasks
    check_batch(spec.tasks, agents)


def test_the_example_schedules_load_with_their_batch_file() -> None:
    nightly, heartbeat = load_schedules(EXAMPLES / "schedules.json", AgentRegistry())

    assert (nightly.schedule.name, len(nightly.tasks)) == ("nightly-docs", 4)
    assert heartbeat.schedule.cron == "*/30 * * * * *"


async def test_the_example_planner_plans_with_its_model_and_delegates_to_the_writer(
    settings: Settings,
) -> None:
    with_agents = settings.model_copy(update={"agents_file": EXAMPLES / "agents.json"})
    spec = load_batch_file(EXAMPLES / "plan.json")
    async with ProjectOrchestrator(with_agents) as orch:
        guide, review = await orch.run_batch(spec.tasks, batch_id="plan")
        everything = {result.task_id: result for result in await orch.results("plan")}

    assert (guide.status, review.status) == (ExecutionStatus.SUCCESS, ExecutionStatus.SUCCESS)
    assert guide.output.startswith("1. ")
    children = [task_id for task_id in everything if task_id.startswith("guide.step-")]
    assert children == ["guide.step-1"], "the offline model answers one line: one step"
    assert everything["guide.step-1"].agent == "writer"
    assert guide.usage.input_tokens > 0, "the planning call counts in the planner's usage"
    assert [agent.name for agent in load_agents_file(EXAMPLES / "agents.json")][-1] == "planner"


def test_the_readme_command_runs_the_planner_example_from_the_repository() -> None:
    """`CODITECT_AGENTS_FILE=examples/agents.json coditect run examples/plan.json`, as the installed
    command (whose sys.path does not hold the working directory until the command puts it there)."""
    command = Path(sys.executable).parent / "coditect"
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    done = subprocess.run(
        [str(command), "run", "examples/plan.json", "--json"],
        cwd=EXAMPLES.parent, env={**env, "CODITECT_AGENTS_FILE": "examples/agents.json"},
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr.decode()
    assert [result["status"] for result in json.loads(done.stdout)] == ["success", "success"]
