"""Plugin hosts, driven directly (no scanner in front): whatever plugin code does at run time, it
stays in its namespace. Each refusal names the plugin file and line; the owner goes on."""

from __future__ import annotations

import http.server
import os
import socket
import threading
from pathlib import Path

import pandas as pd
import pytest

from engine.sandbox.client import PluginHost, SandboxOptions, open_host
from engine.sandbox.errors import PluginHostError
from engine.sandbox.protocol import decode_frame, encode_frame
from engine.sandbox.services import HostServices

pytestmark = pytest.mark.integration

MANIFEST = '''
metadata = {"feature_extractor_name": "probe", "version": "1.0.0"}
supported_input_types = ["text"]
features = [{"feature_type": "embedding", "feature_name": "v", "embedding_dim": 2, "distance_metric": "cosine"}]
'''

PIPELINE = '''
from engine.plugins.extractors.pipeline import PipelineDefinition, StepDefinition, build_pipeline_steps

from .probe import Probe


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    definition = PipelineDefinition(name="probe", version="1.0.0", steps=[StepDefinition(service_class=Probe)])
    return {"steps": build_pipeline_steps(definition)}
'''

PROBE = '''
import json

import pandas as pd


def attempt(action):
    try:
        return "LEAKED: " + repr(action())[:200]
    except BaseException as exc:
        return f"blocked: {type(exc).__name__}: {exc}"


class Probe:
    def __init__(self, **kwargs):
        pass

    def __call__(self, batch):
        out = {}
        for i, code in enumerate(batch["data"]):
            scope = {}
            exec(compile("def action():\\n" + "\\n".join("    " + line for line in code.splitlines()), "probe_action.py", "exec"), scope)
            out[i] = attempt(scope["action"])
        batch["outcome"] = [out[i] for i in range(len(batch))]
        batch["v"] = [[1.0, 0.0]] * len(batch)
        return batch
'''


@pytest.fixture
def plugin(tmp_path) -> Path:
    root = tmp_path / "plugin"
    root.mkdir()
    (root / "manifest.py").write_text(MANIFEST)
    (root / "pipeline.py").write_text(PIPELINE)
    (root / "probe.py").write_text(PROBE)
    return root


@pytest.fixture
def host_factory(tmp_path, plugin):
    hosts = []

    def make(namespace: str = "acme", network_allow: tuple[str, ...] = (), pinned: dict | None = None,
             asset_access: dict | None = None) -> PluginHost:
        options = SandboxOptions(cache_root=str(tmp_path / "cache"), pinned_hosts=pinned or {}, call_timeout_s=60)
        services = HostServices(namespace, asset_access=asset_access or {"kind": "local", "root": str(tmp_path / "objects"),
                                                                         "data_bucket": "sluice-data"},
                                secrets_context={}, models_dir=tmp_path / "cache" / namespace / "models")
        host = open_host(namespace=namespace, plugin="probe 1.0.0", plugin_root=plugin,
                         run={"plugin_id": "plg_probe", "name": "probe", "version": "1.0.0", "features": [["v", 2]]},
                         services=services, options=options, network_allow=network_allow)
        hosts.append(host)
        answer, _ = host.call("stage", {"indexes": [0], "first": True, "last": False})
        assert answer["ok"], answer
        return host

    yield make
    for host in hosts:
        host.close()


def probe(host: PluginHost, *snippets: str) -> list[str]:
    """Each snippet (the body of a function) run as plugin code in the host; its outcome."""
    frame = pd.DataFrame({"data": list(snippets), "object_id": [f"o{i}" for i in range(len(snippets))]})
    answer, body = host.call("run", {}, encode_frame(frame))
    assert answer["ok"], answer
    return list(decode_frame(body)["outcome"])


def test_the_host_reports_every_confinement_layer_on(host_factory):
    host = host_factory()
    for layer in ("landlock", "seccomp", "network", "rlimits", "privileges"):
        assert host.layers.get(layer, "").startswith("on"), host.layers


