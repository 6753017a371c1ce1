"""Validate an uploaded model archive before the model registry accepts it.

Threat model. Anyone allowed to upload a model controls every byte of the archive, and the weights
end up loaded inside workers that hold data and credentials. Nothing in an upload may ever run, and
nothing in it may write, or make us read, outside the folder it is unpacked into. The checks:

* `engine.models.archive`: the .tar.gz itself (traversal, links, collisions, resource exhaustion),
  checked member by member before anything is written;
* `engine.models.formats.pytorch`: pickles are scanned statically (`engine.models.pickle_scan`)
  before `torch.load(weights_only=True)`; TorchScript is refused;
* `engine.models.formats.safetensors`: headers checked in pure Python before the library opens them;
* `engine.models.formats.onnx`: every external data location checked before anything reads it;
* `engine.models.formats.huggingface`: config, weights, and no remote code;
* `engine.models.untrusted`: what they share (limits, findings, bounded reads, the destination).

`validate_model_archive` gathers every finding it can and raises `ModelRejected` with all of them,
leaving `dest` empty (or removed, if it created it): nothing half-extracted survives a refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.models.archive import RULES as ARCHIVE_RULES
from engine.models.archive import extract_archive
from engine.models.formats.huggingface import RULES as HUGGINGFACE_RULES
from engine.models.formats.huggingface import check_huggingface
from engine.models.formats.onnx import RULES as ONNX_RULES
from engine.models.formats.onnx import check_onnx, check_onnx_file
from engine.models.formats.pytorch import RULES as PYTORCH_RULES
from engine.models.formats.pytorch import check_pytorch, check_torch_file, find_state_dict
from engine.models.formats.safetensors import RULES as SAFETENSORS_RULES
from engine.models.formats.safetensors import check_safetensors, check_safetensors_file
from engine.models.pickle_scan import RULES as PICKLE_RULES
from engine.models.untrusted import (
    FormatResult,
    ModelFinding,
    ModelFolder,
    ModelLimits,
    ModelRejected,
    capped,
    cleared_on_failure,
    model_folder,
    sha256_file,
    show,
)

__all__ = [
    "MODEL_FORMATS",
    "ModelFinding",
    "ModelLimits",
    "ModelRejected",
    "ValidatedModel",
    "check_onnx_file",
    "check_safetensors_file",
    "check_torch_file",
    "extract_archive",
    "validate_model_archive",
]


@dataclass
class ValidatedModel:
    root: Path  # the model folder: dest, or dest/<top> when one folder wraps everything
    model_format: str  # pytorch | safetensors | onnx | huggingface
    files: list[str]  # posix paths relative to root, sorted
    total_bytes: int
    sha256: str  # of the archive bytes
    details: dict[str, Any] = field(default_factory=dict)


MODEL_FORMATS = ("pytorch", "safetensors", "onnx", "huggingface")
_find_state_dict = find_state_dict  # its name when it lived here (engine.models.registry imported it)

_CHECKS: dict[str, Callable[[ModelFolder], FormatResult]] = {
    "pytorch": check_pytorch,
    "safetensors": check_safetensors,
    "onnx": check_onnx,
    "huggingface": check_huggingface,
}

# rule_id -> title. 1xx archive, 2xx model layout, 3xx pickle content (engine.models.pickle_scan),
# 31x torch files, 4xx safetensors, 5xx ONNX, 6xx Hugging Face.
RULES: dict[str, str] = {
    **ARCHIVE_RULES,
    "MDL200": "unknown model format",
    "MDL201": "no weights file for the format",
    **PICKLE_RULES,
    **PYTORCH_RULES,
    **SAFETENSORS_RULES,
    **ONNX_RULES,
    **HUGGINGFACE_RULES,
    "MDL999": "too many findings",
}


def validate_model_archive(
    archive: Path, dest: Path, model_format: str, limits: ModelLimits = ModelLimits()
) -> ValidatedModel:
    """Extract the archive into `dest` and check it holds a model of `model_format`. Raises
    ModelRejected with every finding (dest left empty, or removed if it did not exist)."""
    archive, dest = Path(archive), Path(dest)
    if model_format not in _CHECKS:
        message = f"unknown model format '{show(str(model_format))}'; accepted: {', '.join(MODEL_FORMATS)}"
        raise ModelRejected([ModelFinding("MDL200", "", message)])
    existed = dest.exists()
    archive_files = extract_archive(archive, dest, limits)
    with cleared_on_failure(dest, remove=not existed):
        folder = model_folder(dest, archive_files)
        findings, details = _CHECKS[model_format](folder)
        if findings:
            raise ModelRejected(capped(findings))
        total = sum((folder.root / f).stat().st_size for f in folder.files)
        return ValidatedModel(folder.root, model_format, sorted(folder.files), total, sha256_file(archive), details)
