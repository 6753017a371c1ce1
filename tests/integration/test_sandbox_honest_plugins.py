"""Honest plugins are not hurt by the sandbox: the dry run of every benign, fixture and seed
plugin, the `init` template and the builtin `text_embedding` gives the same verdict and the same
findings in a confined plugin host as uncontained, and the sandbox refuses nothing they do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.plugins.validate import validate_isolated
from engine.sandbox.client import SandboxOptions
from functions.handlers.register import network_declaration
from tests.fixtures.plugins import PLUGINS

pytestmark = [pytest.mark.integration, pytest.mark.torch]

ROOT = Path(__file__).resolve().parents[2]
HONEST = sorted(
    [*(PLUGINS / "benign").iterdir(), *(PLUGINS / "fixtures").iterdir(), *(PLUGINS / "seeds").iterdir(),
     ROOT / "functions" / "templates" / "plugin", ROOT / "engine" / "plugins" / "builtin" / "text_embedding"],
    key=lambda p: p.name,
)


def _validate(folder: Path, tmp_path: Path, *, sandbox: bool):
    network_allow, _ = network_declaration(folder)
    options = SandboxOptions(enabled=sandbox, cache_root=str(tmp_path / ("on" if sandbox else "off")))
    name = folder.name if folder.name != "plugin" else "my_plugin"
    return asyncio.run(validate_isolated(folder, name=name, version="1.0.0", namespace="acme", plugin_id="dry-run",
                                         timeout_s=240, options=options, network_allow=network_allow))


@pytest.mark.parametrize("folder", HONEST, ids=[p.name for p in HONEST])
def test_an_honest_plugin_gets_the_same_dry_run_in_a_plugin_host(folder: Path, tmp_path: Path) -> None:
    off = _validate(folder, tmp_path, sandbox=False)
    on = _validate(folder, tmp_path, sandbox=True)
    assert [f for f in on.findings if f.rule_id == "SLU880"] == [], on.findings
    assert on.passed == off.passed, (on.findings, off.findings)
    assert sorted(f.rule_id for f in on.findings) == sorted(f.rule_id for f in off.findings), (on.findings, off.findings)
