"""The OS containment of a plugin host (`engine.sandbox.confine`), exercised for real: each test
runs a fresh Python child that enters a private network namespace, confines itself with the
Python runtime readable and one scratch folder writable, then attempts one thing and prints the
outcome as JSON."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

import pytest

from engine.sandbox import confine

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SYSTEM_READ = ("/usr/lib", "/lib", "/lib64", "/usr/lib64", "/etc/ld.so.cache")
RELAY_PORT = 3128

DRIVER = """
import json, os, sys
sys.path.insert(0, {repo!r})
from engine.sandbox import confine

{setup}

def attempt():
{body}

confine.enter_network_namespace()
status = confine.apply(confine.Rules(read={read!r}, write={write!r}, tcp_port={tcp_port!r}),
                       confine.Limits(**{limits!r}), allow_degraded={degraded!r})
out = {{"status": status}}
try:
    out["value"] = attempt()
    out["ok"] = True
except BaseException as exc:
    out.update(ok=False, error=type(exc).__name__, errno=getattr(exc, "errno", None), message=str(exc))
print(json.dumps(out, default=repr))
"""


def runtime_read() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {sys.prefix, sys.base_prefix, *(paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))}
    return (*sorted(found), *SYSTEM_READ, str(REPO / "engine"))


def run_confined(body: str, scratch: Path, *, setup: str = "", limits: dict[str, Any] | None = None,
                 tcp_port: int | None = RELAY_PORT, extra_read: tuple[str, ...] = (), degraded: bool = False,
                 timeout: float = 60) -> dict[str, Any]:
    """Run `body` (the body of a function returning something JSON-able) in a confined child."""
    code = DRIVER.format(repo=str(REPO), setup=setup, body=textwrap.indent(textwrap.dedent(body).strip(), "    "),
                         read=(*runtime_read(), *extra_read), write=(str(scratch),), tcp_port=tcp_port,
                         limits=limits or {}, degraded=degraded)
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=scratch, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"child failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


def assert_denied(result: dict[str, Any], error: str = "PermissionError") -> None:
    assert result["ok"] is False, f"expected {error}, got {result.get('value')!r}"
    assert result["error"] == error, result


# --- filesystem ----------------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/etc/shadow"), reason="no /etc/shadow on this machine")
def test_reading_etc_shadow_is_denied(scratch):
    assert_denied(run_confined("return open('/etc/shadow').read()", scratch))


def test_reading_a_file_in_another_tmp_folder_is_denied(scratch, tmp_path):
    secret = tmp_path / "other" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not yours")
    assert_denied(run_confined(f"return open({str(secret)!r}).read()", scratch))


def test_reading_another_process_in_proc_is_denied(scratch):
    assert_denied(run_confined("return open(f'/proc/{os.getppid()}/environ', 'rb').read()", scratch))


def test_reading_its_own_proc_entry_works(scratch):
    result = run_confined("return open('/proc/self/status').read().count('NoNewPrivs:\\t1')", scratch)
    assert result["ok"] and result["value"] == 1


@pytest.mark.parametrize("folder", ["/", str(REPO.parent)])
def test_listing_the_filesystem_root_or_the_work_folder_is_denied(scratch, folder):
    assert_denied(run_confined(f"return os.listdir({folder!r})", scratch))


def test_writing_a_file_outside_scratch_is_denied(scratch, tmp_path):
    assert_denied(run_confined(f"open({str(tmp_path / 'escaped.txt')!r}, 'w').write('x')", scratch))
    assert not (tmp_path / "escaped.txt").exists()


def test_writing_inside_scratch_works(scratch):
    result = run_confined("""
        os.makedirs('a/b')
        with open('a/b/f.txt', 'w') as f:
            f.write('hello')
        os.rename('a/b/f.txt', 'a/g.txt')
        text = open('a/g.txt').read()
        os.truncate('a/g.txt', 1)
        os.remove('a/g.txt')
        return text
    """, scratch)
    assert result == {**result, "ok": True, "value": "hello"}


def test_numpy_and_pandas_import_and_build_a_dataframe(scratch):
    result = run_confined("""
        import numpy, pandas
        frame = pandas.DataFrame({'a': numpy.arange(4), 'b': list('wxyz')})
        return int(frame['a'].sum()), len(frame)
    """, scratch)
    assert result["ok"], result
    assert result["value"] == [6, 4]


# --- processes -----------------------------------------------------------------------------------

def test_exec_and_subprocess_are_denied(scratch):
    result = run_confined("""
        import subprocess
        errors = []
        for start in (lambda: os.execv('/bin/true', ['true']), lambda: subprocess.run(['/bin/true'])):
            try:
                start()
                errors.append(None)
            except OSError as exc:
                errors.append(type(exc).__name__)
        return errors
    """, scratch)
    assert result["value"] == ["PermissionError", "PermissionError"]


def test_fork_is_denied(scratch):
    assert_denied(run_confined("""
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        return pid
    """, scratch))


def test_several_threads_work(scratch):
    result = run_confined("""
        import threading
        seen = []
        threads = [threading.Thread(target=seen.append, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sorted(seen)
    """, scratch)
    assert result["value"] == list(range(8))


def test_apply_refuses_a_process_that_already_has_threads():
    code = f"""
import sys, threading
sys.path.insert(0, {str(REPO)!r})
from engine.sandbox import confine
stop = threading.Event()
threading.Thread(target=stop.wait).start()
try:
    confine.apply(confine.Rules(), confine.Limits())
except confine.ConfinementError as exc:
    print(exc.layer)
stop.set()
"""
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "threads", done.stderr


def test_signalling_the_parent_is_denied(scratch):
    assert_denied(run_confined("os.kill(os.getppid(), 0)", scratch))


def test_ptrace_through_ctypes_is_denied(scratch):
    result = run_confined("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PTRACE_ATTACH = 16
        rc = libc.ptrace(ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(os.getppid()), None, None)
        return rc, ctypes.get_errno()
    """, scratch)
    assert result["value"] == [-1, 1]  # EPERM


def test_unshare_through_ctypes_is_denied(scratch):
    result = run_confined("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        CLONE_NEWUSER = 0x10000000
        return libc.unshare(CLONE_NEWUSER), ctypes.get_errno()
    """, scratch)
    assert result["value"] == [-1, 1]  # EPERM


def test_x32_syscalls_clone3_and_tiocsti_are_refused(scratch):
    result = run_confined("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        answers = []
        for call in (lambda: libc.syscall(ctypes.c_long(0x40000000 | 39)),  # x32 getpid
                     lambda: libc.syscall(ctypes.c_long(435), None, ctypes.c_long(0)),  # clone3
                     lambda: libc.ioctl(0, ctypes.c_ulong(0x5412), ctypes.c_char_p(b'x'))):  # TIOCSTI
            answers.append((call(), ctypes.get_errno()))
        return answers
    """, scratch)
    assert result["value"] == [[-1, 1], [-1, 38], [-1, 1]]  # EPERM, ENOSYS, EPERM


def test_the_seccomp_filter_also_builds_for_aarch64():
    program = confine.seccomp_program(confine._ARCHES["aarch64"])
    assert len(program) % 8 == 0 and 50 < len(program) // 8 < 4096


# --- network -------------------------------------------------------------------------------------

def test_unix_sockets_are_denied_while_socketpair_works(scratch):
    result = run_confined("""
        import socket
        denied = []
        for family in (socket.AF_UNIX, socket.AF_NETLINK, socket.AF_PACKET):
            try:
                socket.socket(family, socket.SOCK_DGRAM).close()
            except PermissionError:
                denied.append(family)
        a, b = socket.socketpair()
        a.sendall(b'ping')
        return len(denied), b.recv(4).decode()
    """, scratch)
    assert result["value"] == [3, "ping"]


def test_a_listener_on_the_real_loopback_is_unreachable(scratch):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        # the port is the one Landlock allows, so only the network namespace stands in the way
        result = run_confined(f"socket.create_connection(('127.0.0.1', {port}), timeout=2)", scratch,
                              setup="import socket", tcp_port=port)
    assert_denied(result, "ConnectionRefusedError")


def test_bind_and_connect_on_the_relay_port_inside_the_namespace_work(scratch):
    result = run_confined(f"""
        server = socket.socket()
        server.bind(('127.0.0.1', {RELAY_PORT}))
        server.listen()
        client = socket.create_connection(('127.0.0.1', {RELAY_PORT}), timeout=2)
        peer, _ = server.accept()
        client.sendall(b'hi')
        return peer.recv(2).decode()
    """, scratch, setup="import socket")
    assert result == {**result, "ok": True, "value": "hi"}


def test_binding_any_other_port_is_denied(scratch):
    assert_denied(run_confined(f"socket.socket().bind(('127.0.0.1', {RELAY_PORT + 1}))", scratch,
                               setup="import socket"))


# --- limits --------------------------------------------------------------------------------------

def test_allocating_past_the_memory_limit_raises_memory_error(scratch):
    result = run_confined("""
        small = bytearray(16 << 20)
        return len(bytearray(2 << 30)) + len(small)
    """, scratch, limits={"memory_bytes": 1 << 30})
    assert_denied(result, "MemoryError")


def test_writing_past_the_file_size_limit_fails(scratch):
    result = run_confined("""
        with open('big.bin', 'wb') as f:
            f.write(b'x' * (2 << 20))
    """, scratch, limits={"file_bytes": 1 << 20})
    assert_denied(result, "OSError")
    assert result["errno"] == 27  # EFBIG
    assert (scratch / "big.bin").stat().st_size == 1 << 20


# --- status and probe ----------------------------------------------------------------------------

def test_apply_reports_every_layer_on(scratch):
    result = run_confined("return None", scratch, degraded=True)
    assert list(result["status"]) == list(confine.LAYERS)
    assert all(state.startswith("on: ") for state in result["status"].values()), result["status"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs capabilities to lose")
def test_a_layer_that_cannot_be_applied_is_off_when_degraded_and_raises_otherwise(scratch):
    # a second apply() runs without capabilities, so locking the securebits again fails
    result = run_confined("""
        again = confine.apply(confine.Rules(), confine.Limits(), allow_degraded=True)
        try:
            confine.apply(confine.Rules(), confine.Limits())
        except confine.ConfinementError as exc:
            return again, exc.layer
    """, scratch)
    again, layer = result["value"]
    assert list(again) == list(confine.LAYERS)
    assert again["privileges"].startswith("off: ") and "EPERM" in again["privileges"]
    assert again["landlock"].startswith("on: ") and again["seccomp"].startswith("on: ")
    assert layer == "privileges"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root")
def test_root_drops_to_uid_65534_when_every_path_is_reachable_by_it(tmp_path):
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="sluice-confine-"))
    try:
        scratch.chmod(0o777)
        code = f"""
import json, os, sys
sys.path.insert(0, {str(REPO)!r})
from engine.sandbox import confine
status = confine.apply(confine.Rules(read=('/usr/lib',), write=({str(scratch)!r},)), confine.Limits())
open({str(scratch / 'made')!r}, 'w').close()
print(json.dumps([status['privileges'], os.getresuid(), os.getresgid(), os.getgroups()]))
"""
        done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == ["on: uid 65534", [65534] * 3, [65534] * 3, []]
        assert (scratch / "made").stat().st_uid == 65534
    finally:
        for child in scratch.iterdir():
            child.unlink()
        scratch.rmdir()


