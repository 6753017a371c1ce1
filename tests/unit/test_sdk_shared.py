"""The `shared.*` SDK paths (`engine.shared`) and asset access (`engine.assets`): the built-in
MiniLM batch service inside a pipeline step, the service base classes, and `open_asset` over
file://, http:// (a local server started here) and s3:// (an installed resolver)."""

from __future__ import annotations

import http.server
import math
import threading
from pathlib import Path

import pandas as pd
import pytest

import engine.assets as assets
from engine.assets import AssetAccessDenied, allow_asset_root, configure_asset_resolver, disallow_asset_root, download_asset, open_asset
from engine.plugins.extractors.pipeline import PipelineDefinition, ResourceType, StepDefinition, StepRunner, build_pipeline_steps, run_steps
from engine.shared.inference.registry import InferenceConfigs, MiniLMBatch, ServiceNotAvailable, available_batch_services, get_batch_service
from engine.shared.plugins.inference import BaseBatchInferenceService, BaseInferenceService
from events.errors import Forbidden, InvalidInput, NotFound, PermanentError

pytestmark = pytest.mark.unit

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


# ---- built-in batch services -------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_step():
    definition = PipelineDefinition(
        name="embed",
        version="1.0.0",
        steps=[StepDefinition(service_class=get_batch_service(MINILM), resource_type=ResourceType.CPU, config=InferenceConfigs())],
    )
    (step,) = build_pipeline_steps(definition)
    runner = StepRunner(step)
    yield runner
    runner.close()


@pytest.mark.torch
def test_the_minilm_service_embeds_the_data_column_into_384_d_unit_vectors(minilm_step):
    batch = pd.DataFrame({"data": ["a cat sits on the mat", "a kitten rests on the rug", "quarterly tax filing deadline", None]})

    out = minilm_step(batch)

    vectors = out["embedding"].tolist()
    assert len(vectors) == 4
    assert all(len(v) == 384 and all(isinstance(x, float) for x in v) for v in vectors)
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4) for v in vectors)
    cosine = lambda a, b: sum(x * y for x, y in zip(a, b, strict=False))  # noqa: E731 - unit vectors
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])  # meaning, not noise
    assert out["data"].tolist()[:3] == batch["data"].tolist()[:3]


@pytest.mark.torch
def test_the_minilm_service_honours_its_column_names_and_loads_the_model_once():
    service = MiniLMBatch({"text_column": "body", "output_column_name": "vec", "normalize": False})

    first = service(pd.DataFrame({"body": ["one"]}))
    model = service._model
    second = service(pd.DataFrame({"body": ["two", "three"]}))

    assert len(first["vec"][0]) == 384 and len(second) == 2
    assert service._model is model


def test_the_minilm_service_names_a_missing_text_column():
    with pytest.raises(InvalidInput, match="'body'"):
        MiniLMBatch(InferenceConfigs(text_column="body"))(pd.DataFrame({"data": ["x"]}))


def test_the_minilm_short_alias_is_the_same_service():
    assert get_batch_service("all-MiniLM-L6-v2") is get_batch_service(MINILM) is MiniLMBatch
    assert MINILM in available_batch_services()


def test_an_unknown_service_id_lists_the_available_ones():
    with pytest.raises(ServiceNotAvailable) as caught:
        get_batch_service("acme/unknown-model")
    assert isinstance(caught.value, NotFound)
    assert "acme/unknown-model" in str(caught.value) and MINILM in str(caught.value)
    assert caught.value.details["available"] == available_batch_services()


@pytest.mark.parametrize(
    "service_id", ["intfloat/multilingual-e5-large-instruct", "openai/whisper-large-v3-turbo", "BAAI/bge-reranker-v2-m3"]
)
def test_documented_services_without_installed_weights_say_so(service_id):
    with pytest.raises(ServiceNotAvailable, match="not installed") as caught:
        get_batch_service(service_id)
    assert service_id in str(caught.value)


# ---- service base classes ----------------------------------------------------------------------


