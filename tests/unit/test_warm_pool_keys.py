"""Which ingest jobs may share warm plugin hosts: only the same run of the same plugin version in
the same namespace (`engine.ingest.pool.pool_key`), and which jobs go to a pool at all."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.ingest.pool import WarmPools, pool_key
from engine.ingest.worker import PluginSpec

pytestmark = pytest.mark.unit

SPEC = PluginSpec(plugin_id="plg_1", namespace="acme", name="hash_embedder", version="1.0.0", sha256="ab" * 32,
                  archive=b"zip", parameters={"dim": 8}, collection_id="col_1", input_fields=("text",),
                  features=(("hash_embedding", 8),), context={"key": "acme"}, network_allow=(), sandbox={"enabled": True})


def test_the_same_run_shares_a_key_whatever_archive_reference_it_carries():
    assert pool_key(SPEC) == pool_key(replace(SPEC, archive=b"another reference to the same bytes"))


@pytest.mark.parametrize("change", [
    {"namespace": "globex"}, {"plugin_id": "plg_2"}, {"sha256": "cd" * 32}, {"collection_id": "col_2"},
    {"parameters": {"dim": 16}}, {"context": {"key": "rotated"}}, {"network_allow": ("api.example:443",)},
    {"sandbox": {"enabled": False}}, {"available_gpus": 1},
])
def test_a_different_namespace_version_run_secret_or_sandbox_never_shares_a_pool(change):
    assert pool_key(replace(SPEC, **change)) != pool_key(SPEC)


def test_only_small_jobs_go_to_a_pool_and_none_when_pools_are_off():
    pools = WarmPools(idle_s=60, max_objects=64)
    assert pools.takes(SPEC, 1) and pools.takes(SPEC, 64)
    assert not pools.takes(SPEC, 65)
    assert not WarmPools(idle_s=0, max_objects=64).takes(SPEC, 1)


def test_a_plan_is_computed_once_per_run_and_again_for_another():
    pools = WarmPools(idle_s=60, max_objects=64)
    calls = []

    def compute(spec):
        calls.append(spec.collection_id)
        return [spec.collection_id]

    assert pools.plan(SPEC, compute) == ["col_1"]
    assert pools.plan(replace(SPEC, archive=b"x"), compute) == ["col_1"]
    assert pools.plan(replace(SPEC, collection_id="col_2"), compute) == ["col_2"]
    assert calls == ["col_1", "col_2"]
