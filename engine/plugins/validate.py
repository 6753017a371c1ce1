"""Validate a scanned plugin by running it: import the manifest, check it, build the steps, and run
them on a two-row sample of each declared input type. The declared vector columns must come out
with the declared dimension.

This imports and executes plugin code, so it never runs in a handler's process:
`validate_isolated()` runs `validate_plugin()` in a plugin host (`engine.sandbox`: a confined
child process for this namespace, with a time limit), re-reads its report as untrusted data and
adds the sandbox's refusals as findings. `sluice plugin test` uses the same path.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from engine.plugins.manifest import ManifestSummary, feature_uri, validate_manifest
from engine.plugins.manifest import finding as manifest_finding
from events.payloads import Finding

RULES: dict[str, tuple[Literal["error", "warning"], str]] = {
    "SLU830": ("error", "pipeline.py must import cleanly; fix the exception shown."),
    "SLU831": ("error", "Define `def build_steps(extractor_request, container=None, base_steps=None, **kwargs)` in pipeline.py."),
    "SLU832": ("error", "build_steps raised while building the steps for the default parameters; fix the exception shown."),
    "SLU833": ("error", "Return {'steps': build_pipeline_steps(pipeline)} from build_steps."),
    "SLU834": ("error", "build_steps returned no steps: nothing would be extracted."),
    "SLU840": ("error", "A step raised on the sample rows; fix the exception shown (the traceback points into your code)."),
    "SLU841": ("error", "Write each declared feature to a DataFrame column named after its feature_name."),
    "SLU842": ("error", "The vectors must have exactly embedding_dim numbers, as declared in features."),
    "SLU843": ("error", "Vectors must hold finite numbers (no NaN, inf, None or strings)."),
    "SLU844": ("error", "A step must return the rows it was given (or more, when it splits them); none came out."),
    "SLU846": ("error", "All-zero vectors have no cosine direction: does the processor swallow an exception and write zeros?"),
    "SLU847": ("warning", "Every sample vector is all zeros: does the processor swallow an exception and write zeros?"),
    "SLU845": (
        "warning",
        "Sluice cannot synthesise a sample of this input type; test the plugin on a real file with `sluice plugin test --file`.",
    ),
    "SLU848": (
        "warning",
        "The step loads a namespace model that is not deployed (or no registry is reachable), so its output was not checked; "
        "deploy the model with `sluice model deploy` and push again to check it.",
    ),
    "SLU850": ("error", "realtime.py must import cleanly; fix the exception shown."),
    "SLU851": ("error", "realtime.py must define a subclass of shared.plugins.inference.serve.BaseInferenceService."),
    "SLU852": ("error", "`await service({'text': ...}, {})` must return {'embedding': [...]} or a key named after a feature."),
    "SLU860": ("error", "Validation must finish within the time limit; load models lazily and keep build_steps cheap."),
    "SLU861": ("error", "The plugin host crashed or could not start; the output tail is shown."),
    "SLU880": (
        "warning",
        "The sandbox refused this action: plugins read only their own files, their namespace's objects "
        "(open_asset) and models, write only in their scratch folder (HOME, TMPDIR), reach only the hosts "
        "manifest.py declares, and start no processes.",
    ),
}


def finding(rule_id: str, message: str, *, file: str = "pipeline.py", line: int = 0) -> Finding:
    severity, hint = RULES[rule_id]
    return Finding(rule_id=rule_id, severity=severity, file=file, line=line, message=message, hint=hint)


class DryRun(BaseModel):
    input_type: str
    rows_in: int
    rows_out: int
    columns: list[str]
    seconds: float


class ValidationReport(BaseModel):
    passed: bool = Field(description="No error (and, when strict, no warning).")
    findings: list[Finding] = Field(default_factory=list)
    manifest: ManifestSummary | None = None
    feature_uris: list[str] = Field(default_factory=list)
    has_realtime: bool = False
    step_gpus: float = Field(default=0.0, description="The most GPUs one step asks for (realtime replicas follow it).")
    dry_runs: list[DryRun] = Field(default_factory=list)


def _where(root: Path, exc: BaseException, default_file: str) -> tuple[str, int, str]:
    """The innermost frame of the traceback that lies in the plugin: (file, line, text)."""
    from engine.plugins.loader import relative_file

    file, line = default_file, 0
    for frame_summary in traceback.extract_tb(exc.__traceback__):
        rel = relative_file(root, frame_summary.filename)
        if rel is not None:
            file, line = rel, frame_summary.lineno or 0
    if isinstance(exc, SyntaxError) and exc.filename:
        file, line = relative_file(root, exc.filename) or file, exc.lineno or 0
    return file, line, f"{type(exc).__name__}: {exc}"


def _check_vectors(features: list, out: Any, input_type: str, findings: list[Finding]) -> None:
    for spec in features:
        column = spec.feature_name
        if column not in out.columns:
            findings.append(
                finding(
                    "SLU841",
                    f"{input_type} sample: feature {column!r} has no column in the output (columns: {', '.join(map(str, out.columns))})",
                )
            )
            continue
        seen = zeros = 0
        for i, value in enumerate(out[column].tolist()):
            if value is None:
                continue  # a row the step's condition skipped
            try:
                vector = list(value)
            except TypeError:
                findings.append(finding("SLU843", f"{input_type} sample row {i}: {column!r} is a {type(value).__name__}"))
                break
            if len(vector) != spec.embedding_dim:
                findings.append(
                    finding(
                        "SLU842",
                        f"{input_type} sample row {i}: {column!r} has {len(vector)} dimensions, manifest declares {spec.embedding_dim}",
                    )
                )
                break
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in map(_number, vector)):
                findings.append(finding("SLU843", f"{input_type} sample row {i}: {column!r} holds a non-finite or non-numeric value"))
                break
            seen += 1
            zeros += not any(_number(x) for x in vector)
        else:
            if seen == 0:
                findings.append(finding("SLU841", f"{input_type} sample: feature {column!r} is empty on every row"))
            elif zeros == seen:
                findings.append(finding(
                    "SLU846" if spec.distance_metric == "cosine" else "SLU847",
                    f"{input_type} sample: every {column!r} vector is all zeros",
                ))


def _number(x: Any) -> Any:
    """numpy scalars count as numbers."""
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
    except ImportError:  # pragma: no cover
        pass
    return x


def _namespace_model(exc: BaseException | None) -> str | None:
    """The model id when `exc` (or its cause) is a namespace model that is not loadable here."""
    from engine.models.errors import ModelNotAvailable

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ModelNotAvailable) and (
            "no model registry is configured" in exc.message or "is deployed in namespace" in exc.message
        ):
            return exc.model_id
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _realtime_check(realtime: Any, manifest: ManifestSummary, findings: list[Finding], root: Path) -> None:
    from engine.shared.plugins.inference.serve import BaseInferenceService

    classes = [
        obj for obj in vars(realtime).values()
        if isinstance(obj, type) and issubclass(obj, BaseInferenceService) and obj is not BaseInferenceService
    ]
    if not classes:
        findings.append(finding("SLU851", "realtime.py defines no BaseInferenceService subclass", file="realtime.py"))
        return
    names = {f.feature_name: f.embedding_dim for f in manifest.features}
    try:
        service = classes[0]()
        result = asyncio.run(service({"text": "query"}, {}))
    except Exception as exc:  # noqa: BLE001
        file, line, text = _where(root, exc, "realtime.py")
        findings.append(finding("SLU852", f"calling {classes[0].__name__} raised {text}", file=file, line=line))
        return
    keys = [k for k in ("embedding", *names) if isinstance(result, dict) and k in result]
    if not keys:
        got = sorted(result) if isinstance(result, dict) else type(result).__name__
        findings.append(finding("SLU852", f"{classes[0].__name__} returned {got}", file="realtime.py"))
        return
    vector = result[keys[0]]
    expected = names.get(keys[0]) or (next(iter(names.values())) if len(names) == 1 else None)
    if expected is not None and hasattr(vector, "__len__") and len(vector) != expected:
        findings.append(finding(
            "SLU852", f"{classes[0].__name__} returned a {len(vector)}-dimensional {keys[0]!r}, manifest declares {expected}",
            file="realtime.py",
        ))


def validate_plugin(
    root: Path, *, name: str, version: str, namespace: str = "local", plugin_id: str = "dry-run",
    parameters: dict[str, Any] | None = None, container: Any = None, strict: bool = False,
    workdir: Path | None = None,
) -> ValidationReport:
    """Import, check and dry-run the plugin at `root` in THIS process. Never raises for a plugin's
    fault: every problem is a finding."""
    from engine.assets import allow_asset_root
    from engine.plugins import loader
    from engine.plugins.extractors.pipeline import PluginContractError, StepFailed, coerce_steps, run_steps
    from engine.plugins.frame import add_input_aliases, can_sample, sample_frame
    from engine.plugins.request import ExtractorConfig, ExtractorRequest

    report = ValidationReport(passed=False)
    findings = report.findings  # the same list: every append below lands in the report
    try:
        manifest_module = loader.import_module(root, "manifest")
    except BaseException as exc:  # noqa: BLE001 - SystemExit from plugin code is a finding too
        file, line, text = _where(root, exc, "manifest.py")
        findings.append(manifest_finding("SLU800", f"importing manifest.py raised {text}", file=file, line=line))
        return report
    manifest, manifest_findings = validate_manifest(manifest_module, expected_name=name, expected_version=version)
    findings.extend(manifest_findings)
    if manifest is None:
        return report
    report.manifest = manifest
    report.feature_uris = [feature_uri(name, version, f.feature_name) for f in manifest.features]

    try:
        pipeline = loader.import_module(root, "pipeline")
    except BaseException as exc:  # noqa: BLE001
        file, line, text = _where(root, exc, "pipeline.py")
        findings.append(finding("SLU830", f"importing pipeline.py raised {text}", file=file, line=line))
        return report
    build_steps = getattr(pipeline, "build_steps", None)
    if not callable(build_steps):
        findings.append(finding("SLU831", "pipeline.py has no build_steps function"))
        return report
    try:
        inspect.signature(build_steps).bind(None, container=None, base_steps=None)
    except TypeError as exc:
        findings.append(
            finding("SLU831", f"build_steps cannot be called as build_steps(extractor_request, container=..., base_steps=...): {exc}")
        )
        return report

    request = ExtractorRequest(
        namespace=namespace, feature_extractor_id=plugin_id, dry_run=True,
        extractor_config=ExtractorConfig(
            feature_extractor_name=name, version=version, parameters={**manifest.parameter_defaults, **(parameters or {})}
        ),
    )
    try:
        built = build_steps(request, container=container, base_steps=None)
        steps = coerce_steps(built)
    except PluginContractError as exc:
        findings.append(finding("SLU833", str(exc)))
        return report
    except BaseException as exc:  # noqa: BLE001
        file, line, text = _where(root, exc, "pipeline.py")
        findings.append(finding("SLU832", f"build_steps raised {text}", file=file, line=line))
        return report
    if not steps:
        findings.append(finding("SLU834", "build_steps returned an empty steps list"))
        return report
    report.step_gpus = max(float(s.num_gpus or 0) for s in steps)

    workdir = workdir or Path(tempfile.mkdtemp(prefix="sluice-dry-run-"))
    allow_asset_root(workdir)
    for input_type in manifest.supported_input_types:
        if not can_sample(input_type):
            findings.append(finding("SLU845", f"no {input_type} sample: the dry run skipped {input_type} input"))
            continue
        batch = add_input_aliases(sample_frame(input_type, workdir / input_type, feature_extractor_id=plugin_id), manifest.input_fields)
        started = time.perf_counter()
        try:
            out = run_steps(steps, batch)
        except StepFailed as exc:
            cause = exc.__cause__ or exc
            file, line, _ = _where(root, cause, "pipeline.py")
            missing = _namespace_model(cause)
            if missing is not None:
                findings.append(
                    finding(
                        "SLU848",
                        f"{input_type} sample: namespace model {missing!r} is not deployed (or no registry is reachable); "
                        "this step's output was not checked",
                        file=file,
                        line=line,
                    )
                )
                continue
            findings.append(finding("SLU840", f"{input_type} sample: {exc}", file=file, line=line))
            continue
        except BaseException as exc:  # noqa: BLE001
            file, line, text = _where(root, exc, "pipeline.py")
            findings.append(finding("SLU840", f"{input_type} sample: {text}", file=file, line=line))
            continue
        report.dry_runs.append(DryRun(
            input_type=input_type, rows_in=len(batch), rows_out=len(out), columns=[str(c) for c in out.columns],
            seconds=round(time.perf_counter() - started, 3),
        ))
        if len(out) == 0:
            findings.append(finding("SLU844", f"{input_type} sample: {len(batch)} rows in, 0 out"))
            continue
        _check_vectors(manifest.features, out, input_type, findings)

    if (root / "realtime.py").is_file():
        report.has_realtime = True
        try:
            realtime = loader.import_module(root, "realtime")
        except BaseException as exc:  # noqa: BLE001
            file, line, text = _where(root, exc, "realtime.py")
            findings.append(finding("SLU850", f"importing realtime.py raised {text}", file=file, line=line))
        else:
            _realtime_check(realtime, manifest, findings, root)
    report.passed = not any(f.severity == "error" or strict for f in findings)
    return report


# --- in a plugin host ----------------------------------------------------------------------------

async def validate_isolated(
    root: Path, *, name: str, version: str, namespace: str, plugin_id: str, timeout_s: float,
    strict: bool = False, context: dict[str, Any] | None = None, options: Any = None,
    network_allow: tuple[str, ...] = (),
) -> ValidationReport:
    """`validate_plugin` in a plugin host (confined, this namespace only; see `engine.sandbox`).
    The host's report is the plugin's word: it is re-validated here, and the sandbox's refusals
    are added as findings (SLU880) with the plugin file and line."""
    return await asyncio.to_thread(_validate_in_host, root, name=name, version=version, namespace=namespace,
                                   plugin_id=plugin_id, timeout_s=timeout_s, strict=strict, context=context or {},
                                   options=options, network_allow=network_allow)


def _validate_in_host(root: Path, *, name: str, version: str, namespace: str, plugin_id: str, timeout_s: float,
                      strict: bool, context: dict[str, Any], options: Any, network_allow: tuple[str, ...]) -> ValidationReport:
    from engine.sandbox.client import SandboxOptions
    from engine.sandbox.errors import PluginHostError
    from engine.sandbox.spare import SPARE_HOSTS, SpareKey

    options = options or SandboxOptions()
    key = SpareKey.of(namespace, options, context, network_allow)
    spare = SPARE_HOSTS.take(key, root)
    host = spare.host if spare is not None else None
    answer: dict[str, Any] = {}
    try:
        if host is None:
            host = SPARE_HOSTS.open(key, root, run={"plugin_id": plugin_id, "name": name, "version": version, "parameters": {}},
                                    label=f"{name} {version}")
        else:
            host.plugin = f"{name} {version}"
        answer, _ = host.call("validate", {"strict": strict, "name": name, "version": version, "plugin_id": plugin_id},
                              timeout_s=timeout_s)
    except PluginHostError as exc:
        if exc.kind == "timeout":
            return ValidationReport(passed=False, findings=[finding("SLU860", f"validation did not finish within {timeout_s:g} s")])
        return ValidationReport(passed=False, findings=[finding("SLU861", str(exc)[-2000:])])
    finally:
        violations = host.drain_violations() if host is not None else []
        if host is not None:
            host.close()
        if spare is not None:
            spare.release()
        SPARE_HOSTS.replenish(key, (answer.get("warm") or {}) if answer.get("ok") else {})
    if not answer.get("ok"):
        error = answer.get("error") or {}
        return ValidationReport(passed=False, findings=[finding("SLU861", str(error.get("message", answer))[-2000:])])
    report = ValidationReport.model_validate(answer["report"])
    report.findings.extend(violation_findings(violations))
    report.passed = report.passed and not any(f.severity == "error" for f in report.findings)
    return report


def violation_findings(violations: list[dict[str, Any]]) -> list[Finding]:
    """One SLU880 finding per distinct refused action (the plugin file and line when known)."""
    seen, out = set(), []
    for v in violations:
        key = (v.get("action"), v.get("target"), v.get("file"), v.get("line"))
        if key in seen:
            continue
        seen.add(key)
        out.append(finding("SLU880", str(v.get("message") or v)[:1000], file=str(v.get("file") or "pipeline.py"),
                           line=int(v.get("line") or 0)))
    return out
