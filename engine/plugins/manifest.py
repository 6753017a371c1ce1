"""The manifest validator: one for the register function and for `sluice plugin test`.

It reads an imported `manifest.py` and reports every problem as a `Finding` with a rule id and a
hint. The hosted product silently creates no vectors when a `features` entry uses the wrong keys;
here each wrong key is an error that names the key and the one that was meant.
"""

from __future__ import annotations

import ast
import difflib
import re
import types
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.sandbox.egress import format_entry, parse_allow_entry
from events.payloads import Finding

NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]{2,63}$")
VERSION_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
FEATURE_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$")
FEATURE_KEYS = ("feature_type", "feature_name", "embedding_dim", "distance_metric")
FEATURE_TYPES = ("embedding",)
DISTANCES = ("cosine", "euclid", "dot")
MAX_DIM = 65_536
MAX_NETWORK_ALLOW = 64
"""Most allow entries one manifest may declare."""

_KEY_SYNONYMS = {
    "type": "feature_type", "kind": "feature_type", "vector_type": "feature_type",
    "name": "feature_name", "vector_name": "feature_name", "index_name": "feature_name",
    "dimensions": "embedding_dim", "dimension": "embedding_dim", "dims": "embedding_dim", "dim": "embedding_dim",
    "size": "embedding_dim", "vector_size": "embedding_dim", "embedding_size": "embedding_dim",
    "distance": "distance_metric", "metric": "distance_metric", "similarity": "distance_metric",
}
_DISTANCE_SYNONYMS = {
    "cos": "cosine", "cosine_similarity": "cosine", "euclidean": "euclid", "l2": "euclid",
    "dot_product": "dot", "ip": "dot", "inner_product": "dot", "manhattan": None,
}

