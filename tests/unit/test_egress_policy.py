"""Egress policy of plugin hosts, without sockets: allow entries, the destination check (with fake
resolvers, so no name is ever looked up) and the static reading of a manifest's `network`."""

from __future__ import annotations

import socket

import pytest

from engine.plugins.manifest import RULES, read_network_declaration
from engine.sandbox.egress import EgressPolicy, EgressRefused, check_destination, parse_allow_entry, proxy_env

pytestmark = pytest.mark.unit


def resolver(table: dict[str, list[str]]):
    """A getaddrinfo stand-in: names in `table` answer their addresses, any other name fails."""
    calls: list[str] = []

    def resolve(host, port, family=0, type=0, proto=0, flags=0):
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def no_resolution(*args, **kwargs):
    raise AssertionError("the check must not resolve this name")


# --- allow entries --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("api.example.com:443", ("api.example.com", 443)),
        ("  API.Example.COM:8443 ", ("api.example.com", 8443)),
        ("api.example.com.:443", ("api.example.com", 443)),
        ("*.example.com:443", ("*.example.com", 443)),
        ("bücher.example:443", ("xn--bcher-kva.example", 443)),
        ("93.184.216.34:80", ("93.184.216.34", 80)),
        ("[2606:4700:4700::1111]:443", ("2606:4700:4700::1111", 443)),
    ],
)
def test_allow_entries_are_normalised_to_lower_case_idna_host_and_port(entry, expected):
    assert parse_allow_entry(entry) == expected


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("", "empty"),
        ("api.example.com", "port is required"),
        ("api.example.com:", "not a number"),
        ("api.example.com:0", "not a number from 1 to 65535"),
        ("api.example.com:65536", "not a number from 1 to 65535"),
        ("api.example.com:https", "not a number"),
        ("https://api.example.com:443", "scheme"),
        ("api.example.com:443/v1", "path"),
        ("user@api.example.com:443", "credentials"),
        ("10.0.0.1:80", "private"),
        ("127.0.0.1:80", "loopback"),
        ("169.254.169.254:80", "link-local"),
        ("[::1]:443", "loopback"),
        ("[fd00::1]:443", "unique-local"),
        ("2130706433:80", "non-standard form"),
        ("0177.0.0.1:80", "non-standard form"),
        ("0x7f.0.0.1:80", "non-standard form"),
        ("*:443", "wildcard"),
        ("*.com:443", "at least two labels"),
        ("api.*.com:443", "not a valid host name"),
        ("*api.example.com:443", "one whole label"),
        ("::1:443", "brackets"),
        ("bad_host!.com:443", "not a valid host name"),
    ],
)
def test_bad_allow_entries_raise_a_value_error_that_says_what_is_wrong(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_allow_entry(entry)


def test_a_non_string_allow_entry_is_refused():
    with pytest.raises(ValueError, match="string"):
        parse_allow_entry(443)  # type: ignore[arg-type]


def test_a_policy_normalises_its_entries_and_refuses_a_bad_one():
    policy = EgressPolicy(allow=("API.example.com:443", "api.example.com:443"), pinned={"API.test": "127.0.0.1"})
    assert policy.allow == ("api.example.com:443",)
    assert dict(policy.pinned) == {"api.test": "127.0.0.1"}
    with pytest.raises(ValueError):
        EgressPolicy(allow=("api.example.com",))
    with pytest.raises(ValueError, match="pin"):
        EgressPolicy(pinned={"api.test": "not-an-ip"})


# --- matching -------------------------------------------------------------------------------------

PUBLIC = resolver({"api.example.com": ["93.184.216.34"], "eu.example.com": ["93.184.216.35"],
                   "a.b.example.com": ["93.184.216.36"], "example.com": ["93.184.216.37"]})


def test_a_declared_host_and_port_is_allowed_and_answers_the_resolved_address():
    policy = EgressPolicy(allow=("api.example.com:443",))
    assert check_destination(policy, "api.example.com", 443, resolve=PUBLIC) == "93.184.216.34"
    assert check_destination(policy, "API.Example.com.", 443, resolve=PUBLIC) == "93.184.216.34"


def test_the_same_host_on_another_port_is_refused_before_any_resolution():
    policy = EgressPolicy(allow=("api.example.com:443",))
    with pytest.raises(EgressRefused, match="not declared") as refused:
        check_destination(policy, "api.example.com", 80, resolve=no_resolution)
    assert (refused.value.host, refused.value.port) == ("api.example.com", 80)
    assert "not declared" in refused.value.reason


def test_an_undeclared_host_is_refused_before_any_resolution():
    policy = EgressPolicy(allow=("api.example.com:443",))
    with pytest.raises(EgressRefused, match="not declared"):
        check_destination(policy, "evil.example.net", 443, resolve=no_resolution)


def test_a_wildcard_matches_exactly_one_more_label():
    policy = EgressPolicy(allow=("*.example.com:443",))
    assert check_destination(policy, "eu.example.com", 443, resolve=PUBLIC) == "93.184.216.35"
    for host in ("example.com", "a.b.example.com", "eu.example.com.evil.net", "notexample.com"):
        with pytest.raises(EgressRefused, match="not declared"):
            check_destination(policy, host, 443, resolve=PUBLIC)


def test_a_public_ip_literal_entry_is_allowed_without_resolution():
    policy = EgressPolicy(allow=("93.184.216.34:443", "[2606:4700:4700::1111]:443"))
    assert check_destination(policy, "93.184.216.34", 443, resolve=no_resolution) == "93.184.216.34"
    assert check_destination(policy, "[2606:4700:4700::1111]", 443, resolve=no_resolution) == "2606:4700:4700::1111"


# --- refused addresses ----------------------------------------------------------------------------

PRIVATE_ADDRESSES = [
    ("127.0.0.1", "loopback"),
    ("127.8.8.8", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback (IPv4-mapped IPv6)"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("::ffff:10.0.0.1", "private (IPv4-mapped IPv6)"),
    ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"),
    ("fd00::1", "unique-local"),
    ("fc00::1", "unique-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.1", "private"),
    ("fec0::1", "site-local"),
    ("2002:7f00:1::1", "loopback (6to4 IPv6)"),
    ("2002:a00:1::1", "private (6to4 IPv6)"),
    ("64:ff9b::7f00:1", "loopback (NAT64 IPv6)"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
]


@pytest.mark.parametrize(("address", "reason"), PRIVATE_ADDRESSES)
def test_a_name_resolving_to_a_non_public_address_is_refused(address, reason):
    policy = EgressPolicy(allow=("api.example.com:443",))
    with pytest.raises(EgressRefused) as refused:
        check_destination(policy, "api.example.com", 443, resolve=resolver({"api.example.com": [address]}))
    assert reason in refused.value.reason
    assert "api.example.com resolves to" in refused.value.reason


@pytest.mark.parametrize(("address", "reason"), PRIVATE_ADDRESSES)
def test_a_non_public_ip_literal_can_never_be_declared_and_is_refused(address, reason):
    entry = f"[{address}]:443" if ":" in address else f"{address}:443"
    with pytest.raises(ValueError):
        EgressPolicy(allow=(entry,))
    with pytest.raises(EgressRefused):
        check_destination(EgressPolicy(allow=("api.example.com:443",)), address, 443, resolve=no_resolution)


def test_a_name_is_refused_when_any_of_its_addresses_is_private():
    policy = EgressPolicy(allow=("api.example.com:443",))
    mixed = resolver({"api.example.com": ["93.184.216.34", "10.0.0.1"]})
    with pytest.raises(EgressRefused, match="10.0.0.1"):
        check_destination(policy, "api.example.com", 443, resolve=mixed)


def test_the_cloud_metadata_service_is_refused_with_a_reason_that_names_it():
    policy = EgressPolicy(allow=("metadata.example.com:80",))
    with pytest.raises(EgressRefused, match="cloud metadata"):
        check_destination(policy, "metadata.example.com", 80,
                          resolve=resolver({"metadata.example.com": ["169.254.169.254"]}))


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1", "017700000001",
                                  "1.2.3.04"])
def test_ip_literals_in_odd_forms_are_refused_without_resolution(host):
    with pytest.raises(EgressRefused, match="non-standard form"):
        check_destination(EgressPolicy(), host, 80, resolve=no_resolution)


def test_a_name_that_does_not_resolve_is_refused():
    policy = EgressPolicy(allow=("gone.example.com:443",))
    with pytest.raises(EgressRefused, match="cannot be resolved"):
        check_destination(policy, "gone.example.com", 443, resolve=resolver({}))


def test_a_public_ipv4_mapped_answer_is_returned_as_plain_ipv4():
    policy = EgressPolicy(allow=("api.example.com:443",))
    answer = resolver({"api.example.com": ["::ffff:93.184.216.34"]})
    assert check_destination(policy, "api.example.com", 443, resolve=answer) == "93.184.216.34"


def test_the_address_returned_is_the_one_checked_and_the_name_is_resolved_once():
    policy = EgressPolicy(allow=("api.example.com:443",))
    answer = resolver({"api.example.com": ["93.184.216.34"]})
    assert check_destination(policy, "api.example.com", 443, resolve=answer) == "93.184.216.34"
    assert answer.calls == ["api.example.com"]


# --- pins and the platform's ports ----------------------------------------------------------------

def test_a_pinned_host_reaches_its_loopback_pin_without_resolution():
    policy = EgressPolicy(allow=("api.test:8080",), pinned={"api.test": "127.0.0.1"})
    assert check_destination(policy, "api.test", 8080, resolve=no_resolution) == "127.0.0.1"


def test_a_pin_does_not_declare_the_host():
    policy = EgressPolicy(allow=(), pinned={"api.test": "127.0.0.1"})
    with pytest.raises(EgressRefused, match="not declared"):
        check_destination(policy, "api.test", 8080, resolve=no_resolution)


def test_a_denied_port_is_refused_even_for_a_pinned_declared_host():
    policy = EgressPolicy(allow=("api.test:9092", "api.example.com:9092"), pinned={"api.test": "127.0.0.1"},
                          denied_ports=frozenset({9092}))
    for host in ("api.test", "api.example.com"):
        with pytest.raises(EgressRefused, match="port 9092 belongs to the platform"):
            check_destination(policy, host, 9092, resolve=no_resolution)


@pytest.mark.parametrize("port", [0, -1, 65536, True])
def test_a_port_outside_1_to_65535_is_refused(port):
    with pytest.raises(EgressRefused, match="not a port"):
        check_destination(EgressPolicy(allow=("api.example.com:443",)), "api.example.com", port, resolve=no_resolution)


def test_proxy_env_points_every_proxy_variable_at_the_relay():
    env = proxy_env(3128)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        assert env[name] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == ""


# --- the manifest's declaration, read statically ---------------------------------------------------

def test_a_literal_network_declaration_gives_normalised_entries_and_no_findings():
    source = 'network = {"allow": ["API.example.com:443", "*.example.org:443", "api.example.com:443"]}\n'
    assert read_network_declaration(source) == (("api.example.com:443", "*.example.org:443"), [])


def test_an_annotated_network_declaration_is_read_too():
    source = 'network: dict = {"allow": ("api.example.com:443",)}\n'
    assert read_network_declaration(source) == (("api.example.com:443",), [])


def test_a_manifest_without_network_declares_nothing():
    assert read_network_declaration("metadata = {'feature_extractor_name': 'x'}\n") == ((), [])


def test_the_declaration_is_read_without_running_the_manifest():
    source = 'raise SystemExit("never run")\nnetwork = {"allow": ["api.example.com:443"]}\n'
    assert read_network_declaration(source) == (("api.example.com:443",), [])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('network = dict(allow=["api.example.com:443"])\n', "a call of dict()"),
        ('HOST = "api.example.com"\nnetwork = {"allow": [f"{HOST}:443"]}\n', "an f-string"),
        ('HOST = "api.example.com:443"\nnetwork = {"allow": [HOST]}\n', "the name 'HOST'"),
        ('network = {"allow": ["a.example.com:443"] + ["b.example.com:443"]}\n', "an expression"),
    ],
)
def test_a_network_that_is_not_a_literal_is_an_error(source, message):
    entries, findings = read_network_declaration(source)
    assert entries == ()
    assert [f.rule_id for f in findings] == ["SLU825"]
    assert message in findings[0].message
    assert findings[0].severity == "error" and findings[0].hint


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('network = {"allowed": ["api.example.com:443"]}\n', "did you mean 'allow'"),
        ('network = {"allow": [], "deny": []}\n', "unknown key 'deny'"),
        ("network = {}\n", "no 'allow' key"),
        ('network = ["api.example.com:443"]\n', "is a list, not a dict"),
        ('network = {"allow": "api.example.com:443"}\n', "not a list"),
        ("network = {'allow': [" + ", ".join(f"'h{i}.example.com:443'" for i in range(65)) + "]}\n", "at most 64"),
    ],
)
def test_a_network_with_the_wrong_shape_is_an_error(source, message):
    entries, findings = read_network_declaration(source)
    assert entries == ()
    assert [f.rule_id for f in findings] == ["SLU825"]
    assert message in findings[0].message