def test_plugin_code_cannot_read_the_platforms_files_or_secrets(host_factory, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "secrets.key").write_text("MASTER-KEY")
    monkeypatch.setenv("SLUICE_ADMIN_KEY", "admin-secret-admin-secret-admin-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    host = host_factory()
    outcomes = probe(
        host,
        f"return open({str(data_dir / 'secrets.key')!r}).read()",
        "return open('/etc/shadow').read()",
        "import os\nreturn {k: v for k, v in os.environ.items() if 'SECRET' in k or k.startswith('SLUICE')} or 1/0",
        f"return pd.read_csv({str(data_dir / 'secrets.key')!r})",
        "import os\nreturn os.listdir('/')",
        f"import os\nreturn os.listdir({str(tmp_path)!r})",
    )
    assert all(o.startswith("blocked") for o in outcomes), outcomes
    assert "SandboxViolation" in outcomes[0] and "at probe.py:" in outcomes[0], outcomes[0]
    violations = host.drain_violations()
    assert any(v["action"] == "open" and v["target"].endswith("secrets.key") and v["file"] == "probe.py" and v["line"] > 0
               for v in violations), violations


def test_plugin_code_writes_only_in_its_scratch_folder(host_factory, tmp_path):
    host = host_factory()
    outside = tmp_path / "outside.txt"
    outcomes = probe(
        host,
        f"open({str(outside)!r}, 'w').write('x')",
        "open('/tmp/sluice-pwned', 'w').write('x')",
        "import os\nopen(os.path.join(os.environ['HOME'], 'mine.txt'), 'w').write('ok')\nreturn 'wrote'",
        "import tempfile\nwith tempfile.NamedTemporaryFile() as f:\n    f.write(b'x')\nreturn 'temp ok'",
    )
    assert outcomes[0].startswith("blocked") and outcomes[1].startswith("blocked"), outcomes
    assert outcomes[2] == "LEAKED: 'wrote'" and outcomes[3] == "LEAKED: 'temp ok'", outcomes  # its own scratch: allowed
    assert not outside.exists() and not Path("/tmp/sluice-pwned").exists()


def test_plugin_code_starts_no_process_by_any_route(host_factory):
    host = host_factory()
    outcomes = probe(
        host,
        "import subprocess\nreturn subprocess.run(['/bin/true']).returncode",
        "import os\nreturn os.system('true')",
        "import os\nreturn os.fork()",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nif libc.fork() == -1:\n    raise OSError(ctypes.get_errno(), 'fork')",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nif libc.execve(b'/bin/true', None, None) == -1:\n"
        "    raise OSError(ctypes.get_errno(), 'execve')",
        "import multiprocessing\np = multiprocessing.Process(target=print)\np.start()\nreturn p.pid",
    )
    assert all(o.startswith("blocked") for o in outcomes), outcomes


def test_platform_modules_and_ray_cannot_be_imported(host_factory):
    outcomes = probe(
        host_factory(),
        "import ray\nreturn ray.__version__",
        "import infra.settings\nreturn 1",
        "import functions.records.secret_store\nreturn 1",
        "from engine.models import registry\nreturn registry",
        "import boto3\nreturn 1",
    )
    assert all(o.startswith("blocked") for o in outcomes), outcomes


def test_sdk_classes_and_modules_cannot_be_monkeypatched(host_factory):
    host = host_factory()
    outcomes = probe(
        host,
        "from engine.namespace_secrets import SecretsAccessor\nSecretsAccessor.get = None\nreturn 1",
        "import engine.assets\nengine.assets.download_asset = None\nreturn 1",
        "import shared.plugins\nshared.plugins.open_asset = None\nreturn 1",
    )
    assert all(o.startswith("blocked") for o in outcomes), outcomes
    assert {v["action"] for v in host.drain_violations()} == {"attribute"}


def test_there_is_no_network_without_a_declaration(host_factory):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        outcomes = probe(
            host_factory(),
            f"import socket\nreturn socket.create_connection(('127.0.0.1', {port}), timeout=2)",
            "import socket\nreturn socket.create_connection(('10.0.0.1', 80), timeout=2)",
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nreturn s.sendto(b'x', ('192.0.2.1', 53))",
            "import urllib.request\nreturn urllib.request.urlopen('http://169.254.169.254/latest/meta-data', timeout=2).read()",
        )
    finally:
        listener.close()
    assert all(o.startswith("blocked") for o in outcomes), outcomes


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the api"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_an_api_plugin_reaches_exactly_its_declared_host(host_factory):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        host = host_factory(network_allow=(f"api.test:{port}",), pinned={"api.test": "127.0.0.1"})
        outcomes = probe(
            host,
            f"import urllib.request\nreturn urllib.request.urlopen('http://api.test:{port}/v1', timeout=10).read()",
            f"import urllib.request\nreturn urllib.request.urlopen('http://127.0.0.1:{port}/v1', timeout=10).read()",
            f"import urllib.request\nreturn urllib.request.urlopen('http://other.test:{port}/v1', timeout=10).read()",
            f"import socket\nreturn socket.create_connection(('127.0.0.1', {port}), timeout=2)",
        )
    finally:
        server.shutdown()
    assert outcomes[0] == "LEAKED: b'hello from the api'", outcomes
    assert all(o.startswith("blocked") for o in outcomes[1:]), outcomes
    refused = [v for v in host.drain_violations() if v["action"] == "network"]
    assert refused, "refused destinations are reported"


def test_assets_of_another_namespace_are_refused(host_factory, tmp_path):
    data = tmp_path / "objects" / "sluice-data"
    for namespace in ("acme", "globex"):
        (data / namespace / "bucket").mkdir(parents=True)
        (data / namespace / "bucket" / "doc.txt").write_text(f"a,b\n1,{namespace}-bucket\n")
    host = host_factory()
    outcomes = probe(
        host,
        "from shared.plugins import open_asset\nwith open_asset('s3://sluice-data/acme/bucket/doc.txt') as p:\n"
        "    import pandas as pd\n    return pd.read_csv(p).to_dict()",
        "from shared.plugins import open_asset\nwith open_asset('s3://sluice-data/globex/bucket/doc.txt') as p:\n"
        "    import pandas as pd\n    return pd.read_csv(p).to_dict()",
        f"from shared.plugins import open_asset\nwith open_asset({(data / 'globex' / 'bucket' / 'doc.txt').as_uri()!r}) as p:\n"
        "    return open(p).read()",
        f"from shared.plugins import open_asset\nwith open_asset({(tmp_path / 'cache').as_uri()!r}) as p:\n    return 1",
    )
    assert outcomes[0].startswith("LEAKED") and "acme-bucket" in outcomes[0], outcomes  # its own namespace's object
    assert all(o.startswith("blocked") for o in outcomes[1:]), outcomes
    assert all("globex" not in o for o in outcomes[1:3] if not o.startswith("blocked")), outcomes


def test_a_crashing_host_fails_the_call_naming_the_plugin_and_the_next_call_gets_a_new_host(host_factory):
    host = host_factory()
    frame = pd.DataFrame({"data": ["import os\nos._exit(3)"], "object_id": ["o0"]})
    with pytest.raises(PluginHostError, match="probe 1.0.0.*exited with status 3"):
        host.call("run", {}, encode_frame(frame))
    assert host.call("stage", {"indexes": [0], "first": True, "last": False})[0]["ok"]
    assert probe(host, "return 'alive'") == ["LEAKED: 'alive'"]


def test_a_host_past_its_time_limit_is_stopped(host_factory):
    host = host_factory()
    frame = pd.DataFrame({"data": ["while True:\n    pass"], "object_id": ["o0"]})
    with pytest.raises(PluginHostError, match="did not finish within 2 s"):
        host.call("run", {}, encode_frame(frame), timeout_s=2)


def test_hosts_of_two_namespaces_cannot_see_each_others_scratch(host_factory):
    acme, globex = host_factory("acme"), host_factory("globex")
    [acme_home] = probe(
        acme, "import os\nopen(os.path.join(os.environ['HOME'], 'acme.txt'), 'w').write('private')\nreturn os.environ['HOME']"
    )
    home = acme_home.removeprefix("LEAKED: ").strip("'")
    [outcome] = probe(globex, f"return open({os.path.join(home, 'acme.txt')!r}).read()")
    assert outcome.startswith("blocked"), outcome


def test_the_owner_reads_a_hosts_answer_only_as_plain_arrow(host_factory):
    import pyarrow as pa

    from engine.sandbox.protocol import ProtocolError, trusted_table

    class Pickled(pa.ExtensionType):
        def __init__(self) -> None:
            super().__init__(pa.binary(), "sluice.test.pickled")

        def __arrow_ext_serialize__(self) -> bytes:
            return b""

        @classmethod
        def __arrow_ext_deserialize__(cls, storage_type, serialized):
            return cls()

    pa.register_extension_type(Pickled())
    try:
        storage = pa.array([b"\x80\x04K\x01."], pa.binary())
        table = pa.table({"x": pa.ExtensionArray.from_storage(Pickled(), storage)})
        with pytest.raises(ProtocolError, match="extension type"):
            trusted_table(encode_frame(table))
    finally:
        pa.unregister_extension_type("sluice.test.pickled")
