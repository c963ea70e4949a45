"""TaskExecutor: one task in, one ExecutionResult out, async end to end."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import ValidationError

from coditect.agents import AgentRegistry
from coditect.errors import (
    CapacityDeferred,
    CoditectError,
    PermanentProviderError,
    TransientProviderError,
    provider_error_for_status,
)
from coditect.execution.context import AgentContext, RunContext
from coditect.execution.legacy_scripts import ScriptRunner
from coditect.execution.python_agents import call_python_agent
from coditect.llm.base import LlmRequest, LlmResponse, Message
from coditect.llm.capacity import call_with_capacity
from coditect.llm.factory import LlmFactory
from coditect.llm.limits import RateLimiter, estimate_input_tokens
from coditect.llm.prices import PriceTable
from coditect.models import (
    AgentConfig,
    AgentTask,
    ExecutionMode,
    ExecutionResult,
    ExecutionStatus,
    TokenUsage,
)
from coditect.secrets import Redactor, redact_result, register_secrets, settings_secrets
from coditect.settings import Settings

__all__ = ["TaskExecutor"]

logger = logging.getLogger(__name__)

MODES: tuple[ExecutionMode, ...] = ("llm", "api", "script", "python")


@dataclass(frozen=True, slots=True)
class _Output:
    text: str
    provider: str | None = None
    model: str | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)


_NO_USAGE = TokenUsage()


@dataclass(slots=True)
class _Spent:
    """What the model calls of one run have used so far. A run that fails or times out after some
    calls (a python agent that raises after ``ctx.llm``) was still billed for them."""

    provider: str | None = None
    model: str | None = None
    usage: TokenUsage = _NO_USAGE  # frozen: shared until the first call adds to it

    def add(self, response: LlmResponse) -> None:
        self.provider, self.model = response.provider, response.model
        self.usage = self.usage + response.usage


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TaskExecutor:
    """Runs tasks through an LLM provider, an agent's HTTP endpoint, or a legacy script.

    ``TaskExecutor()`` reads ``Settings()`` from the environment. One executor serves any number of
    concurrent ``execute`` calls and shares one HTTP pool among them; close it with ``aclose()`` or
    use it as an async context manager.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        agents: AgentRegistry | None = None,
        llm_factory: LlmFactory | None = None,
        limiter: RateLimiter | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.agents = agents or AgentRegistry.from_settings(self.settings)
        self._owns_factory = llm_factory is None
        self.llm_factory = llm_factory or LlmFactory(self.settings)
        self.scripts = ScriptRunner(
            self.settings.scripts_dir, output_limit_bytes=self.settings.script_output_limit_bytes
        )
        self.worker_name = self.settings.worker_name or default_worker_name()
        # Shared rate limits need a Redis: a worker passes its own; run here alone, none applies.
        self.limiter = limiter
        self.prices = prices or PriceTable.from_settings(self.settings)
        secrets = settings_secrets(self.settings)
        self.redactor = Redactor(secrets)
        register_secrets(secrets)  # so that the log filter masks them too, wherever a record is made

    async def execute(
        self,
        task: AgentTask,
        agent: str | None = None,
        mode: str | None = None,
        *,
        run: RunContext | None = None,
    ) -> ExecutionResult:
        """Run ``task`` and return its result; a failure is a result with status failed or timeout.

        ``run`` is what the engine lends the run (see ``RunContext``): without it, a python agent's
        delegated children run in this process. ``CapacityDeferred`` is raised, not returned, when the
        shared rate limits have no capacity soon: nothing was sent, and the engine runs the task later.
        """
        run = run or RunContext()
        started_at = datetime.now(UTC)
        clock = time.perf_counter()
        agent_name = agent or task.agent
        # The result is built once, at the end: a model built and then set field by field costs
        # three times as much, on every task.
        fields: dict[str, Any] = {"mode": ""}
        spent = _Spent()
        try:
            config = self.agents.get(agent_name)
            if task.agent != agent_name:
                task = task.model_copy(update={"agent": agent_name})
            chosen = self._resolve_mode(config, mode)
            fields["mode"] = chosen
            timeout_s = min(task.timeout_s or config.timeout_s, self.settings.job_timeout_s)
            try:
                async with asyncio.timeout(timeout_s):
                    output = await self._dispatch(chosen, task, config, timeout_s, run, spent)
            except TimeoutError:
                fields["status"] = ExecutionStatus.TIMEOUT
                fields["error"] = f"task {task.id} timed out after {timeout_s:g} s and was cancelled"
            else:
                fields["status"] = ExecutionStatus.SUCCESS
                fields["output"] = output.text
                fields["provider"], fields["model"], fields["usage"] = (
                    output.provider,
                    output.model,
                    output.usage,
                )
        except CapacityDeferred:
            raise
        except TransientProviderError as err:
            fields["status"], fields["error"] = ExecutionStatus.FAILED, str(err)
            fields["retryable"], fields["retry_after_s"] = True, err.retry_after_s
        except CoditectError as err:
            fields["status"], fields["error"] = ExecutionStatus.FAILED, str(err)
        except Exception as err:
            logger.exception("task %s: unexpected error in agent %s", task.id, agent_name)
            fields["status"] = ExecutionStatus.FAILED
            fields["error"] = f"unexpected {type(err).__name__}: {err}"
        if fields["status"] is not ExecutionStatus.SUCCESS and spent.usage.total_tokens:
            fields["provider"], fields["model"], fields["usage"] = spent.provider, spent.model, spent.usage
        fields["finished_at"] = datetime.now(UTC)
        fields["duration_s"] = round(time.perf_counter() - clock, 6)
        model = fields.get("model")
        if model is not None:
            fields["cost_usd"] = self.prices.cost_usd(model, fields["usage"], provider=fields["provider"])
        result = _result(task.id, agent_name, started_at, self.worker_name, fields)
        # The last line of defence: no part of a key or password leaves in a result.
        return redact_result(result, self.redactor)

    def estimate(
        self,
        task: AgentTask,
        agent: str | None = None,
        mode: str | None = None,
        *,
        inputs: Mapping[str, str] = {},
    ) -> tuple[float, int]:
        """What one run of ``task`` should cost at most, as (USD, tokens): one call of its agent's model
        with the prompt in and ``max_tokens`` out (the input at four characters a token). A model
        without a known price costs 0 here: it counts against a token budget only."""
        config = self.agents.get(agent or task.agent)
        if self._resolve_mode(config, mode) not in ("llm", "python"):
            return 0.0, 0
        llm = self.llm_factory.create(config.provider, config.model)
        message = Message("user", prompt_with_inputs(task, inputs or {}))
        input_tokens = estimate_input_tokens(config.system_prompt, [message])
        output_tokens = config.max_tokens or self.settings.llm_max_tokens
        usage = TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)
        cost = self.prices.cost_usd(llm.model, usage, provider=llm.provider, warn=False)
        return cost or 0.0, usage.total_tokens

    def _resolve_mode(self, config: AgentConfig, mode: str | None) -> ExecutionMode:
        if mode is not None:
            if mode not in MODES:
                raise CoditectError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
            return mode
        if config.mode == "llm" and not self.settings.use_direct_llm:
            return "script"
        return config.mode

    async def _dispatch(
        self,
        mode: ExecutionMode,
        task: AgentTask,
        config: AgentConfig,
        timeout_s: float,
        run: RunContext,
        spent: _Spent,
    ) -> _Output:
        if mode == "llm":
            return await self._execute_via_llm(task, config, run, spent)
        if mode == "api":
            return await self._execute_api(task, config, run)
        if mode == "python":
            return await self._execute_python(task, config, run, spent)
        return await self._execute_script(task, config, timeout_s, run)

    async def _llm_call(
        self,
        config: AgentConfig,
        messages: Sequence[Message],
        system: str | None,
        max_tokens: int | None,
        run: RunContext,
        spent: _Spent,
    ) -> LlmResponse:
        llm = self.llm_factory.create(config.provider, config.model)
        request = LlmRequest(
            system=config.system_prompt if system is None else system,
            max_tokens=max_tokens or config.max_tokens or self.settings.llm_max_tokens,
        )
        on_wait = None
        if run.on_capacity_wait is not None:
            report = run.on_capacity_wait
            on_wait = lambda seconds: report(llm.provider, llm.model, seconds)  # noqa: E731
        response = await call_with_capacity(
            llm, messages, request, limiter=self.limiter, idle=run.idle, on_wait=on_wait
        )
        spent.add(response)
        return response

    async def _execute_via_llm(
        self, task: AgentTask, config: AgentConfig, run: RunContext, spent: _Spent
    ) -> _Output:
        response = await self._llm_call(
            config, [Message("user", prompt_with_inputs(task, run.inputs))], None, None, run, spent
        )
        return _Output(response.text, response.provider, response.model, response.usage)

    async def _execute_python(
        self, task: AgentTask, config: AgentConfig, run: RunContext, spent: _Spent
    ) -> _Output:
        assert config.entrypoint is not None  # AgentConfig refuses python mode without one

        async def delegate(children: Sequence[AgentTask]) -> list[ExecutionResult]:
            return await self._delegate(task, children, run)

        async def llm(messages: Sequence[Message], system: str | None, max_tokens: int | None) -> LlmResponse:
            return await self._llm_call(config, messages, system, max_tokens, run, spent)

        ctx = AgentContext(task, run, delegate=delegate, llm=llm)
        text, usage = await call_python_agent(config.entrypoint, task, ctx)
        model = ctx.model if ctx.usage.total_tokens else None
        return _Output(text, ctx.provider if model else "python", model, ctx.usage + usage)

    async def _delegate(
        self, parent: AgentTask, children: Sequence[AgentTask], run: RunContext
    ) -> list[ExecutionResult]:
        depth = run.depth + 1
        if depth > self.settings.max_delegation_depth:
            error = (
                f"not run: delegation depth {depth} is over CODITECT_MAX_DELEGATION_DEPTH "
                f"({self.settings.max_delegation_depth}); task {parent.id} may not delegate further"
            )
            return [
                ExecutionResult(
                    task_id=child.id,
                    status=ExecutionStatus.FAILED,
                    agent=child.agent,
                    attempts=0,
                    error=error,
                )
                for child in children
            ]
        for child in children:
            self.agents.get(child.agent)  # an unknown agent fails the parent at once, naming it
        if run.delegator is not None:
            return await run.delegator.delegate(parent, children, depth)
        inline = RunContext(idle=run.idle, depth=depth)
        return list(await asyncio.gather(*(self.execute(child, run=inline) for child in children)))

    async def _execute_api(self, task: AgentTask, config: AgentConfig, run: RunContext) -> _Output:
        if config.endpoint is None:
            raise PermanentProviderError(f"agent {config.name}", "mode 'api' needs an 'endpoint' URL")
        source = f"agent {config.name} endpoint"
        url = str(config.endpoint)
        try:
            body: dict[str, Any] = {"task": task.model_dump(mode="json"), "agent": config.name}
            if run.inputs:
                body["inputs"] = dict(run.inputs)
            response = await self.llm_factory.http_client.post(url, json=body)
        except httpx.TimeoutException as err:
            raise TransientProviderError(source, f"request to {url} timed out") from err
        except httpx.TransportError as err:
            raise TransientProviderError(source, f"cannot reach {url}: {type(err).__name__}") from err
        if not response.is_success:
            raise provider_error_for_status(
                source,
                response.status_code,
                response.text[:500] or response.reason_phrase,
                retry_after=response.headers.get("retry-after"),
            )
        return _parse_agent_output(response.text, provider="api")

    async def _execute_script(
        self, task: AgentTask, config: AgentConfig, timeout_s: float, run: RunContext
    ) -> _Output:
        payload = task.model_dump(mode="json")
        if run.inputs:
            payload["inputs"] = dict(run.inputs)
        outcome = await self.scripts.run(
            config.name, json.dumps(payload), timeout_s=timeout_s, script=config.script
        )
        return _parse_agent_output(outcome.stdout, provider="script")

    async def aclose(self) -> None:
        """Close the HTTP pool, if this executor created its factory."""
        if self._owns_factory:
            await self.llm_factory.aclose()

    async def __aenter__(self) -> TaskExecutor:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


