"""bytes ⇄ envelope. The one place events are serialised."""

from __future__ import annotations

import json
from functools import cache

from pydantic import TypeAdapter, ValidationError

from events.envelope import AnyEnvelope
from events.errors import PoisonMessage


@cache
def _adapter() -> TypeAdapter[AnyEnvelope]:
    return TypeAdapter(AnyEnvelope)


def encode(envelope: AnyEnvelope) -> bytes:
    return envelope.model_dump_json().encode()


def decode(data: bytes) -> AnyEnvelope:
    """Decode one envelope; raises `PoisonMessage` naming what was wrong."""
    try:
        return _adapter().validate_json(data)
    except ValidationError as exc:
        errors = [
            {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        first = errors[0] if errors else {"loc": "", "msg": "invalid"}
        raise PoisonMessage(
            f"not a valid Sluice event: {first['loc'] or '<root>'}: {first['msg']}",
            details={"errors": errors},
        ) from exc


def peek_type(data: bytes) -> str | None:
    """The event type without full validation (for routing and logs); None if unreadable."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value.get("type") if isinstance(value, dict) else None
