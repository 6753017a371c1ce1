"""The builtin text_embedding plugin (chunker, ONNX embedder, realtime service) and the MiniLM
encoder behind it. The encoder is built once for the module, into an ONNX cache folder the tests
share; the plugin finds the same folder through SLUICE_DATA_DIR."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from engine.plugins.builtin import BUILTIN_PLUGINS, builtin_plugin_path
from engine.plugins.builtin.text_embedding.manifest import TextEmbeddingParams
from engine.plugins.builtin.text_embedding.processors.chunker import ChunkerConfig, TextChunker, split_text
from engine.plugins.extractors.pipeline import PipelineStep, RowCondition, StepRunner
from engine.plugins.frame import frame
from events.errors import InvalidInput, NotFound

pytestmark = pytest.mark.unit

PLUGIN = "text_embedding"


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """SLUICE_DATA_DIR for the module, so the plugin's own encoder uses the tests' cache."""
    from engine.encoders.minilm import clear_shared_encoders

    data_dir = tmp_path_factory.mktemp("sluice-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLUICE_DATA_DIR", str(data_dir))
        yield data_dir / "models" / "onnx"
    clear_shared_encoders()


@pytest.fixture(scope="module")
def encoder(onnx_cache):
    """The encoder the plugin shares (precision auto, CPU), built once: export, int8, calibration."""
    from engine.encoders.minilm import default_cache_dir, shared_encoder

    assert default_cache_dir() == onnx_cache
    return shared_encoder(precision="auto", device="cpu")


@pytest.fixture(scope="module")
def fp32_encoder(encoder, onnx_cache):
    from engine.encoders.minilm import MiniLMEncoder

    return MiniLMEncoder(precision="fp32", device="cpu", cache_dir=onnx_cache)


@pytest.fixture(scope="module")
def plugin_copy(tmp_path_factory):
    """The plugin folder as it would be uploaded: without the __pycache__ folders that importing
    it in this process leaves behind (the scanner refuses those)."""
    target = tmp_path_factory.mktemp("plugin") / PLUGIN
    shutil.copytree(builtin_plugin_path(PLUGIN), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def chunk_texts(text: str, size: int, overlap: int) -> list[str]:
    return [text[start:end] for start, end in split_text(text, size, overlap)]


# --- the chunker ---------------------------------------------------------------------------------

def test_short_text_is_one_chunk_and_empty_text_none():
    assert split_text("  A short text.  ", 1000, 100) == [(2, 15)]
    assert split_text("", 1000, 100) == []
    assert split_text(" \n\t \n", 1000, 100) == []


def test_chunks_end_at_paragraphs_first():
    first = " ".join(f"Sentence {i} of the first paragraph is here." for i in range(13))  # ~590 characters
    second = " ".join(f"Sentence {i} of the second paragraph is here." for i in range(13))
    text = f"{first}\n\n{second}"
    chunks = chunk_texts(text, 1000, 100)
    assert chunks[0] == first  # a sentence end nearer the limit loses to the paragraph break
    assert chunks[-1].endswith(second)


def test_chunks_end_at_sentences_before_words():
    text = " ".join(f"This is sentence number {i}, which says a few more words." for i in range(60))
    spans = split_text(text, 300, 40)
    assert len(spans) > 5
    for start, end in spans:
        assert end - start <= 300
        assert text[start:end].endswith(".")


def test_chunks_end_at_words_without_sentences():
    rng = random.Random(1)
    text = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "epsilon"]) for _ in range(400))
    spans = split_text(text, 120, 20)
    for start, end in spans:
        assert end - start <= 120
        assert start == 0 or text[start - 1] == " "  # never starts inside a word
        assert end == len(text) or text[end] == " "  # never ends inside a word


def test_a_word_longer_than_a_chunk_is_cut_hard():
    text = "x" * 250
    spans = split_text(text, 100, 10)
    assert spans == [(0, 100), (90, 190), (180, 250)]


def test_overlap_repeats_the_end_of_the_chunk_before():
    text = " ".join(f"word{i}" for i in range(600))
    spans = split_text(text, 200, 50)
    for (s1, e1), (s2, e2) in zip(spans, spans[1:], strict=False):
        assert s1 < s2 < e1 < e2  # overlapping, moving forward
        assert e1 - s2 <= 50
        assert text[s2:e1] == text[s2:e1].strip()  # starts on a word
    no_overlap = split_text(text, 200, 0)
    for (_, e1), (s2, _) in zip(no_overlap, no_overlap[1:], strict=False):
        assert s2 > e1


def test_offsets_reconstruct_the_text_and_cover_it():
    rng = random.Random(7)
    pieces = ["alpha", "beta.", "gamma!", "delta\n\n", "eps", "zeta?", "y" * 90, "\n", "   ", "eta,", "\u00e9t\u00e9"]
    for _ in range(300):
        text = "".join(rng.choice(pieces) + rng.choice([" ", ""]) for _ in range(rng.randint(0, 150)))
        size = rng.randint(50, 300)
        overlap = rng.randint(0, size - 1)
        spans = split_text(text, size, overlap)
        covered = set()
        previous = None
        for start, end in spans:
            chunk = text[start:end]
            assert chunk and chunk == chunk.strip() and len(chunk) <= size
            if previous is not None:
                assert start > previous[0] and end > previous[1]
            previous = (start, end)
            covered.update(range(start, end))
        assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_chunker_rows_carry_offsets_and_deterministic_ids():
    text = "\n\n".join(" ".join(f"Paragraph {p} sentence {s} is short." for s in range(8)) for p in range(6))
    batch = frame([
        {"data": text, "document_id": "doc_a", "object_id": "obj-a", "collection_id": "c1"},
        {"data": "   ", "document_id": "doc_empty"},
        {"data": "Tiny.", "document_id": "doc_b"},
    ])
    chunker = TextChunker(ChunkerConfig(chunk_size=200, chunk_overlap=30))
    out = chunker(batch)
    again = TextChunker(ChunkerConfig(chunk_size=200, chunk_overlap=30))(batch)
    pd.testing.assert_frame_equal(out, again)
    assert "doc_empty" not in set(out["parent_document_id"])  # whitespace-only text: no rows
    rows_a = out[out["parent_document_id"] == "doc_a"]
    assert len(rows_a) > 3
    assert rows_a["document_id"].tolist() == [f"doc_a:{i}" for i in range(len(rows_a))]
    assert rows_a["chunk_index"].tolist() == list(range(len(rows_a)))
    assert set(rows_a["chunk_count"]) == {len(rows_a)}
    assert set(rows_a["object_id"]) == {"obj-a"} and set(rows_a["collection_id"]) == {"c1"}
    for row in rows_a.itertuples():
        assert text[row.chunk_start:row.chunk_end] == row.data
        assert len(row.data) <= 200
    tiny = out[out["parent_document_id"] == "doc_b"].iloc[0]
    assert (tiny["document_id"], tiny["data"], tiny["chunk_count"], tiny["chunk_start"], tiny["chunk_end"]) == ("doc_b:0", "Tiny.", 1, 0, 5)


def test_step_runner_leaves_non_text_rows_alone():
    long_text = " ".join(f"Sentence {i} keeps the chunker busy for a while." for i in range(40))
    batch = frame([
        {"data": long_text, "document_id": "doc_text"},
        {"data": "file:///tmp/cat.png", "document_id": "doc_image", "blob_type": "image", "mime_type": "image/png", "size_bytes": 10},
    ])
    step = PipelineStep(name="chunk", service_class=TextChunker, config=ChunkerConfig(300, 30), condition=RowCondition.IS_TEXT)
    out = StepRunner(step)(batch)
    image = out[out["mime_type"] == "image/png"]
    assert len(image) == 1
    image_row = image.iloc[0]
    assert (image_row["data"], image_row["document_id"], image_row["size_bytes"]) == ("file:///tmp/cat.png", "doc_image", 10)
    assert pd.isna(image_row["chunk_index"])
    text_rows = out[out["mime_type"] == "text/plain"]
    assert len(text_rows) > 3 and set(text_rows["parent_document_id"]) == {"doc_text"}


def test_chunker_config_refuses_bad_values():
    with pytest.raises(ValueError, match="chunk_overlap"):
        ChunkerConfig(chunk_size=100, chunk_overlap=100)
    with pytest.raises(ValueError, match="chunk_size"):
        ChunkerConfig(chunk_size=0, chunk_overlap=0)


# --- parameters ----------------------------------------------------------------------------------

def test_parameter_defaults():
    assert TextEmbeddingParams().model_dump() == {"chunk_size": 1000, "chunk_overlap": 100, "batch_size": 64, "precision": "auto"}


def test_overlap_not_below_size_is_refused_clearly():
    with pytest.raises(ValidationError) as info:
        TextEmbeddingParams(chunk_size=200, chunk_overlap=200)
    assert "chunk_overlap (200) must be smaller than chunk_size (200)" in str(info.value)
    with pytest.raises(ValidationError, match="chunk_size"):
        TextEmbeddingParams(chunk_size=10)
    with pytest.raises(ValidationError, match="chunk_overlap"):
        TextEmbeddingParams(chunk_overlap=-1)
    with pytest.raises(ValidationError, match="precision"):
        TextEmbeddingParams(precision="fp16")


def test_builtin_registry():
    assert set(BUILTIN_PLUGINS) == {PLUGIN}
    assert (builtin_plugin_path(PLUGIN) / "manifest.py").is_file()
    with pytest.raises(NotFound, match="available: text_embedding"):
        builtin_plugin_path("nope")


# --- the encoder ---------------------------------------------------------------------------------

@pytest.mark.torch
def test_fp32_onnx_matches_sentence_transformers(fp32_encoder):
    from sentence_transformers import SentenceTransformer

    from engine.encoders.minilm import CALIBRATION_SENTENCES, MODEL_ID
    from engine.models import resolve_model_dir

    texts = [*CALIBRATION_SENTENCES[::3], "", "word " * 400]  # also an empty text and one past 256 word pieces
    reference = SentenceTransformer(str(resolve_model_dir(MODEL_ID)), device="cpu").encode(
        texts, batch_size=16, normalize_embeddings=True, show_progress_bar=False
    )
    got = fp32_encoder.encode(texts, batch_size=16)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * reference).sum(axis=1).min() >= 0.9999
    assert fp32_encoder.quality["precision"] == "fp32" and fp32_encoder.backend == "onnxruntime-cpu"


@pytest.mark.torch
def test_auto_precision_decision_is_recorded(encoder):
    from pathlib import Path

    from engine.encoders.minilm import CALIBRATION_SENTENCES, QUALITY_THRESHOLD

    quality = encoder.quality
    assert len(CALIBRATION_SENTENCES) >= 64
    assert quality["candidate"] == "int8" and quality["calibration_sentences"] == len(CALIBRATION_SENTENCES)
    assert 0.0 < quality["min_cosine"] <= quality["mean_cosine"] <= 1.0
    assert quality["passed"] == (quality["min_cosine"] >= QUALITY_THRESHOLD)
    assert quality["precision"] == ("int8" if quality["passed"] else "fp32")
    if quality["precision"] == "int8":
        assert quality["min_cosine"] >= 0.99
    assert Path(quality["decision_file"]).is_file()


@pytest.mark.torch
def test_forced_int8_still_measures(encoder, onnx_cache):
    from engine.encoders.minilm import CALIBRATION_SENTENCES, MiniLMEncoder

    int8 = MiniLMEncoder(precision="int8", device="cpu", cache_dir=onnx_cache)
    assert int8.quality["precision"] == "int8" and int8.quality["forced"] is True
    assert int8.quality["min_cosine"] == encoder.quality["min_cosine"]  # the same cached measurement
    vectors = int8.encode(list(CALIBRATION_SENTENCES[:8]))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.torch
def test_export_cache_is_reused(encoder, fp32_encoder, onnx_cache):
    from engine.encoders.minilm import EXPORT_STATS, MiniLMEncoder

    files = sorted(onnx_cache.glob("*.onnx"))
    assert len(files) == 3  # fp32, fused fp32 and int8, nothing half-written left beside them
    assert not list(onnx_cache.glob(".tmp-*"))
    before = {path: path.stat().st_mtime_ns for path in files}
    stats = dict(EXPORT_STATS)
    again = MiniLMEncoder(precision="auto", device="cpu", cache_dir=onnx_cache)
    assert stats == EXPORT_STATS  # no export, no quantisation, no calibration
    assert {path: path.stat().st_mtime_ns for path in files} == before
    assert again.quality["decision_cached"] is True
    assert again.quality["min_cosine"] == encoder.quality["min_cosine"]


@pytest.mark.torch
def test_recipe_files_and_int8_quality(encoder, fp32_encoder, onnx_cache):
    from engine.encoders.minilm import FUSED_RECIPE, INT8_RECIPE, QUALITY_THRESHOLD

    assert FUSED_RECIPE in fp32_encoder.model_path.name and fp32_encoder.quality["fp32_recipe"] == FUSED_RECIPE
    assert encoder.quality["int8_recipe"] == INT8_RECIPE
    assert INT8_RECIPE in encoder.quality["decision_file"]
    # the chosen int8 recipe keeps every calibration sentence at cosine >= 0.99 on this machine
    assert encoder.quality["min_cosine"] >= QUALITY_THRESHOLD and encoder.quality["precision"] == "int8"


@pytest.mark.torch
def test_recipe_names_key_the_cache(encoder, onnx_cache, monkeypatch):
    from engine.encoders import minilm

    before = {p.name for p in onnx_cache.glob("*.onnx")}
    monkeypatch.setattr(minilm, "INT8_RECIPE", "test-recipe-v0")
    fp32 = minilm.export_onnx(encoder.model_dir, onnx_cache)
    path = minilm.quantize_int8(fp32)
    assert path.name not in before and "test-recipe-v0" in path.name  # a new recipe never reuses an old file
    path.unlink()


@pytest.mark.torch
def test_auto_falls_back_to_fused_fp32_below_threshold(encoder, onnx_cache, monkeypatch):
    from engine.encoders import minilm

    monkeypatch.setattr(minilm, "QUALITY_THRESHOLD", 1.01)
    fallback = minilm.MiniLMEncoder(precision="auto", device="cpu", cache_dir=onnx_cache)
    assert fallback.quality["precision"] == "fp32" and fallback.quality["passed"] is False
    assert minilm.FUSED_RECIPE in fallback.model_path.name
    assert fallback.quality["decision_file"] != encoder.quality["decision_file"]  # the threshold keys the decision


@pytest.mark.torch
def test_semantic_sanity(encoder):
    cat, kitten, tax = encoder.encode(["a cat sat on the mat", "a kitten rests on a rug", "quarterly tax filing deadline"])
    assert float(cat @ kitten) > float(cat @ tax) + 0.2


@pytest.mark.torch
def test_encoder_inputs(encoder):
    from engine.encoders.minilm import MiniLMEncoder

    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("not a list")
    with pytest.raises(TypeError):
        encoder.encode(["ok", 3])
    with pytest.raises(InvalidInput):
        MiniLMEncoder(precision="fp16")
    one = encoder.encode(["Same text."])
    many = encoder.encode(["Same text.", "Another, longer text that pads the batch."], batch_size=2)
    if encoder.quality["precision"] == "fp32":
        np.testing.assert_allclose(one[0], many[0], atol=1e-5)  # padding does not change a text's vector
    else:  # int8 scales activations per batch: batch-mates move a vector, within the quality bound
        assert float(one[0] @ many[0]) >= 0.99


@pytest.mark.torch
def test_fp32_is_padding_invariant(fp32_encoder):
    one = fp32_encoder.encode(["Same text."])
    many = fp32_encoder.encode(["Same text.", "Another, longer text that pads the batch."], batch_size=2)
    np.testing.assert_allclose(one[0], many[0], atol=1e-5)


@pytest.mark.torch
def test_torch_runner_of_the_gpu_path_matches_onnx(fp32_encoder):
    """The GPU fallback's torch code, run on CPU: same pooling, same numbers."""
    from transformers import AutoModel

    from engine.encoders.minilm import CALIBRATION_SENTENCES, _normalise, _TorchRunner

    model = AutoModel.from_pretrained(str(fp32_encoder.model_dir), local_files_only=True).eval()
    texts = list(CALIBRATION_SENTENCES[:12])
    got = _normalise(fp32_encoder._pooled(_TorchRunner(model, "cpu"), texts, 8))
    assert (got * fp32_encoder.encode(texts)).sum(axis=1).min() >= 0.9999


