"""Hugging Face model folders: a config.json, weights (safetensors or pytorch_model*.bin, each checked
as its own format, and every other pickle scanned too), and no code. Folders may carry Python code
(`auto_map`, `modeling_*.py`) that `transformers` runs with trust_remote_code; that code is refused,
never run."""

from __future__ import annotations

from pathlib import PurePosixPath

from engine.models.formats.pytorch import TORCH_SUFFIXES, check_torch_file
from engine.models.formats.safetensors import check_safetensors_file
from engine.models.untrusted import FormatResult, ModelFinding, ModelFolder, check_each, merge_tensor_details, missing, read_json_object

__all__ = ["RULES", "check_huggingface"]

RULES: dict[str, str] = {
    "MDL601": "Hugging Face config.json missing or invalid",
    "MDL602": "Hugging Face remote code (auto_map)",
    "MDL603": "code file in a Hugging Face folder",
}

CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyw", ".pyx", ".so")


def _hf_config(folder: ModelFolder) -> FormatResult:
    name = folder.archive_path("config.json")
    if "config.json" not in folder.files:
        message = "config.json is missing: a Hugging Face model folder needs one at its top"
        return [ModelFinding("MDL601", name, message)], {}
    config, why = read_json_object(folder.root / "config.json")
    if config is None:
        return [ModelFinding("MDL601", name, f"config.json {why}")], {}
    if not config.get("model_type") and not config.get("architectures"):
        return [ModelFinding("MDL601", name, "config.json names neither model_type nor architectures")], {}
    return [], {"model_type": config.get("model_type"), "architectures": config.get("architectures")}


def _hf_remote_code(folder: ModelFolder) -> list[ModelFinding]:
    """auto_map in any *config.json points transformers at Python files; code files are refused
    wherever they are."""
    found: list[ModelFinding] = []
    for rel in folder.with_suffix(".json"):
        if "/" in rel or not rel.lower().endswith("config.json"):
            continue
        config, _ = read_json_object(folder.root / rel)
        if config is not None and "auto_map" in config:
            message = f"{rel} has auto_map, which loads custom Python code (trust_remote_code is never used)"
            found.append(ModelFinding("MDL602", folder.archive_path(rel), message))
    for rel in folder.with_suffix(*CODE_SUFFIXES):
        message = "Hugging Face folders may not carry code (trust_remote_code is never used)"
        found.append(ModelFinding("MDL603", folder.archive_path(rel), message))
    return found


def check_huggingface(folder: ModelFolder) -> FormatResult:
    findings, details = _hf_config(folder)
    findings += _hf_remote_code(folder)
    safetensors = folder.with_suffix(".safetensors")
    pickles = folder.with_suffix(*TORCH_SUFFIXES)  # every pickle is scanned, weights or not
    torch_weights = [f for f in pickles if PurePosixPath(f).name.startswith("pytorch_model") and f.endswith(".bin")]
    if not safetensors and not torch_weights:
        findings.append(missing("Hugging Face weights (*.safetensors or pytorch_model*.bin)"))
    more, per_safetensors = check_each(folder, safetensors, check_safetensors_file)
    findings += more
    more, per_torch = check_each(folder, pickles, check_torch_file)
    findings += more
    weights = {**per_safetensors, **{k: v for k, v in per_torch.items() if k in torch_weights}}
    return findings, {**details, "weights": sorted(weights), **merge_tensor_details(weights)}