def _result(
    task_id: str, agent: str, started_at: datetime, worker: str, fields: dict[str, Any]
) -> ExecutionResult:
    try:
        return ExecutionResult(task_id=task_id, agent=agent, started_at=started_at, worker=worker, **fields)
    except ValidationError:
        # What came back from an agent or provider is not checked (an output that is no string, a
        # negative retry-after from a custom error): the result carries it, as it always did.
        return ExecutionResult.model_construct(
            task_id=task_id, agent=agent, started_at=started_at, worker=worker, **fields
        )


def prompt_with_inputs(task: AgentTask, inputs: Mapping[str, str]) -> str:
    """The user message of an llm-mode task: its prompt, then each dependency's output under a heading
    ``## Input from task <id>``, in the order of ``depends_on``."""
    if not inputs:
        return task.prompt
    sections = [task.prompt]
    for dep in task.depends_on:
        if dep in inputs:
            sections.append(f"## Input from task {dep}\n\n{inputs[dep]}")
    return "\n\n".join(sections)


def _parse_agent_output(body: str, *, provider: str) -> _Output:
    """An endpoint or script answers plain text, or JSON ``{"output": ..., "usage": {...}}``."""
    text = body.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return _Output(text, provider)
        if isinstance(data, dict) and isinstance(data.get("output"), str):
            usage = data.get("usage")
            try:
                parsed = TokenUsage.model_validate(usage) if isinstance(usage, dict) else TokenUsage()
            except ValueError:
                parsed = TokenUsage()
            model = data.get("model")
            return _Output(data["output"], provider, model if isinstance(model, str) else None, parsed)
    return _Output(text, provider)
