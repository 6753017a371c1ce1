"""The handler table: every function the runner subscribes, readable in one screen.

Each row names the function (its consumer group) and its handler module's `handle`; the event
types a row reacts to come from the handler's signature (`event: Envelope[PluginScanned]`), and a
raw topic says how to decode it.
"""

from __future__ import annotations

from events.dead_letters import dead_letter_topic, read_dead_letter
from events.s3 import decode_notification
from functions.handlers import backfill, dead_letters, deploy, ingest, notifications, purge_removed, register, remove, scan, validate_model
from functions.runtime.runner import Function

FUNCTIONS: list[Function] = [
    Function.of("scan", scan.handle),
    Function.of("register", register.handle),
    Function.of("deploy", deploy.handle),
    Function.of("ingest", ingest.handle),
    Function.of("remove", remove.handle, once=True),
    Function.of("purge_removed", purge_removed.handle),
    Function.of("backfill", backfill.handle),
    Function.of("validate_model", validate_model.handle),
    Function.of("notifications", notifications.handle, decode=decode_notification),
    Function.of("dead_letters", dead_letters.handle, topic=dead_letter_topic, decode_message=read_dead_letter),
]
