"""Egress of a plugin host: the hosts a plugin declared, and the proxy that holds it to them.

The pieces, by side of the trust boundary:

- `EgressPolicy`, `parse_allow_entry` and `check_destination` (TRUSTED side) are pure policy.
  A destination is allowed only when (host, port) matches an entry of the manifest's
  `network = {'allow': [...]}`, its port is not one of the platform's own, and every address it
  resolves to is globally routable (loopback, private, link-local with the cloud metadata
  service, unique-local, CGNAT, multicast, reserved and unspecified addresses are refused, also
  when wrapped in IPv4-mapped, IPv4-compatible, 6to4, Teredo or NAT64 IPv6). An operator's pin
  (host -> IP) replaces resolution and is exempt from the address check. The address returned is
  the one checked and the one connected to: nothing resolves the name a second time, so DNS
  rebinding cannot swap it. IP literals in odd forms ("2130706433", "0177.0.0.1", "0x7f.1") are
  refused outright.
- `EgressBroker` (TRUSTED side, in the parent) answers each request byte on the egress control
  socket with one end of a fresh socketpair (SCM_RIGHTS) and serves the HTTP proxy protocol on its
  own end: `CONNECT host:port` tunnels and absolute-form `GET http://host/...` requests. It treats
  the host as hostile: request heads are capped (16 KiB) and timed, concurrent connections are
  capped, idle connections end, no exception escapes its threads, and `close()` ends them all.
- `HostRelay` (UNTRUSTED side, inside the plugin host) listens on 127.0.0.1 in the host's private
  network namespace, where plugin HTTP clients find it through `proxy_env()`, and copies bytes
  between each TCP client and a channel received from the broker. It decides nothing and uses
  only the standard library; it never calls socket(AF_UNIX) (the host's seccomp filter forbids
  it), only the inherited control socket and the descriptors received on it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., Any]
EventSink = Callable[[dict[str, Any]], None]

MAX_HEAD_BYTES = 16 * 1024
"""Largest proxy request head (request line and headers) the broker reads."""
HEAD_TIMEOUT_S = 30.0
"""Time a client has to send its whole request head."""
REPLY_TIMEOUT_S = 5.0
_CHUNK = 64 * 1024
_REQUEST_BYTE = b"\x01"
_BROKER_THREAD = "sluice-egress-broker"
_RELAY_THREAD = "sluice-egress-relay"

_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL_RE = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_ULA = ipaddress.ip_network("fc00::/7")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "upgrade", "host"})
_STATUS = {
    400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 431: "Request Header Fields Too Large",
    502: "Bad Gateway", 503: "Service Unavailable",
}


class EgressRefused(Exception):
    """A destination the policy does not allow: `host`, `port` and `reason`, a sentence."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host, self.port, self.reason = host, port, reason
        super().__init__(f"egress to {format_entry(host, port)} refused: {reason}")


# --- policy (trusted side) -------------------------------------------------------------------------

@dataclass(frozen=True)
class EgressPolicy:
    """What one plugin may reach. Construction normalises and validates: `allow` entries go
    through `parse_allow_entry` (ValueError on a bad one), `pinned` becomes a new dict whose keys
    are normalised host names and whose values are IP addresses (ValueError otherwise). Picklable."""

    allow: tuple[str, ...] = ()
    pinned: Mapping[str, str] = field(default_factory=dict, hash=False)
    denied_ports: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        rules = tuple(dict.fromkeys(parse_allow_entry(entry) for entry in self.allow))
        object.__setattr__(self, "_rules", rules)
        object.__setattr__(self, "allow", tuple(format_entry(host, port) for host, port in rules))
        object.__setattr__(self, "pinned", _normalise_pins(self.pinned))
        object.__setattr__(self, "denied_ports", frozenset(int(p) for p in self.denied_ports))

    def match(self, host: str, port: int) -> str | None:
        """The allow entry that (normalised host, port) matches, or None."""
        for pattern, allowed_port in self._rules:  # type: ignore[attr-defined]
            if allowed_port == port and _host_matches(pattern, host):
                return format_entry(pattern, allowed_port)
        return None


