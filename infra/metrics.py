"""Prometheus metrics of the platform (prometheus-client, the default registry).

Definitions only, plus tiny helpers: the code that observes something calls a helper here, and a
later `/metrics` route exposes the default registry as it is. Label values are function names and
fixed outcome words, never tenant data, so the series stay few.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import Counter, Gauge

Outcome = Literal["ok", "skipped", "dead_lettered"]

FUNCTION_UP = Gauge("sluice_function_up", "1 while the function's consumer loop runs, 0 otherwise.", ["function"])
FUNCTION_RESTARTS = Counter(
    "sluice_function_restarts_total", "Times a function's consumer loop failed and was started again.", ["function"])
EVENTS_CONSUMED = Counter(
    "sluice_events_consumed_total", "Messages a function finished, by outcome (ok, skipped, dead_lettered).",
    ["function", "outcome"])
DEAD_LETTERS = Counter(
    "sluice_dead_letters_total", "Dead letters a function wrote (one per message, or per rejected record).", ["function"])


def function_up(function: str, up: bool) -> None:
    FUNCTION_UP.labels(function=function).set(1 if up else 0)


def function_restarted(function: str) -> None:
    FUNCTION_RESTARTS.labels(function=function).inc()


def event_consumed(function: str, outcome: str) -> None:
    EVENTS_CONSUMED.labels(function=function, outcome=outcome).inc()


def dead_lettered(function: str, count: int = 1) -> None:
    DEAD_LETTERS.labels(function=function).inc(count)


__all__ = ["DEAD_LETTERS", "EVENTS_CONSUMED", "FUNCTION_RESTARTS", "FUNCTION_UP", "Outcome", "dead_lettered",
           "event_consumed", "function_restarted", "function_up"]