@pytest.mark.skipif(os.geteuid() != 0, reason="becomes uid 1000 from root to play a non-root host")
def test_a_non_root_process_gets_its_namespace_from_a_user_namespace_and_drops_its_capabilities(tmp_path):
    code = f"""
import ctypes, json, os, socket, sys
sys.path.insert(0, {str(REPO)!r})
from engine.sandbox import confine
os.setgroups([]); os.setresgid(1000, 1000, 1000); os.setresuid(1000, 1000, 1000)
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: as if started as uid 1000
confine.enter_network_namespace()
in_namespace = confine._has_capabilities()
status = confine.apply(confine.Rules(read=('/usr/lib',), tcp_port=3128), confine.Limits())
server = socket.socket(); server.bind(('127.0.0.1', 3128)); server.listen()
client = socket.socket(); client.connect(('127.0.0.1', 3128))
print(json.dumps([in_namespace, confine._has_capabilities(), os.getresuid()[0], status['privileges']]))
"""
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        True, False, 1000, "on: unprivileged uid 1000, the capabilities of its user namespace dropped"]


def test_probe_reports_every_layer_available_and_leaves_the_caller_unconfined():
    layers = confine.probe()
    assert set(layers) == {"landlock", "seccomp", "network", "privileges", "rlimits", "no_new_privs"}
    assert all(info["available"] for info in layers.values()), layers
    assert layers["landlock"]["detail"].startswith("ABI ")
    status = Path("/proc/self/status").read_text()
    assert "NoNewPrivs:\t0" in status and "Seccomp:\t0" in status
    assert os.listdir("/")  # no Landlock domain
    if os.path.exists("/etc/shadow") and os.geteuid() == 0:
        assert Path("/etc/shadow").read_bytes() is not None
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    assert os.waitpid(pid, 0)[1] >> 8 == 7
    assert confine.probe() == layers  # cached


# --- torch ---------------------------------------------------------------------------------------

@pytest.mark.torch
def test_torch_imports_and_computes_after_confinement(scratch):
    extra = tuple(p for p in confine.RUNTIME_EXTRA_READ if os.path.exists(p))
    result = run_confined("""
        import torch
        torch.set_num_threads(2)
        x = torch.ones(256, 256)
        return float((x @ x).sum()), torch.get_num_threads()
    """, scratch, extra_read=extra)
    assert result["ok"], result
    assert result["value"] == [256.0 ** 3, 2]
