"""The Ray side of ingest: where plugin code is imported and run.

Plugin code runs only here, in Ray workers (and in the validation subprocess), never in the
process that runs the handlers: the driver passes a `PluginSpec` (the verified archive bytes in
Ray's object store, the parameters, the namespace's secrets context) and each worker unpacks the
archive into its own cache, checks its digest again, imports it and builds the steps itself.

`PluginStage` is the class `map_batches` runs. One stage runs one or more consecutive steps that
need the same resources, each over batches of its own size, so a CPU chunker and a CPU embedder
share one actor instead of paying a hop between actors. A step that raises for a batch is retried
on halves of it until the rows that raise are found: those become failure rows
(`_sluice_error`, `_sluice_step`, `object_id`), which later steps never see, and the rest go on.
The last stage turns rows into plain records (`document_id`, `object_id`, `_fields` as JSON,
one float32 list per feature), so nothing of the plugin's own types reaches the driver.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.plugins.extractors.pipeline import PipelineStep, StepFailed, StepRunner, coerce_steps
from engine.plugins.frame import PRODUCTION_COLUMNS, add_input_aliases

ERROR_COLUMN = "_sluice_error"
STEP_COLUMN = "_sluice_step"
FIELDS_COLUMN = "_fields"
VECTOR_PREFIX = "_vector__"
SKIPPED_COLUMN = "_sluice_skipped"
MARKER_COLUMNS = (ERROR_COLUMN, STEP_COLUMN)

MAX_FIELD_CHARS = 65_536
"""A document field longer than this (as text) is cut: documents hold metadata, not blobs."""


class PluginIntegrityError(RuntimeError):
    """The archive a worker received is not the one that was registered."""


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


# --- unpacking and building -----------------------------------------------------------------

_lock = threading.Lock()
_roots: dict[str, Path] = {}


def _cache_dir() -> Path:
    return Path(os.environ.get("SLUICE_PLUGIN_CACHE") or Path(tempfile.gettempdir()) / f"sluice-plugins-{os.getuid()}")


def plugin_root(spec: PluginSpec) -> Path:
    """The plugin's folder in this worker's cache, unpacked once per archive digest."""
    from engine.plugins.archive import extract_plugin

    with _lock:
        if spec.sha256 in _roots and _roots[spec.sha256].is_dir():
            return _roots[spec.sha256]
        data = spec.archive
        if not isinstance(data, (bytes, bytearray)):
            import ray

            data = ray.get(data)
        digest = hashlib.sha256(data).hexdigest()
        if digest != spec.sha256:
            raise PluginIntegrityError(
                f"plugin {spec.name} {spec.version}: archive digest {digest[:12]}… differs from the registered {spec.sha256[:12]}…")
        cache = _cache_dir()
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = cache / spec.sha256
        marker = final / ".root"
        if not marker.is_file():
            work = Path(tempfile.mkdtemp(prefix=f".{spec.sha256[:12]}-", dir=cache))
            try:
                (work / "archive.zip").write_bytes(data)
                (work / "src").mkdir()
                extracted = extract_plugin(work / "archive.zip", work / "src")
                (work / ".root").write_text(str(extracted.root.relative_to(work)))
                (work / "archive.zip").unlink()
                try:
                    work.rename(final)
                except OSError:  # another worker of this node won the race: use its copy
                    shutil.rmtree(work, ignore_errors=True)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        root = final / marker.read_text().strip()
        _roots[spec.sha256] = root
        return root


def build_steps(spec: PluginSpec) -> list[PipelineStep]:
    """Import the plugin in this process and call its `build_steps` for the collection."""
    from engine.plugins.loader import import_module
    from engine.plugins.request import ExtractorConfig, ExtractorRequest
    from engine.plugins.validate import plugin_container

    from engine.models.registry import install_resolver

    root = plugin_root(spec)
    install_resolver(spec.namespace)  # load_namespace_model reads this namespace's deployed models, no other's
    pipeline = import_module(root, "pipeline")
    request = ExtractorRequest(
        namespace=spec.namespace, feature_extractor_id=spec.plugin_id, collection_id=spec.collection_id,
        extractor_config=ExtractorConfig(feature_extractor_name=spec.name, version=spec.version, parameters=spec.parameters),
        available_gpus=spec.available_gpus,
    )
    steps = coerce_steps(pipeline.build_steps(request, container=plugin_container(spec.namespace, spec.context), base_steps=None))
    if not steps:
        raise StepFailed("build_steps", "returned no steps")
    return steps


def plan(spec: PluginSpec) -> list[StepPlan]:
    """The steps' names and resources (run as a Ray task: this imports the plugin)."""
    plans = []
    for i, s in enumerate(build_steps(spec)):
        num_gpus, num_cpus, resource_type = float(s.num_gpus), float(s.num_cpus), s.resource_type.value
        memory_bytes = 0
        hints = _model_hints(s.service_class, spec.model_resources)
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