@pytest.mark.parametrize(
    "source",
    [
        'network = {"allow": []}\nnetwork = {"allow": ["evil.example.com:443"]}\n',
        'network = {"allow": []}\nif True:\n    network = {"allow": ["evil.example.com:443"]}\n',
        'network = other = {"allow": ["api.example.com:443"]}\n',
        'from evil import network\n',
        'network = {"allow": []}\ndef f():\n    global network\n    network = {"allow": ["evil.example.com:443"]}\n',
        'network = {"allow": []}\nfor network in [1]:\n    pass\n',
        'network: dict\n',
    ],
)
def test_a_network_bound_other_than_by_one_plain_assignment_is_an_error(source):
    entries, findings = read_network_declaration(source)
    assert entries == ()
    assert [f.rule_id for f in findings] == ["SLU825"]


def test_each_bad_allow_entry_is_its_own_finding_on_its_own_line():
    source = (
        "network = {\n"
        "    'allow': [\n"
        "        'api.example.com:443',\n"
        "        'https://api.example.com',\n"
        "        '10.0.0.1:80',\n"
        "        'api.example.com',\n"
        "        '2130706433:80',\n"
        "        443,\n"
        "    ]\n"
        "}\n"
    )
    entries, findings = read_network_declaration(source, file="manifest.py")
    assert entries == ()
    assert [(f.rule_id, f.line) for f in findings] == [("SLU826", 4), ("SLU826", 5), ("SLU826", 6), ("SLU826", 7),
                                                      ("SLU826", 8)]
    assert "scheme" in findings[0].message
    assert "private" in findings[1].message
    assert "port is required" in findings[2].message
    assert "non-standard form" in findings[3].message
    assert "string" in findings[4].message


def test_a_manifest_that_does_not_parse_is_reported_not_raised():
    entries, findings = read_network_declaration("network = {\n", file="manifest.py")
    assert entries == ()
    assert findings[0].rule_id == "SLU825" and "cannot be parsed" in findings[0].message


def test_the_network_rules_do_not_collide_with_other_rule_ids():
    from engine.plugins import validate

    assert {"SLU825", "SLU826"} <= set(RULES)
    assert not {"SLU825", "SLU826"} & set(getattr(validate, "RULES", {}))