# --- the plugin ----------------------------------------------------------------------------------

@pytest.mark.torch
def test_embedder_loads_lazily_and_writes_unit_vectors(encoder):
    from engine.plugins.builtin.text_embedding.processors import EmbedderConfig, OnnxEmbedder

    embedder = OnnxEmbedder(EmbedderConfig(batch_size=4, device="cpu"))
    assert not embedder.loaded
    out = embedder(frame([{"data": "First chunk."}, {"data": "Second chunk."}, {"data": None}]))
    assert embedder.loaded and embedder.encoder is encoder  # one encoder per process
    vectors = np.array(out["text_embedding"].tolist())
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_plugin_passes_the_scanner(plugin_copy):
    from engine.plugins.scanner import scan_directory

    report = scan_directory(plugin_copy, strict=True)
    assert report.passed, [(f.rule_id, f.file, f.line, f.message) for f in report.findings]
    assert report.findings == [] and report.files_scanned == 6


@pytest.mark.torch
def test_plugin_passes_validation_with_384_d_vectors(encoder, plugin_copy, tmp_path):
    from engine.assets import disallow_asset_root
    from engine.plugins.validate import validate_plugin

    try:
        report = validate_plugin(plugin_copy, name=PLUGIN, version="1.0.0", workdir=tmp_path, strict=True)
        refused = validate_plugin(plugin_copy, name=PLUGIN, version="1.0.0", workdir=tmp_path, parameters={"chunk_overlap": 1000})
    finally:
        disallow_asset_root(tmp_path)  # validate_plugin allows its workdir process-wide; later tests expect none
    assert report.passed, report.findings
    assert report.has_realtime
    assert report.feature_uris == ["sluice://text_embedding@1.0.0/text_embedding"]
    assert report.manifest.features[0].embedding_dim == 384
    assert report.manifest.parameter_defaults == {"chunk_size": 1000, "chunk_overlap": 100, "batch_size": 64, "precision": "auto"}
    (dry_run,) = report.dry_runs
    assert {"text_embedding", "chunk_index", "parent_document_id"} <= set(dry_run.columns)

    assert not refused.passed
    assert any(f.rule_id == "SLU832" and "must be smaller than chunk_size" in f.message for f in refused.findings)


