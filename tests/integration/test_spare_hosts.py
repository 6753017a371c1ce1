"""Spare validation hosts (`engine.sandbox.spare`): the next dry run of a namespace runs in a host
started and warmed beforehand, which no plugin ran in before, and never in another namespace's."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from engine.plugins.validate import validate_isolated
from engine.sandbox.client import SandboxOptions
from engine.sandbox.spare import SPARE_HOSTS, SpareKey

pytestmark = [pytest.mark.integration]

HASH_EMBEDDER = Path(__file__).resolve().parents[1] / "plugins" / "fixtures" / "hash_embedder"
MARKER = '''
import json as _json

if getattr(_json, "sluice_marker", None):  # another plugin ran in this process before
    raise RuntimeError("this process already ran " + _json.sluice_marker)
_json.sluice_marker = "a plugin"
'''


@pytest.fixture
def plugin(tmp_path) -> Path:
    """The hash embedder, refusing to import in a process where a plugin left its mark."""
    root = tmp_path / "hash_embedder"
    shutil.copytree(HASH_EMBEDDER, root)
    pipeline = root / "pipeline.py"
    pipeline.write_text(pipeline.read_text() + MARKER)
    return root


@pytest.fixture
def options(tmp_path):
    yield SandboxOptions(cache_root=str(tmp_path / "cache"), spare_hosts=2)
    SPARE_HOSTS.close()


async def _validate(root: Path, namespace: str, version: str, options: SandboxOptions):
    return await validate_isolated(root, name="hash_embedder", version=version, namespace=namespace, plugin_id=f"plg_{version}",
                                   timeout_s=120, options=options)


def _wait_for_spare(key: SpareKey, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if key in SPARE_HOSTS._spares:
            return
        time.sleep(0.1)
    raise AssertionError("no spare host was started")


async def test_the_next_dry_run_of_a_namespace_runs_in_a_fresh_spare_never_where_a_plugin_ran(plugin, options):
    key = SpareKey.of("acme", options, {}, ())
    first = await _validate(plugin, "acme", "1.0.0", options)
    assert first.passed, first.findings
    _wait_for_spare(key)
    taken = SPARE_HOSTS.taken

    second = await _validate(plugin, "acme", "1.0.1", options)
    assert second.passed, second.findings  # the marker of the first plugin is not there: a new process
    assert SPARE_HOSTS.taken == taken + 1
    assert second.dry_runs and second.dry_runs[0].rows_out == 2
    _wait_for_spare(key)  # and the next one is already coming
    third = await _validate(plugin, "acme", "1.0.2", options)
    assert third.passed and SPARE_HOSTS.taken == taken + 2


async def test_a_namespaces_spare_is_never_given_to_another_namespace_or_another_allow_list(plugin, options):
    await _validate(plugin, "acme", "1.0.0", options)
    _wait_for_spare(SpareKey.of("acme", options, {}, ()))
    taken = SPARE_HOSTS.taken

    other = await _validate(plugin, "globex", "1.0.0", options)
    assert other.passed and SPARE_HOSTS.taken == taken  # globex started its own host
    assert SpareKey.of("acme", options, {}, ()) in SPARE_HOSTS._spares  # acme's spare is still acme's
    assert SpareKey.of("acme", options, {}, ("api.example:443",)) != SpareKey.of("acme", options, {}, ())
    assert SpareKey.of("acme", options, {"secrets": 1}, ()) != SpareKey.of("acme", options, {}, ())


async def test_spares_are_off_when_the_setting_is_zero(plugin, tmp_path):
    options = SandboxOptions(cache_root=str(tmp_path / "cache"), spare_hosts=0)
    assert (await _validate(plugin, "acme", "1.0.0", options)).passed
    key = SpareKey.of("acme", options, {}, ())
    assert key not in SPARE_HOSTS._starting and key not in SPARE_HOSTS._spares  # none is even being started
