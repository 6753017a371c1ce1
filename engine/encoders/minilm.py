"""all-MiniLM-L6-v2 sentence embeddings, fast: ONNX Runtime on CPU, ORT CUDA or torch on a GPU.

The numbers are sentence-transformers' own for this model: the BERT encoder's last hidden state,
mean-pooled over the attention mask, then L2-normalised; inputs are truncated at 256 word pieces
(`sentence_bert_config.json`). The fp32 ONNX path agrees with
`SentenceTransformer(...).encode(..., normalize_embeddings=True)` to a cosine of 0.9999 or better.

CPU path
    The Hugging Face `BertModel` from `resolve_model_dir(MODEL_ID)` is exported once with
    `torch.onnx.export` (the TorchScript exporter, `dynamo=False`: the dynamo exporter needs
    onnxscript, which Sluice does not install), with mean pooling inside the graph and dynamic
    batch and sequence axes. The file is verified against torch on a padded batch of another shape
    before it is published, and cached under `cache_dir` (default `$SLUICE_DATA_DIR/models/onnx`,
    else `~/.cache/sluice/onnx`) under a name holding the model folder's sha256 and the opset.
    Every file lands by `os.replace` from a temporary file in the same folder, so concurrent
    workers never read half a file; two workers exporting at once both write complete files and
    the last rename wins.

fusions
    On CPU the fp32 graph runs after `onnxruntime.transformers.optimizer.optimize_model` (bert,
    12 heads, hidden 384): Attention, EmbedLayerNormalization, SkipLayerNormalization and BiasGelu,
    saved offline (FUSED_RECIPE) and verified against the unfused export.

int8
    `onnxruntime.quantization.quantize_dynamic` of the fused graph with QInt8 per-channel weights,
    on the 13 of its 24 weight nodes in INT8_NODES only (chosen by per-node sensitivity on the
    calibration set; the other 11 lose too much to 8-bit activation scales).
    `precision="auto"` takes int8 only if, on `CALIBRATION_SENTENCES`, every
    sentence's int8 embedding has a cosine of at least `QUALITY_THRESHOLD` with its fp32 one; the
    measurement is cached beside the model, keyed by the model, the recipe, the calibration set,
    the onnxruntime version and the CPU's vector extensions (int8 kernels differ between CPUs).

GPU path
    With a CUDA device: ORT's CUDAExecutionProvider when this onnxruntime has it (fp32), else torch
    via transformers, with fp16 autocast only when it passes the same calibration check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.env import engine_env
from events.errors import InvalidInput, PermanentError

logger = logging.getLogger(__name__)

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
OPSET = 17
EXPORT_RECIPE = "meanpool-v1"
"""What the exported graph computes; part of the file name, so a change here re-exports."""
FUSED_RECIPE = "ortfused-bert-h12-d384-v1"
"""ONNX Runtime transformer fusions (Attention, EmbedLayerNormalization, SkipLayerNormalization,
BiasGelu) applied offline to the fp32 export; part of the file name."""
INT8_RECIPE = "fused-qint8-pc-sel13-v2"
"""How int8 is made (see the module docstring); part of the file name."""
INT8_NODES: tuple[str, ...] = (
    *(f"/bert/encoder/layer.{i}/attention/output/dense/MatMul" for i in range(6)),
    "Attention_0", "Attention_1", "Attention_2",
    "/bert/encoder/layer.4/output/dense/MatMul", "/bert/encoder/layer.5/output/dense/MatMul",
    "/bert/encoder/layer.0/intermediate/dense/MatMul", "/bert/encoder/layer.5/intermediate/dense/MatMul",
)
"""The fused graph's nodes the int8 recipe quantises: chosen greedily, least sensitive first, each
kept only while the calibration set's min cosine to fp32 stayed >= 0.993 (measured on AVX-512 VNNI,
onnxruntime 1.32: min 0.9943, mean 0.9986). The other 11 (Attention_3-5, most FFN layers) stay fp32."""
QUALITY_THRESHOLD = 0.99
"""The smallest per-sentence cosine with fp32 that a cheaper precision must reach to be chosen."""
PRECISIONS = ("auto", "fp32", "int8")
MAX_POSITIONS = 512

EXPORT_STATS: dict[str, int] = {"fp32_exports": 0, "fused_exports": 0, "int8_exports": 0, "calibrations": 0}
"""What this process has actually built (not read from the cache); tests and benchmarks read it."""

CALIBRATION_SENTENCES: tuple[str, ...] = (
    # short
    "Hello.",
    "Thanks!",
    "Yes, of course.",
    "Where is the station?",
    "It rained all day.",
    "Good morning, everyone.",
    "The cat sleeps.",
    "Call me later.",
    "No comment.",
    "Open the window, please.",
    # everyday
    "The children walked to school along the river while their parents drove to work.",
    "She baked a loaf of sourdough bread and shared it with her neighbours on Sunday.",
    "We missed the last train home and had to share a taxi with two strangers.",
    "The library closes early on public holidays, so plan your visit accordingly.",
    "He apologised for being late and blamed the traffic on the bridge.",
    "Our garden is full of tomatoes this summer, more than we can possibly eat.",
    "The museum's new exhibition explores the history of maps and navigation.",
    "After the storm, volunteers cleared fallen branches from the park paths.",
    "My grandmother still writes letters by hand and sends them by post.",
    "The restaurant was noisy, but the food was excellent and reasonably priced.",
    "A kitten rests on a rug near the fireplace.",
    "The orchestra tuned their instruments before the conductor walked on stage.",
    # technical
    "The kernel schedules threads across cores using a completely fair scheduler.",
    "Gradient descent updates the weights in the direction that reduces the loss.",
    "The HTTP server returns a 404 status code when the requested resource does not exist.",
    "A B-tree keeps keys sorted and allows searches, insertions and deletions in logarithmic time.",
    "Use a mutex to protect the shared counter from concurrent increments.",
    "The transformer encoder applies multi-head self-attention followed by a feed-forward network.",
    "TLS 1.3 removes static RSA key exchange and mandates forward secrecy.",
    "Kafka partitions a topic so that consumers in a group can read it in parallel.",
    "The garbage collector pauses the application briefly to reclaim unreachable objects.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 10;",
    "The enzyme catalyses the hydrolysis of ATP into ADP and inorganic phosphate.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The court held that the contract was void because one party lacked capacity.",
    "Quantum entanglement links the states of two particles regardless of distance.",
    "The patient presented with acute abdominal pain and elevated white blood cell count.",
    "Vectors are compared with cosine similarity after L2 normalisation.",
    "Set the environment variable CUDA_VISIBLE_DEVICES=0 before starting the worker.",
    # numeric
    "The invoice total is $1,249.99, due on 2024-03-31.",
    "Revenue grew 17.5% year over year to 4.2 billion euros in Q3 2023.",
    "The flight departs at 06:45 from gate B12 and lands at 09:10 local time.",
    "Room 404 holds 35 people; rooms 405 and 406 hold 20 each.",
    "Pi is approximately 3.14159, and e is approximately 2.71828.",
    "The population of the city rose from 812,000 in 1990 to 1.3 million in 2020.",
    "Mix 250 g of flour with 2 eggs, 300 ml of milk and a pinch of salt.",
    "The server handled 12,500 requests per second with a p99 latency of 38 ms.",
    "Call +44 20 7946 0958 or write to 221B Baker Street, London NW1 6XE.",
    "Version 2.13.0 fixes 47 bugs and adds 3 new APIs.",
    "1, 2, 3, 5, 8, 13, 21, 34, 55, 89",
    "The temperature dropped to -12 degrees Celsius overnight.",
    "Quarterly tax filing deadline: 15 April, 15 June, 15 September and 15 January.",
    # long
    (
        "In the early years of the railway, timetables varied from town to town because each kept its own "
        "local solar time, and it was only when the companies agreed on a single standard time that passengers "
        "could reliably plan journeys that crossed several regions in a single day."
    ),
    (
        "The committee reviewed the proposal in detail, noting that while the projected savings were "
        "substantial, the implementation plan underestimated the cost of training staff, migrating legacy "
        "records and maintaining two systems in parallel during the transition period."
    ),
    (
        "To reproduce the bug, start the service with an empty cache, send two concurrent requests for the "
        "same key, and observe that both requests miss the cache, both compute the value, and the second write "
        "silently overwrites the first one with a stale timestamp."
    ),
    (
        "Coral reefs occupy less than one percent of the ocean floor yet support roughly a quarter of all "
        "marine species, which is why rising sea temperatures and acidification threaten far more than the "
        "reefs themselves."
    ),
    (
        "The novel follows three generations of a fishing family on a remote island, tracing how each of "
        "them responds to the slow disappearance of the cod, the arrival of tourists and the departure of the "
        "young for jobs on the mainland."
    ),
    (
        "Before submitting the form, applicants must attach a copy of their passport, proof of address issued "
        "within the last three months, two recent photographs and a signed declaration that the information "
        "provided is complete and accurate."
    ),
    (
        "Licensed under the Apache License, Version 2.0; you may not use this file except in compliance with "
        "the License, and unless required by applicable law or agreed to in writing, software distributed "
        "under the License is distributed on an AS IS basis, without warranties or conditions of any kind."
    ),
    # questions, lists, odd forms
    "How do I reset my password if I no longer have access to my email account?",
    "What is the difference between a virus and a bacterium?",
    "Why does the sky appear blue during the day and red at sunset?",
    "Milk, eggs, butter, flour, sugar, vanilla.",
    "WARNING: Do not operate heavy machinery after taking this medication.",
    "lol that was sooo funny, see u tmrw",
    "Re: Meeting moved to Thursday (see attached agenda)",
    "The the the the the.",
    "Colourless green ideas sleep furiously.",
    "Bonjour, je m'appelle Marie et j'habite à Paris.",
    "The quick brown fox jumps over the lazy dog.",
)


class EncoderError(PermanentError):
    """The encoder could not be built (a failed export, a missing package)."""

    error_type = "encoder_error"


# --- files ---------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """`$SLUICE_DATA_DIR/models/onnx` when that variable is set, else `~/.cache/sluice/onnx`."""
    data_dir = engine_env().data_dir.strip()
    if data_dir:
        return Path(data_dir).expanduser() / "models" / "onnx"
    return Path.home() / ".cache" / "sluice" / "onnx"


_fingerprints: dict[tuple[Any, ...], str] = {}
_file_locks: dict[str, threading.Lock] = {}
_file_locks_guard = threading.Lock()


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over every regular file of the model folder (relative path and content), computed
    once per process for an unchanged folder."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    signature = (
        str(model_dir.resolve()),
        tuple((p.relative_to(model_dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files),
    )
    cached = _fingerprints.get(signature)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            hashlib.file_digest(handle, lambda: digest)  # feeds the running digest: one sha256 over every file
        digest.update(b"\0")
    _fingerprints[signature] = digest.hexdigest()
    return _fingerprints[signature]


def _lock_for(path: Path) -> threading.Lock:
    """One lock per target file, so threads of one process build a file once."""
    with _file_locks_guard:
        return _file_locks.setdefault(str(path), threading.Lock())


def _atomic_write(target: Path, produce: Callable[[Path], object]) -> None:
    """`produce(tmp)` writes a temporary file beside `target`, which then replaces `target` in one
    rename: a reader sees no file or the whole file, never half of one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".tmp-{target.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        produce(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; workers under other users share the cache
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json_atomic(target: Path, value: dict[str, Any]) -> None:
    _atomic_write(target, lambda tmp: tmp.write_text(json.dumps(value, indent=2, sort_keys=True)))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def model_stem(model_dir: Path, opset: int = OPSET) -> str:
    return f"all-MiniLM-L6-v2-{model_fingerprint(model_dir)[:16]}-opset{opset}-{EXPORT_RECIPE}"


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401  - torch's exporter and the quantiser both need it
    except ImportError as exc:
        raise EncoderError(
            "the ONNX encoder needs the `onnx` package (torch.onnx.export and onnxruntime.quantization use it); "
            "install it with `pip install onnx`"
        ) from exc


