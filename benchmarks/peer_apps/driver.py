"""One library's client, driven by ``benchmarks/peers.py`` over stdin and stdout, one JSON line each.

    python -m benchmarks.peer_apps.driver LIBRARY

It answers first with the versions of what it runs on, then each command with what it measured:
``{"op": "batch", "count": N, "sleep_s": S}`` with the seconds from the first enqueue to the last result
read back, ``{"op": "round_trips", "count": N}`` with each job's round trip in ms; with its own CPU
seconds either way, or an ``error``. The timing is taken here, so the pipe is not in it.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import json
import platform
import sys
import time
from typing import Any

from benchmarks.peer_apps.common import Client, WrongResults

# library: (module, client class, distributions whose versions are reported)
CLIENTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "coditect": ("coditect_app", "CoditectClient", ("coditect", "arq", "redis")),
    "saq": ("saq_app", "SaqClient", ("saq", "redis")),
    "dramatiq": ("dramatiq_app", "DramatiqClient", ("dramatiq", "redis")),
    "taskiq": ("taskiq_app", "TaskiqClient", ("taskiq", "taskiq-redis", "redis")),
    "arq": ("arq_app", "ArqClient", ("arq", "redis")),
}


def versions(distributions: tuple[str, ...]) -> dict[str, str]:
    found = {name: importlib.metadata.version(name) for name in distributions}
    return {**found, "python": platform.python_version()}


async def run(client: Client, command: dict[str, Any]) -> dict[str, Any]:
    cpu_before, started = time.process_time(), time.perf_counter()
    answer: dict[str, Any] = {}
    if command["op"] == "batch":
        await client.batch(command["count"], command["sleep_s"])
        answer["elapsed_s"] = time.perf_counter() - started
    elif command["op"] == "round_trips":
        samples = []
        for value in range(command["count"]):
            one = time.perf_counter()
            await client.round_trip(value)
            samples.append((time.perf_counter() - one) * 1000)
        answer["samples_ms"] = samples
    else:
        raise ValueError(f"unknown command {command!r}")
    answer["cpu_s"] = time.process_time() - cpu_before
    return answer


async def serve(library: str) -> None:
    module_name, class_name, distributions = CLIENTS[library]
    module = importlib.import_module(f"benchmarks.peer_apps.{module_name}")
    client: Client = getattr(module, class_name)()
    answer(versions(distributions))
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            try:
                answer(await run(client, json.loads(line)))
            except WrongResults as err:
                answer({"wrong": str(err)})
            except Exception as err:
                answer({"error": f"{type(err).__name__}: {err}"})
    finally:
        await client.close()


def answer(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
