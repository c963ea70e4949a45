"""A Sentinel-managed Redis of the test suite's own: a master, a replica and three sentinels on loopback."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis
import redis.asyncio

from tests.support.redis_server import free_port

MASTER_NAME = "coditect-test"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def _redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return path


def _poll(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except redis.exceptions.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)  # polling processes that report their state only when asked


class SentinelCluster:
    """``redis-server`` master and replica (AOF on both) watched by three ``redis-server --sentinel``s."""

    def __init__(self, workdir: Path, *, sentinels: int = 3) -> None:
        self.workdir = workdir
        self.master_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def _spawn(self, name: str, args: list[str]) -> None:
        self.processes[name] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _server_args(self, name: str, port: int) -> list[str]:
        data = self.workdir / name
        data.mkdir(parents=True, exist_ok=True)
        return [
            _redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--logfile", str(data / "redis.log"),
        ]  # fmt: skip

    def start(self, timeout_s: float = 15.0) -> None:
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> None:
        self._spawn("master", self._server_args("master", self.master_port))
        self._spawn(
            "replica",
            [
                *self._server_args("replica", self.replica_port),
                "--replicaof",
                "127.0.0.1",
                str(self.master_port),
            ],
        )
        with redis.Redis(port=self.replica_port, socket_connect_timeout=0.2) as replica:
            _poll(
                lambda: replica.info("replication").get("master_link_status") == "up",
                "the replica to sync with the master",
                timeout_s,
            )
        for port in self.sentinel_ports:
            config = self.workdir / f"sentinel-{port}.conf"
            # known-replica: without it a sentinel learns of the replica from the master's INFO,
            # which it asks for every 10 s.
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"logfile {self.workdir / f'sentinel-{port}.log'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} {QUORUM}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel known-replica {MASTER_NAME} 127.0.0.1 {self.replica_port}\n"
            )
            # redis-sentinel is this same program under another name; not every package ships the alias.
            self._spawn(f"sentinel-{port}", [_redis_server(), str(config), "--sentinel"])
        others = len(self.sentinel_ports) - 1
        for port in self.sentinel_ports:
            with redis.Redis(port=port, socket_connect_timeout=0.2) as sentinel:

                def ready(sentinel: redis.Redis = sentinel) -> bool:
                    # redis-py leaves its SENTINEL commands unannotated
                    state = sentinel.sentinel_master(MASTER_NAME)  # type: ignore[no-untyped-call]
                    return bool(state["num-other-sentinels"] == others and state["num-slaves"] == 1)

                _poll(ready, f"sentinel {port} to know its peers and the replica", timeout_s)

    async def kill_master(self) -> None:
        process = self.processes.pop("master")
        process.kill()
        await asyncio.to_thread(process.wait)

    async def wait_for_master(self, port: int, timeout_s: float) -> None:
        """Until the sentinels name the server on ``port`` as the master (they tell only when asked)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if await self.current_master_port() == port:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sentinels did not promote port {port} within {timeout_s} s")
            await asyncio.sleep(0.05)

    async def current_master_port(self) -> int | None:
        """The master's port as the first sentinel that answers reports it."""
        for port in self.sentinel_ports:
            client = redis.asyncio.Redis(port=port, socket_connect_timeout=0.5)
            try:
                # redis-py leaves its SENTINEL commands unannotated
                address = await client.sentinel_get_master_addr_by_name(MASTER_NAME)  # type: ignore[no-untyped-call]
            except redis.exceptions.RedisError:
                continue
            finally:
                await client.aclose()
            return int(address[1]) if address else None
        return None

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(10)
        self.processes.clear()