class OverridesCall(BaseInferenceService):
    async def __call__(self, inputs, parameters=None):
        return {"echo": inputs["text"], "style": "call"}


class OverridesRunInference(BaseInferenceService):
    async def run_inference(self, inputs, parameters):
        return {"echo": inputs["text"], "scale": parameters.get("scale", 1)}


async def test_a_realtime_service_may_override_call_directly():
    assert await OverridesCall()({"text": "hi"}) == {"echo": "hi", "style": "call"}


async def test_a_realtime_service_may_override_run_inference_and_gets_empty_parameters_by_default():
    service = OverridesRunInference({"k": "v"})
    assert service.config == {"k": "v"}
    assert await service({"text": "hi"}) == {"echo": "hi", "scale": 1}
    assert await service({"text": "hi"}, {"scale": 3}) == {"echo": "hi", "scale": 3}


async def test_a_realtime_service_rejects_inputs_that_are_not_a_dict():
    with pytest.raises(InvalidInput, match="OverridesRunInference takes a dict of inputs, got list"):
        await OverridesRunInference()(["hi"])


async def test_a_realtime_service_that_overrides_nothing_says_what_to_override():
    with pytest.raises(NotImplementedError, match="override __call__.*or run_inference"):
        await BaseInferenceService()({"text": "hi"})


class Upper(BaseBatchInferenceService):
    def _process_batch(self, batch):
        out = batch.copy()
        out["upper"] = out["data"].str.upper()
        return out


def test_a_batch_service_keeps_its_config_from_a_keyword_or_the_first_argument():
    assert Upper(config={"a": 1}).config == {"a": 1}
    assert Upper({"b": 2}).config == {"b": 2}
    assert Upper().config is None


def test_a_batch_service_runs_in_a_pipeline_step():
    steps = build_pipeline_steps(
        PipelineDefinition(name="p", version="1.0.0", steps=[StepDefinition(service_class=Upper, config={"x": 1})])
    )
    out = run_steps(steps, pd.DataFrame({"data": ["ab", "cd"]}))
    assert out["upper"].tolist() == ["AB", "CD"]


def test_a_batch_service_without_process_batch_names_its_class():
    class Empty(BaseBatchInferenceService):
        pass

    with pytest.raises(NotImplementedError, match="Empty must implement _process_batch"):
        Empty()(pd.DataFrame({"data": ["x"]}))


# ---- assets ------------------------------------------------------------------------------------


