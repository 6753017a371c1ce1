"""`PluginContainer`: the platform services a plugin receives.

A plugin's `build_steps(extractor_request, container=None, base_steps=None, **kwargs)` gets one as
`container`, scoped to the namespace being processed:

- `container.namespace`: the namespace id;
- `container.llm`: an `LLMService` (`await container.llm.generate(instruction, text=..., provider=..., model=...)`);
- `container.secrets`: a `SecretsAccessor` (`await container.secrets.get("API_KEY")`, `await container.secrets.list()`).

A dry run may pass `container=None`, so plugins should not reach for it at import time.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.llm import LLMService
from engine.namespace_secrets import SecretsAccessor
from engine.sealed import Sealed

__all__ = ["PluginContainer"]


@dataclass
class PluginContainer(metaclass=Sealed):
    """What `build_steps(..., container=...)` receives: the namespace's LLM and secrets ports."""

    namespace: str
    llm: LLMService
    secrets: SecretsAccessor
