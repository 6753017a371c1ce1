"""Throughput of the MiniLM encoders on this machine, measured in one run.

    .venv/bin/python bench/encoder.py [--sentences 2000] [--batch-size 64] [--repeats 3] [--cache-dir DIR]

Compares sentence-transformers (torch, CPU) with `engine.encoders.MiniLMEncoder` on ONNX Runtime
fp32 and int8, on real English sentences: the license texts under /usr/share/common-licenses
(Debian), split into sentences. Where that folder is missing, the encoder's calibration sentences
are repeated instead, and the output says so. Each figure is the best of `--repeats` timed passes
after one warm-up batch, the encoders' passes interleaved; the median is shown beside it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from engine.encoders.minilm import (
    CALIBRATION_SENTENCES,
    EXPORT_STATS,
    FUSED_RECIPE,
    INT8_RECIPE,
    MODEL_ID,
    QUALITY_THRESHOLD,
    MiniLMEncoder,
    _normalise,
    _OrtRunner,
    export_onnx,
    worker_cpus,
)

LICENSES = Path("/usr/share/common-licenses")


def license_sentences(limit: int) -> tuple[list[str], str]:
    """Up to `limit` sentences of the license texts (each file once, links followed), or the
    calibration sentences repeated when there are none. Returns the sentences and their source."""
    sentences: list[str] = []
    seen_files: set[Path] = set()
    if LICENSES.is_dir():
        for path in sorted(LICENSES.iterdir()):
            real = path.resolve()
            if real in seen_files or not real.is_file():
                continue
            seen_files.add(real)
            text = " ".join(real.read_text(encoding="utf-8", errors="replace").split())
            for sentence in re.split(r"(?<=[.!?;])\s+(?=[A-Z(\"'0-9])", text):
                sentence = sentence.strip()
                if len(sentence) >= 20 and len(sentence.split()) >= 4:
                    sentences.append(sentence)
    if sentences:
        source = f"{len(seen_files)} license files under {LICENSES} ({len(sentences)} sentences, {len(set(sentences))} distinct)"
        if len(sentences) < limit:
            source += f"; repeated to reach {limit}"
    else:
        sentences = list(CALIBRATION_SENTENCES)
        source = f"{LICENSES} is missing: the {len(sentences)} calibration sentences, repeated"
    while len(sentences) < limit:
        sentences = sentences + sentences
    return sentences[:limit], source


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def throughput(
    encoders: dict[str, Callable[[list[str]], Any]], texts: list[str], batch_size: int, repeats: int
) -> dict[str, tuple[float, float, np.ndarray]]:
    """name -> (best texts/s, median texts/s, embeddings). The passes are interleaved (one pass
    of each encoder per round), so a burst of load elsewhere on the machine hits them alike."""
    rates: dict[str, list[float]] = {name: [] for name in encoders}
    vectors: dict[str, np.ndarray] = {}
    for encode in encoders.values():
        encode(texts[:batch_size])  # warm-up: first-call allocations, thread pools
    for _ in range(repeats):
        for name, encode in encoders.items():
            started = time.perf_counter()
            vectors[name] = np.asarray(encode(texts), dtype=np.float32)
            rates[name].append(len(texts) / (time.perf_counter() - started))
    return {name: (max(r), statistics.median(r), vectors[name]) for name, r in rates.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=None, help="ONNX cache (default: a fresh temporary folder)")
    args = parser.parse_args(argv)

    import transformers

    transformers.utils.logging.disable_progress_bar()
    if args.cache_dir is not None:
        return run(args, args.cache_dir)
    with tempfile.TemporaryDirectory(prefix="sluice-bench-onnx-") as folder:
        return run(args, Path(folder))


def run(args: argparse.Namespace, cache_dir: Path) -> int:
    import onnxruntime
    import torch
    from sentence_transformers import SentenceTransformer

    from engine.models import resolve_model_dir

    texts, source = license_sentences(args.sentences)
    print(f"machine      : {cpu_name()}, {os.cpu_count()} CPUs ({worker_cpus()} usable); python {platform.python_version()}")
    print(f"versions     : torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}")
    print(f"texts        : {len(texts)} sentences from {source}")
    print(
        f"               mean {np.mean([len(t) for t in texts]):.0f} characters; batch size {args.batch_size}; "
        f"best of {args.repeats} passes"
    )
    print()

    started = time.perf_counter()
    fp32 = MiniLMEncoder(precision="fp32", cache_dir=cache_dir)
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    auto = MiniLMEncoder(precision="auto", cache_dir=cache_dir)
    auto_s = time.perf_counter() - started
    int8 = auto if auto.quality["precision"] == "int8" else MiniLMEncoder(precision="int8", cache_dir=cache_dir)
    print(
        f"setup        : fp32 export {export_s:.1f} s, int8 quantisation + calibration {auto_s:.1f} s "
        f"({EXPORT_STATS['fp32_exports']} export, {EXPORT_STATS['int8_exports']} quantisation, {EXPORT_STATS['calibrations']} calibration)"
    )

    unfused = _OrtRunner(fp32._session(export_onnx(fp32.model_dir, cache_dir)))
    model = SentenceTransformer(str(resolve_model_dir(MODEL_ID)), device="cpu", local_files_only=True)
    results = throughput({
        "torch": lambda batch: model.encode(batch, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False),
        "unfused": lambda batch: _normalise(fp32._pooled(unfused, list(batch), args.batch_size)),
        "fp32": lambda batch: fp32.encode(batch, batch_size=args.batch_size),
        "int8": lambda batch: int8.encode(batch, batch_size=args.batch_size),
    }, texts, args.batch_size, args.repeats)
    st_best, st_median, st_vectors = results["torch"]
    fp32_best, fp32_median, fp32_vectors = results["fp32"]
    int8_best, int8_median, int8_vectors = results["int8"]
    unfused_best, unfused_median, unfused_vectors = results["unfused"]
    fused_cos = (unfused_vectors * fp32_vectors).sum(axis=1)

    parity = (st_vectors * fp32_vectors).sum(axis=1)
    bench_cos = (fp32_vectors * int8_vectors).sum(axis=1)
    chosen = auto.quality["precision"]
    print()
    print(f"{'encoder':34} {'texts/s':>9} {'median':>9} {'vs torch':>9}")
    print(f"{'sentence-transformers (torch CPU)':34} {st_best:9.1f} {st_median:9.1f} {1.0:8.2f}x")
    print(f"{'ONNX Runtime fp32 (no fusions)':34} {unfused_best:9.1f} {unfused_median:9.1f} {unfused_best / st_best:8.2f}x")
    print(f"{'ONNX Runtime fp32 + fusions':34} {fp32_best:9.1f} {fp32_median:9.1f} {fp32_best / st_best:8.2f}x")
    label = f"ONNX Runtime int8 {INT8_RECIPE}" + ("" if chosen == "int8" else " (not chosen)")
    print(f"{label:34}\n{'':34} {int8_best:9.1f} {int8_median:9.1f} {int8_best / st_best:8.2f}x   ({int8_best / fp32_best:.2f}x fp32)")
    print()
    print(f"fp32 parity  : cosine with sentence-transformers over the {len(texts)} texts: min {parity.min():.6f}, mean {parity.mean():.6f}")
    print(f"fusions      : {FUSED_RECIPE} vs no fusions over the {len(texts)} texts: min cosine {fused_cos.min():.6f}")
    print(f"int8 quality : vs fp32 on the {auto.quality['calibration_sentences']} calibration sentences: "
          f"min {auto.quality['min_cosine']:.4f}, mean {auto.quality['mean_cosine']:.4f} (threshold {QUALITY_THRESHOLD})")
    print(f"               vs fp32 on the {len(texts)} benchmark texts: min {bench_cos.min():.4f}, mean {bench_cos.mean():.4f}")
    print(
        f"auto chooses : {chosen}"
        + ("" if chosen == "int8" else f" (int8 min cosine {auto.quality['min_cosine']:.4f} < {QUALITY_THRESHOLD})")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
