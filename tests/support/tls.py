"""A throwaway CA and server certificate (``openssl`` CLI), and a redis-server that speaks only TLS."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support.redis_server import free_port

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path, *, dns_name: str = "localhost") -> Certificates:
    """A CA, and a server certificate it signs for ``dns_name`` alone (no IP address in it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key, csr = directory / "server.crt", directory / "server.key", directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text(
        f"subjectAltName = DNS:{dns_name}\nbasicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n"
    )

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=30)

    run(
        "req", "-x509", *EC_KEY, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=coditect test CA", "-addext", "basicConstraints = critical, CA:TRUE",
        "-addext", "keyUsage = critical, keyCertSign, cRLSign",
    )  # fmt: skip
    run("req", *EC_KEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={dns_name}")
    run(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(extensions),
    )  # fmt: skip
    return Certificates(ca=ca, cert=cert, key=key)


class TlsRedisServer:
    """``redis-server --port 0 --tls-port N`` on 127.0.0.1 with ``requirepass``."""

    def __init__(self, workdir: Path, certificates: Certificates, *, password: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.certificates = certificates
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, host: str = "localhost", password: str | None = None) -> str:
        return f"rediss://:{self.password if password is None else password}@{host}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="localhost",
            port=self.port,
            password=self.password,
            ssl=True,
            ssl_ca_certs=str(self.certificates.ca),
            ssl_check_hostname=True,
            socket_connect_timeout=1,
        )

    def start(self, timeout_s: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(self.certificates.cert), "--tls-key-file", str(self.certificates.key),
            "--tls-ca-cert-file", str(self.certificates.ca), "--tls-auth-clients", "no",
            "--requirepass", self.password, "--dir", str(self.workdir), "--save", "", "--appendonly", "no",
            "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if self.process.poll() is not None:
                        raise RuntimeError(f"redis-server exited with {self.process.returncode}") from None
                    if time.monotonic() > deadline:
                        self.stop()
                        raise
                    time.sleep(0.02)  # polling a server that is still starting

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None
