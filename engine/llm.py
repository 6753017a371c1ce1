"""The LLM port plugins reach as `container.llm`.

Plugins call `await container.llm.generate(instruction, text=..., provider="google", model=...)`
as the hosted product documents. Which providers exist is an operator's choice (API keys, on-prem
endpoints), so the service holds providers registered by name and fails clearly when a plugin asks
for one that is not configured. No provider ships in this module; each adapter implements
`LLMProvider.complete`.

Responses are cached per process (LRU) by a stable hash of the whole request: re-processing the same
object, or a retried batch, does not pay for the same completion twice.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.sealed import Sealed
from events.errors import PermanentError

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PROVIDER",
    "LLMOutputInvalid",
    "LLMProvider",
    "LLMRequest",
    "LLMResult",
    "LLMService",
    "LLMUnavailable",
]

DEFAULT_PROVIDER = "google"
DEFAULT_MODEL = "gemini-2.5-flash"


class LLMUnavailable(PermanentError):
    """The requested provider is not configured in this install (retrying will not help)."""

    error_type = "llm_unavailable"


class LLMOutputInvalid(PermanentError):
    """The provider's answer does not match the requested schema."""

    error_type = "llm_output_invalid"


class LLMRequest(BaseModel):
    """One completion request. `images` are URLs or data URIs; `schema` is a JSON schema (a pydantic
    model class is converted to one) the answer's `data` must follow."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    instruction: str
    text: str | None = None
    images: list[str] = Field(default_factory=list)
    provider: str = DEFAULT_PROVIDER
    model: str = DEFAULT_MODEL
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    temperature: float | None = None

    @field_validator("schema_", mode="before")
    @classmethod
    def _schema_from_model(cls, value: Any) -> Any:
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value.model_json_schema()
        return value

    @property
    def schema(self) -> dict[str, Any] | None:  # type: ignore[override]  # BaseModel.schema is deprecated
        return self.schema_

    def cache_key(self) -> str:
        """A stable hash of the request: equal requests hash equally whatever the dict key order."""
        payload = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


class LLMResult(BaseModel):
    """A completion: `data` is the parsed structured answer (with a schema), `text` the raw text."""

    data: Any = None
    text: str | None = None
    provider: str
    model: str
    cached: bool = False


@runtime_checkable
class LLMProvider(Protocol):
    """An LLM backend adapter."""

    async def complete(self, request: LLMRequest) -> LLMResult: ...


class LLMService(metaclass=Sealed):
    """Routes requests to providers by name, caches answers and checks them against `schema`."""

    def __init__(self, providers: Mapping[str, LLMProvider] | None = None, cache_size: int = 1024) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (0 disables the cache), got {cache_size}")
        self._providers: dict[str, LLMProvider] = {}
        for name, provider in (providers or {}).items():
            self.register(name, provider)
        self._cache_size = cache_size
        self._cache: OrderedDict[str, LLMResult] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def service(self) -> LLMService:
        """The service itself: the hosted product's docs reach it as `container.llm.service`."""
        return self

    @property
    def providers(self) -> list[str]:
        """Names of the configured providers, sorted."""
        return sorted(self._providers)

    def register(self, name: str, provider: LLMProvider) -> None:
        """Configure (or replace) the provider answering requests for `name`."""
        if not callable(getattr(provider, "complete", None)):
            raise TypeError(f"LLM provider {name!r} must have an async complete(request) method, got {type(provider).__name__}")
        self._providers[name] = provider

    async def generate(
        self,
        instruction: str,
        text: str | None = None,
        images: list[str] | None = None,
        provider: str = DEFAULT_PROVIDER,
        model: str = DEFAULT_MODEL,
        schema: Any = None,
        temperature: float | None = None,
    ) -> LLMResult:
        """Complete `instruction` over `text` / `images` with `provider`'s `model`."""
        request = LLMRequest(
            instruction=instruction, text=text, images=images or [], provider=provider, model=model,
            schema=schema, temperature=temperature,
        )
        return await self.process(request)

    async def process(self, request: LLMRequest) -> LLMResult:
        """Answer `request`: from the cache when the same request was answered before."""
        backend = self._providers.get(request.provider)
        if backend is None:
            configured = ", ".join(self.providers) or "none"
            raise LLMUnavailable(
                f"LLM provider {request.provider!r} is not configured in this Sluice install "
                f"(configured providers: {configured}); an operator must register it",
                details={"provider": request.provider, "configured": self.providers},
            )
        key = request.cache_key()
        hit = self._cache_get(key)
        if hit is not None:
            return hit
        result = await backend.complete(request)
        if not isinstance(result, LLMResult):
            raise LLMOutputInvalid(
                f"LLM provider {request.provider!r} returned {type(result).__name__}, expected an LLMResult",
                details={"provider": request.provider},
            )
        if request.schema is not None:
            result = _checked(result, request)
        self._cache_put(key, result.model_copy(update={"cached": False}, deep=True))
        return result

    def _cache_get(self, key: str) -> LLMResult | None:
        with self._lock:
            result = self._cache.get(key)
            if result is None:
                return None
            self._cache.move_to_end(key)
        # A deep copy: a caller editing `data` must not change what the next hit returns.
        return result.model_copy(update={"cached": True, "data": copy.deepcopy(result.data)})

    def _cache_put(self, key: str, result: LLMResult) -> None:
        if self._cache_size == 0:
            return
        with self._lock:
            self._cache[key] = result
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)


def _checked(result: LLMResult, request: LLMRequest) -> LLMResult:
    """A light schema check: `data` (or `text` parsed as JSON) must be an object holding the
    schema's required keys. Full JSON-schema validation is the provider adapter's business."""
    data = result.data
    if data is None and result.text is not None:
        try:
            data = json.loads(result.text)
        except ValueError:
            data = None
        result = result.model_copy(update={"data": data})
    where = f"LLM provider {request.provider!r} model {request.model!r}"
    if not isinstance(data, dict):
        raise LLMOutputInvalid(
            f"{where} answered {type(data).__name__} where the schema asks for an object",
            details={"provider": request.provider, "model": request.model},
        )
    required = [str(k) for k in (request.schema or {}).get("required", [])]
    missing = [k for k in required if k not in data]
    if missing:
        raise LLMOutputInvalid(
            f"{where} answered without the required keys {missing} (got {sorted(map(str, data))})",
            details={"provider": request.provider, "model": request.model, "missing": missing},
        )
    return result