class RealtimeConfig(BaseModel):
    """The manifest's `realtime_config`: how the plugin's Ray Serve replicas run (all optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_replicas: int = Field(default=1, ge=0, le=100, description="Replicas kept running (0: scale to zero when idle).")
    max_replicas: int | None = Field(default=None, ge=1, le=100, description="Above min_replicas: autoscale on load.")
    target_ongoing_requests: float = Field(default=8.0, gt=0, le=1000, description="Autoscaling target per replica.")
    max_ongoing_requests: int = Field(default=64, ge=1, le=10_000, description="Requests one replica takes at once.")
    num_cpus: float = Field(default=0.0, ge=0, le=256, description="CPUs reserved per replica (0: shared with batch jobs).")
    num_gpus: float | None = Field(default=None, ge=0, le=16, description="GPUs per replica (default: 1 when a step is a GPU step).")
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Concurrent queries embedded in one call.")
    batch_wait_timeout_ms: float = Field(default=0.0, ge=0, le=10_000, description="How long a batch waits to fill.")


REALTIME_KEYS = tuple(RealtimeConfig.model_fields)

# rule id -> (severity, hint)
RULES: dict[str, tuple[Literal["error", "warning"], str]] = {
    "SLU800": ("error", "Fix the exception shown; the manifest must import with only its declared dependencies."),
    "SLU801": ("error", "Set metadata = {'feature_extractor_name': ..., 'version': ...} or module-level feature_extractor_name."),
    "SLU802": ("error", "The upload name and the manifest's feature_extractor_name must be the same."),
    "SLU803": ("warning", "The uploaded version wins; update metadata['version'] to match to avoid confusion."),
    "SLU804": ("error", "metadata must be a dict of strings."),
    "SLU810": ("error", "features must be a list of dicts with feature_type, feature_name, embedding_dim, distance_metric."),
    "SLU811": ("error", "Use exactly the keys feature_type, feature_name, embedding_dim, distance_metric."),
    "SLU812": ("error", "Add the missing key; all four are required."),
    "SLU813": ("error", "feature_type must be 'embedding'."),
    "SLU814": ("error", "feature_name is the vector index name: letters, digits and _, starting with a letter or _, unique."),
    "SLU815": ("error", f"embedding_dim must be an integer from 1 to {MAX_DIM}."),
    "SLU816": ("error", "distance_metric must be one of 'cosine', 'euclid', 'dot'."),
    "SLU817": ("warning", "No features: the plugin writes documents but no vectors, and cannot be searched by vector."),
    "SLU820": ("error", "Schemas must be pydantic BaseModel subclasses or dicts."),
    "SLU821": ("error", "Give every parameter a default; collections override the ones they need."),
    "SLU822": ("error", "supported_input_types lists some of 'text', 'image', 'video', 'audio', 'pdf'."),
    "SLU823": ("error", "realtime_config is a dict of " + ", ".join(REALTIME_KEYS) + " (all optional)."),
    "SLU825": ("error", ("Write network = {'allow': ['api.example.com:443', ...]} once, at module level, as a literal: "
                         "a dict with the single key 'allow' and a list of strings (no names, calls or f-strings). "
                         "Sluice reads it from the source without running the manifest.")),
    "SLU826": ("error", ("Each allow entry is 'host:port' without scheme or path, e.g. 'api.example.com:443' or "
                         "'*.example.com:443'; loopback and private addresses are refused (an operator can pin an "
                         "on-premises host).")),
}


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    feature_type: str = Field(description="Always `embedding`.")
    feature_name: str = Field(description="Vector index name, the DataFrame column the plugin fills.")
    embedding_dim: int = Field(ge=1, le=MAX_DIM, description="Vector length.")
    distance_metric: str = Field(description="`cosine`, `euclid` or `dot`.")


class ManifestSummary(BaseModel):
    """What the catalog keeps of a manifest."""

    model_config = ConfigDict(extra="forbid")

    feature_extractor_name: str
    version: str | None = Field(default=None, description="Version the manifest states (the upload's wins).")
    description: str | None = None
    category: str | None = None
    supported_input_types: list[str] = Field(default_factory=lambda: ["text"])
    features: list[FeatureSpec] = Field(default_factory=list)
    input_fields: list[str] = Field(default_factory=list, description="Text fields of input_schema.")
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    parameter_schema: dict[str, Any] | None = None
    parameter_defaults: dict[str, Any] = Field(default_factory=dict)
    dependencies: list[str] = Field(default_factory=list)
    realtime_config: dict[str, Any] | None = Field(default=None, description="Validated `realtime_config` hints.")


def finding(rule_id: str, message: str, *, file: str = "manifest.py", line: int = 0) -> Finding:
    severity, hint = RULES[rule_id]
    return Finding(rule_id=rule_id, severity=severity, file=file, line=line, message=message, hint=hint)


def feature_uri(name: str, version: str, feature_name: str) -> str:
    return f"sluice://{name}@{version}/{feature_name}"


def _suggest_key(key: str) -> str | None:
    lowered = str(key).lower()
    if lowered in _KEY_SYNONYMS:
        return _KEY_SYNONYMS[lowered]
    close = difflib.get_close_matches(lowered, FEATURE_KEYS, n=1, cutoff=0.6)
    return close[0] if close else None


def check_features(features: Any) -> tuple[list[FeatureSpec], list[Finding]]:
    if features is None:
        return [], [finding("SLU817", "manifest declares no features")]
    if not isinstance(features, (list, tuple)):
        return [], [finding("SLU810", f"features is a {type(features).__name__}, not a list")]
    specs: list[FeatureSpec] = []
    findings: list[Finding] = []
    seen: set[str] = set()
    for i, entry in enumerate(features):
        where = f"features[{i}]"
        if not isinstance(entry, dict):
            findings.append(finding("SLU810", f"{where} is a {type(entry).__name__}, not a dict"))
            continue
        entry_findings: list[Finding] = []
        for key in entry:
            if key not in FEATURE_KEYS:
                right = _suggest_key(key)
                meant = f"; use {right!r}" if right else f"; the keys are {', '.join(FEATURE_KEYS)}"
                entry_findings.append(finding("SLU811", f"{where} has unknown key {key!r}{meant}"))
        present = set(entry)
        for key in FEATURE_KEYS:
            if key not in present:
                wrong = [k for k in entry if _suggest_key(k) == key]
                instead = f" (found {wrong[0]!r} instead)" if wrong else ""
                entry_findings.append(finding("SLU812", f"{where} is missing {key!r}{instead}"))
        if entry_findings:
            findings.extend(entry_findings)
            continue
        ftype, fname, dim, metric = (entry[k] for k in FEATURE_KEYS)
        if ftype not in FEATURE_TYPES:
            entry_findings.append(finding("SLU813", f"{where}.feature_type is {ftype!r}, expected 'embedding'"))
        if not isinstance(fname, str) or not FEATURE_NAME_RE.fullmatch(fname):
            entry_findings.append(finding("SLU814", f"{where}.feature_name {fname!r} is not a valid index name"))
        elif fname in seen:
            entry_findings.append(finding("SLU814", f"{where}.feature_name {fname!r} is declared twice"))
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
            entry_findings.append(finding("SLU815", f"{where}.embedding_dim is {dim!r}"))
        if metric not in DISTANCES:
            right = _DISTANCE_SYNONYMS.get(str(metric).lower()) if isinstance(metric, str) else None
            meant = f"; use {right!r}" if right else ""
            entry_findings.append(finding("SLU816", f"{where}.distance_metric is {metric!r}{meant}"))
        if entry_findings:
            findings.extend(entry_findings)
            continue
        seen.add(fname)
        specs.append(FeatureSpec(feature_type=ftype, feature_name=fname, embedding_dim=dim, distance_metric=metric))
    if not features:
        findings.append(finding("SLU817", "features is empty"))
    return specs, findings


def _schema(module: types.ModuleType, attr: str, findings: list[Finding]) -> tuple[Any, dict[str, Any] | None]:
    from pydantic import BaseModel as PydanticModel

    value = getattr(module, attr, None)
    if value is None:
        return None, None
    if isinstance(value, type) and issubclass(value, PydanticModel):
        return value, value.model_json_schema()
    if isinstance(value, dict):
        return value, value
    findings.append(finding("SLU820", f"{attr} is a {type(value).__name__}"))
    return None, None


def _text_fields(model: Any) -> list[str]:
    from pydantic import BaseModel as PydanticModel

    if not (isinstance(model, type) and issubclass(model, PydanticModel)):
        return []
    return [name for name, f in model.model_fields.items() if f.annotation in (str, str | None)]


def validate_manifest(
    module: types.ModuleType, *, expected_name: str | None = None, expected_version: str | None = None
) -> tuple[ManifestSummary | None, list[Finding]]:
    """Check an imported manifest. The summary is None when an error makes it meaningless."""
    findings: list[Finding] = []
    metadata = getattr(module, "metadata", None)
    if metadata is not None and not isinstance(metadata, dict):
        findings.append(finding("SLU804", f"metadata is a {type(metadata).__name__}"))
        metadata = None
    metadata = metadata or {}
    name = metadata.get("feature_extractor_name") or metadata.get("name") or getattr(module, "feature_extractor_name", None)
    version = metadata.get("version") or getattr(module, "version", None)
    if not isinstance(name, str) or not name:
        findings.append(finding("SLU801", "no feature_extractor_name in metadata or at module level"))
        name = expected_name
    elif expected_name and name != expected_name:
        findings.append(finding("SLU802", f"manifest names the plugin {name!r} but it was uploaded as {expected_name!r}"))
    if expected_version and version is not None and str(version) != expected_version:
        findings.append(finding("SLU803", f"manifest says version {version!r}; registering as {expected_version!r}"))

    specs, feature_findings = check_features(getattr(module, "features", None))
    findings.extend(feature_findings)

    input_model, input_schema = _schema(module, "input_schema", findings)
    _, output_schema = _schema(module, "output_schema", findings)
    parameter_model, parameter_schema = _schema(module, "parameter_schema", findings)
    defaults: dict[str, Any] = {}
    if isinstance(parameter_model, type):
        try:
            defaults = parameter_model().model_dump(mode="json")
        except Exception as exc:  # noqa: BLE001 - a pydantic ValidationError names the fields
            missing = [str(e.get("loc", ("?",))[0]) for e in getattr(exc, "errors", lambda: [])()] or [str(exc)]
            findings.append(finding("SLU821", f"parameter_schema has required parameters without defaults: {', '.join(missing)}"))

    input_types = getattr(module, "supported_input_types", None) or ["text"]
    if not isinstance(input_types, (list, tuple)) or not all(t in ("text", "image", "video", "audio", "pdf") for t in input_types):
        findings.append(finding("SLU822", f"supported_input_types is {input_types!r}"))
        input_types = ["text"]

    realtime_config = _realtime_config(getattr(module, "realtime_config", None), findings)

    if any(f.severity == "error" for f in findings) or not isinstance(name, str):
        return None, findings
    dependencies = getattr(module, "dependencies", None)
    summary = ManifestSummary(
        feature_extractor_name=name,
        version=str(version) if version is not None else None,
        description=metadata.get("description") or getattr(module, "description", None),
        category=metadata.get("category"),
        supported_input_types=list(input_types),
        features=specs,
        input_fields=_text_fields(input_model),
        input_schema=input_schema,
        output_schema=output_schema,
        parameter_schema=parameter_schema,
        parameter_defaults=defaults,
        dependencies=[str(d) for d in dependencies] if isinstance(dependencies, (list, tuple)) else [],
        realtime_config=realtime_config,
    )
    return summary, findings


def _realtime_config(value: Any, findings: list[Finding]) -> dict[str, Any] | None:
    """`realtime_config` checked key by key: an unknown key names the closest known one."""
    if value is None:
        return None
    if not isinstance(value, dict):
        findings.append(finding("SLU823", f"realtime_config is a {type(value).__name__}, not a dict"))
        return None
    bad = False
    for key in value:
        if key not in REALTIME_KEYS:
            close = difflib.get_close_matches(str(key), REALTIME_KEYS, n=1, cutoff=0.6)
            findings.append(
                finding("SLU823", f"realtime_config has an unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
            )
            bad = True
    if bad:
        return None
    try:
        config = RealtimeConfig(**value)
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError lists each field
        errors = getattr(exc, "errors", lambda: [])() or [{"loc": ("?",), "msg": str(exc)}]
        for e in errors:
            findings.append(finding("SLU823", f"realtime_config[{e['loc'][0]!r}]: {e['msg']}"))
        return None
    if config.max_replicas is not None and config.max_replicas < config.min_replicas:
        findings.append(
            finding("SLU823", f"realtime_config: max_replicas {config.max_replicas} is below min_replicas {config.min_replicas}")
        )
        return None
    return config.model_dump(exclude_unset=True)


# --- the network declaration, read statically ------------------------------------------------------

def read_network_declaration(source: str, *, file: str = "manifest.py") -> tuple[tuple[str, ...], list[Finding]]:
    """The hosts a manifest declares in `network = {'allow': ['host:port', ...]}`, read from its
    source with `ast` (never by importing it: the trusted side must not believe what plugin code
    computes). Returns the normalised entries ("host:port", duplicates dropped) and findings;
    the entries are () whenever a finding is an error, and when `network` is absent."""
    try:
        tree = ast.parse(source, filename=file)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", 0) or 0
        return (), [finding("SLU825", f"{file} cannot be parsed ({exc}), so its network declaration cannot be read",
                            file=file, line=line)]
    bindings = _network_bindings(tree)
    if not bindings:
        return (), []
    value, findings = _network_value(tree, bindings, file)
    if value is None:
        return (), findings
    entries, findings = _allow_entries(value, file)
    if any(f.severity == "error" for f in findings):
        return (), findings
    return entries, findings


def _network_bindings(tree: ast.Module) -> list[ast.AST]:
    """Every node that binds or deletes the module-level name `network` (function and class
    bodies are skipped, except for `global network`)."""
    found: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if child.name == "network":
                    found.append(child)
                found.extend(n for n in ast.walk(child) if isinstance(n, ast.Global) and "network" in n.names)
                continue
            if isinstance(child, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)) and any(
                    (alias.asname or alias.name.split(".")[0]) == "network" for alias in child.names):
                found.append(child)
            if isinstance(child, ast.Name) and child.id == "network" and isinstance(child.ctx, (ast.Store, ast.Del)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def _network_value(tree: ast.Module, bindings: list[ast.AST], file: str) -> tuple[ast.expr | None, list[Finding]]:
    """The value node of the one plain `network = ...` statement, or findings saying why not."""
    lines = sorted({getattr(node, "lineno", 0) for node in bindings})
    if len(bindings) > 1:
        shown = ", ".join(map(str, lines))
        return None, [finding("SLU825", f"network is bound {len(bindings)} times (lines {shown}); assign it exactly once",
                              file=file, line=lines[0])]
    for statement in tree.body:
        target, value = _simple_assignment(statement)
        if target is bindings[0]:
            if value is None:
                return None, [finding("SLU825", "network is annotated but given no value", file=file, line=statement.lineno)]
            return value, []
    return None, [finding("SLU825", "network is not bound by a plain module-level `network = {...}` statement",
                          file=file, line=lines[0])]


def _simple_assignment(statement: ast.stmt) -> tuple[ast.AST | None, ast.expr | None]:
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.targets[0], ast.Name):
        return statement.targets[0], statement.value
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return statement.target, statement.value
    return None, None


def _non_literal_part(node: ast.AST) -> str:
    for child in ast.walk(node):
        if isinstance(child, ast.JoinedStr):
            return "an f-string"
        if isinstance(child, ast.Call):
            return f"a call of {ast.unparse(child.func)}()"
        if isinstance(child, ast.Name):
            return f"the name {child.id!r}"
        if isinstance(child, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return "a comprehension"
        if isinstance(child, (ast.Starred, ast.Subscript, ast.Attribute, ast.BinOp, ast.BoolOp, ast.IfExp)):
            return "an expression"
    return "something that is not a literal"


def _allow_entries(node: ast.expr, file: str) -> tuple[tuple[str, ...], list[Finding]]:
    line = node.lineno
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return (), [finding("SLU825", f"network is not a literal: it uses {_non_literal_part(node)}", file=file, line=line)]
    shape = _allow_shape(value)
    if shape:
        return (), [finding("SLU825", shape, file=file, line=line)]
    entries: dict[str, None] = {}
    findings: list[Finding] = []
    element_lines = _allow_element_lines(node)
    for i, entry in enumerate(value["allow"]):
        try:
            entries[format_entry(*parse_allow_entry(entry))] = None
        except ValueError as exc:
            where = element_lines[i] if i < len(element_lines) else line
            findings.append(finding("SLU826", f"network['allow'][{i}]: {exc}", file=file, line=where))
    return tuple(entries), findings


def _allow_shape(value: Any) -> str | None:
    """What is wrong with the shape of the literal, or None."""
    if not isinstance(value, dict):
        return f"network is a {type(value).__name__}, not a dict {{'allow': [...]}}"
    unknown = [key for key in value if key != "allow"]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), ["allow"], n=1, cutoff=0.5)
        meant = "; did you mean 'allow'?" if close or "allow" not in value else ""
        return f"network has unknown key {unknown[0]!r}{meant} (the only key is 'allow')"
    if "allow" not in value:
        return "network has no 'allow' key"
    allow = value["allow"]
    if not isinstance(allow, (list, tuple)):
        return f"network['allow'] is a {type(allow).__name__}, not a list of 'host:port' strings"
    if len(allow) > MAX_NETWORK_ALLOW:
        return f"network['allow'] has {len(allow)} entries; at most {MAX_NETWORK_ALLOW} are allowed"
    return None


def _allow_element_lines(node: ast.expr) -> list[int]:
    if not isinstance(node, ast.Dict):
        return []
    for key, value in zip(node.keys, node.values, strict=False):
        if isinstance(key, ast.Constant) and key.value == "allow" and isinstance(value, (ast.List, ast.Tuple)):
            return [element.lineno for element in value.elts]
    return []
