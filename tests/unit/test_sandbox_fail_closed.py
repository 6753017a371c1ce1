"""Fail closed: without every confinement layer, plugin code does not run unless the operator
opted out, and the opt-outs are said out loud."""

from __future__ import annotations

import pytest

from engine.sandbox import confine
from engine.sandbox.client import SandboxOptions, check_available
from engine.sandbox.errors import SandboxUnavailable
from functions.cli.main import sandbox_ready
from infra.settings import Settings

pytestmark = pytest.mark.unit

WITHOUT_LANDLOCK = {
    "landlock": {"available": False, "detail": "kernel has no Landlock (ENOSYS)"},
    "seccomp": {"available": True, "detail": "filter mode"},
    "network": {"available": True, "detail": "private network namespace"},
}


def test_a_missing_layer_refuses_plugin_code_naming_the_layer_and_the_opt_outs(monkeypatch):
    monkeypatch.setattr(confine, "probe", lambda: WITHOUT_LANDLOCK)
    with pytest.raises(SandboxUnavailable, match="landlock .*ENOSYS.*SLUICE_SANDBOX_ALLOW_DEGRADED=1.*SLUICE_SANDBOX=off"):
        check_available(SandboxOptions())
    assert check_available(SandboxOptions(allow_degraded=True)) == WITHOUT_LANDLOCK


def test_sluice_up_refuses_to_start_without_a_layer_and_warns_when_degraded_or_off(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(confine, "probe", lambda: WITHOUT_LANDLOCK)
    assert sandbox_ready(Settings(data_dir=tmp_path)) is False
    assert "refusing to start" in capsys.readouterr().err
    assert sandbox_ready(Settings(data_dir=tmp_path, sandbox_allow_degraded=True)) is True
    assert "WARNING: plugin hosts run without landlock" in capsys.readouterr().out
    assert sandbox_ready(Settings(data_dir=tmp_path, sandbox="off")) is True
    assert "UNCONTAINED" in capsys.readouterr().out


def test_this_machine_offers_every_layer():
    layers = confine.probe()
    assert all(info["available"] for info in layers.values()), layers
