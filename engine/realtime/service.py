"""The replica of a plugin version's Ray Serve application (`PluginService`).

A replica serves one plugin version, in one of two modes:

* `realtime`: the plugin ships `realtime.py`; its `BaseInferenceService` subclass answers
  `await service(inputs, parameters)` — the hosted product's contract.
* `generic`: no `realtime.py`, but the batch pipeline produces embeddings from text; each query
  runs through the plugin's own steps as a one-row text object (the same code that embedded the
  documents, so query and document vectors always match).

Concurrent `embed` calls are batched (`serve.batch`): the generic mode runs a batch as one
DataFrame; the realtime mode sends `{"texts": [...]}` in one call when the service showed at
start-up that it answers one vector per text, else calls it once per text, concurrently.

The replica is the TRUSTED side: plugin code runs only in its plugin host (`engine.sandbox`), a
confined child process of the replica for this namespace and plugin version, reached over a
socket from a worker thread, so a service that blocks cannot stall the replica's health checks.
Every answer is checked here (`vector_of`). Start-up (an async constructor) starts the host,
builds the service there and makes one warm-up call, so a replica is healthy only once the
plugin can answer, and a plugin that raises at start-up fails the deployment with its own error
instead of failing the first query. A host that dies is replaced at the next query.
"""

from __future__ import annotations

import asyncio
import gc
import traceback
from typing import Any

from ray import serve

from engine.ingest.worker import PluginSpec, open_spec_host, plugin_root
from engine.realtime.answers import RealtimeContractError, plain, vector_of, vectors_per_text

WARM_UP_TEXT = "Sluice warm-up query."
REALTIME = "realtime"
GENERIC = "generic"