# --- export ------------------------------------------------------------------------------------

def export_onnx(model_dir: Path, cache_dir: Path, *, opset: int = OPSET) -> Path:
    """The fp32 ONNX file of the model at `model_dir` (BERT encoder plus mean pooling; inputs
    input_ids, attention_mask, token_type_ids; output sentence_embedding, not normalised), exported
    on first use and read from `cache_dir` afterwards."""
    target = Path(cache_dir) / f"{model_stem(model_dir, opset)}.fp32.onnx"
    with _lock_for(target):
        if target.is_file():
            return target
        _require_onnx()
        started = time.perf_counter()
        _atomic_write(target, lambda tmp: _export_to(Path(model_dir), tmp, opset))
        EXPORT_STATS["fp32_exports"] += 1
        logger.info("exported %s to ONNX in %.1f s: %s", MODEL_ID, time.perf_counter() - started, target)
    return target


def _example_batch(seq: int, lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (arbitrary word pieces between [CLS] and [SEP]) and a right-padded mask."""
    rng = np.random.default_rng(seq)
    ids = np.zeros((len(lengths), seq), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1000, 29000, size=n)
        ids[row, 0], ids[row, n - 1] = 101, 102
        mask[row, :n] = 1
    return ids, mask


def _export_to(model_dir: Path, path: Path, opset: int) -> None:
    import torch
    from transformers import AutoModel

    class MeanPooled(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    bert = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    model = MeanPooled(bert).eval()
    # Traced on a padded batch, so no "every row is full length" shortcut is baked into the graph.
    ids, mask = _example_batch(16, [16, 9])
    inputs = (torch.from_numpy(ids), torch.from_numpy(mask), torch.zeros_like(torch.from_numpy(ids)))
    axes = {"batch": 0, "sequence": 1}
    options: dict[str, Any] = dict(
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["sentence_embedding"],
        dynamic_axes={
            **{name: {axes["batch"]: "batch", axes["sequence"]: "sequence"} for name in ("input_ids", "attention_mask", "token_type_ids")},
            "sentence_embedding": {0: "batch"},
        },
        opset_version=opset,
        do_constant_folding=True,
    )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python control flow in transformers' masking code
        try:
            torch.onnx.export(model, inputs, str(path), dynamo=False, **options)
        except TypeError as exc:  # a torch older than the `dynamo` argument
            if "dynamo" not in str(exc):
                raise
            torch.onnx.export(model, inputs, str(path), **options)
    _verify_export(model, path)


def _verify_export(model: Any, path: Path) -> None:
    """The exported graph must agree with torch on a batch of another shape and padding than the
    one it was traced with; a broken trace never reaches the cache."""
    import onnxruntime as ort
    import torch

    ids, mask = _example_batch(23, [23, 5, 14])
    with torch.no_grad():
        expected = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.zeros_like(torch.from_numpy(ids))).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    cosine = (_normalise(got) * _normalise(expected)).sum(axis=1)
    if got.shape != expected.shape or float(cosine.min()) < 0.9999:
        raise EncoderError(
            f"the ONNX export of {MODEL_ID} disagrees with torch (shape {got.shape} vs {expected.shape}, "
            f"min cosine {float(cosine.min()):.6f}); the export was discarded"
        )


# --- fusions ------------------------------------------------------------------------------------

def fuse_fp32(fp32_path: Path) -> Path:
    """The fused fp32 file beside `fp32_path` (see FUSED_RECIPE), made on first use and verified
    against the unfused graph (min cosine 0.9999 on padded batches) before it is published."""
    fp32_path = Path(fp32_path)
    target = fp32_path.with_name(fp32_path.name.replace(".fp32.onnx", f".fp32-{FUSED_RECIPE}.onnx"))
    with _lock_for(target):
        if target.is_file():
            return target
        _require_onnx()
        from onnxruntime.transformers.optimizer import optimize_model

        def produce(tmp: Path) -> None:
            optimized = optimize_model(
                str(fp32_path), model_type="bert", num_heads=12, hidden_size=EMBEDDING_DIM, opt_level=1, use_gpu=False
            )
            optimized.save_model_to_file(str(tmp))
            _verify_same(fp32_path, tmp)

        started = time.perf_counter()
        _atomic_write(target, produce)
        EXPORT_STATS["fused_exports"] += 1
        logger.info("fused %s in %.1f s: %s", MODEL_ID, time.perf_counter() - started, target)
    return target


def _verify_same(reference: Path, candidate: Path, floor: float = 0.9999) -> None:
    import onnxruntime as ort

    ids, mask = _example_batch(23, [23, 5, 14])
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    outputs = []
    for path in (reference, candidate):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        outputs.append(session.run(None, {k: v for k, v in feed.items() if k in names})[0])
    cosine = (_normalise(outputs[0]) * _normalise(outputs[1])).sum(axis=1)
    if float(cosine.min()) < floor:
        raise EncoderError(f"the fused graph of {MODEL_ID} disagrees with the export (min cosine {float(cosine.min()):.6f}); discarded")


# --- int8 --------------------------------------------------------------------------------------

def quantize_int8(fp32_path: Path) -> Path:
    """The int8 file beside `fp32_path` (see INT8_RECIPE: INT8_NODES of the fused graph), made on first use."""
    fp32_path = Path(fp32_path)
    target = fp32_path.with_name(fp32_path.name.replace(".fp32.onnx", f".{INT8_RECIPE}.onnx"))
    fused_path = fuse_fp32(fp32_path)
    with _lock_for(target):
        if target.is_file():
            return target
        _require_onnx()
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        present = {node.name for node in onnx.load(str(fused_path), load_external_data=False).graph.node}
        missing = sorted(set(INT8_NODES) - present)
        if missing:
            raise EncoderError(f"the fused graph lacks the nodes the int8 recipe quantises: {', '.join(missing)}")

        def produce(tmp: Path) -> None:
            quantize_dynamic(
                str(fused_path), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                op_types_to_quantize=["MatMul", "Attention"], nodes_to_quantize=list(INT8_NODES),
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )

        started = time.perf_counter()
        _atomic_write(target, produce)
        EXPORT_STATS["int8_exports"] += 1
        logger.info("quantised %s to int8 in %.1f s: %s", MODEL_ID, time.perf_counter() - started, target)
    return target


def cpu_fingerprint() -> str:
    """The CPU features int8 kernels depend on (VNNI, AVX-512, AMX...), for the decision's key."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    relevant = sorted(f for f in flags if re.match(r"^(avx|amx|sse4|fma|f16c|asimd|sve|i8mm|dotprod)", f))
    return f"{platform.machine()}:{','.join(relevant)}"


def calibration_digest() -> str:
    return hashlib.sha256("\n".join(CALIBRATION_SENTENCES).encode()).hexdigest()[:16]


# --- running -------------------------------------------------------------------------------------

def worker_cpus() -> int:
    """The CPUs this worker may use: what Ray assigned to this actor or task when it runs in one,
    else the CPUs this process may run on (`os.cpu_count()` where affinity is unknown)."""
    ray = sys.modules.get("ray")
    if ray is not None:
        try:
            if ray.is_initialized():
                assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
                if assigned:
                    return max(1, math.ceil(float(assigned)))
        except Exception:  # noqa: BLE001 - outside a worker, or an older Ray: fall through
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class _OrtRunner:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs = {i.name for i in session.get_inputs()}

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]


