"""The AST security scanner is the lint and first layer between an uploaded plugin and the plugin
host that runs it: every escape technique in the red-team corpus must be refused with a named rule,
and ordinary ML plugin code (the benign corpora and the benign plugin folders) must pass untouched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.plugins.scanner import (
    RETIRED_RULES,
    RULES,
    PluginSecurityScanner,
    ScanReport,
    manifest_declares_network,
    scan_directory,
    scan_source,
)
from events.payloads import Finding
from tests.unit.scanner_corpus import BENIGN, BENIGN_NETWORK, NETWORK_UNDECLARED, REDTEAM

pytestmark = pytest.mark.unit

BENIGN_PLUGINS = Path(__file__).resolve().parents[1] / "plugins" / "benign"
PLUGIN_FOLDERS = sorted(p for p in BENIGN_PLUGINS.iterdir() if p.is_dir())


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def rule_ids(source: str | bytes) -> set[str]:
    return {f.rule_id for f in scan_source(source, "processors/core.py")}


def write_plugin(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


CLEAN = {
    "manifest.py": "metadata = {'feature_extractor_name': 'x', 'version': '1.0.0'}\n",
    "pipeline.py": "from .manifest import metadata\n\n"
    "def build_steps(extractor_request, container=None, base_steps=None, **kwargs):\n    return {'steps': []}\n",
}


# --- the corpora ---------------------------------------------------------------------------------

def test_the_red_team_corpus_is_large_and_has_distinct_names() -> None:
    names = [name for name, _ in REDTEAM]
    assert len(names) >= 45
    assert len(set(names)) == len(names)
    assert len(BENIGN) >= 20


@pytest.mark.parametrize(("name", "source"), REDTEAM, ids=[name for name, _ in REDTEAM])
def test_every_red_team_technique_is_rejected_with_a_named_rule(name: str, source: str | bytes) -> None:
    found = errors(scan_source(source, "processors/core.py"))
    assert found, f"{name!r} slipped through the scanner"
    for finding in found:
        assert finding.rule_id in RULES
        assert finding.message.strip() and finding.hint.strip()
        assert finding.file == "processors/core.py"


@pytest.mark.parametrize(("name", "source"), BENIGN, ids=[name for name, _ in BENIGN])
def test_ordinary_plugin_code_yields_no_errors(name: str, source: str) -> None:
    assert errors(scan_source(source, "processors/core.py")) == []


@pytest.mark.parametrize(("name", "source"), BENIGN_NETWORK, ids=[name for name, _ in BENIGN_NETWORK])
def test_ordinary_http_code_of_a_plugin_that_declares_network_yields_no_errors(name: str, source: str) -> None:
    assert errors(scan_source(source, "processors/core.py", network_declared=True)) == []
    undeclared = scan_source(source, "processors/core.py")
    assert errors(undeclared) == [] and "SLU705" in {f.rule_id for f in undeclared}


@pytest.mark.parametrize(("name", "source"), NETWORK_UNDECLARED, ids=[name for name, _ in NETWORK_UNDECLARED])
def test_a_network_library_without_a_declaration_is_a_warning_because_the_sandbox_refuses_its_calls(name: str, source: str) -> None:
    found = scan_source(source, "processors/core.py")
    assert errors(found) == [] and {f.rule_id for f in found} == {"SLU705"}


def test_the_red_team_corpus_covers_every_active_rule_family() -> None:
    found = {f.rule_id for _, source in REDTEAM for f in scan_source(source, "x.py")}
    assert {"SLU0", "SLU1", "SLU2", "SLU3", "SLU4", "SLU5"} <= {r[:4] for r in found}
    assert {"SLU103", "SLU105", "SLU307", "SLU308"} <= found
    assert not found & set(RETIRED_RULES)


@pytest.mark.parametrize("folder", PLUGIN_FOLDERS, ids=[p.name for p in PLUGIN_FOLDERS])
def test_every_benign_plugin_folder_passes_the_scan(folder: Path) -> None:
    report = scan_directory(folder)
    assert report.passed, [f"{f.file}:{f.line} [{f.rule_id}] {f.message}" for f in report.findings]
    assert report.files_scanned >= 3
    assert {"manifest.py", "pipeline.py"} <= {p.name for p in folder.iterdir()}


def test_there_are_at_least_ten_benign_plugins_and_one_uses_realtime() -> None:
    assert len(PLUGIN_FOLDERS) >= 10
    assert any((folder / "realtime.py").exists() for folder in PLUGIN_FOLDERS)


def test_a_benign_plugin_with_a_warning_fails_only_in_strict_mode() -> None:
    warned = [f for f in PLUGIN_FOLDERS if not scan_directory(f, strict=True).passed]
    assert warned, "no benign plugin exercises a warning"
    for folder in warned:
        report = scan_directory(folder)
        assert report.passed and all(f.severity == "warning" for f in report.findings)


# --- aliases and resolution ---------------------------------------------------------------------

def test_os_system_through_an_import_alias_is_rejected_and_the_message_names_the_alias() -> None:
    [import_line, call_line] = scan_source("from os import system as s\ns('id')\n", "a.py")
    assert call_line.rule_id == "SLU301" and call_line.line == 2
    assert call_line.message == "os.system (imported as `s`) runs shell commands"
    assert import_line.line == 1


def test_a_module_alias_is_named_in_the_message() -> None:
    [finding] = scan_source("import os as o\no.popen('id')\n", "a.py")
    assert "os.popen" in finding.message and "`o`" in finding.message


def test_an_attribute_chain_through_os_path_resolves_to_os_system() -> None:
    [finding] = scan_source("import os\nos.path.os.system('id')\n", "a.py")
    assert finding.message.startswith("os.system") and "os.path.os.system" in finding.message


def test_a_reassigned_module_is_followed_to_its_function() -> None:
    [finding] = scan_source("import os\nx = os\ny = x\ny.system('id')\n", "a.py")
    assert finding.rule_id == "SLU301" and finding.line == 4 and "`y`" in finding.message


def test_a_literal_getattr_on_a_module_is_the_function_itself() -> None:
    found = scan_source("import os\nrun = getattr(os, 'system')\nrun('id')\n", "a.py")
    assert [(f.rule_id, f.line) for f in found] == [("SLU301", 2), ("SLU301", 3)]


def test_similarly_named_safe_functions_are_not_mistaken_for_pickle_loads() -> None:
    source = ("import json, yaml, torch\nimport numpy as np\nfrom PIL import Image\nimport platform\n"
              "json.loads('1')\nyaml.safe_load('a: 1')\nnp.load('a.npy')\ntorch.load('w.pt', weights_only=True)\n"
              "Image.open('x.png')\nplatform.system()\nnp.stack([1])\n")
    assert scan_source(source, "a.py") == []


def test_torch_load_is_judged_by_its_weights_only_argument() -> None:
    assert rule_ids("import torch\ntorch.load('w.pt', weights_only=True)\n") == set()
    assert rule_ids("import torch\ntorch.load('w.pt')\n") == {"SLU503"}
    assert rule_ids("import torch\ntorch.load('w.pt', weights_only=False)\n") == {"SLU503"}
    assert rule_ids("import torch\nflag = True\ntorch.load('w.pt', weights_only=flag)\n") == {"SLU503"}
    assert rule_ids("import torch\nloaders = list(map(torch.load, ['a.pt']))\n") == {"SLU503"}


def test_relative_imports_are_plugin_internal_and_ignored() -> None:
    assert scan_source("from .processors import subprocess\nfrom . import os\n", "pipeline.py") == []


def test_a_sensitive_module_passed_as_a_value_is_rejected_because_it_escapes_alias_tracking() -> None:
    assert rule_ids("import os\nrunner(os)\n") == {"SLU405"}
    assert rule_ids("import os\nx = os\nx.getcwd()\n") == set()
    assert rule_ids("import numpy as np\nbackend(np)\n") == set()


def test_code_hidden_in_a_string_annotation_is_scanned_but_docstrings_and_literals_are_not() -> None:
    [finding] = scan_source("def f(a: \"eval('1')\"):\n    pass\n", "a.py")
    assert finding.rule_id == "SLU201" and "in the string" in finding.message
    assert scan_source("def f():\n    '''eval('1')'''\nMODE = 'eval'\n", "a.py") == []


# --- builtins and getattr -----------------------------------------------------------------------

def test_a_forbidden_builtin_is_flagged_when_merely_referenced() -> None:
    [finding] = scan_source("handlers = {'calc': eval}\n", "a.py")
    assert finding.rule_id == "SLU201" and "eval" in finding.message


def test_getattr_with_a_computed_name_is_fine_except_on_a_sensitive_module() -> None:
    """Computed names were SLU204; plugin modules now get guarded builtins that refuse private names
    at run time, so only a literal dunder, getattr as a value and a computed name on a sensitive
    module stay refused."""
    assert rule_ids("x = getattr(config, 'model_name', 'default')\n") == set()
    assert rule_ids("name = 'model'\nx = getattr(config, name)\n") == set()
    assert rule_ids("x = getattr(config, 'mod' + 'el')\nok = hasattr(config, 'mod' + 'el')\n") == set()
    assert rule_ids("import torch\ndtype = getattr(torch, name)\n") == set()
    assert rule_ids("x = getattr(config, '__class__')\n") == {"SLU204"}
    assert rule_ids("x = getattr(fn, '__globals__')\n") == {"SLU204"}
    assert rule_ids("import os\nrun = getattr(os, name)\n") >= {"SLU204"}
    assert rule_ids("import os\nok = hasattr(os, name)\n") == set()
    assert rule_ids("g = getattr\n") == {"SLU204"}
    assert rule_ids("setattr(config, name, 1)\n") == {"SLU203"}


def test_dir_and_hasattr_with_literal_names_are_allowed() -> None:
    assert scan_source("names = dir(obj)\nok = hasattr(obj, '_model') and hasattr(obj, '__len__')\n", "a.py") == []


def test_pathlib_file_io_is_allowed_now_that_the_host_confines_files() -> None:
    source = ("from pathlib import Path\nHERE = Path(__file__).parent\ntext = (HERE / 'a.txt').read_text()\n"
              "out = Path('/tmp') / 'x'\nout.mkdir(exist_ok=True)\n(out / 'b').write_bytes(b'1')\n(out / 'b').unlink()\n")
    assert scan_source(source, "a.py") == []
    assert "SLU601" in RETIRED_RULES and "SLU601" not in RULES


def test_type_with_three_arguments_is_only_a_warning() -> None:
    [finding] = scan_source("Dyn = type('Dyn', (object,), {})\nname = type(obj).__name__\n", "a.py")
    assert (finding.rule_id, finding.severity) == ("SLU704", "warning")


# --- network declarations, platform modules, installers and readers -----------------------------

def test_a_network_library_without_a_declaration_in_the_manifest_is_warned_about(tmp_path: Path) -> None:
    code = {"processors/client.py": "import httpx\nimport urllib.request\n"}
    undeclared = scan_directory(write_plugin(tmp_path / "a", {**CLEAN, **code}))
    assert undeclared.passed and not scan_directory(tmp_path / "a", strict=True).passed
    assert [(f.rule_id, f.file, f.line) for f in undeclared.findings] == [
        ("SLU705", "processors/client.py", 1), ("SLU705", "processors/client.py", 2)]
    assert 'network = {"allow": ["host:port"]}' in undeclared.findings[0].message
    assert "manifest.py" in undeclared.findings[0].hint
    manifest = CLEAN["manifest.py"] + "network = {'allow': ['api.example.com:443']}\n"
    declared = scan_directory(write_plugin(tmp_path / "b", {**CLEAN, "manifest.py": manifest, **code}))
    assert declared.passed and declared.findings == []


def test_a_declaration_keeps_raw_sockets_and_other_protocols_refused() -> None:
    found = scan_source("import socket\nimport smtplib\nimport requests\n", "a.py", network_declared=True)
    assert [(f.rule_id, f.line) for f in found] == [("SLU101", 1), ("SLU105", 2)]


def test_a_single_file_without_a_directory_counts_as_undeclared() -> None:
    assert rule_ids("import requests\n") == {"SLU705"}
    assert rule_ids("network = {'allow': ['api.example.com:443']}\nimport requests\n") == {"SLU705"}


@pytest.mark.parametrize(("manifest", "declared"), [
    ("network = {'allow': ['api.example.com:443']}\n", True),
    ("network: dict = {'allow': ['api.example.com:443', 'b.example.com:443']}\n", True),
    ("HOSTS = ['a.example.com:443']\nnetwork = {'allow': HOSTS}\n", False),  # register needs a literal (SLU825)
    ("network = None\n", False),
    ("network = {'allow': []}\n", False),
    ("network: dict\n", False),
    ("def f():\n    network = {'allow': ['a.example.com:443']}\n", False),
    ("if False:\n    network = {'allow': ['a.example.com:443']}\n", False),
    ("networks = {'allow': ['a.example.com:443']}\n", False),
    ("network = {'allow': [\n", False),
])
def test_the_network_declaration_is_a_module_level_assignment(manifest: str, declared: bool) -> None:
    assert manifest_declares_network(manifest) is declared


def test_a_linked_manifest_declares_nothing(tmp_path: Path) -> None:
    outside = write_plugin(tmp_path / "outside", {"manifest.py": CLEAN["manifest.py"] + "network = {'allow': ['a.example.com:443']}\n"})
    plugin = write_plugin(tmp_path / "plugin", {"pipeline.py": CLEAN["pipeline.py"], "client.py": "import httpx\n"})
    os.symlink(outside / "manifest.py", plugin / "manifest.py")
    assert {(f.rule_id, f.file) for f in scan_directory(plugin).findings} == {("SLU012", "manifest.py"), ("SLU705", "client.py")}


def test_platform_modules_are_refused_but_the_sdk_and_its_error_types_are_not() -> None:
    assert rule_ids("from engine import sandbox\n") == {"SLU103"}
    assert rule_ids("from engine.plugins import loader, extractors\n") == {"SLU103"}
    assert rule_ids("import events\n") == {"SLU103"}
    assert rule_ids("from events import errors, payloads\n") == {"SLU103"}
    assert rule_ids("from events import errors\nfrom engine.sandbox.errors import SandboxViolation\n") == set()
    assert rule_ids("from engine.plugins import request, container, frame\nfrom engine import llm, secrets, assets, models\n") == set()
    [finding] = scan_source("import engine.models\nx = engine.ingest.worker\ny = engine.models.lazy\n", "a.py")
    assert (finding.rule_id, finding.line) == ("SLU103", 2) and "engine.ingest" in finding.message


def test_an_aliased_platform_module_is_reported_once_where_it_is_imported() -> None:
    found = scan_source("import engine.sandbox.audit as a\nx = a.AuditGuard\nb = a\nb.refuse()\n", "a.py")
    assert [(f.rule_id, f.line) for f in found] == [("SLU103", 1)]


def test_installers_and_readers_have_their_own_rules() -> None:
    assert rule_ids("import pip\n") == {"SLU307"}
    assert rule_ids("import mylib\nmylib.setup()\n") == set()
    assert rule_ids("import linecache\nlinecache.getline(p, 1)\n") == {"SLU308"}
    assert rule_ids("import linecache\nlinecache.clearcache()\n") == set()
    assert rule_ids("import tokenize, io\nlist(tokenize.tokenize(io.BytesIO(b).readline))\n") == set()
    assert rule_ids("import tokenize\nlist(tokenize.generate_tokens(f.readline))\n") == {"SLU308"}
    assert rule_ids("import tokenize\nlist(map(tokenize.tokenize, readers))\n") == {"SLU308"}


# --- strict mode, dedupe, ordering --------------------------------------------------------------

def test_warnings_fail_the_scan_only_in_strict_mode(tmp_path: Path) -> None:
    write_plugin(tmp_path, {**CLEAN, "processors/core.py": "class P:\n    def name(self):\n        return self.__class__.__name__\n"})
    relaxed, strict = scan_directory(tmp_path), scan_directory(tmp_path, strict=True)
    assert relaxed.passed and not strict.passed
    assert [f.severity for f in strict.findings] == ["warning"] == [f.severity for f in relaxed.findings]


def test_identical_findings_on_one_line_are_reported_once() -> None:
    found = scan_source("x = eval('1') + eval('2')\n", "a.py")
    assert len(found) == 1 and found[0].rule_id == "SLU201"


def test_findings_are_sorted_errors_first_then_by_file_and_line(tmp_path: Path) -> None:
    write_plugin(tmp_path, {
        **CLEAN,
        "a.py": "import pickle\nx = obj.__dict__\n",
        "b.py": "import os\n\n\nos.system('id')\n",
        "c.py": "eval('1')\n",
    })
    report = scan_directory(tmp_path)
    keys = [(f.severity != "error", f.file, f.line) for f in report.findings]
    assert keys == sorted(keys)
    assert report.findings[0].severity == "error" and report.findings[-1].severity == "warning"
    assert not report.passed and report.files_scanned == 5


# --- files in a plugin directory ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["processors/core.pyc", "native.so", "ext.cpython-311-x86_64-linux-gnu.so", "boot.pth", "lib.dylib"])
def test_compiled_or_native_files_in_a_plugin_are_errors(tmp_path: Path, name: str) -> None:
    write_plugin(tmp_path, {**CLEAN, name: b"\x7fELF"})
    report = scan_directory(tmp_path)
    assert not report.passed
    assert [(f.rule_id, f.file) for f in report.findings] == [("SLU010", name)]


def test_a_pycache_folder_is_an_error(tmp_path: Path) -> None:
    write_plugin(tmp_path, {**CLEAN, "__pycache__/pipeline.cpython-311.pyc": b"\x00"})
    [finding] = scan_directory(tmp_path).findings
    assert (finding.rule_id, finding.file) == ("SLU011", "__pycache__")


def test_a_symbolic_link_is_an_error_and_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_plugin(outside, {"evil.py": "import subprocess\n"})
    plugin = write_plugin(tmp_path / "plugin", dict(CLEAN))
    os.symlink(outside, plugin / "linked_dir")
    os.symlink(outside / "evil.py", plugin / "helper.py")
    report = scan_directory(plugin)
    assert sorted((f.rule_id, f.file) for f in report.findings) == [("SLU012", "helper.py"), ("SLU012", "linked_dir")]
    assert report.files_scanned == 2


def test_data_files_are_fine(tmp_path: Path) -> None:
    write_plugin(tmp_path, {**CLEAN, "labels.json": "[]", "README.md": "# x", "model.onnx": b"\x08\x01", "cfg.yaml": "a: 1"})
    report = scan_directory(tmp_path)
    assert report == ScanReport(passed=True, findings=[], files_scanned=2)


def test_a_syntax_error_is_a_finding_with_its_line() -> None:
    [finding] = scan_source("x = 1\n\ndef broken(:\n    pass\n", "pipeline.py")
    assert (finding.rule_id, finding.line, finding.severity) == ("SLU001", 3, "error")


def test_a_non_utf8_coding_cookie_is_an_error_but_utf8_is_fine() -> None:
    assert rule_ids(b"# -*- coding: utf-7 -*-\nx = 1\n") == {"SLU004"}
    assert rule_ids(b"# coding: latin-1\nx = 1\n") == {"SLU004"}
    assert rule_ids(b"# -*- coding: utf-8 -*-\nx = '\xc3\xa9'\n") == set()
    assert rule_ids(b"\xef\xbb\xbfx = 1\n") == set()


def test_null_bytes_oversized_and_deeply_nested_sources_are_findings_not_exceptions() -> None:
    assert rule_ids(b"x = 1\x00\n") == {"SLU003"}
    assert rule_ids(b"x = 1\n" + b"#" * (2 * 1024 * 1024)) == {"SLU002"}
    assert rule_ids("x = " + "a." * 50_000 + "b\n") <= {"SLU001", "SLU005"}
    assert rule_ids("x = " + "(" * 500 + ")" * 500 + "\n") <= {"SLU001", "SLU005"}


# --- the rule table and the shim ----------------------------------------------------------------

def test_every_rule_has_an_id_a_title_a_hint_and_a_family() -> None:
    for rule_id, rule in RULES.items():
        assert rule.rule_id == rule_id and rule_id[:4] in {f"SLU{i}" for i in range(8)} and len(rule_id) == 6
        assert rule.title and rule.hint and rule.severity in ("error", "warning")
        assert (rule.severity == "warning") == rule_id.startswith("SLU7")
    for rule_id, why in RETIRED_RULES.items():
        assert rule_id not in RULES and len(rule_id) == 6 and why


def test_the_plugin_security_scanner_shim_reports_violations(tmp_path: Path) -> None:
    write_plugin(tmp_path, {**CLEAN, "processors/core.py": "import os\nos.system('id')\nname = self.__class__.__name__\n"})
    result = PluginSecurityScanner().scan_directory(str(tmp_path))
    assert not result.passed
    [error, warning] = result.violations
    assert (error.filename, error.line, error.severity, error.rule_id) == ("processors/core.py", 2, "error", "SLU301")
    assert error.message and error.hint and warning.severity == "warning"


def test_the_shim_in_strict_mode_fails_on_warnings(tmp_path: Path) -> None:
    write_plugin(tmp_path, {**CLEAN, "processors/core.py": "import pickle\n"})
    assert PluginSecurityScanner().scan_directory(tmp_path).passed
    assert not PluginSecurityScanner(strict_mode=True).scan_directory(tmp_path).passed
