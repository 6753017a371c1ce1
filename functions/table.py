"""The handler table: every function the runner subscribes, readable in one screen.

Each row names the function (its consumer group), the handler module's `handle`, and the event
types it reacts to. Later issues add rows here: deploy, ingest, validate_model.
"""

from __future__ import annotations

from functions import register, scan
from functions.runner import Function

FUNCTIONS: list[Function] = [
    Function("scan", scan.handle, frozenset({"PluginUploadConfirmed"})),
    Function("register", register.handle, frozenset({"PluginScanned"})),
]