class _TorchRunner:
    """The BERT encoder in torch, mean-pooled in fp32; `autocast` runs the encoder in fp16."""

    def __init__(self, model: Any, device: str, autocast: bool = False) -> None:
        self.model = model
        self.device = device
        self.autocast = autocast

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            input_ids = torch.from_numpy(ids).to(self.device)
            attention = torch.from_numpy(mask).to(self.device)
            with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.float16, enabled=self.autocast):
                hidden = self.model(
                    input_ids=input_ids, attention_mask=attention, token_type_ids=torch.zeros_like(input_ids)
                ).last_hidden_state
            hidden = hidden.float()
            weights = attention.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return pooled.cpu().numpy()


def _resolve_device(device: str | None) -> str:
    """"cpu" or a usable "cuda[:n]"; other devices (mps) run the CPU path."""
    if device is not None and device.strip().lower() == "cpu":
        return "cpu"
    from engine.models import select_device

    chosen = select_device(device)
    return chosen if chosen.startswith("cuda") else "cpu"


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: `encode(texts) -> float32 array (n, 384)`, L2-normalised.

    `precision`: "fp32"; "int8" (CPU only: forced, still measured); "auto" (int8 when it passes the
    calibration check, else fp32; on a GPU, fp16 likewise). `device`: None picks with
    `select_device()`. `cache_dir`: where ONNX files and decisions are kept. `max_length`: word
    pieces per text, special tokens included. `threads`: ONNX Runtime intra-op threads (default:
    the CPUs Ray gave this worker, else the CPUs this process may use).

    After construction `quality` holds the choice and its measurement:
    `{"precision", "min_cosine", "mean_cosine", "candidate", "threshold", "passed", ...}` where the
    cosines are the candidate's (int8, or fp16 on a GPU) against fp32 on CALIBRATION_SENTENCES,
    and 1.0 when fp32 was asked for and nothing was measured. `backend` says what runs:
    "onnxruntime-cpu", "onnxruntime-cuda" or "torch-cuda".
    """

    dim = EMBEDDING_DIM

    def __init__(
        self, precision: str = "auto", device: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
        max_length: int = 256, *, threads: int | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", details={"precision": precision})
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 2 <= max_length <= MAX_POSITIONS:
            raise InvalidInput(
                f"max_length must be an integer from 2 to {MAX_POSITIONS}, got {max_length!r}", details={"max_length": max_length}
            )
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InvalidInput(f"threads must be a positive integer, got {threads!r}", details={"threads": threads})
        from engine.models import resolve_model_dir

        self.requested_precision = precision
        self.model_dir = resolve_model_dir(MODEL_ID)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.max_length = max_length
        self.threads = threads or worker_cpus()
        self.device = _resolve_device(device)
        self.model_path: Path | None = None
        self.quality: dict[str, Any] = {}
        self.backend = ""
        self._tokenizer, self._pad_id = self._load_tokenizer()
        self._run: Callable[[np.ndarray, np.ndarray], np.ndarray]
        if self.device.startswith("cuda"):
            self._init_gpu(precision)
        else:
            self._init_cpu(precision)

    def __repr__(self) -> str:
        return f"MiniLMEncoder(precision={self.quality.get('precision')!r}, backend={self.backend!r}, threads={self.threads})"

    # -- public --

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings of `texts`, in order: float32 (len(texts), 384), each row of length 1."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode takes a list of strings; wrap a single text in a list")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput(f"batch_size must be a positive integer, got {batch_size!r}", details={"batch_size": batch_size})
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str")
        return _normalise(self._pooled(self._run, texts, batch_size))

    # -- internals --

    def _load_tokenizer(self) -> tuple[Any, int]:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tokenizer.no_padding()  # the file pads to 128: batches are padded to their longest text instead
        tokenizer.enable_truncation(max_length=self.max_length)
        pad_id = tokenizer.token_to_id("[PAD]")
        return tokenizer, 0 if pad_id is None else pad_id

    def _pooled(self, run: Callable[[np.ndarray, np.ndarray], np.ndarray], texts: list[str], batch_size: int) -> np.ndarray:
        """Mean-pooled, unnormalised vectors. Texts go through longest first, in batches padded to
        their longest member, so short texts do not pay for long ones."""
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            width = int(lengths[rows].max())
            ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, j in enumerate(rows):
                n = int(lengths[j])
                ids[r, :n] = encodings[j].ids
                mask[r, :n] = 1
            out[rows] = run(ids, mask)
        return out

    def _compare(self, reference: Callable, candidate: Callable) -> tuple[float, float]:
        texts = list(CALIBRATION_SENTENCES)
        ref = _normalise(self._pooled(reference, texts, 64))
        got = _normalise(self._pooled(candidate, texts, 64))
        cosine = (ref * got).sum(axis=1)
        return float(cosine.min()), float(cosine.mean())

    def _session(self, path: Path, providers: list[Any] | None = None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])

    def _fp32_quality(self, backend: str, **extra: Any) -> dict[str, Any]:
        return {
            "precision": "fp32", "candidate": None, "min_cosine": 1.0, "mean_cosine": 1.0, "threshold": QUALITY_THRESHOLD,
            "passed": None, "backend": backend, "fp32_recipe": FUSED_RECIPE if backend == "onnxruntime-cpu" else None, **extra,
        }

    def _init_cpu(self, precision: str) -> None:
        self.backend = "onnxruntime-cpu"
        fp32_path = fuse_fp32(export_onnx(self.model_dir, self.cache_dir))
        if precision == "fp32":
            self.model_path = fp32_path
            self._run = _OrtRunner(self._session(fp32_path))
            self.quality = self._fp32_quality(self.backend)
            return
        int8_path = quantize_int8(export_onnx(self.model_dir, self.cache_dir))
        import onnxruntime as ort

        key = {
            "int8_model": int8_path.name, "calibration": calibration_digest(), "threshold": QUALITY_THRESHOLD,
            "fp32_model": fp32_path.name, "onnxruntime": ort.__version__, "cpu": cpu_fingerprint(), "max_length": self.max_length,
        }
        key_digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        decision_path = int8_path.with_name(f"{int8_path.stem}.decision-{key_digest}.json")
        decision = _read_json(decision_path)
        cached = decision is not None and decision.get("key") == key
        runners: dict[str, _OrtRunner] = {}
        if not cached:
            runners["fp32"] = _OrtRunner(self._session(fp32_path))
            runners["int8"] = _OrtRunner(self._session(int8_path))
            started = time.perf_counter()
            low, mean = self._compare(runners["fp32"], runners["int8"])
            decision = {
                "key": key,
                "candidate": "int8",
                "min_cosine": low,
                "mean_cosine": mean,
                "passed": low >= QUALITY_THRESHOLD,
                "calibration_sentences": len(CALIBRATION_SENTENCES),
                "measured_seconds": round(time.perf_counter() - started, 3),
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            _write_json_atomic(decision_path, decision)
            EXPORT_STATS["calibrations"] += 1
        assert decision is not None
        chosen = "int8" if precision == "int8" or decision["passed"] else "fp32"
        path = int8_path if chosen == "int8" else fp32_path
        self.model_path = path
        self._run = runners.get(chosen) or _OrtRunner(self._session(path))
        self.quality = {
            "precision": chosen, "candidate": "int8", "min_cosine": decision["min_cosine"], "mean_cosine": decision["mean_cosine"],
            "threshold": QUALITY_THRESHOLD, "passed": decision["passed"], "forced": precision == "int8",
            "calibration_sentences": decision["calibration_sentences"], "backend": self.backend,
            "decision_file": str(decision_path), "decision_cached": cached, "fp32_recipe": FUSED_RECIPE, "int8_recipe": INT8_RECIPE,
        }
        logger.info(
            "MiniLM on CPU: %s (int8 vs fp32 on %d calibration sentences: min cosine %.4f, mean %.4f, threshold %.2f)",
            chosen, decision["calibration_sentences"], decision["min_cosine"], decision["mean_cosine"], QUALITY_THRESHOLD,
        )

    def _init_gpu(self, precision: str) -> None:
        import onnxruntime as ort

        if precision == "int8":
            logger.warning("int8 is a CPU path; on %s the encoder chooses between fp16 and fp32", self.device)
        index = int(self.device.partition(":")[2] or 0)
        if "CUDAExecutionProvider" in ort.get_available_providers():
            path = export_onnx(self.model_dir, self.cache_dir)
            session = self._session(path, providers=[("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"])
            if session.get_providers()[0] == "CUDAExecutionProvider":  # CUDA libraries missing: ORT fell back to CPU
                self.backend, self.model_path = "onnxruntime-cuda", path
                self._run = _OrtRunner(session)
                self.quality = self._fp32_quality(self.backend, requested=precision)
                return
            logger.warning("onnxruntime could not start its CUDA provider; using torch on %s", self.device)
        import torch
        from transformers import AutoModel

        self.backend = "torch-cuda"
        model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).to(self.device).eval()
        fp32 = _TorchRunner(model, self.device, autocast=False)
        if precision == "fp32":
            self._run = fp32
            self.quality = self._fp32_quality(self.backend, requested=precision)
            return
        fp16 = _TorchRunner(model, self.device, autocast=True)
        low, mean = self._compare(fp32, fp16)
        passed = low >= QUALITY_THRESHOLD
        self._run = fp16 if passed else fp32
        self.quality = {
            "precision": "fp16" if passed else "fp32", "candidate": "fp16", "min_cosine": low, "mean_cosine": mean,
            "threshold": QUALITY_THRESHOLD, "passed": passed, "forced": False, "requested": precision,
            "calibration_sentences": len(CALIBRATION_SENTENCES), "backend": self.backend,
            "torch": torch.__version__,
        }


# --- one per process -----------------------------------------------------------------------------

_shared: dict[tuple[Any, ...], MiniLMEncoder] = {}
_shared_lock = threading.Lock()


def shared_encoder(
    precision: str = "auto", device: str | None = None, cache_dir: str | os.PathLike[str] | None = None, max_length: int = 256,
) -> MiniLMEncoder:
    """One encoder per (precision, device, cache folder, max_length) in this process, built on
    first use: the batch step and the realtime service of a worker share it."""
    resolved = _resolve_device(device)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = (precision, resolved, str(folder.resolve()), max_length)
    with _shared_lock:
        encoder = _shared.get(key)
        if encoder is None:
            encoder = MiniLMEncoder(precision, device=resolved, cache_dir=folder, max_length=max_length)
            _shared[key] = encoder
    return encoder


def clear_shared_encoders() -> None:
    """Forget the encoders `shared_encoder` built (tests; a worker switching models)."""
    with _shared_lock:
        _shared.clear()
