"""A worker-like process that makes LLM calls through ``call_with_capacity`` with the real Anthropic
provider (the official SDK), sharing the rate limits of a limits file with every other such process
through Redis.

    python tests/support/capacity_client.py --redis-url URL --base-url URL --limits-file FILE \\
        --client a --requests 200 --concurrency 50

It prints ``ready`` once connected, starts on a line ``go`` on stdin (so that several processes start
together), and prints one JSON line of figures at the end. What the engine does with a task is done
here in-process: ``CapacityDeferred`` waits ``delay_s`` and asks again (the engine would requeue the
task for that long); a 429 or 529 waits its retry-after and tries again (the engine's retry).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: make `coditect` and `tests` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import anthropic
from redis.asyncio import Redis

from coditect.errors import CapacityDeferred, TransientProviderError
from coditect.llm.anthropic import AnthropicLlm
from coditect.llm.base import LlmRequest, Message
from coditect.llm.capacity import RATE_LIMIT_STATUSES, call_with_capacity
from coditect.llm.limits import RateLimiter, load_limits_file

MODEL = "claude-sonnet-4-5"


class Figures:
    def __init__(self) -> None:
        self.ok = 0
        self.rate_limited = 0
        self.other_errors = 0
        self.deferred = 0
        self.waited_s = 0.0

    def waited(self, seconds: float) -> None:
        self.waited_s += seconds


async def one_call(
    llm: AnthropicLlm, limiter: RateLimiter, request: LlmRequest, prompt: str, figures: Figures
) -> None:
    messages = [Message("user", prompt)]
    while True:
        try:
            await call_with_capacity(
                llm, messages, request, limiter=limiter, idle=contextlib.nullcontext, on_wait=figures.waited
            )
        except CapacityDeferred as deferred:
            figures.deferred += 1
            await asyncio.sleep(deferred.delay_s)
        except TransientProviderError as err:
            if err.status_code in RATE_LIMIT_STATUSES:
                figures.rate_limited += 1
            else:
                figures.other_errors += 1
            await asyncio.sleep(err.retry_after_s or 0.5)
        else:
            figures.ok += 1
            return


async def run(args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(args.seed)
    prompts = [
        f"{args.client}-{i} " + "x" * rng.randint(args.min_chars, args.max_chars)
        for i in range(args.requests)
    ]
    request = LlmRequest(system=args.system, max_tokens=args.max_tokens)
    redis = Redis.from_url(args.redis_url)
    client = anthropic.AsyncAnthropic(
        api_key="sk-test-capacity",
        base_url=args.base_url,
        max_retries=0,
        timeout=30,
        default_headers={"x-fake-client": args.client},
    )
    figures = Figures()
    try:
        limiter = RateLimiter(redis, load_limits_file(Path(args.limits_file)), horizon_s=args.horizon_s)
        llm = AnthropicLlm(client, MODEL)
        await redis.ping()
        print("ready", flush=True)
        if (await asyncio.to_thread(sys.stdin.readline)).strip() != "go":
            raise SystemExit("expected 'go' on stdin")
        started = time.monotonic()
        queue: asyncio.Queue[str] = asyncio.Queue()
        for prompt in prompts:
            queue.put_nowait(prompt)

        async def slot() -> None:
            while not queue.empty():
                await one_call(llm, limiter, request, queue.get_nowait(), figures)

        await asyncio.gather(*(slot() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
    finally:
        await client.close()
        await redis.aclose()
    return {
        "client": args.client,
        "ok": figures.ok,
        "rate_limited": figures.rate_limited,
        "other_errors": figures.other_errors,
        "deferred": figures.deferred,
        "waited_s": round(figures.waited_s, 3),
        "elapsed_s": round(elapsed, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--limits-file", required=True)
    parser.add_argument("--client", required=True, help="a name, sent as x-fake-client")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=50, help="calls in flight at once (worker slots)")
    parser.add_argument("--horizon-s", type=float, default=5.0)
    parser.add_argument("--system", default="")
    parser.add_argument("--min-chars", type=int, default=20)
    parser.add_argument("--max-chars", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
