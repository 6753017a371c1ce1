"""`container.llm` (`engine.llm`) with a fake provider, and `container.secrets` (`engine.namespace_secrets`):
sealing, per-namespace keys, tamper detection and the accessor plugins use."""

from __future__ import annotations

import base64

import pytest

from engine.llm import LLMOutputInvalid, LLMProvider, LLMRequest, LLMResult, LLMService, LLMUnavailable
from engine.namespace_secrets import SecretBox, SecretNotFound, SecretsAccessor, SecretUnreadable
from engine.plugins.container import PluginContainer
from events.errors import NotFound, PermanentError

pytestmark = pytest.mark.unit

MASTER = bytes(range(32))


class FakeProvider:
    """Answers with whatever `reply` builds and counts the calls that reached it."""

    def __init__(self, reply=None):
        self.requests: list[LLMRequest] = []
        self.reply = reply or (
            lambda request: LLMResult(data={"summary": request.text}, text=None, provider=request.provider, model=request.model)
        )

    async def complete(self, request: LLMRequest) -> LLMResult:
        self.requests.append(request)
        return self.reply(request)


# ---- LLM ---------------------------------------------------------------------------------------


def test_the_fake_provider_satisfies_the_provider_protocol():
    assert isinstance(FakeProvider(), LLMProvider)


async def test_generate_routes_the_request_to_the_named_provider():
    fake = FakeProvider()
    llm = LLMService({"google": fake})

    result = await llm.generate("Summarise", text="a long text", model="gemini-test")

    assert result.data == {"summary": "a long text"}
    assert (result.provider, result.model, result.cached) == ("google", "gemini-test", False)
    assert fake.requests[0].instruction == "Summarise"
    assert llm.service is llm


async def test_the_same_request_twice_is_answered_from_the_cache():
    fake = FakeProvider()
    llm = LLMService({"google": fake})

    first = await llm.generate("Summarise", text="t", schema={"required": ["summary"], "type": "object"})
    first.data["summary"] = "edited by the caller"
    second = await llm.process(LLMRequest(instruction="Summarise", text="t", schema={"type": "object", "required": ["summary"]}))

    assert len(fake.requests) == 1
    assert second.cached is True
    assert second.data == {"summary": "t"}  # the caller's edit did not leak into the cache


async def test_different_requests_are_not_served_from_each_others_cache_entry():
    fake = FakeProvider()
    llm = LLMService({"google": fake})
    await llm.generate("Summarise", text="a")
    await llm.generate("Summarise", text="b")
    await llm.generate("Summarise", text="a", temperature=0.7)
    assert len(fake.requests) == 3


async def test_the_cache_evicts_the_least_recently_used_answer():
    fake = FakeProvider()
    llm = LLMService({"google": fake}, cache_size=2)
    for text in ("a", "b", "a", "c", "a", "b"):
        await llm.generate("x", text=text)
    assert [r.text for r in fake.requests] == ["a", "b", "c", "b"]


async def test_a_zero_cache_size_disables_caching():
    fake = FakeProvider()
    llm = LLMService({"google": fake}, cache_size=0)
    await llm.generate("x", text="a")
    await llm.generate("x", text="a")
    assert len(fake.requests) == 2


async def test_an_unconfigured_provider_is_named_along_with_the_configured_ones():
    llm = LLMService({"local": FakeProvider()})
    with pytest.raises(LLMUnavailable) as caught:
        await llm.generate("x", provider="openai")
    assert isinstance(caught.value, PermanentError)
    assert "'openai'" in str(caught.value) and "local" in str(caught.value)


async def test_a_service_without_providers_says_none_are_configured():
    with pytest.raises(LLMUnavailable, match="configured providers: none"):
        await LLMService().generate("x")


async def test_a_registered_provider_becomes_available():
    llm = LLMService()
    llm.register("google", FakeProvider())
    assert llm.providers == ["google"]
    assert (await llm.generate("x", text="y")).data == {"summary": "y"}


async def test_an_answer_missing_a_required_schema_key_is_rejected_naming_the_key():
    llm = LLMService({"google": FakeProvider()})
    schema = {"type": "object", "required": ["summary", "labels"]}
    with pytest.raises(LLMOutputInvalid, match=r"\['labels'\]"):
        await llm.generate("x", text="y", schema=schema)


async def test_a_non_object_answer_is_rejected_when_a_schema_is_given():
    fake = FakeProvider(lambda r: LLMResult(data=["a", "list"], provider=r.provider, model=r.model))
    with pytest.raises(LLMOutputInvalid, match="answered list"):
        await LLMService({"google": fake}).generate("x", schema={"type": "object"})


async def test_a_json_text_answer_is_parsed_into_data_when_a_schema_is_given():
    fake = FakeProvider(lambda r: LLMResult(text='{"label": "cat"}', provider=r.provider, model=r.model))
    result = await LLMService({"google": fake}).generate("x", schema={"required": ["label"]})
    assert result.data == {"label": "cat"}


