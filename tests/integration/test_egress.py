"""Plugin-host egress end to end, in one process: an HTTP client talks to the HostRelay on
loopback, the relay gets a channel per connection from the EgressBroker over a socketpair (as the
host and its owner do), and the broker proxies to a loopback HTTP server pinned as "api.test".

Only loopback is ever contacted: names are answered by a fake resolver, and every refused
destination is refused before a connection is attempted."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from engine.sandbox.egress import EgressBroker, EgressPolicy, HostRelay

pytestmark = pytest.mark.integration

FAKE_DNS = {"private.test": "10.0.0.1"}


def fake_resolve(host, port, family=0, type=0, proto=0, flags=0):
    if host not in FAKE_DNS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (FAKE_DNS[host], port))]


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def _answer(self, body: bytes) -> None:
        self.server.seen.append({"method": self.command, "path": self.path, "version": self.request_version,  # type: ignore[attr-defined]
                                 "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        payload = json.dumps({"path": self.path, "body": body.decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@dataclass
class Egress:
    broker: EgressBroker
    relay: HostRelay
    port: int
    events: list[dict[str, Any]] = field(default_factory=list)

    def close(self) -> None:
        self.relay.close()
        self.broker.close()


def start_egress(upstream_port: int, **kwargs: Any) -> Egress:
    policy = EgressPolicy(
        allow=(f"api.test:{upstream_port}", f"down.test:{upstream_port + 1 if upstream_port < 65535 else 1}",
               "private.test:443"),
        pinned={"api.test": "127.0.0.1", "down.test": "127.0.0.1"},
    )
    trusted, host = socket.socketpair()
    events: list[dict[str, Any]] = []
    broker = EgressBroker(policy, trusted, on_event=events.append, connect_timeout_s=2.0, idle_timeout_s=5.0,
                          head_timeout_s=0.5, resolve=fake_resolve, **kwargs)
    broker.start()
    relay = HostRelay(host, idle_timeout_s=5.0)
    port = relay.start()
    return Egress(broker, relay, port, events)


@pytest.fixture
def egress(upstream: ThreadingHTTPServer) -> Iterator[Egress]:
    running = start_egress(upstream.server_address[1])
    yield running
    running.close()


def client(egress: Egress) -> httpx.Client:
    return httpx.Client(proxy=f"http://127.0.0.1:{egress.port}", trust_env=False, timeout=5.0)


def raw(egress: Egress) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", egress.port), timeout=5.0)
    return sock


def read_head(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def read_all(sock: socket.socket) -> bytes:
    buf = b""
    while chunk := sock.recv(65536):
        buf += chunk
    return buf


def egress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sluice-egress") and t.is_alive()]


# --- allowed ----------------------------------------------------------------------------------------

def test_a_get_to_a_declared_pinned_host_reaches_the_loopback_server(egress, upstream):
    port = upstream.server_address[1]
    with client(egress) as http:
        answer = http.get(f"http://api.test:{port}/hello?x=1", headers={"Proxy-Secret": "hidden", "X-Kept": "yes"})
    assert answer.status_code == 200
    assert answer.json() == {"path": "/hello?x=1", "body": ""}
    seen = upstream.seen[-1]
    assert seen["path"] == "/hello?x=1"
    assert seen["headers"]["host"] == f"api.test:{port}"
    assert seen["headers"]["connection"] == "close"
    assert seen["headers"]["x-kept"] == "yes"
    assert not [name for name in seen["headers"] if name.startswith("proxy-")]
    assert {"action": "network", "host": "api.test", "port": port, "allowed": True}.items() <= egress.events[-1].items()


def test_a_post_body_is_forwarded_to_the_declared_host(egress, upstream):
    port = upstream.server_address[1]
    with client(egress) as http:
        answer = http.post(f"http://api.test:{port}/items", content=b"x" * 100_000)
    assert answer.status_code == 200
    assert answer.json()["body"] == "x" * 100_000


def test_a_connect_tunnel_carries_http_to_the_declared_host(egress, upstream):
    port = upstream.server_address[1]
    with raw(egress) as sock:
        sock.sendall(f"CONNECT api.test:{port} HTTP/1.1\r\nHost: api.test:{port}\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200 Connection established")
        sock.sendall(f"GET /through-the-tunnel HTTP/1.1\r\nHost: api.test:{port}\r\nConnection: close\r\n\r\n".encode())
        response = read_all(sock)
    assert response.startswith(b"HTTP/1.1 200")
    assert b'"path": "/through-the-tunnel"' in response
    assert upstream.seen[-1]["path"] == "/through-the-tunnel"


# --- refused ----------------------------------------------------------------------------------------

def test_a_get_to_an_undeclared_loopback_address_answers_403_and_reports_the_refusal(egress, upstream):
    port = upstream.server_address[1]
    with client(egress) as http:
        answer = http.get(f"http://127.0.0.1:{port}/")
    assert answer.status_code == 403
    assert answer.text.startswith("sluice egress: ")
    assert upstream.seen == []
    event = egress.events[-1]
    assert (event["action"], event["host"], event["port"], event["allowed"]) == ("network", "127.0.0.1", port, False)
    assert event["reason"] in answer.text


def test_a_connect_to_a_declared_name_that_resolves_to_a_private_address_is_refused(egress):
    with raw(egress) as sock:
        sock.sendall(b"CONNECT private.test:443 HTTP/1.1\r\nHost: private.test:443\r\n\r\n")
        response = read_all(sock)
    assert response.startswith(b"HTTP/1.1 403 Forbidden")
    assert b"sluice egress: private.test resolves to 10.0.0.1, which is a private address" in response
    assert egress.events[-1]["allowed"] is False and egress.events[-1]["host"] == "private.test"


def test_an_undeclared_host_is_refused_for_connect_and_for_plain_http(egress):
    with raw(egress) as sock:
        sock.sendall(b"CONNECT evil.example.com:443 HTTP/1.1\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 403 Forbidden")
    with client(egress) as http:
        answer = http.get("http://evil.example.com/")
    assert answer.status_code == 403
    assert "not declared" in answer.text
    assert [e["allowed"] for e in egress.events] == [False, False]


def test_a_declared_host_that_does_not_answer_gives_502(upstream):
    port = upstream.server_address[1]
    closed = port + 1 if port < 65535 else 1
    probe = socket.socket()
    if probe.connect_ex(("127.0.0.1", closed)) == 0:
        probe.close()
        pytest.skip(f"something listens on 127.0.0.1:{closed}")
    probe.close()
    running = start_egress(port)
    try:
        with client(running) as http:
            answer = http.get(f"http://down.test:{closed}/")
        assert answer.status_code == 502
    finally:
        running.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"hello\r\n\r\n", b"400"),
        (b"GET /relative HTTP/1.1\r\nHost: api.test\r\n\r\n", b"400"),
        (b"GET https://api.test/ HTTP/1.1\r\n\r\n", b"400"),
        (b"GET http://user:pw@api.test/ HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT api.test HTTP/1.1\r\n\r\n", b"400"),
        (b"GET http://api.test/ HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
        (b"GET http://api.test/ HTTP/1.1\r\n", b"408"),
    ],
)
def test_requests_the_broker_cannot_read_get_an_error_status(egress, request_bytes, status):
    with raw(egress) as sock:
        sock.sendall(request_bytes)
        response = read_all(sock)
    assert response.split(b" ")[1] == status


def test_connections_beyond_the_cap_answer_503(upstream):
    port = upstream.server_address[1]
    running = start_egress(port, max_connections=1)
    try:
        with raw(running) as first:
            first.sendall(f"CONNECT api.test:{port} HTTP/1.1\r\n\r\n".encode())
            assert read_head(first).startswith(b"HTTP/1.1 200")
            with client(running) as http:
                answer = http.get(f"http://api.test:{port}/")
            assert answer.status_code == 503
    finally:
        running.close()


def test_close_ends_every_thread_and_socket_even_with_a_tunnel_open(upstream):
    port = upstream.server_address[1]
    running = start_egress(port)
    tunnel = raw(running)
    tunnel.sendall(f"CONNECT api.test:{port} HTTP/1.1\r\n\r\n".encode())
    assert read_head(tunnel).startswith(b"HTTP/1.1 200")
    assert egress_threads()
    started = time.monotonic()
    running.close()
    running.close()  # idempotent
    assert time.monotonic() - started < 5
    assert egress_threads() == []
    assert running.broker.control.fileno() == -1 and running.relay.control.fileno() == -1
    assert read_all(tunnel) == b""
    tunnel.close()
