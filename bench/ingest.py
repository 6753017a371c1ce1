"""Ingest throughput against the plugin's bare throughput, measured in one run.

    .venv/bin/python bench/ingest.py [--texts 5000] [--chunk-size 1000] [--data-dir DIR]

Corpus: the `copyright` files under /usr/share/doc (Debian; real license and attribution text),
distinct by content, taken in name order until their chunks reach `--texts`. Each file is one
object; `text_embedding` chunks it and embeds every chunk.

1. bare: the builtin plugin's own embedder step (`OnnxEmbedder`, all-MiniLM-L6-v2 on ONNX
   Runtime, the precision `auto` picks, batch 64) over the very chunks the job will embed, in
   this process with every CPU — the model alone.
2. end to end: the embedded stack in this process (SQLite catalog and bus, qdrant-edge, local
   object store, local Ray), warmed by a small ingest first; then the files are dropped into the
   drop folder and the clock runs until `IngestCompleted` has covered every object.

Prints both throughputs (chunks per second) and their ratio; the target is >= 0.9. The stack
runs with `SLUICE_INGEST_MAX_JOBS=1`, so the one job may size itself to the whole machine (with
the default of 2, each job takes half, leaving room for another tenant's). It also
prints where the end-to-end time went (drop folder and coalescing wait, the job itself).

3. `--sandbox both` (the default) runs the end-to-end part twice in this one run, with plugin
   code in confined plugin hosts (`on`, the default of Sluice) and in the Ray actors themselves
   (`off`), and prints the ratio on / off (target >= 0.95): what the sandbox costs ingest.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

DOCS = Path("/usr/share/doc")


def corpus(texts: int, chunk_size: int, overlap: int) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, text) of distinct copyright files until their chunks reach `texts`, and the chunks."""
    from engine.plugins.builtin.text_embedding.processors.chunker import split_text

    files: list[tuple[str, str]] = []
    chunks: list[str] = []
    seen: set[str] = set()
    for path in sorted(DOCS.glob("*/copyright")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in seen or not text.strip():
            continue
        seen.add(digest)
        files.append((f"{path.parent.name}/copyright.txt", text))
        chunks += [text[a:b] for a, b in split_text(text, chunk_size, overlap)]
        if len(chunks) >= texts:
            break
    if len(chunks) < texts:
        raise SystemExit(f"only {len(chunks)} chunks in {len(files)} files under {DOCS}; ask for fewer --texts")
    return files, chunks


def bare(chunks: list[str], batch_size: int) -> tuple[float, str]:
    from engine.plugins.builtin.text_embedding.processors import EmbedderConfig, OnnxEmbedder

    embedder = OnnxEmbedder(EmbedderConfig(batch_size=batch_size, precision="auto"))
    embedder(pd.DataFrame({"data": chunks[:batch_size]}))  # load and warm up
    start = time.perf_counter()
    for i in range(0, len(chunks), batch_size):
        embedder(pd.DataFrame({"data": chunks[i:i + batch_size]}))
    seconds = time.perf_counter() - start
    return len(chunks) / seconds, repr(embedder.encoder)


async def end_to_end(
    files: list[tuple[str, str]], chunk_size: int, overlap: int, data_dir: Path, sandbox: Literal["on", "off"] = "on"
) -> dict:
    from pydantic import SecretStr

    from events import codec
    from functions.records.collection import Collections
    from functions.records.tenancy import Tenancy
    from infra.bootstrap import bootstrap
    from infra.settings import Settings

    settings = Settings(data_dir=data_dir, admin_key=SecretStr("sk_admin_bench-0123456789abcdef012"), log_level="WARNING",
                        log_json=True, sandbox=sandbox, ingest_max_jobs=1)  # one tenant alone: its job may take every CPU
    from infra.logging import configure_logging

    configure_logging("WARNING", json=True)
    platform = bootstrap(settings)
    async with platform:
        await Tenancy(platform.catalog, platform.admin_key).create_namespace("bench")
        drop_root = data_dir / "drop"
        from functions.runtime.run import functions_running

        running = functions_running(platform, drop_folder=drop_root, reconcile=False)
        await running.__aenter__()
        subscriber = await platform.bus.subscribe([platform.topics.ingest], group_id="bench", from_beginning=True)
        collections = Collections(platform.catalog, platform.vectors, platform.store, settings.plugins_bucket)
        params = {"chunk_size": chunk_size, "chunk_overlap": overlap}

        async def ingest(bucket: str, batch: list[tuple[str, str]]) -> tuple[float, list]:
            record = await collections.create("bench", name=bucket, bucket=bucket, prefix="", extractor="text_embedding",
                                              version=None, parameters=params)
            folder = drop_root / "bench" / bucket
            start = time.perf_counter()
            for name, text in batch:
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                (target.parent / (target.name + ".part")).write_text(text, encoding="utf-8")
                (target.parent / (target.name + ".part")).rename(target)
            covered, done = 0, []
            while covered < len(batch):
                for message in await subscriber.fetch(timeout_s=0.5):
                    event = codec.decode(message.value)
                    if event.type in ("IngestCompleted", "IngestFailed") and event.payload.collection_id == record["collection_id"]:
                        if event.type == "IngestFailed":
                            raise SystemExit(f"ingest failed: {event.payload.reason}")
                        done.append(event.payload)
                        covered += event.payload.objects
            return time.perf_counter() - start, done

        try:
            await ingest("warmup", files[:8])
            seconds, completions = await ingest("corpus", files)
            task_ids = [c.task_id for c in completions]
            records = [await platform.catalog.get("tasks", t) for t in task_ids]
            return {"seconds": seconds, "documents": sum(c.documents_written for c in completions),
                    "vectors": sum(sum(c.vectors_upserted.values()) for c in completions), "tasks": records}
        finally:
            await subscriber.close()
            await running.__aexit__(None, None, None)


def _seconds(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=5000, help="chunks to embed, at least (default 5000)")
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--chunk-overlap", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=None, help="state folder (default: a fresh temp folder)")
    parser.add_argument("--sandbox", choices=("both", "on", "off"), default="both",
                        help="plugin hosts on, off, or both in turn (default both: prints the on/off ratio)")
    args = parser.parse_args(argv)

    files, chunks = corpus(args.texts, args.chunk_size, args.chunk_overlap)
    chars = sum(len(c) for c in chunks)
    print(f"corpus: {len(files)} files under {DOCS}, {len(chunks)} chunks ({chars / len(chunks):.0f} chars each on average), "
          f"chunk_size={args.chunk_size} overlap={args.chunk_overlap}; {os.cpu_count()} CPUs")
    bare_rate, encoder = bare(chunks, args.batch_size)
    print(f"bare:        {bare_rate:8.1f} chunks/s  ({encoder}, batch {args.batch_size}, this process)")

    modes: list[Literal["on", "off"]] = ["off", "on"] if args.sandbox == "both" else [args.sandbox]
    rates: dict[str, float] = {}
    for mode in modes:
        data_dir = (args.data_dir / mode) if args.data_dir else Path(tempfile.mkdtemp(prefix=f"sluice-bench-ingest-{mode}-"))
        try:
            result = asyncio.run(end_to_end(files, args.chunk_size, args.chunk_overlap, data_dir, sandbox=mode))
        finally:
            if args.data_dir is None:
                shutil.rmtree(data_dir, ignore_errors=True)
        if result["documents"] != len(chunks) or result["vectors"] != len(chunks):
            print(f"MISMATCH: {len(chunks)} chunks, {result['documents']} documents, {result['vectors']} vectors written")
            return 1
        e2e_rate = rates[mode] = len(chunks) / result["seconds"]
        job = sum(_seconds(t["started_at"], t["finished_at"]) for t in result["tasks"])
        print(f"sandbox {mode}:")
        print(f"  end to end:  {e2e_rate:8.1f} chunks/s  (drop → IngestCompleted: {result['seconds']:.1f}s for {len(files)} objects, "
              f"{len(result['tasks'])} task(s); {result['documents']} documents, {result['vectors']} vectors acknowledged)")
        print(f"    of which the job (started → finished): {job:.1f}s = {len(chunks) / job:.1f} chunks/s; "
              f"drop folder, coalescing and queueing: {result['seconds'] - job:.1f}s")
        print(f"  ratio end to end / bare: {e2e_rate / bare_rate:.2f}  (target >= 0.9)")
        print(f"  ratio job / bare:        {len(chunks) / job / bare_rate:.2f}")
    if len(rates) == 2:
        print(f"ratio sandbox on / off (end to end): {rates['on'] / rates['off']:.2f}  (target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
