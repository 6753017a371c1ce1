"""`sluice up` serves REST only once its functions run, and stops when they stop."""

from __future__ import annotations

import asyncio
import socket

import pytest

from functions.cli.main import _up
from functions.runtime import run
from infra.settings import Settings

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def keep_logging(monkeypatch):
    """`_up` configures structlog to print to the stdout of its moment (here pytest's capture, closed
    after the test): keep the configuration the other tests use."""
    import infra.logging

    monkeypatch.setattr(infra.logging, "configure_logging", lambda *args, **kwargs: None)


def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, bus="memory", compute="none", sandbox="off", host="127.0.0.1", port=free_port(),
                    admin_key="sk_admin_" + "x" * 32)


async def test_functions_that_fail_to_start_mean_no_rest_and_exit_1(tmp_path, monkeypatch, capsys):
    async def broken(platform, stop, **options):
        raise RuntimeError("the bus refused the consumer group")

    monkeypatch.setattr(run, "run_functions", broken)
    config = settings(tmp_path)
    assert await asyncio.wait_for(_up(config), 60) == 1
    out = capsys.readouterr().out
    assert "the functions failed to start: RuntimeError: the bus refused the consumer group" in out
    assert "serving" not in out
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", config.port), timeout=1):
        pass


async def test_functions_that_stop_while_serving_stop_the_process_with_exit_1(tmp_path, monkeypatch, capsys):
    async def dies_later(platform, stop, *, started=None, **options):
        started(None)
        await asyncio.sleep(0.5)
        raise RuntimeError("consumer loop died")

    monkeypatch.setattr(run, "run_functions", dies_later)
    assert await asyncio.wait_for(_up(settings(tmp_path)), 60) == 1
    out = capsys.readouterr().out
    assert "serving" in out and "the functions stopped: RuntimeError('consumer loop died')" in out and "stopped" in out
