"""Shared fixtures. Real servers (the Kafka-protocol broker, the S3 endpoint) start once per
session on free loopback ports; a missing server is a failure, never a skip.

The unit tier is `pytest -m unit` (handlers on fakes, the scanner, codecs, the fakes' contract
suites: seconds, no torch, no Ray, no servers). With exactly that marker expression, test modules
that hold no unit test are not even imported, so their heavy imports cost nothing.

Property tests (hypothesis) run derandomized by default, so CI sees the same examples on every run
and a failure reproduces; `SLUICE_HYPOTHESIS=explore` draws new examples each run (and more of them)
for hunting bugs locally.
"""

import os
from pathlib import Path

from hypothesis import settings as hypothesis_settings

hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.register_profile("explore", deadline=None, max_examples=500, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("SLUICE_HYPOTHESIS", "ci"))

# Spare validation hosts (engine.sandbox.spare) start a warmed plugin host after every push: on a
# 2-CPU runner that is seconds of CPU per push for nothing. Tests that measure them turn them on.
os.environ.setdefault("SLUICE_VALIDATION_WARM_HOSTS", "0")

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.s3",
    "tests.fixtures.ray",
]


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    if config.getoption("markexpr", "").strip() != "unit" or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    return "mark.unit" not in collection_path.read_text(encoding="utf-8", errors="replace") or None


def pytest_collection_modifyitems(config, items: list) -> None:
    """`-m unit` leaves out the unit tests that load a real model (marked `torch` too)."""
    if config.getoption("markexpr", "").strip() != "unit":
        return
    heavy = [item for item in items if item.get_closest_marker("torch")]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if not item.get_closest_marker("torch")]
