"""Ingest's plugin stages, on both sides of the trust boundary (each function says which).

TRUSTED side (Ray actors and tasks): `PluginStage` is the class `map_batches` runs. It owns one
plugin host (`engine.sandbox`) for the spec's namespace and plugin version, sends it each batch as
Arrow and takes back an Arrow table it checks (`trusted_table`, and `output_table` for the last
stage: exactly the record columns, typed, each vector of the declared dimension). It never
imports plugin code. `plan` asks a host for the steps' resources and caps them.

HOST side (inside the plugin host): `step_plans`, `run_stage` and `embed_rows` run the plugin's
steps. One stage runs one or more consecutive steps that need the same resources, each over
batches of its own size, so a CPU chunker and a CPU embedder share one actor. A step that raises
for a batch is retried on halves of it until the rows that raise are found: those become failure
rows (`_sluice_error`, `_sluice_step`, `object_id`), which later steps never see. The last stage
turns rows into plain records (`document_id`, `object_id`, `_fields` as JSON, one float32 list
per feature). A host that crashes fails its batch's rows, naming the plugin; a sandbox violation
is reported as a failure row of step `sandbox` even when plugin code swallowed it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.ingest.inputs import INLINE_COLUMN, InlineReader, read_inline
from engine.plugins.extractors.pipeline import PipelineStep, StepFailed, StepRunner
from engine.plugins.frame import PRODUCTION_COLUMNS, add_input_aliases
from engine.sandbox.cache import PluginIntegrityError

ERROR_COLUMN = "_sluice_error"
STEP_COLUMN = "_sluice_step"
FIELDS_COLUMN = "_fields"
VECTOR_PREFIX = "_vector__"
SKIPPED_COLUMN = "_sluice_skipped"
MARKER_COLUMNS = (ERROR_COLUMN, STEP_COLUMN)

MAX_FIELD_CHARS = 65_536
"""A document field longer than this (as text) is cut: documents hold metadata, not blobs."""


@dataclass(frozen=True)
class PluginSpec:
    """Everything a worker needs to build a plugin version's steps. Plain data, picklable."""

    plugin_id: str
    namespace: str
    name: str
    version: str
    sha256: str
    archive: Any
    """The archive's bytes, or a Ray ObjectRef to them."""
    parameters: dict[str, Any] = field(default_factory=dict)
    collection_id: str | None = None
    input_fields: tuple[str, ...] = ()
    features: tuple[tuple[str, int], ...] = ()
    """(feature_name, embedding_dim) of every feature the manifest declares."""
    context: dict[str, Any] = field(default_factory=dict)
    """`SecretsStore.context_for(namespace)`: what the plugin's container needs for its secrets."""
    available_gpus: int = 0
    asset_access: dict[str, Any] = field(default_factory=dict)
    """How `open_asset` reaches the objects: {"kind": "local", "root": ...} or {"kind": "s3", ...}."""
    model_resources: dict[str, dict[str, float]] = field(default_factory=dict)
    """{model_id: {num_cpus, num_gpus, memory_gb}} of the namespace's deployed models: a step whose
    service loads one of them (`model_source = "namespace"`) gets at least those resources."""
    network_allow: tuple[str, ...] = ()
    """The hosts the version's manifest declares (`network = {"allow": [...]}`, read from its
    source at register): the only ones its host reaches, through the egress proxy."""
    sandbox: dict[str, Any] = field(default_factory=dict)
    """`SandboxOptions.as_dict()` from the settings: how the owner starts the plugin's hosts."""


@dataclass(frozen=True)
class StepPlan:
    """A step's name and resources, as the driver needs them to lay out `map_batches`."""

    index: int
    name: str
    resource_type: str
    condition: str
    batch_size: int
    num_gpus: float
    num_cpus: float
    concurrency: int | None
    memory_bytes: int = 0
    """Memory each actor of the step reserves (Ray's `memory` resource); 0: none reserved. Set from
    the `memory_gb` hint of the namespace model the step loads."""

    def same_resources(self, other: StepPlan) -> bool:
        return (self.resource_type, self.num_gpus, self.num_cpus, self.concurrency, self.memory_bytes) == (
            other.resource_type, other.num_gpus, other.num_cpus, other.concurrency, other.memory_bytes)


# --- on the trusted side: the host of a spec ------------------------------------------------------