@pytest.mark.torch
def test_pipeline_chunks_then_embeds_each_chunk(encoder):
    from engine.plugins.builtin.text_embedding.pipeline import build_steps
    from engine.plugins.extractors.pipeline import ResourceType, run_steps
    from engine.plugins.request import ExtractorConfig, ExtractorRequest

    request = ExtractorRequest(
        namespace="ns", feature_extractor_id="fe", extractor_config=ExtractorConfig(
            feature_extractor_name=PLUGIN, version="1.0.0", parameters={"chunk_size": 120, "chunk_overlap": 20, "batch_size": 8},
        ),
    )
    steps = build_steps(request)["steps"]
    assert [s.name for s in steps] == ["chunk", "embed"]
    assert steps[1].resource_type is ResourceType.CPU and steps[1].batch_size == 8
    text = " ".join(f"Sentence {i} is about embeddings." for i in range(12))
    out = run_steps(steps, frame([{"data": text, "document_id": "doc"}, {"data": "", "document_id": "empty"}]))
    assert len(out) == out["chunk_count"].iloc[0] > 1
    assert out["document_id"].tolist() == [f"doc:{i}" for i in range(len(out))]
    assert all(len(v) == 384 for v in out["text_embedding"])


@pytest.mark.torch
async def test_realtime_service(encoder):
    from engine.plugins.builtin.text_embedding.realtime import TextEmbeddingService

    service = TextEmbeddingService()
    single = await service({"text": "a cat sat on the mat"}, {})
    assert set(single) == {"embedding"} and len(single["embedding"]) == 384
    assert abs(float(np.linalg.norm(single["embedding"])) - 1.0) < 1e-5
    several = await service({"texts": ["one", "two", "three"]})
    assert set(several) == {"embeddings"} and [len(v) for v in several["embeddings"]] == [384, 384, 384]
    alone = encoder.encode(["one"])[0]
    if encoder.quality["precision"] == "fp32":
        np.testing.assert_allclose(several["embeddings"][0], alone, atol=1e-5)
    else:  # int8 scales activations per batch
        assert float(np.dot(several["embeddings"][0], alone)) >= 0.99
    assert await service({"texts": []}) == {"embeddings": []}
    with pytest.raises(InvalidInput):
        await service({"query": "x"})
    with pytest.raises(InvalidInput):
        await service({"texts": "not a list"})