async def test_a_pydantic_model_may_serve_as_the_schema():
    from pydantic import BaseModel

    class Label(BaseModel):
        label: str

    fake = FakeProvider(lambda r: LLMResult(data={"wrong": 1}, provider=r.provider, model=r.model))
    with pytest.raises(LLMOutputInvalid, match="label"):
        await LLMService({"google": fake}).generate("x", schema=Label)


async def test_a_failed_answer_is_not_cached():
    answers = iter([{"nope": 1}, {"label": "ok"}])
    fake = FakeProvider(lambda r: LLMResult(data=next(answers), provider=r.provider, model=r.model))
    llm = LLMService({"google": fake})
    with pytest.raises(LLMOutputInvalid):
        await llm.generate("x", schema={"required": ["label"]})
    assert (await llm.generate("x", schema={"required": ["label"]})).data == {"label": "ok"}


# ---- secrets -----------------------------------------------------------------------------------


def test_a_sealed_secret_opens_with_the_same_namespace_and_name():
    box = SecretBox(MASTER)
    token = box.encrypt("ns_a", "API_KEY", "sk-123 ✓")
    assert "sk-123" not in token
    assert box.decrypt("ns_a", "API_KEY", token) == "sk-123 ✓"
    assert SecretBox(MASTER).decrypt("ns_a", "API_KEY", token) == "sk-123 ✓"  # derivation is deterministic


def test_sealing_twice_gives_different_tokens():
    box = SecretBox(MASTER)
    assert box.encrypt("ns", "k", "v") != box.encrypt("ns", "k", "v")


@pytest.mark.parametrize(
    ("namespace", "name", "master"),
    [("ns_b", "API_KEY", MASTER), ("ns_a", "OTHER_KEY", MASTER), ("ns_a", "API_KEY", bytes(32))],
    ids=["other namespace", "other name", "other master key"],
)
def test_a_token_does_not_open_anywhere_else(namespace, name, master):
    token = SecretBox(MASTER).encrypt("ns_a", "API_KEY", "sk-123")
    with pytest.raises(SecretUnreadable) as caught:
        SecretBox(master).decrypt(namespace, name, token)
    assert name in str(caught.value) and namespace in str(caught.value)


def test_a_tampered_or_garbled_token_is_unreadable():
    box = SecretBox(MASTER)
    raw = bytearray(base64.b64decode(box.encrypt("ns", "k", "value")))
    raw[-1] ^= 0x01
    for token in (base64.b64encode(bytes(raw)).decode(), "not base64!", base64.b64encode(b"short").decode(), ""):
        with pytest.raises(SecretUnreadable):
            box.decrypt("ns", "k", token)


def test_a_short_master_key_is_refused():
    with pytest.raises(ValueError, match="at least 32 bytes"):
        SecretBox(b"short")


@pytest.fixture
def accessor():
    box = SecretBox(MASTER)
    sealed = {name: box.encrypt("ns_a", name, value) for name, value in {"OPENAI_KEY": "sk-o", "DB_PASSWORD": "pw"}.items()}
    return SecretsAccessor("ns_a", sealed, box)


async def test_the_accessor_returns_a_secrets_plaintext(accessor):
    assert await accessor.get("OPENAI_KEY") == "sk-o"


async def test_the_accessor_lists_names_only_sorted(accessor):
    assert await accessor.list() == ["DB_PASSWORD", "OPENAI_KEY"]
    assert "sk-o" not in repr(accessor)


async def test_a_missing_secret_is_named_along_with_the_available_ones(accessor):
    with pytest.raises(SecretNotFound) as caught:
        await accessor.get("STRIPE_KEY")
    assert isinstance(caught.value, NotFound)
    message = str(caught.value)
    assert "STRIPE_KEY" in message and "DB_PASSWORD" in message and "OPENAI_KEY" in message
    assert "sk-o" not in message


async def test_the_plugin_container_carries_the_namespaces_ports(accessor):
    container = PluginContainer(namespace="ns_a", llm=LLMService({"google": FakeProvider()}), secrets=accessor)
    assert await container.secrets.get("DB_PASSWORD") == "pw"
    assert (await container.llm.generate("x", text="y")).data == {"summary": "y"}


async def test_a_plugin_process_reads_its_namespace_secrets_with_the_namespace_key_alone():
    from engine.namespace_secrets import SecretBox, SecretsAccessor, SecretUnreadable

    box = SecretBox(b"m" * 32)
    sealed = {"API_TOKEN": box.encrypt("acme", "API_TOKEN", "s3cret")}
    import base64

    context = {"key": base64.b64encode(box.namespace_key("acme")).decode(), "sealed": sealed}
    assert await SecretsAccessor.from_context("acme", context).get("API_TOKEN") == "s3cret"
    # the same context cannot be used to read the tokens as another namespace's
    with pytest.raises(SecretUnreadable):
        await SecretsAccessor.from_context("globex", context).get("API_TOKEN")
    assert await SecretsAccessor.from_context("acme", {}).list() == []