@pytest.fixture
def asset_root(tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    allow_asset_root(root)
    yield root
    disallow_asset_root(root)


@pytest.fixture
def no_asset_resolver():
    configure_asset_resolver(None)
    yield
    configure_asset_resolver(None)


def temp_files() -> set[Path]:
    return set(assets._temp_root().iterdir())


def test_a_file_url_inside_an_allowed_root_opens_the_file_itself(asset_root):
    target = asset_root / "doc with space.txt"
    target.write_text("hello")
    url = target.as_uri()

    with open_asset(url) as path:
        assert Path(path).read_text() == "hello"
    assert target.exists()  # never deleted: it is not a temp file
    assert download_asset(url) == (str(target.resolve()), False)


def test_a_file_url_outside_the_allowed_roots_is_denied_naming_the_path(asset_root, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    with pytest.raises(AssetAccessDenied) as caught:
        download_asset(outside.as_uri())
    assert isinstance(caught.value, Forbidden)
    assert str(outside) in str(caught.value)


def test_a_symlink_or_dot_dot_cannot_escape_an_allowed_root(asset_root, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    (asset_root / "link.txt").symlink_to(outside)
    with pytest.raises(AssetAccessDenied):
        download_asset((asset_root / "link.txt").as_uri())
    with pytest.raises(AssetAccessDenied):
        download_asset(f"file://{asset_root}/../secret.txt")


def test_no_file_url_is_readable_until_a_root_is_allowed(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("x")
    with pytest.raises(AssetAccessDenied, match="none are configured"):
        download_asset(target.as_uri())


def test_a_missing_file_under_an_allowed_root_is_not_found(asset_root):
    with pytest.raises(NotFound, match="missing.bin"):
        download_asset((asset_root / "missing.bin").as_uri())


class _Files(http.server.BaseHTTPRequestHandler):
    routes: dict[str, bytes] = {"/clip.txt": b"streamed bytes", "/big.bin": b"x" * 4096}

    def do_GET(self):
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def http_base():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_http_asset_is_downloaded_to_a_temp_file_that_is_deleted_on_exit(http_base):
    with open_asset(f"{http_base}/clip.txt", suffix=".txt") as path:
        assert path.endswith(".txt")
        assert Path(path).read_bytes() == b"streamed bytes"
    assert not Path(path).exists()


def test_download_asset_hands_the_temp_file_to_the_caller(http_base):
    path, is_temp = download_asset(f"{http_base}/clip.txt")
    try:
        assert is_temp is True
        assert Path(path).read_bytes() == b"streamed bytes"
    finally:
        Path(path).unlink()


def test_an_http_404_is_not_found_and_leaves_no_temp_file(http_base):
    before = temp_files()
    with pytest.raises(NotFound, match="HTTP 404"):
        download_asset(f"{http_base}/nope")
    assert temp_files() == before


def test_an_http_asset_over_the_size_cap_fails_and_leaves_no_temp_file(http_base, monkeypatch):
    monkeypatch.setattr(assets, "MAX_DOWNLOAD_BYTES", 1024)
    before = temp_files()
    with pytest.raises(InvalidInput, match="1024-byte download limit"):
        download_asset(f"{http_base}/big.bin")
    assert temp_files() == before


def test_an_s3_url_is_fetched_through_the_installed_resolver(no_asset_resolver):
    calls = []

    def resolver(bucket, key, dest):
        calls.append((bucket, key))
        dest.write_bytes(b"object bytes")

    configure_asset_resolver(resolver)
    with open_asset("s3://media/videos/a?b#c.mp4", suffix=".mp4") as path:
        assert Path(path).read_bytes() == b"object bytes"
        assert path.endswith(".mp4")
    assert not Path(path).exists()
    assert calls == [("media", "videos/a?b#c.mp4")]


def test_a_failing_resolver_leaves_no_temp_file(no_asset_resolver):
    def resolver(bucket, key, dest):
        dest.write_bytes(b"partial")
        raise NotFound(f"s3://{bucket}/{key} does not exist")

    configure_asset_resolver(resolver)
    before = temp_files()
    with pytest.raises(NotFound):
        download_asset("s3://media/gone.bin")
    assert temp_files() == before


def test_an_s3_url_without_resolver_or_credentials_explains_what_is_missing(no_asset_resolver, monkeypatch, tmp_path):
    for name in ("SLUICE_S3_ENDPOINT_URL", "SLUICE_S3_ACCESS_KEY_ID", "SLUICE_S3_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(PermanentError, match="no object store is configured"):
        download_asset("s3://media/a.bin")


@pytest.mark.parametrize("url", ["s3://bucket-only", "s3:///key-only"])
def test_a_malformed_s3_url_is_invalid_input(url):
    with pytest.raises(InvalidInput, match="s3://bucket/key"):
        download_asset(url)


@pytest.mark.parametrize("url", ["/etc/passwd", "ftp://host/file", "gs://bucket/key", "relative/path.txt"])
def test_unsupported_urls_are_invalid_input_naming_the_url(url):
    with pytest.raises(InvalidInput) as caught:
        download_asset(url)
    assert url in str(caught.value)


def test_the_old_resolve_url_to_local_path_is_download_asset():
    from engine.shared.plugins import download_asset as shared_download
    from engine.shared.plugins import open_asset as shared_open
    from engine.shared.utilities import resolve_url_to_local_path as package_level
    from engine.shared.utilities.files import resolve_url_to_local_path

    assert resolve_url_to_local_path is package_level is shared_download is download_asset
    assert shared_open is open_asset
