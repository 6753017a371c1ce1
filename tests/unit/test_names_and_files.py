"""Names match their whole pattern (a trailing newline is not a second "1.0.0"), object keys cannot
hide control or bidirectional-text characters, and the platform's key and data files are private
and never left empty by a crash."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from events.errors import InvalidInput
from functions.records import models as model_records
from functions.records import plugins as plugin_records
from functions.records.secret_store import SecretsStore
from functions.records.tenancy import check_namespace_name
from infra.bootstrap import read_or_create_secret
from infra.catalog.memory import MemoryCatalog
from infra.objectstore.local import key_problem
from infra.objectstore.rules import check_bucket
from infra.sqlite import open_durable

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("check, good, field", [
    (plugin_records.check_name, "my_plugin", "name"),
    (plugin_records.parse_version, "1.0.0", "version"),
    (model_records.check_name, "my-model", "name"),
    (model_records.parse_version, "1.0.0", "version"),
    (model_records.check_alias, "prod", "alias"),
    (check_namespace_name, "acme", "namespace_name"),
])
@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\u202e"])
def test_a_name_with_anything_after_its_pattern_is_refused_naming_the_field(check, good, field, suffix):
    check(good)
    with pytest.raises(InvalidInput) as refused:
        check(good + suffix)
    assert refused.value.details.get("field") == field or field in refused.value.message


@pytest.mark.parametrize("bucket", ["docs\n", "docs ", "do\u200fcs"])
def test_a_bucket_name_with_a_trailing_newline_or_hidden_character_is_invalid(bucket):
    with pytest.raises(InvalidInput, match="invalid bucket name"):
        check_bucket(bucket)


async def test_a_secret_name_with_a_trailing_newline_is_refused(tmp_path):
    from infra.settings import Settings

    catalog = MemoryCatalog()
    await catalog.connect()
    store = SecretsStore.from_settings(catalog, Settings(data_dir=tmp_path, admin_key="sk_admin_" + "x" * 32))
    with pytest.raises(InvalidInput, match="invalid secret name"):
        await store.put("acme", "API_KEY\n", "value")


@pytest.mark.parametrize("key, shown", [
    ("invoice\u202efdp.exe", "U+202E, a bidirectional-text control"),
    ("a\u2066b.txt", "U+2066, a bidirectional-text control"),
    ("report\t2024.txt", "U+0009, a control character"),
    ("line\nbreak.txt", "U+000A, a control character"),
    ("bell\x07.txt", "U+0007, a control character"),
])
def test_object_keys_cannot_hide_control_or_bidi_characters(key, shown):
    assert key_problem(key) == f"the key contains {shown}, which would show one name and be another"


@pytest.mark.parametrize("key", ["reports/q1 summary.txt", "données/été.csv", "日本語/ファイル.txt", "a+b=c.txt"])
def test_ordinary_unicode_keys_stay_valid(key):
    assert key_problem(key) is None


def test_a_key_file_is_created_0600_once_and_read_back_the_same(tmp_path: Path):
    path = tmp_path / "keys" / "secrets.key"
    first = read_or_create_secret(path, prefix="sk_")
    assert read_or_create_secret(path, prefix="sk_") == first and first.startswith("sk_")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(path.parent) == ["secrets.key"]  # no temporary file left beside it


def test_an_empty_key_file_is_refused_not_replaced(tmp_path: Path):
    path = tmp_path / "secrets.key"
    path.write_text("")
    with pytest.raises(RuntimeError, match="is empty.*restore it from a backup"):
        read_or_create_secret(path)
    assert path.read_text() == ""  # nothing was written over what an operator may still recover


def test_sqlite_files_of_the_platform_are_private(tmp_path: Path):
    conn = open_durable(tmp_path / "catalog.sqlite3", busy_timeout_s=1)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    conn.close()
    assert modes and set(modes.values()) == {0o600}, modes


def test_an_admin_key_shorter_than_32_characters_is_refused_at_start(tmp_path: Path):
    from pydantic import ValidationError

    from infra.settings import Settings

    with pytest.raises(ValidationError, match="SLUICE_ADMIN_KEY must be at least 32 characters"):
        Settings(data_dir=tmp_path, admin_key="sk_admin_short")
    assert Settings(data_dir=tmp_path, admin_key="k" * 32).admin_key is not None
    assert Settings(data_dir=tmp_path).admin_key is None  # unset: generated into the data dir
