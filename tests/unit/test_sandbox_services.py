"""What a plugin host may ask its owner for, answered for one namespace only."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.sandbox.services import HostServices

pytestmark = pytest.mark.unit


@pytest.fixture
def services(tmp_path: Path) -> HostServices:
    objects = tmp_path / "objects"
    for folder, text in (("sluice-data/acme/docs", "ours"), ("sluice-data/globex/vault", "theirs"), ("sluice-plugins/acme", "theirs")):
        (objects / folder / "dir").mkdir(parents=True)
        (objects / folder / "dir" / "a.txt").write_text(text * 100)
    (objects / "sluice-data" / "acme" / "docs" / ".sluice").mkdir()
    (objects / "sluice-data" / "acme" / "docs" / ".sluice" / "lock").write_text("internal")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    found = HostServices("acme", asset_access={"kind": "local", "root": str(objects), "data_bucket": "sluice-data"},
                         secrets_context={}, models_dir=tmp_path / "models", max_asset_bytes=1000)
    found.scratch = scratch
    return found


def test_an_object_of_the_namespace_is_copied_into_the_hosts_scratch(services, tmp_path):
    answer = services.answer("asset", {"url": "s3://sluice-data/acme/docs/dir/a.txt", "suffix": ".txt"})
    assert answer["ok"], answer
    copy = Path(answer["value"])
    assert copy.is_relative_to(tmp_path / "scratch" / "assets") and copy.read_text() == "ours" * 100
    by_tenant_name = services.answer("asset", {"url": "s3://docs/dir/a.txt"})
    assert by_tenant_name["ok"] and Path(by_tenant_name["value"]).read_text() == "ours" * 100, by_tenant_name
    copy.unlink(), Path(by_tenant_name["value"]).unlink()  # the copies count against the host's room
    by_path = services.answer("asset", {"url": (tmp_path / "objects" / "sluice-data" / "acme" / "docs" / "dir" / "a.txt").as_uri()})
    assert by_path["ok"], by_path


@pytest.mark.parametrize("url", [
    "s3://sluice-data/globex/vault/dir/a.txt",
    "s3://sluice-data/acme/../globex/vault/dir/a.txt",
    "s3://sluice-plugins/acme/dir/a.txt",
    "s3://acme/docs/dir/a.txt",
    "s3://vault/dir/a.txt",
    "s3://docs/../../globex/vault/dir/a.txt",
    "file://{root}/objects/sluice-data/globex/vault/dir/a.txt",
    "file://{root}/objects/sluice-data/acme/docs/../../globex/vault/dir/a.txt",
    "file://{root}/objects/sluice-plugins/acme/dir/a.txt",
    "file://{root}/objects/sluice-data/acme/docs/.sluice/lock",
    "file:///etc/passwd",
    "http://169.254.169.254/latest/meta-data",
])
def test_anything_else_is_refused_and_nothing_is_copied(services, tmp_path, url):
    answer = services.answer("asset", {"url": url.format(root=tmp_path)})
    assert not answer["ok"] and answer["error"]["kind"] in ("forbidden", "not_found"), answer
    assert "theirs" not in str(answer)
    assert not (tmp_path / "scratch" / "assets").exists() or not any((tmp_path / "scratch" / "assets").iterdir())


def test_asset_copies_are_bounded_per_host(services, tmp_path):
    assert services.answer("asset", {"url": "s3://sluice-data/acme/docs/dir/a.txt"})["ok"]  # 400 bytes of 1000
    assert services.answer("asset", {"url": "s3://sluice-data/acme/docs/dir/a.txt"})["ok"]  # 800
    refused = services.answer("asset", {"url": "s3://sluice-data/acme/docs/dir/a.txt"})
    assert not refused["ok"] and "does not fit" in refused["error"]["message"], refused


def test_unknown_requests_and_bad_arguments_are_answers_not_errors(services):
    assert services.answer("shell", {})["error"]["kind"] == "invalid_input"
    assert services.answer("asset", {"nope": 1})["error"]["kind"] == "invalid_input"
    assert services.answer("secret", {"name": "missing"})["error"]["kind"] == "secret_not_found"