HOST_RUNTIME_BYTES = 4 * 2**30
"""Address space a host's runtime takes beside a model (Python, numpy, torch reserve ranges)."""


def run_info(spec: PluginSpec) -> dict[str, Any]:
    """What the host needs to know of the run: plain data, no archive, credentials or secrets."""
    return {
        "plugin_id": spec.plugin_id, "name": spec.name, "version": spec.version, "parameters": spec.parameters,
        "collection_id": spec.collection_id, "input_fields": list(spec.input_fields),
        "features": [list(f) for f in spec.features], "available_gpus": spec.available_gpus,
        "model_resources": spec.model_resources,
    }


def archive_bytes(spec: PluginSpec) -> bytes:
    """The archive's bytes: given, from Ray's object store, or fetched by URL (replicas fetch it
    themselves: Serve checkpoints a deployment's arguments, where archives have no place)."""
    data = spec.archive
    if isinstance(data, str):
        return _fetch_url(data, spec.asset_access)
    if not isinstance(data, (bytes, bytearray)):
        import ray

        data = ray.get(data)
    return bytes(data)


def _fetch_url(url: str, access: dict[str, Any]) -> bytes:
    from urllib.parse import unquote, urlsplit
    from urllib.request import url2pathname

    if url.startswith("file:"):
        return Path(url2pathname(unquote(urlsplit(url).path))).read_bytes()
    if not url.startswith("s3://"):
        raise ValueError(f"plugin archives are fetched by s3:// or file:// URL, not {url!r}")
    from engine.sandbox.services import s3_client

    bucket, _, key = url[5:].partition("/")
    client = s3_client(access)
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    finally:
        client.close()


def plugin_root(spec: PluginSpec) -> Path:
    """The plugin's verified folder in the namespace's cache on this node (checked on every call)."""
    from engine.sandbox.cache import plugin_root as cached_root
    from engine.sandbox.client import SandboxOptions

    options = SandboxOptions.from_dict(spec.sandbox)
    return cached_root(options.root(), spec.namespace, spec.sha256, archive_bytes(spec), f"{spec.name} {spec.version}")


def open_spec_host(spec: PluginSpec, *, env: dict[str, str] | None = None, root: Path | None = None,
                   memory_bytes: int = 0) -> Any:
    """A started plugin host for `spec` (confined unless the operator turned the sandbox off).
    `memory_bytes`: what the step's model asks for (its `memory_gb` hint); the host's address-space
    limit grows to hold it (twice over, plus room for the runtime) when the setting is smaller."""
    from engine.sandbox.cache import models_dir
    from engine.sandbox.client import open_host
    from engine.sandbox.services import HostServices

    options = host_options(spec, memory_bytes)
    root = root or plugin_root(spec)
    services = HostServices(spec.namespace, asset_access=spec.asset_access, secrets_context=spec.context,
                            models_dir=models_dir(options.root(), spec.namespace))
    return open_host(namespace=spec.namespace, plugin=f"{spec.name} {spec.version}", plugin_root=root, run=run_info(spec),
                     services=services, options=options, network_allow=tuple(spec.network_allow), env=env)


def host_options(spec: PluginSpec, memory_bytes: int = 0) -> Any:
    """The spec's sandbox options, the address-space limit raised for a model of `memory_bytes`."""
    from dataclasses import replace

    from engine.sandbox.client import SandboxOptions

    options = SandboxOptions.from_dict(spec.sandbox)
    if memory_bytes and options.memory_bytes is not None:
        options = replace(options, memory_bytes=max(options.memory_bytes, 2 * memory_bytes + HOST_RUNTIME_BYTES))
    return options


def decode_vectors(answer: dict[str, Any], body: bytes) -> dict[str, list[np.ndarray | None]]:
    """The vectors of an `embed` answer (see `engine.sandbox.host.encode_vectors`): per feature, one
    float32 array per text or None. The sizes are the host's word, so they are checked against
    the body's length."""
    data = np.frombuffer(body, dtype=np.float32)
    out: dict[str, list[np.ndarray | None]] = {}
    offset = 0
    for name, sizes in (answer.get("vectors") or {}).items():
        per_text: list[np.ndarray | None] = []
        for size in sizes:
            size = int(size)
            if size < 0 or offset + size > data.size:
                raise ValueError("the plugin host's vectors do not match their layout")
            per_text.append(data[offset:offset + size] if size else None)
            offset += size
        out[str(name)] = per_text
    if offset != data.size:
        raise ValueError("the plugin host sent more vector data than its layout describes")
    return out


