"""EventBus adapters: the in-memory fake, the durable SQLite log of `sluice up`, and Kafka.

The memory and SQLite buses share one core (`infra.bus._log`) so their group semantics cannot
drift apart. Names load on first use, so `from infra.bus import InMemoryBus` does not import
aiokafka.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.bus._log import LogBus, LogStorage
    from infra.bus.broker import BrokerStartError, EmbeddedBroker, start_embedded_broker
    from infra.bus.kafka import KafkaBus
    from infra.bus.memory import InMemoryBus
    from infra.bus.sqlite import SqliteLogBus

__all__ = [
    "BrokerStartError",
    "EmbeddedBroker",
    "InMemoryBus",
    "KafkaBus",
    "LogBus",
    "LogStorage",
    "SqliteLogBus",
    "start_embedded_broker",
]

_MODULES = {
    "BrokerStartError": "infra.bus.broker",
    "EmbeddedBroker": "infra.bus.broker",
    "InMemoryBus": "infra.bus.memory",
    "KafkaBus": "infra.bus.kafka",
    "LogBus": "infra.bus._log",
    "LogStorage": "infra.bus._log",
    "SqliteLogBus": "infra.bus.sqlite",
    "start_embedded_broker": "infra.bus.broker",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)
