"""The handler table: every function the runner subscribes, readable in one screen.

Each row names the function (its consumer group), the handler module's `handle`, and the event
types it reacts to (and, for a raw topic, how to decode it). Later issues add rows here:
validate_model.
"""

from __future__ import annotations

from events.s3 import decode_notification
from functions import deploy, ingest, models, notifications, register, scan
from functions.runner import Function

FUNCTIONS: list[Function] = [
    Function("scan", scan.handle, frozenset({"PluginUploadConfirmed"})),
    Function("register", register.handle, frozenset({"PluginScanned"})),
    Function("deploy", deploy.handle, frozenset({"DeployPlugin"})),
    Function("ingest", ingest.handle, frozenset({"ObjectCreated"})),
    Function("validate_model", models.handle, frozenset({"ModelUploadConfirmed"})),
    Function("notifications", notifications.handle, frozenset({"BucketNotification"}), decode=decode_notification),
]