def _normalise_pins(pins: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for host, address in dict(pins).items():
        try:
            out[_normalise_host(host)] = str(ipaddress.ip_address(str(address).strip()))
        except ValueError as exc:
            raise ValueError(f"pin {host!r} -> {address!r}: {exc}") from None
    return out


def _host_matches(pattern: str, host: str) -> bool:
    """Exact match, or `*.suffix` matching exactly one more label (as in TLS certificates)."""
    if not pattern.startswith("*."):
        return pattern == host
    suffix = pattern[1:]
    return host.endswith(suffix) and "." not in host[: -len(suffix)] and len(host) > len(suffix) \
        and not _is_ip(host)


def format_entry(host: str, port: int) -> str:
    """"host:port", with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_allow_entry(entry: str) -> tuple[str, int]:
    """A manifest's allow entry as (host, port): the host lower-case, IDNA-encoded, or an IP
    address in canonical form, or `*.suffix`. Raises ValueError with a sentence that says what to
    write instead."""
    if not isinstance(entry, str):
        raise ValueError(f"an allow entry is a string 'host:port', not a {type(entry).__name__}")
    text = entry.strip()
    if not text:
        raise ValueError("an allow entry is empty; write 'host:port', e.g. 'api.example.com:443'")
    if "://" in text:
        raise ValueError(f"{entry!r} has a scheme; write only 'host:port', e.g. 'api.example.com:443'")
    if any(c in text for c in "/?#"):
        raise ValueError(f"{entry!r} has a path; write only 'host:port' (every path of an allowed host is reachable)")
    if "@" in text or any(c.isspace() for c in text):
        raise ValueError(f"{entry!r} is not 'host:port' (no credentials or spaces)")
    try:
        host_text, port_text = _split_host_port(text)
        port = _parse_port(port_text)
        host = _normalise_allow_host(host_text)
    except ValueError as exc:
        raise ValueError(f"{entry!r}: {exc}") from None
    return host, port


def _split_host_port(text: str, *, default_port: int | None = None) -> tuple[str, str]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("an IPv6 address has no closing ']'")
        host, rest = text[: close + 1], text[close + 1:]
        if not rest and default_port is not None:
            return host, str(default_port)
        if not rest.startswith(":"):
            raise ValueError("a port is required, e.g. '[2001:db8::1]:443'")
        return host, rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_port is not None:
            return text, str(default_port)
        raise ValueError("a port is required, e.g. 'api.example.com:443'")
    if ":" in host:
        raise ValueError("write an IPv6 address in brackets, e.g. '[2001:db8::1]:443'")
    return host, port


def _parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise ValueError(f"the port {text!r} is not a number from 1 to 65535")
    return int(text)


def _normalise_allow_host(text: str) -> str:
    if text.startswith("*"):
        if not text.startswith("*."):
            raise ValueError("a wildcard covers one whole label: write '*.example.com'")
        suffix = _normalise_host(text[2:])
        if _is_ip(suffix) or suffix.count(".") < 1:
            raise ValueError("a wildcard needs a domain of at least two labels after it, e.g. '*.example.com'")
        return "*." + suffix
    host = _normalise_host(text)
    if _is_ip(host):
        reason = non_public_reason(ipaddress.ip_address(host))
        if reason:
            raise ValueError(f"{host} is a {reason} address; plugins reach only public addresses "
                             "(an operator can pin a host name to an on-premises address)")
    return host


def _normalise_host(host: str) -> str:
    """Lower-case A-label host name, or the canonical text of an IP address. ValueError when it is
    neither, including IPv4 addresses in forms other than the dotted quad."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if ":" not in text:
            raise ValueError(f"{host!r} is not an IPv6 address")
    if ":" in text:
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    text = text.removesuffix(".")
    if not text:
        raise ValueError("the host is empty")
    try:
        name = text.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError(f"{host!r} is not a valid host name ({exc})") from None
    labels = name.split(".")
    if _NUMERIC_LABEL_RE.match(labels[-1]):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise ValueError(f"{host!r} looks like an IP address in a non-standard form; write it as a dotted "
                             "quad such as 93.184.216.34") from None
    if len(name) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise ValueError(f"{host!r} is not a valid host name")
    return name


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped IPv6", ip.ipv4_mapped
    if ip.sixtofour is not None:
        return "6to4 IPv6", ip.sixtofour
    if ip in _NAT64:
        return "NAT64 IPv6", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def non_public_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address ("loopback", "private", ...), or None when it is one."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = non_public_reason(embedded[1])
            return f"{inner} ({embedded[0]})" if inner else None
        if ip in _IPV4_COMPATIBLE:
            return "IPv4-compatible IPv6 (deprecated)"
        if ip.teredo is not None:
            return "Teredo tunnel"
        if ip.is_site_local:
            return "site-local"
        if ip in _ULA:
            return "unique-local (private)"
    if ip.is_link_local:
        return "link-local (which includes the cloud metadata service)"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT (shared)"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-global"
    return None


def check_destination(policy: EgressPolicy, host: str, port: int, *, resolve: Resolver = socket.getaddrinfo) -> str:
    """The IP address to connect to for (host, port), or raise EgressRefused.

    In order: (host, port) must match an allow entry; the port must not be one of the platform's
    own; a pinned host answers its pin; otherwise the name is resolved once and refused when ANY
    of its addresses is not public. The address returned is one of those checked."""
    try:
        name = _normalise_host(host)
    except ValueError as exc:
        raise EgressRefused(host, port, str(exc)) from None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise EgressRefused(name, port, f"{port!r} is not a port number")
    if policy.match(name, port) is None:
        raise EgressRefused(name, port, f"{format_entry(name, port)} is not declared in the plugin's manifest "
                                        "(network = {'allow': ['host:port', ...]})")
    if port in policy.denied_ports:
        raise EgressRefused(name, port, f"port {port} belongs to the platform and is never reachable from plugins")
    pinned = policy.pinned.get(name)
    if pinned is not None:
        return pinned
    addresses = _addresses(name, port, resolve)
    for ip in addresses:
        reason = non_public_reason(ip)
        if reason:
            shown = "is" if str(ip) == name else f"resolves to {ip}, which is"
            raise EgressRefused(name, port, f"{name} {shown} a {reason} address; plugins reach only public addresses")
    first = addresses[0]
    mapped = first.ipv4_mapped if isinstance(first, ipaddress.IPv6Address) else None
    return str(mapped or first)


def _addresses(name: str, port: int, resolve: Resolver) -> list[IPAddress]:
    if _is_ip(name):
        return [ipaddress.ip_address(name)]
    try:
        infos = resolve(name, port, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise EgressRefused(name, port, f"{name} cannot be resolved ({exc})") from None
    addresses: list[IPAddress] = []
    for info in infos or ():
        try:
            addresses.append(ipaddress.ip_address(str(info[4][0])))
        except (ValueError, IndexError, TypeError):
            raise EgressRefused(name, port, f"{name} resolves to something that is not an IP address") from None
    if not addresses:
        raise EgressRefused(name, port, f"{name} resolves to no address")
    return addresses


def proxy_env(port: int) -> dict[str, str]:
    """Environment that sends plugin HTTP clients (requests, httpx, urllib, curl) to the relay."""
    url = f"http://127.0.0.1:{port}"
    names = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
    return {**{name: url for name in names}, "NO_PROXY": "", "no_proxy": ""}


# --- bytes both ways (both sides) ------------------------------------------------------------------

def _splice(a: socket.socket, b: socket.socket, idle_timeout_s: float) -> None:
    """Copy bytes both ways until both directions ended, or `idle_timeout_s` without traffic
    (also the longest a write may block). The end of one side's stream (or an error reading it)
    becomes a half-close (SHUT_WR) of the other; when writing to a side fails, what the other side
    still sends is read and dropped, so that its last answer is not lost to a reset."""
    for sock in (a, b):
        sock.settimeout(idle_timeout_s)
    with _selector() as selector:
        selector.register(a, selectors.EVENT_READ, _Direction(b))
        selector.register(b, selectors.EVENT_READ, _Direction(a))
        open_directions = 2
        while open_directions:
            events = selector.select(timeout=idle_timeout_s)
            if not events:
                return
            for key, _ in events:
                if not key.data.pump(key.fileobj):
                    selector.unregister(key.fileobj)
                    open_directions -= 1
                    _shutdown(key.data.sink, socket.SHUT_WR)


def _selector() -> selectors.BaseSelector:
    """poll(2) where there is one: the syscall socket timeouts already use, so a seccomp filter
    that lets the host run at all lets the relay wait (epoll may not be on its list)."""
    return selectors.PollSelector() if hasattr(selectors, "PollSelector") else selectors.SelectSelector()


class _Direction:
    """One direction of a splice: bytes read from a source go to `sink` until writing fails."""

    def __init__(self, sink: socket.socket) -> None:
        self.sink, self.writable = sink, True

    def pump(self, source: Any) -> bool:
        """One read from `source`; False at the end of its stream. Raises TimeoutError when the
        sink has not taken the bytes within its timeout."""
        try:
            chunk = source.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not chunk:
            return False
        if self.writable:
            try:
                self.sink.sendall(chunk)
            except TimeoutError:
                raise
            except OSError:
                self.writable = False
        return True


def _shutdown(sock: socket.socket | None, how: int = socket.SHUT_RDWR) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(how)
    except OSError:
        pass


def _close(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.close()
    except OSError:
        pass


class _Tracker:
    """Sockets and threads one side owns, so that `close()` can end them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.sockets: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()

    def add(self, *socks: socket.socket) -> bool:
        with self.lock:
            if self.stopped.is_set():
                return False
            self.sockets.update(socks)
            return True

    def discard(self, *socks: socket.socket | None) -> None:
        with self.lock:
            for sock in socks:
                self.sockets.discard(sock)
        for sock in socks:
            _close(sock)

    def spawn(self, name: str, target: Callable[..., None], *args: Any) -> bool:
        with self.lock:
            if self.stopped.is_set():
                return False
            thread = threading.Thread(target=self._run, args=(target, *args), name=name, daemon=True)
            self.threads.add(thread)
            thread.start()
            return True

    def _run(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except BaseException:  # noqa: BLE001 - a hostile peer must never take a thread down noisily
            pass
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    def stop(self, extra: Iterable[socket.socket], join_s: float) -> None:
        with self.lock:
            self.stopped.set()
            sockets, threads = list(self.sockets), list(self.threads)
        for sock in [*extra, *sockets]:
            _shutdown(sock)
        deadline = time.monotonic() + join_s
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for sock in [*extra, *sockets]:
            _close(sock)


# --- the broker (trusted side) ---------------------------------------------------------------------

class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        super().__init__(reason)


class _ClientGone(Exception):
    pass


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    host: str = ""
    port: int = 0
    authority: str = ""
    path: str = ""

    @property
    def tunnel(self) -> bool:
        return self.method == "CONNECT"

    def origin_form(self) -> bytes:
        """The request as the upstream server should see it: origin-form request line, the URL's
        authority as Host, no hop-by-hop or Proxy-* headers, and `Connection: close`."""
        named = {token.strip().lower() for name, value in self.headers if name.lower() == "connection"
                 for token in value.split(",")}
        lines = [f"{self.method} {self.path} {self.version}", f"Host: {self.authority}"]
        for name, value in self.headers:
            lowered = name.lower()
            if lowered in _HOP_BY_HOP or lowered in named or lowered.startswith("proxy-"):
                continue
            lines.append(f"{name}: {value}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_head(sock: socket.socket, timeout_s: float) -> tuple[bytes, bytes]:
    """(head without the blank line, bytes read after it). Raises _BadRequest or _ClientGone."""
    buf = bytearray()
    deadline = time.monotonic() + timeout_s
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            if end > MAX_HEAD_BYTES:
                break
            return bytes(buf[:end]), bytes(buf[end + 4:])
        if len(buf) >= MAX_HEAD_BYTES + 4:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            raise _BadRequest(408, "the request head did not arrive in time")
        sock.settimeout(left)
        try:
            chunk = sock.recv(MAX_HEAD_BYTES + 4 - len(buf))
        except TimeoutError:
            raise _BadRequest(408, "the request head did not arrive in time") from None
        if not chunk:
            raise _ClientGone()
        buf += chunk
    raise _BadRequest(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")


def _parse_request(head: bytes) -> _Request:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN_RE.match(parts[0]) or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest(400, "the request line is not 'METHOD target HTTP/1.x'")
    method, target, version = parts
    headers = tuple(_parse_header(line) for line in lines[1:])
    request = _Request(method=method, target=target, version=version, headers=headers)
    return _with_destination(request)


def _parse_header(line: str) -> tuple[str, str]:
    name, sep, value = line.partition(":")
    value = value.strip(" \t")
    if not sep or not _TOKEN_RE.match(name) or any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in value):
        raise _BadRequest(400, f"malformed header line {line[:80]!r}")
    return name, value


def _with_destination(request: _Request) -> _Request:
    try:
        if request.tunnel:
            host, port_text = _split_host_port(request.target)
            return _replace(request, host=host, port=_parse_port(port_text), authority=request.target, path="")
        lowered = request.target[:8].lower()
        if lowered.startswith("https://"):
            raise _BadRequest(400, "send https requests through CONNECT (set HTTPS_PROXY)")
        if not lowered.startswith("http://"):
            raise _BadRequest(400, "not a proxy request: use CONNECT host:port or an absolute http:// URL")
        rest = request.target[len("http://"):]
        cut = min((rest.find(c) for c in "/?#" if c in rest), default=len(rest))
        authority, path = rest[:cut], rest[cut:].split("#", 1)[0]
        if "@" in authority:
            raise _BadRequest(400, "credentials in the URL are not forwarded")
        host, port_text = _split_host_port(authority, default_port=80)
        path = path if path.startswith("/") else "/" + path
        return _replace(request, host=host, port=_parse_port(port_text), authority=authority, path=path)
    except ValueError as exc:
        raise _BadRequest(400, f"bad destination {request.target[:200]!r}: {exc}") from None


def _replace(request: _Request, **changes: Any) -> _Request:
    return dataclasses.replace(request, **changes)


def _reply(sock: socket.socket, status: int, reason: str) -> None:
    """A plain-text error answer, then end the stream. Never raises."""
    body = f"sluice egress: {reason}".encode("utf-8", "replace")
    head = (f"HTTP/1.1 {status} {_STATUS.get(status, 'Error')}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
    try:
        sock.settimeout(REPLY_TIMEOUT_S)
        sock.sendall(head + body)
    except OSError:
        pass
    _shutdown(sock, socket.SHUT_WR)


class EgressBroker:
    """The trusted end of a plugin host's egress: answers each request byte on `control` with a
    fresh channel and serves the HTTP proxy protocol on it, within `policy`. Owns `control` from
    `start()` on and closes it in `close()`.

    Hostile-host bounds: a request head of at most MAX_HEAD_BYTES within `head_timeout_s`, at most
    `max_connections` at once (others answer 503), connections end after `idle_timeout_s` without
    traffic, upstream connects time out after `connect_timeout_s`."""

    def __init__(
        self, policy: EgressPolicy, control: socket.socket, *, on_event: EventSink | None = None,
        connect_timeout_s: float = 10.0, idle_timeout_s: float = 300.0, max_connections: int = 32,
        head_timeout_s: float = HEAD_TIMEOUT_S, resolve: Resolver = socket.getaddrinfo,
    ) -> None:
        self.policy, self.control, self.on_event = policy, control, on_event
        self.connect_timeout_s, self.idle_timeout_s = connect_timeout_s, idle_timeout_s
        self.max_connections, self.head_timeout_s, self.resolve = max_connections, head_timeout_s, resolve
        self._tracker = _Tracker()
        self._active = 0
        self._started = False

    def start(self) -> None:
        with self._tracker.lock:
            if self._started:
                return
            self._started = True
        self.control.settimeout(None)  # a request may come at any time; close() wakes the reader
        self._tracker.spawn(f"{_BROKER_THREAD}-control", self._control_loop)

    def close(self) -> None:
        """Stop every thread and close every socket, `control` included. Idempotent."""
        self._tracker.stop([self.control], join_s=5.0)

    # --- control socket: one request byte -> one channel, in order

    def _control_loop(self) -> None:
        while not self._tracker.stopped.is_set():
            try:
                data = self.control.recv(256)
            except OSError:
                return
            if not data:
                return
            for _ in data:
                if not self._answer():
                    return

    def _answer(self) -> bool:
        ours, theirs = socket.socketpair()
        try:
            socket.send_fds(self.control, [_REQUEST_BYTE], [theirs.fileno()])
        except OSError:
            _close(ours)
            return False
        finally:
            _close(theirs)
        if not self._admit(ours):
            _reply(ours, 503, f"more than {self.max_connections} connections at once")
            _close(ours)
        return True

    def _admit(self, end: socket.socket) -> bool:
        with self._tracker.lock:
            if self._active >= self.max_connections:
                return False
            self._active += 1
        if self._tracker.add(end) and self._tracker.spawn(f"{_BROKER_THREAD}-conn", self._serve, end):
            return True
        self._tracker.discard(end)
        self._release()
        return True  # stopping: `end` is closed, nothing to answer

    def _release(self) -> None:
        with self._tracker.lock:
            self._active -= 1

    # --- one connection

    def _serve(self, end: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            upstream = self._open(end)
            if upstream is not None:
                _splice(end, upstream, self.idle_timeout_s)
        except (OSError, _ClientGone):
            pass
        finally:
            self._tracker.discard(end, upstream)
            self._release()

    def _open(self, end: socket.socket) -> socket.socket | None:
        """Read and check the request; connect and forward its first bytes. None when answered
        with an error instead."""
        try:
            head, rest = _read_head(end, self.head_timeout_s)
            request = _parse_request(head)
        except _BadRequest as exc:
            _reply(end, exc.status, str(exc))
            return None
        try:
            address = check_destination(self.policy, request.host, request.port, resolve=self.resolve)
        except EgressRefused as exc:
            self._emit(exc.host, exc.port, False, exc.reason)
            _reply(end, 403, exc.reason)
            return None
        host = _normalise_host(request.host)
        self._emit(host, request.port, True, "", address=address)
        upstream = self._connect(address, request.port)
        if upstream is None:
            _reply(end, 502, f"cannot connect to {format_entry(host, request.port)}")
            return None
        if request.tunnel:
            end.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            first = rest
        else:
            first = request.origin_form() + rest
        if first:
            upstream.sendall(first)
        return upstream

    def _connect(self, address: str, port: int) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        if not self._tracker.add(sock):
            _close(sock)
            return None
        try:
            sock.settimeout(self.connect_timeout_s)
            sock.connect((address, port))
        except OSError:
            self._tracker.discard(sock)
            return None
        return sock

    def _emit(self, host: str, port: int, allowed: bool, reason: str, **extra: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event({"action": "network", "host": host, "port": port, "allowed": allowed, "reason": reason, **extra})
        except Exception:  # noqa: BLE001 - a failing sink must not break the proxy
            pass


# --- the relay (untrusted side, inside the host) ----------------------------------------------------

class HostRelay:
    """The host's end of egress: a TCP listener on 127.0.0.1 whose clients are each spliced to a
    channel the broker sends over `control`. Owns `control` and closes it in `close()`. Never
    creates an AF_UNIX socket."""

    def __init__(self, control: socket.socket, *, port: int = 0, idle_timeout_s: float = 3600.0) -> None:
        self.control, self.port, self.idle_timeout_s = control, port, idle_timeout_s
        self._tracker = _Tracker()
        self._control_lock = threading.Lock()
        self._control_dead = False
        self._listener: socket.socket | None = None

    def start(self) -> int:
        """Listen on 127.0.0.1:port (0: any free port) and return the port."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
        except OSError:
            _close(listener)
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._tracker.spawn(f"{_RELAY_THREAD}-accept", self._accept_loop, listener)
        return self.port

    def close(self) -> None:
        """Stop accepting, end every connection, close the listener and `control`. Idempotent."""
        extra = [s for s in (self._listener, self.control) if s is not None]
        self._tracker.stop(extra, join_s=5.0)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._tracker.stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                if self._tracker.stopped.is_set():
                    return
                time.sleep(0.05)  # e.g. out of descriptors: try again shortly
                continue
            if not (self._tracker.add(client) and self._tracker.spawn(f"{_RELAY_THREAD}-conn", self._serve, client)):
                self._tracker.discard(client)

    def _serve(self, client: socket.socket) -> None:
        channel: socket.socket | None = None
        try:
            channel = self._channel()
            if channel is not None and self._tracker.add(channel):
                _splice(client, channel, self.idle_timeout_s)
        except OSError:
            pass
        finally:
            self._tracker.discard(client, channel)

    def _channel(self) -> socket.socket | None:
        """Ask the broker for one channel: one byte out, one descriptor back, under a lock so that
        answers pair with requests."""
        with self._control_lock:
            if self._control_dead:
                return None
            try:
                self.control.sendall(_REQUEST_BYTE)
                data, fds, _flags, _addr = socket.recv_fds(self.control, 1, 1)
            except OSError:
                self._control_dead = True
                return None
            if not data:
                self._control_dead = True
        for extra in fds[1:]:
            _close_fd(extra)
        if not data or not fds:
            for fd in fds[:1]:
                _close_fd(fd)
            return None
        return socket.socket(fileno=fds[0])


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