def host_error(answer: dict[str, Any], default_step: str) -> StepFailed:
    error = answer.get("error") or {}
    where = f" ({error['file']}:{error['line']})" if error.get("file") else ""
    return StepFailed(default_step, f"{error.get('message', 'the plugin failed')}{where}")


def plan(spec: PluginSpec) -> list[StepPlan]:
    """The steps' names and resources, as the plugin builds them (asked of a host; bounded here,
    since a host's answer is the plugin's word)."""
    host = open_spec_host(spec)
    try:
        answer, _ = host.call("plan")
    finally:
        host.close()
    if not answer.get("ok"):
        raise host_error(answer, "build_steps")
    return [bounded_plan(p) for p in answer["plans"]]


MAX_STEP_CPUS = 64.0
MAX_STEP_GPUS = 8.0
MAX_CONCURRENCY = 64
MAX_BATCH_SIZE = 65_536


def bounded_plan(raw: dict[str, Any]) -> StepPlan:
    """A host's step plan with every resource checked and capped: a plugin cannot ask the cluster
    for more than one step may hold."""
    from engine.plugins.extractors.pipeline import ResourceType

    resource = str(raw.get("resource_type") or "CPU")
    if resource not in {r.value for r in ResourceType}:
        resource = "CPU"
    concurrency = raw.get("concurrency")
    return StepPlan(
        index=int(raw["index"]), name=str(raw.get("name") or f"step{raw['index']}")[:200], resource_type=resource,
        condition=str(raw.get("condition") or "")[:200],
        batch_size=max(1, min(int(raw.get("batch_size") or 1), MAX_BATCH_SIZE)),
        num_gpus=max(0.0, min(float(raw.get("num_gpus") or 0), MAX_STEP_GPUS)),
        num_cpus=max(0.0, min(float(raw.get("num_cpus") or 0), MAX_STEP_CPUS)),
        concurrency=None if concurrency is None else max(1, min(int(concurrency), MAX_CONCURRENCY)),
        memory_bytes=max(0, int(raw.get("memory_bytes") or 0)),
    )


# --- in the host: building and running the steps ------------------------------------------------

def step_plans(steps: Sequence[PipelineStep], model_resources: dict[str, dict[str, float]]) -> list[StepPlan]:
    plans = []
    for i, s in enumerate(steps):
        num_gpus, num_cpus, resource_type = float(s.num_gpus), float(s.num_cpus), s.resource_type.value
        memory_bytes = 0
        hints = _model_hints(s.service_class, model_resources)
        if hints:
            num_gpus = max(num_gpus, float(hints.get("num_gpus") or 0))
            num_cpus = max(num_cpus, float(hints.get("num_cpus") or 0))
            memory_bytes = int(float(hints.get("memory_gb") or 0) * 2**30)
            if num_gpus and resource_type == "CPU":
                resource_type = "GPU"
        plans.append(StepPlan(
            index=i, name=s.name, resource_type=resource_type, condition=s.condition.value,
            batch_size=int(s.batch_size), num_gpus=num_gpus, num_cpus=num_cpus, concurrency=s.concurrency,
            memory_bytes=memory_bytes,
        ))
    return plans