class PluginService:
    """Serve replica of one plugin version (wrapped by `serve.deployment` in `engine.realtime.control`).
    TRUSTED side: it owns one plugin host, where the plugin's code runs, and checks every answer."""

    # Ray Serve awaits an async constructor; Python's typing has no notion of one
    async def __init__(self, spec: PluginSpec, *, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.0) -> None:  # type: ignore[misc]
        self.spec = spec
        self.features = dict(spec.features)
        self.batches_texts = False
        self._host_lock = asyncio.Lock()
        self.root = await asyncio.to_thread(plugin_root, spec)
        self.mode = REALTIME if (self.root / "realtime.py").is_file() else GENERIC
        self.host = await asyncio.to_thread(self._open_host)
        if self.mode == REALTIME:
            await self._warm_up_realtime()
        else:
            await self._call_generic([WARM_UP_TEXT], {})
        # ray types the @serve.batch wrapper as a plain callable; it carries these documented setters
        self._embed_batch.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self._embed_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]
        # what start-up allocated (Ray, Serve, the spec) lives as long as the replica: out of the
        # collector's sight, a full collection no longer walks it in the middle of a query
        gc.collect()
        gc.freeze()

    def _open_host(self) -> Any:
        # plugin code may tell a replica from a batch worker or the dry run (the one SLUICE_ variable a host sees)
        host = open_spec_host(self.spec, env={"SLUICE_SERVING": "1"}, root=self.root)
        if self.mode == REALTIME:
            answer, _ = host.call("realtime_init")
            if not answer.get("ok"):
                host.close()
                raise PluginServiceError(_failure(answer))
        return host

    async def _host_call(self, op: str, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """One op in the host (a new host when the last one died); a plugin failure raises."""
        from engine.sandbox.errors import PluginHostError

        async with self._host_lock:
            if self.host is None:
                self.host = await asyncio.to_thread(self._open_host)
            try:
                answer, body = await asyncio.to_thread(self.host.call, op, header)
            except PluginHostError:
                self.host = None
                raise
        if not answer.get("ok"):
            raise PluginServiceError(_failure(answer))
        return answer, body

    # --- start-up --------------------------------------------------------------------------

    async def _warm_up_realtime(self) -> None:
        """Call the service once (a failure fails the replica, with the plugin's error), and learn
        whether it answers `{"texts": [...]}` with one vector per text (then batches are one call)."""
        feature = next(iter(self.features), "embedding")
        single = await self._service({"text": WARM_UP_TEXT}, {})
        vector_of(single, feature, self.features.get(feature))
        try:
            pair = await self._service({"texts": [WARM_UP_TEXT, "second"]}, {})
        except Exception:  # noqa: BLE001 - a service that only takes `text` is fine: it is called per text
            pair = None
        self.batches_texts = vectors_per_text(pair, feature, 2) is not None

    async def _service(self, inputs: dict[str, Any], parameters: dict[str, Any]) -> Any:
        return (await self._services([inputs], parameters))[0]

    async def _services(self, calls: list[dict[str, Any]], parameters: dict[str, Any], *, tolerate: bool = False) -> list[Any]:
        """The plugin's service called once per inputs (concurrently, in the host); its answers,
        or (with `tolerate`) the exception of each call that raised."""
        answer, _ = await self._host_call("realtime", {"calls": calls, "parameters": parameters})
        out: list[Any] = []
        for result in answer["results"]:
            if result.get("ok"):
                out.append(result.get("value"))
            elif tolerate:
                out.append(PluginServiceError(_failure(result)))
            else:
                raise PluginServiceError(_failure(result))
        return out

    async def _call_generic(self, texts: list[str], parameters: dict[str, Any]) -> dict[str, list[Any]]:
        from engine.ingest.worker import decode_vectors

        answer, body = await self._host_call("embed", {"texts": texts, "parameters": parameters})
        return {name: [None if v is None else v.tolist() for v in per_text]
                for name, per_text in decode_vectors(answer, body).items()}

    # --- requests ---------------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        return {"plugin_id": self.spec.plugin_id, "mode": self.mode, "batches_texts": self.batches_texts,
                "features": self.features, "sandbox": getattr(self.host, "layers", {})}

    async def realtime(self, inputs: dict[str, Any], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """`POST .../plugins/{id}/realtime`: the plugin's own answer (generic mode: the vectors)."""
        parameters = parameters or {}
        if self.mode == REALTIME:
            return plain(await self._service(inputs, parameters))
        given = inputs.get("texts")
        texts: list[Any] = given if isinstance(given, list) else [inputs.get("text")]  # checked just below
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("inputs must hold 'text' (a string) or 'texts' (a list of strings)")
        vectors = await self._call_generic(texts, parameters)
        out: dict[str, Any] = {}
        for name, per_text in vectors.items():
            out[name] = per_text if "texts" in inputs else per_text[0]
        if len(vectors) == 1:
            out["embedding"] = next(iter(out.values()))
        return out

    async def embed(self, text: str, feature: str, parameters: dict[str, Any] | None = None) -> list[float]:
        """One query vector for `feature`; concurrent calls are batched."""
        outcome = await self._embed_batch((text, feature, _freeze(parameters or {})))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _embed_batch(self, items: list[tuple[str, str, tuple]]) -> list[Any]:
        """Group the batch by (feature, parameters), run each group once; a failing group answers
        its exception to its own callers only."""
        results: list[Any] = [None] * len(items)
        groups: dict[tuple[str, tuple], list[int]] = {}
        for i, (_, feature, frozen) in enumerate(items):
            groups.setdefault((feature, frozen), []).append(i)
        for (feature, frozen), indexes in groups.items():
            texts = [items[i][0] for i in indexes]
            try:
                vectors = await self._embed_group(texts, feature, {k: _thaw(v) for k, v in frozen})
            except Exception as exc:  # noqa: BLE001 - answered to these callers
                vectors = [exc] * len(indexes)
            for i, vector in zip(indexes, vectors, strict=True):
                results[i] = vector
        return results

    async def _embed_group(self, texts: list[str], feature: str, parameters: dict[str, Any]) -> list[Any]:
        dim = self.features.get(feature)
        if self.mode == GENERIC:
            vectors = (await self._call_generic(texts, parameters)).get(feature)
            if vectors is None:
                raise RealtimeContractError(f"the plugin declares no feature {feature!r}; it has {sorted(self.features)}")
            return [vector_of({feature: v}, feature, dim) if v is not None
                    else RealtimeContractError(f"the plugin produced no {feature!r} vector for this query") for v in vectors]
        if self.batches_texts and len(texts) > 1:
            answer = await self._service({"texts": texts}, parameters)
            rows = vectors_per_text(answer, feature, len(texts))
            if rows is not None:
                return [vector_of({feature: row}, feature, dim) for row in rows]
        answers = await self._services([{"text": t} for t in texts], parameters, tolerate=True)
        # the host's answers are JSON already (numbers, lists, dicts): no `plain` pass over each vector
        return [a if isinstance(a, BaseException) else vector_of(a, feature, dim) for a in answers]

    def __del__(self) -> None:
        host = getattr(self, "host", None)
        if host is not None:
            host.close()


class PluginServiceError(RuntimeError):
    """The plugin raised in its host (the message is its own error, with file and line)."""


def _failure(answer: dict[str, Any]) -> str:
    error = answer.get("error") or {}
    where = f" ({error['file']}:{error['line']})" if error.get("file") else ""
    text = error.get("traceback") or error.get("message") or "the plugin failed"
    return f"{text}{where}"


def _freeze(parameters: dict[str, Any]) -> tuple:
    """Parameters as a hashable key (values by repr: they are JSON from a request)."""
    return tuple(sorted((str(k), _hashable(v)) for k, v in parameters.items()))


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return ("__dict__", tuple(sorted((str(k), _hashable(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("__list__", tuple(_hashable(v) for v in value))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__dict__":
        return {k: _thaw(v) for k, v in value[1]}
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__list__":
        return [_thaw(v) for v in value[1]]
    return value


def describe_failure(exc: BaseException, limit: int = 20) -> str:
    """The exception and the last lines of its traceback, as a deployment's error shows them."""
    lines = "".join(traceback.format_exception(exc)).strip().splitlines()
    return "\n".join(lines[-limit:])


__all__ = ["GENERIC", "REALTIME", "PluginService", "PluginServiceError", "RealtimeContractError", "plain", "vector_of"]