def configure_assets(access: dict[str, Any]) -> None:
    """Let `open_asset` read the job's objects in this worker."""
    from engine.assets import allow_asset_root, configure_asset_resolver

    if access.get("kind") == "local":
        allow_asset_root(access["root"])
    elif access.get("kind") == "s3":
        configure_asset_resolver(_S3Resolver(access))


class _S3Resolver:
    """`resolver(bucket, key, dest)` over botocore, from the job's object-store settings."""

    def __init__(self, access: dict[str, Any]) -> None:
        self.access = access
        self._client = None

    def __call__(self, bucket: str, key: str, dest: Path) -> None:
        if self._client is None:
            import botocore.session

            self._client = botocore.session.get_session().create_client(
                "s3", endpoint_url=self.access.get("endpoint_url"), region_name=self.access.get("region") or "us-east-1",
                aws_access_key_id=self.access.get("access_key_id"), aws_secret_access_key=self.access.get("secret_access_key"),
            )
        body = self._client.get_object(Bucket=bucket, Key=key)["Body"]
        with open(dest, "wb") as out:
            for chunk in iter(lambda: body.read(1024 * 1024), b""):
                out.write(chunk)


# --- the map_batches stage ------------------------------------------------------------------

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
    """`map_batches` class: builds the plugin's steps once per actor and runs `indexes` of them."""

    def __init__(self, spec: PluginSpec, indexes: Sequence[int], first: bool, last: bool) -> None:
        configure_assets(spec.asset_access)
        steps = build_steps(spec)
        self.spec = spec
        self.runners = [StepRunner(steps[i]) for i in indexes]
        self.first = first
        self.last = last

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        live, failures = _split_markers(batch)
        failed = [failures] if len(failures) else []
        if self.first:
            live = add_input_aliases(live, self.spec.input_fields)
        for runner in self.runners:
            outputs = []
            for part in _batches(live, runner.step.batch_size):
                out, lost = run_isolating(runner, part)
                outputs.append(out)
                failed.extend(lost)
            live = pd.concat(outputs, ignore_index=True, sort=False) if len(outputs) > 1 else outputs[0]
        if self.last:
            live, lost = to_records(live, self.spec.features)
            failed.extend(lost)
        return pd.concat([live, *failed], ignore_index=True, sort=False) if failed else live

    def __del__(self) -> None:
        for runner in getattr(self, "runners", []):
            runner.close()


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


def embed_texts(steps: Sequence[PipelineStep], spec: PluginSpec, texts: Sequence[str]) -> dict[str, list[list[float] | None]]:
    """Each text through the plugin's steps as a one-row text object: per feature, one vector per
    text (the first chunk's, for a long text), or None where a text gave none."""
    from engine.plugins.extractors.pipeline import run_steps
    from engine.plugins.frame import frame

    rows = [
        {"data": t, "document_id": f"query:{i}", "object_id": f"query:{i}", "blob_id": f"query:{i}/content",
         "collection_id": spec.collection_id or "", "feature_extractor_id": spec.plugin_id}
        for i, t in enumerate(texts)
    ]
    out = run_steps(list(steps), add_input_aliases(frame(rows), spec.input_fields))
    result: dict[str, list[list[float] | None]] = {}
    for name, dim in spec.features:
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
    "PluginIntegrityError", "PluginSpec", "PluginStage", "StepPlan", "build_steps", "embed_texts", "plan",
    "plugin_root", "run_isolating", "to_records",
]