def _model_hints(service_class: Any, resources: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """The registry's resource hints of the namespace models a step's service loads (the mixin's
    `model_id` with `model_source = "namespace"`, or methods decorated with
    `@lazy_model(..., model_source="namespace")`), each resource the largest asked; None if none."""
    from engine.models.lazy import namespace_models_of

    found = [resources[ref] for ref in namespace_models_of(service_class) if ref in resources]
    if not found:
        return None
    return {key: max(float(h.get(key) or 0) for h in found) for key in ("num_cpus", "num_gpus", "memory_gb")}


def run_stage(runners: Sequence[StepRunner], batch: pd.DataFrame, *, first: bool, last: bool,
              input_fields: Sequence[str], features: Sequence[tuple[str, int]]) -> pd.DataFrame:
    """One stage over one batch, in the host: each step over batches of its own size, rows that
    raise isolated as failure rows, and (last stage) plain output records."""
    live, failures = _split_markers(batch)
    failed = [failures] if len(failures) else []
    if first:
        live = add_input_aliases(live, tuple(input_fields))
    for runner in runners:
        outputs = []
        for part in _batches(live, runner.step.batch_size):
            out, lost = run_isolating(runner, part)
            outputs.append(out)
            failed.extend(lost)
        live = pd.concat(outputs, ignore_index=True, sort=False) if len(outputs) > 1 else outputs[0]
    if last:
        live, lost = to_records(live, features)
        failed.extend(lost)
    return pd.concat([live, *failed], ignore_index=True, sort=False) if failed else live


def _split_markers(batch: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    if ERROR_COLUMN not in batch.columns:
        return batch, batch.iloc[0:0]
    failed = batch[ERROR_COLUMN].notna().to_numpy()
    live = batch[~failed].drop(columns=[c for c in MARKER_COLUMNS if c in batch.columns]).reset_index(drop=True)
    return live, batch[failed][[c for c in ("object_id", *MARKER_COLUMNS) if c in batch.columns]].reset_index(drop=True)


def _failure_rows(rows: pd.DataFrame, step: str, error: str) -> pd.DataFrame:
    object_ids = rows["object_id"].tolist() if "object_id" in rows.columns else [""] * len(rows)
    return pd.DataFrame({"object_id": object_ids, ERROR_COLUMN: [error[:2000]] * len(rows), STEP_COLUMN: [step] * len(rows)})


def run_isolating(runner: StepRunner, batch: pd.DataFrame) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Run one step over `batch`; when it raises, bisect until the rows that raise are found.
    Returns the output and failure frames. Rows of different objects are never blamed for each
    other: a failure names the object of the one row that raised."""
    try:
        return runner(batch), []
    except StepFailed as exc:
        if len(batch) <= 1:
            return batch.iloc[0:0], [_failure_rows(batch, exc.step, str(exc))]
    middle = len(batch) // 2
    left, left_failures = run_isolating(runner, batch.iloc[:middle].reset_index(drop=True))
    right, right_failures = run_isolating(runner, batch.iloc[middle:].reset_index(drop=True))
    return pd.concat([left, right], ignore_index=True, sort=False), left_failures + right_failures


def _batches(frame: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    if len(frame) <= size:
        return [frame]
    return [frame.iloc[i:i + size].reset_index(drop=True) for i in range(0, len(frame), size)]


class PluginStage:
    """`map_batches` class (TRUSTED side): owns one plugin host, which builds the plugin's steps
    once and runs `indexes` of them over each batch. Batches cross as Arrow; a host that crashes
    or runs past its time limit fails that batch's rows (naming the plugin) and is replaced."""

    def __init__(self, spec: PluginSpec, indexes: Sequence[int], first: bool, last: bool, memory_bytes: int = 0) -> None:
        self.spec = spec
        self.memory_bytes = memory_bytes
        self.header = {"indexes": list(indexes), "first": first, "last": last}
        self.last = last
        self.root = plugin_root(spec)
        self.host: Any = None
        self.reader = InlineReader(spec.namespace, spec.asset_access) if first else None
        self._open()

    def _open(self) -> None:
        self.host = open_spec_host(self.spec, root=self.root, memory_bytes=self.memory_bytes)
        answer, _ = self.host.call("stage", self.header)
        if not answer.get("ok"):
            raise host_error(answer, "build_steps")

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from engine.sandbox.errors import PluginHostError
        from engine.sandbox.protocol import ProtocolError, encode_frame, trusted_table

        table = batch if isinstance(batch, pa.Table) else pa.Table.from_pandas(batch, preserve_index=False)
        unread = None
        if self.reader is not None and INLINE_COLUMN in table.column_names:
            frame, failures = read_inline(table.to_pandas(), self.reader)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if failures:
                unread = pa.table({"object_id": pa.array([f[0] for f in failures], pa.string()),
                                   ERROR_COLUMN: pa.array([f[1][:2000] for f in failures], pa.string()),
                                   STEP_COLUMN: pa.array(["read"] * len(failures), pa.string())})
        try:
            if table.num_rows == 0 and unread is not None:  # every row failed its read: nothing for the host
                out, unread = unread, None
            else:
                if self.host is None:
                    self._open()
                answer, body = self.host.call("run", {}, encode_frame(table))
                if not answer.get("ok"):
                    raise host_error(answer, "run")
                out = trusted_table(body)
                if self.last:
                    out = output_table(out, self.spec.features)
        except (PluginHostError, ProtocolError, StepFailed) as exc:
            if isinstance(exc, (PluginHostError, ProtocolError)) and self.host is not None:
                self.host.close()
                self.host = None
            out = _failed_table(table, str(exc), "plugin")
        violations = self.host.drain_violations() if self.host is not None else []
        extra = ([unread] if unread is not None else []) + ([_violation_table(violations)] if violations else [])
        if extra:
            out = pa.concat_tables([out, *extra], promote_options="permissive")
        return out

    def __del__(self) -> None:
        host = getattr(self, "host", None)
        if host is not None:
            host.close()
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.close()


def _failed_table(table: Any, error: str, step: str) -> Any:
    import pyarrow as pa

    ids = table.column("object_id").to_pylist() if "object_id" in table.column_names else [""] * table.num_rows
    return pa.table({"object_id": pa.array([str(i or "") for i in ids], pa.string()),
                     ERROR_COLUMN: pa.array([error[:2000]] * len(ids), pa.string()),
                     STEP_COLUMN: pa.array([step] * len(ids), pa.string())})


def _violation_table(violations: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    return pa.table({"object_id": pa.array([""] * len(violations), pa.string()),
                     ERROR_COLUMN: pa.array([str(v.get("message", ""))[:2000] for v in violations], pa.string()),
                     STEP_COLUMN: pa.array(["sandbox"] * len(violations), pa.string())})


def output_table(table: Any, features: Sequence[tuple[str, int]]) -> Any:
    """The last stage's output as the driver may write it: exactly the record columns, typed,
    each vector of the declared dimension (rows that are not go to failures)."""
    import pyarrow as pa

    frame = table.to_pandas(ignore_metadata=True)
    records, failed = _trusted_records(frame, features)
    parts = [records] + ([failed] if len(failed) else [])
    return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else records


def _trusted_records(frame: pd.DataFrame, features: Sequence[tuple[str, int]]) -> tuple[Any, Any]:
    import pyarrow as pa

    failed_mask = frame[ERROR_COLUMN].notna().to_numpy() if ERROR_COLUMN in frame.columns else np.zeros(len(frame), bool)
    live, dead = frame[~failed_mask], frame[failed_mask]
    columns: dict[str, Any] = {
        "document_id": pa.array([str(v) if v is not None else "" for v in live.get("document_id", [])], pa.string()),
        "object_id": pa.array([str(v) if v is not None else "" for v in live.get("object_id", [])], pa.string()),
        FIELDS_COLUMN: pa.array([v if isinstance(v, str) else "{}" for v in live.get(FIELDS_COLUMN, [])], pa.string()),
        SKIPPED_COLUMN: pa.array([bool(v) for v in live.get(SKIPPED_COLUMN, [])], pa.bool_()),
    }
    bad: list[tuple[str, str]] = []
    keep = np.ones(len(live), bool)
    for name, dim in features:
        values = live[VECTOR_PREFIX + name].tolist() if VECTOR_PREFIX + name in live.columns else [None] * len(live)
        vectors = []
        for i, value in enumerate(values):
            vector, problem = _vector(value, dim)
            if problem:
                keep[i] = False
                bad.append((columns["object_id"][i].as_py(), f"feature {name!r} {problem}"))
            vectors.append(vector)
        columns[VECTOR_PREFIX + name] = pa.array(vectors, pa.list_(pa.float32()))
    records = pa.table(columns).filter(pa.array(keep)) if not keep.all() else pa.table(columns)
    object_ids = [str(v or "") for v in dead.get("object_id", [])] + [b[0] for b in bad]
    errors = [str(v)[:2000] for v in dead.get(ERROR_COLUMN, [])] + [b[1] for b in bad]
    steps = [str(v or "")[:200] for v in dead.get(STEP_COLUMN, [])] + ["output"] * len(bad)
    failed = pa.table({"object_id": pa.array(object_ids, pa.string()), ERROR_COLUMN: pa.array(errors, pa.string()),
                       STEP_COLUMN: pa.array(steps, pa.string())})
    return records, failed


# --- plain output records --------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A JSON-safe copy of a cell: numpy to Python, NaN to None, bytes described, long text cut."""
    if value is None or isinstance(value, (bool, int, str)):
        return value[:MAX_FIELD_CHARS] if isinstance(value, str) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, np.ndarray):
        return _plain(value.tolist()) if value.size <= 4096 else f"<array {value.shape}>"
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value[:4096]]
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    text = str(value)
    return text[:MAX_FIELD_CHARS]


def _vector(value: Any, dim: int) -> tuple[list[float] | None, str | None]:
    """(the vector as float32 values, or None when the row has none; an error when it is unusable)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    try:
        array = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        return None, f"is not a numeric vector ({type(value).__name__}: {exc})"
    if array.size != dim:
        return None, f"has {array.size} dimensions, the index expects {dim}"
    if not np.isfinite(array).all():
        return None, "holds NaN or infinite values"
    return array.tolist(), None


def to_records(frame: pd.DataFrame, features: Sequence[tuple[str, int]]) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """The plugin's output as plain columns the driver writes. A row whose vector is unusable is
    a failure of step `output`; a row with no vector at all (its row condition did not match) is
    kept with `_sluice_skipped` set, so the driver reports it rather than writing an empty document."""
    names = {name for name, _ in features}
    failures = []
    records: list[dict[str, Any]] = []
    for row in frame.to_dict("records"):
        out: dict[str, Any] = {"document_id": str(row.get("document_id") or ""), "object_id": str(row.get("object_id") or "")}
        error = None
        found = 0
        for name, dim in features:
            vector, problem = _vector(row.get(name), dim)
            if problem:
                error = f"feature {name!r} {problem}"
                break
            out[VECTOR_PREFIX + name] = vector
            found += vector is not None
        if error:
            failures.append(pd.DataFrame({"object_id": [out["object_id"]], ERROR_COLUMN: [error], STEP_COLUMN: ["output"]}))
            continue
        out[SKIPPED_COLUMN] = bool(features) and found == 0
        out[FIELDS_COLUMN] = json.dumps(
            {str(k): _plain(v) for k, v in row.items() if k not in names and k not in ("document_id", "object_id")},
            ensure_ascii=False, allow_nan=False, default=str,
        )
        records.append(out)
    columns = ["document_id", "object_id", FIELDS_COLUMN, SKIPPED_COLUMN, *(VECTOR_PREFIX + n for n, _ in features)]
    return pd.DataFrame(records, columns=columns), failures


def embed_rows(steps: Sequence[PipelineStep], texts: Sequence[str], *, collection_id: str, plugin_id: str,
               input_fields: Sequence[str], features: Sequence[tuple[str, int]]) -> dict[str, list[list[float] | None]]:
    """In the host: each text through the plugin's steps as a one-row text object; per feature,
    one vector per text (the first chunk's, for a long text), or None where a text gave none."""
    from engine.plugins.extractors.pipeline import run_steps
    from engine.plugins.frame import frame

    rows = [
        {"data": t, "document_id": f"query:{i}", "object_id": f"query:{i}", "blob_id": f"query:{i}/content",
         "collection_id": collection_id, "feature_extractor_id": plugin_id}
        for i, t in enumerate(texts)
    ]
    out = run_steps(list(steps), add_input_aliases(frame(rows), tuple(input_fields)))
    result: dict[str, list[list[float] | None]] = {}
    for name, dim in features:
        per_text: list[list[float] | None] = [None] * len(texts)
        values = out[name].tolist() if name in out.columns else [None] * len(out)
        for object_id, value in zip(out["object_id"].tolist(), values, strict=True):
            i = int(str(object_id).split(":", 1)[1])
            vector, _ = _vector(value, dim)
            if per_text[i] is None and vector is not None:
                per_text[i] = vector
        result[name] = per_text
    return result


__all__ = [
    "ERROR_COLUMN", "FIELDS_COLUMN", "PRODUCTION_COLUMNS", "SKIPPED_COLUMN", "STEP_COLUMN", "VECTOR_PREFIX",
    "PluginIntegrityError", "PluginSpec", "PluginStage", "StepPlan", "bounded_plan", "decode_vectors", "embed_rows", "open_spec_host",
    "output_table", "plan", "plugin_root", "run_isolating", "run_stage", "step_plans", "to_records",
]
