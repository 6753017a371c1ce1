"""OS containment that a plugin host applies to ITSELF, irreversibly, before it imports plugin code.

Everything here is enforced by the kernel, so it holds against code that bypasses Python (ctypes,
a native extension, a hand-written syscall). Pure ctypes and the standard library.

Two steps, both in the host process:

1. `enter_network_namespace()` (while still privileged): a new network namespace whose only
   interface is its own loopback, brought up. 127.0.0.1 there is private to the host; nothing of
   the machine's network (other hosts, the platform's servers on the real loopback, the cloud
   metadata address) is reachable. As non-root this needs a user namespace too.
2. `apply(rules, limits)`: the layers below, in this order. Each needs the one before it:
   capabilities are needed to set limits and change ids, so limits and privileges come first;
   Landlock and seccomp require no_new_privs from an unprivileged process; seccomp comes last
   because its filter denies syscalls the earlier steps use (unshare, setns, ...).

   - rlimits: address space, CPU seconds, file size, open files, processes (soft = hard, never
     above the current hard limit), and always no core dumps. RLIMIT_NPROC counts every process
     of the uid and is not enforced for uid 0 at all, so it only matters in uid-65534 mode.
   - privileges: as root, drop to uid/gid 65534 when every read/write path is reachable by that
     uid through plain permission bits; otherwise (e.g. a runtime under a 0700 /root) stay uid 0
     but drop every capability (bounding, ambient, effective, permitted, inheritable) and lock
     the securebits so uid 0 can never regain them. uid 0 without capabilities still OWNS every
     root-owned file, so in that mode Landlock is what keeps the host out of them. As non-root,
     any capabilities held in a user namespace are dropped the same way. Then
     PR_SET_NO_NEW_PRIVS (reported as its own layer, "no_new_privs").
   - landlock: file access only beneath the given paths (read-only, read-write, list-only,
     device files) plus `ALWAYS_READ`; everything else on the filesystem is denied, whatever the
     uid. ABI >= 4: TCP bind and connect are denied except to `Rules.tcp_port`. ABI >= 6: no
     signals to processes outside the sandbox and no connecting to abstract unix sockets
     outside it. (Landlock also always forbids ptrace of processes outside the sandbox.)
   - seccomp: a classic BPF filter on the syscall number. Foreign architectures are killed; on
     x86_64 every x32 syscall is denied. Denied with EPERM: starting programs and processes
     (execve, fork, vfork, clone without CLONE_THREAD or with namespace flags), debugging other
     processes (ptrace, process_vm_*, pidfd_getfd, process_madvise), mounts, namespaces
     (unshare, setns), kernel modules and kexec, BPF, perf, keyrings, io_uring, userfaultfd,
     file handles (open_by_handle_at), clock and system settings, personality, socket() of any
     family but AF_INET/AF_INET6 (socketpair stays allowed: asyncio needs it) and the TIOCSTI /
     TIOCLINUX ioctls. clone3 answers ENOSYS so glibc falls back to clone, whose flags a
     classic BPF filter can inspect. Everything else is allowed.

Landlock, capabilities and a network namespace belong to a THREAD, and no kernel this code
supports can move other threads into them: `apply()` and `enter_network_namespace()` therefore
refuse to run in a process that already has more than one thread (import numpy, start relay
threads and the like after `apply()`). Threads created afterwards inherit every layer.

`probe()` tells what this machine offers without confining the caller: it forks a throwaway
child that enters a network namespace and applies every layer, then reports through a pipe.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import json
import os
import platform
import resource
import select
import signal
import socket
import stat
import struct
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

# --- public constants ----------------------------------------------------------------------------

ALWAYS_RW_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
"""Device files every host may read and write."""
SYSTEM_INFO_READ = ("/proc/cpuinfo", "/proc/meminfo", "/sys/devices/system/cpu", "/sys/fs/cgroup")
"""Read-only when present: CPU and memory facts numpy, onnxruntime and torch read at start."""
ALWAYS_READ = (*ALWAYS_RW_DEVICES, "/proc/self", *SYSTEM_INFO_READ)
"""Everything `apply()` allows without being asked (/proc/self as the host's own /proc/<pid>)."""
RUNTIME_EXTRA_READ = (
    "/proc/sys/vm/overcommit_memory",
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/sys/bus/pci/devices",
    *sorted(glob.glob("/sys/devices/pci[0-9]*")),
    "/proc/driver/nvidia",
)
"""Read-only paths the ML runtime looks at besides the Python runtime, the system libraries and
`ALWAYS_READ`, found by tracing `import torch` (CPU build), numpy, pandas and an onnxruntime
session under `apply()`:
- torch's allocator reads the overcommit and transparent-huge-page settings (it falls back
  silently when they are unreadable; allowing them keeps behaviour identical);
- onnxruntime's device discovery lists /sys/bus/pci/devices, whose entries are symlinks into
  /sys/devices/pci<domain>:<bus> (without both it logs "GPU device discovery failed");
- the NVIDIA driver's /proc/driver/nvidia (only present on GPU machines; CUDA itself was not
  verified here: this machine has no GPU). GPU device files go in `Rules.devices`.
Also seen and deliberately NOT allowed: /etc/ssl/openssl.cnf and /usr/share/zoneinfo (in the
host's SYSTEM_READ already), and onnxruntime's telemetry (~/.cache/Microsoft/..., /proc/1/cgroup,
/.dockerenv, /proc/sys/kernel/osrelease), which fails with a warning and goes on. Add only
those that exist."""
DEFAULT_UID = 65534
DEFAULT_GID = 65534
LAYERS = ("rlimits", "privileges", "no_new_privs", "landlock", "seccomp")
"""The keys of `apply()`'s answer, in the order the layers are applied."""


class ConfinementError(RuntimeError):
    """A layer could not be applied: `layer` names it, `reason` says why (with the errno)."""

    def __init__(self, layer: str, reason: str) -> None:
        self.layer, self.reason = layer, reason
        super().__init__(f"confinement layer {layer!r}: {reason}")


@dataclass(frozen=True)
class Rules:
    """What the confined process may touch on the filesystem and the TCP port it may use.
    Paths that do not exist are skipped."""

    read: tuple[str, ...] = ()
    """Read-only beneath each path (read files, list folders, execute)."""
    write: tuple[str, ...] = ()
    """Every filesystem right beneath each path (the scratch folder)."""
    devices: tuple[str, ...] = ()
    """Device files that are read-write, ioctl included (e.g. /dev/nvidia0)."""
    list_only: tuple[str, ...] = ()
    """Folders that can be listed but whose files cannot be read (site-packages itself)."""
    tcp_port: int | None = None
    """The one TCP port that may be bound and connected to (the egress relay inside the host's
    private network namespace); None: no TCP bind or connect at all (Landlock ABI >= 4)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits (soft = hard); None leaves a limit as it is. Core dumps are always off."""

    memory_bytes: int | None = None
    cpu_seconds: int | None = None
    file_bytes: int | None = None
    open_files: int | None = 1024
    processes: int | None = None


# --- kernel constants ----------------------------------------------------------------------------

_CLONE_NEWNS, _CLONE_NEWCGROUP, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET, _CLONE_THREAD = 0x10000000, 0x20000000, 0x40000000, 0x00010000
_CLONE_NAMESPACES = (_CLONE_NEWNS | _CLONE_NEWCGROUP | _CLONE_NEWUTS | _CLONE_NEWIPC | _CLONE_NEWUSER | _CLONE_NEWPID
                     | _CLONE_NEWNET)

_PR_CAPBSET_READ, _PR_CAPBSET_DROP, _PR_SET_SECUREBITS = 23, 24, 28
_PR_SET_NO_NEW_PRIVS, _PR_GET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 38, 39, 47, 4
_SECBIT_NOROOT, _SECBIT_NOROOT_LOCKED = 1 << 0, 1 << 1
_SECBIT_NO_SETUID_FIXUP, _SECBIT_NO_SETUID_FIXUP_LOCKED = 1 << 2, 1 << 3
_SECBIT_KEEP_CAPS_LOCKED = 1 << 5
_SECBIT_NO_CAP_AMBIENT_RAISE, _SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 6, 1 << 7
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sh22x"  # struct ifreq: name[16], then a 24-byte union whose first member is short ifr_flags

# Landlock (include/uapi/linux/landlock.h)
_LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
_LANDLOCK_RULE_PATH_BENEATH, _LANDLOCK_RULE_NET_PORT = 1, 2
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FS_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_FS_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_FS_DEVICE = _FS_READ_FILE | _FS_WRITE_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

# seccomp and classic BPF
_SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC = 1, 1
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_X32_SYSCALL_BIT = 0x40000000
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C

_DENIED_SYSCALLS = (
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    "process_madvise", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "open_tree_attr",
    "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "unshare", "setns", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "name_to_handle_at",
    "open_by_handle_at", "lookup_dcookie", "quotactl", "quotactl_fd", "syslog", "personality", "uselib",
)
"""Syscalls that answer EPERM in the host (those an architecture lacks are skipped)."""


@dataclass(frozen=True)
class _Arch:
    audit_arch: int
    syscalls: dict[str, int]
    deny_above: int | None = None  # every nr >= this is denied (x32 on x86_64)
    extra: dict[str, int] = field(default_factory=dict)


_COMMON = {  # numbers shared by every architecture since 5.1
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "clone3": 435, "pidfd_getfd": 438, "process_madvise": 440, "mount_setattr": 442, "quotactl_fd": 443,
    "landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446, "open_tree_attr": 467,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
}
_ARCHES = {
    "x86_64": _Arch(0xC000003E, _COMMON | {
        "ioctl": 16, "socket": 41, "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "ptrace": 101, "syslog": 103,
        "capget": 125, "capset": 126, "uselib": 134, "personality": 135, "pivot_root": 155, "adjtimex": 159,
        "chroot": 161, "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
        "reboot": 169, "init_module": 175, "delete_module": 176, "quotactl": 179, "lookup_dcookie": 212,
        "clock_settime": 227, "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
        "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308,
        "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313, "seccomp": 317, "kexec_file_load": 320,
        "bpf": 321, "execveat": 322, "userfaultfd": 323,
    }, deny_above=_X32_SYSCALL_BIT),
    "aarch64": _Arch(0xC00000B7, _COMMON | {
        "lookup_dcookie": 18, "ioctl": 29, "umount2": 39, "mount": 40, "pivot_root": 41, "chroot": 51, "quotactl": 60,
        "acct": 89, "capget": 90, "capset": 91, "personality": 92, "unshare": 97, "kexec_load": 104, "init_module": 105,
        "delete_module": 106, "clock_settime": 112, "syslog": 116, "ptrace": 117, "reboot": 142, "settimeofday": 170,
        "adjtimex": 171, "socket": 198, "add_key": 217, "request_key": 218, "keyctl": 219, "clone": 220, "execve": 221,
        "swapon": 224, "swapoff": 225, "perf_event_open": 241, "name_to_handle_at": 264, "open_by_handle_at": 265,
        "clock_adjtime": 266, "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271, "finit_module": 273,
        "seccomp": 277, "bpf": 280, "execveat": 281, "userfaultfd": 282, "kexec_file_load": 294,
    }),
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

_PROBED: dict[int, dict[str, dict]] = {}


# --- small helpers -------------------------------------------------------------------------------

def _arch() -> _Arch:
    machine = platform.machine()
    if machine not in _ARCHES:
        raise OSError(errno.ENOSYS, f"no syscall table for the {machine!r} architecture")
    return _ARCHES[machine]


def _errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


def _check(result: int, what: str) -> int:
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {_errno_text(code)}")
    return result


def _syscall(name: str, *args: object) -> int:
    nr = _arch().syscalls[name]
    ctypes.set_errno(0)
    values = (ctypes.c_long(a) if isinstance(a, int) else a for a in args)
    return _check(_libc.syscall(ctypes.c_long(nr), *values), name)


def _prctl_raw(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl with every argument a full unsigned long (some options insist the unused ones are 0)."""
    ctypes.set_errno(0)
    return _libc.prctl(ctypes.c_int(option), *(ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5)))


def _prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_prctl_raw(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _require_single_thread(layer: str) -> None:
    count = _thread_count()
    if count > 1:
        raise ConfinementError(layer, f"the process has {count} threads; Landlock, capabilities and namespaces "
                                      "only confine the calling thread, so confine before starting threads "
                                      "(or importing libraries that start them, like numpy)")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConfinementError):
        return exc.reason
    if isinstance(exc, OSError) and exc.errno and _errno_text(exc.errno) not in str(exc):
        return f"{exc} [{_errno_text(exc.errno)}]"
    return str(exc)


# --- network namespace ---------------------------------------------------------------------------

def enter_network_namespace() -> None:
    """unshare(CLONE_NEWNET) (as non-root, together with a user namespace that maps the current
    ids to themselves) and bring the namespace's loopback up. Afterwards 127.0.0.1 is this
    namespace's own loopback and nothing else is reachable. Call while still privileged, before
    `apply()`, in a single-threaded process. Raises ConfinementError("network")."""
    _require_single_thread("network")
    try:
        _unshare_network()
        _loopback_up()
    except OSError as exc:
        raise ConfinementError("network", _reason(exc)) from exc


def _unshare_network() -> None:
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0 and _libc.unshare(ctypes.c_int(_CLONE_NEWNET)) == 0:
        return
    _check(_libc.unshare(ctypes.c_int(_CLONE_NEWUSER | _CLONE_NEWNET)), "unshare(CLONE_NEWUSER|CLONE_NEWNET)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1\n"), ("gid_map", f"{gid} {gid} 1\n")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
        flags = struct.unpack(_IFREQ, answer)[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


# --- apply ---------------------------------------------------------------------------------------

def apply(rules: Rules, limits: Limits, *, allow_degraded: bool = False, uid: int = DEFAULT_UID,
          gid: int = DEFAULT_GID) -> dict[str, str]:
    """Confine the calling process, irreversibly: rlimits, privileges, no_new_privs, Landlock,
    seccomp (see the module docstring). Returns {layer: "on: <detail>" | "off: <reason>"} for
    every layer in `LAYERS`. A layer that cannot be applied raises ConfinementError(layer), or
    with `allow_degraded` is recorded as "off: <reason>". A process with more than one thread is
    always refused (ConfinementError("threads")): those threads would stay unconfined."""
    _require_single_thread("threads")
    steps: tuple[tuple[str, Callable[[], str]], ...] = (
        ("rlimits", lambda: _apply_rlimits(limits)),
        ("privileges", lambda: _apply_privileges(rules, uid, gid)),
        ("no_new_privs", _apply_no_new_privs),
        ("landlock", lambda: _apply_landlock(rules)),
        ("seccomp", _apply_seccomp),
    )
    status: dict[str, str] = {}
    for layer, step in steps:
        try:
            status[layer] = "on: " + step()
        except (ConfinementError, OSError, ValueError) as exc:
            if allow_degraded:
                status[layer] = "off: " + _reason(exc)
                continue
            if isinstance(exc, ConfinementError):
                raise
            raise ConfinementError(layer, _reason(exc)) from exc
    return status


# --- rlimits -------------------------------------------------------------------------------------

def _apply_rlimits(limits: Limits) -> str:
    wanted = (
        ("AS", resource.RLIMIT_AS, limits.memory_bytes), ("CPU", resource.RLIMIT_CPU, limits.cpu_seconds),
        ("FSIZE", resource.RLIMIT_FSIZE, limits.file_bytes), ("NOFILE", resource.RLIMIT_NOFILE, limits.open_files),
        ("NPROC", resource.RLIMIT_NPROC, limits.processes), ("CORE", resource.RLIMIT_CORE, 0),
    )
    return ", ".join(f"{name} {_set_limit(which, value)}" for name, which, value in wanted if value is not None)


def _set_limit(which: int, value: int) -> int:
    """soft = hard = value, never above the current hard limit (raising it needs CAP_SYS_RESOURCE
    and would loosen what the owner set)."""
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))
    return value


# --- privileges ----------------------------------------------------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _apply_privileges(rules: Rules, uid: int, gid: int) -> str:
    euid = os.geteuid()
    if euid != 0:
        if not _has_capabilities():
            return f"unprivileged uid {euid}"
        _drop_capabilities(stay_root=True)
        return f"unprivileged uid {euid}, the capabilities of its user namespace dropped"
    blocker = unreachable_by(rules, uid, gid)
    if blocker is None:
        _drop_capabilities(stay_root=False)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        _clear_capability_sets()
        if os.getresuid() != (uid, uid, uid) or _has_capabilities():
            raise ConfinementError("privileges", f"still privileged after changing to uid {uid}")
        return f"uid {uid}"
    _drop_capabilities(stay_root=True)
    return f"uid 0 without capabilities ({blocker})"


def unreachable_by(rules: Rules, uid: int, gid: int) -> str | None:
    """Why uid/gid (with no supplementary groups) could not use every path of `rules` through
    permission bits, or None when it could. Checks each path and its parents, not every file
    beneath; ACLs are ignored."""
    wanted = ((rules.read, "readable", os.R_OK), (rules.list_only, "readable", os.R_OK),
              (rules.write, "writable", os.W_OK), (rules.devices, "writable", os.R_OK | os.W_OK))
    for paths, word, access in wanted:
        for path in paths:
            why = _dac_denies(path, uid, gid, access)
            if why:
                return f"{path} is not {word} by uid {uid}: {why}"
    return None


def _dac_denies(path: str, uid: int, gid: int, access: int) -> str | None:
    real = os.path.realpath(path)
    if not os.path.exists(real):
        return None
    parts = real.strip("/").split("/")
    for depth in range(len(parts)):
        folder = "/" + "/".join(parts[:depth])
        if not _mode_allows(os.stat(folder), uid, gid, os.X_OK):
            return f"no search permission on {folder}"
    info = os.stat(real)
    need = access | (os.X_OK if stat.S_ISDIR(info.st_mode) else 0)
    return None if _mode_allows(info, uid, gid, need) else f"mode {stat.filemode(info.st_mode)} of {real}"


def _mode_allows(info: os.stat_result, uid: int, gid: int, need: int) -> bool:
    shift = 6 if info.st_uid == uid else 3 if info.st_gid == gid else 0
    return (info.st_mode >> shift) & need == need


def _capabilities() -> tuple[_CapData, _CapData]:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return data[0], data[1]


def _has_capabilities() -> bool:
    return any(d.effective or d.permitted or d.inheritable for d in _capabilities())


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 63


def _drop_capabilities(*, stay_root: bool) -> None:
    """Empty the bounding and ambient sets and lock the securebits; with `stay_root` also empty
    the effective, permitted and inheritable sets now (otherwise the change of uid does that:
    the setuid fixup stays on for it)."""
    for cap in range(_last_cap() + 1):
        if _prctl_raw(_PR_CAPBSET_READ, cap) == 1:
            _prctl(_PR_CAPBSET_DROP, cap)
    if _prctl_raw(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL) != 0 and ctypes.get_errno() != errno.EINVAL:
        _check(-1, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")  # EINVAL: a kernel without ambient capabilities
    bits = (_SECBIT_NOROOT | _SECBIT_NOROOT_LOCKED | _SECBIT_NO_SETUID_FIXUP_LOCKED | _SECBIT_KEEP_CAPS_LOCKED
            | _SECBIT_NO_CAP_AMBIENT_RAISE | _SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED)
    _prctl(_PR_SET_SECUREBITS, bits | (_SECBIT_NO_SETUID_FIXUP if stay_root else 0))
    if stay_root:
        _clear_capability_sets()
        if _has_capabilities():
            raise ConfinementError("privileges", "capabilities remain after capset")


def _clear_capability_sets() -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _apply_no_new_privs() -> str:
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    if _prctl_raw(_PR_GET_NO_NEW_PRIVS) != 1:
        raise ConfinementError("no_new_privs", "PR_GET_NO_NEW_PRIVS does not report it set")
    return "set"


# --- Landlock ------------------------------------------------------------------------------------

def landlock_abi() -> int:
    """The kernel's Landlock ABI version; raises ConfinementError("landlock") without Landlock."""
    try:
        return _syscall("landlock_create_ruleset", None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    except OSError as exc:
        hint = " (Landlock not enabled at boot: add it to lsm=)" if exc.errno == errno.EOPNOTSUPP else ""
        raise ConfinementError("landlock", f"{_reason(exc)}{hint}") from exc


def _handled_fs(abi: int) -> int:
    rights = _FS_ABI1
    rights |= _FS_REFER if abi >= 2 else 0
    rights |= _FS_TRUNCATE if abi >= 3 else 0
    rights |= _FS_IOCTL_DEV if abi >= 5 else 0
    return rights


def _path_rules(rules: Rules, handled: int) -> Iterator[tuple[str, int]]:
    yield from ((p, _FS_READ) for p in rules.read)
    yield from ((p, _FS_READ_DIR) for p in rules.list_only)
    yield from ((p, handled) for p in rules.write)
    yield from ((p, _FS_DEVICE) for p in (*rules.devices, *ALWAYS_RW_DEVICES))
    yield f"/proc/{os.getpid()}", _FS_READ
    yield from ((p, _FS_READ) for p in SYSTEM_INFO_READ)


def _apply_landlock(rules: Rules) -> str:
    abi = landlock_abi()
    handled = _handled_fs(abi)
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", handled, net, scoped)[:size], size)
    ruleset = _syscall("landlock_create_ruleset", attr, size, 0)
    try:
        added = sum(_add_path_rule(ruleset, path, rights & handled) for path, rights in _path_rules(rules, handled))
        if net and rules.tcp_port is not None:
            port = ctypes.create_string_buffer(struct.pack("=QQ", net, rules.tcp_port), 16)
            _syscall("landlock_add_rule", ruleset, _LANDLOCK_RULE_NET_PORT, port, 0)
        _syscall("landlock_restrict_self", ruleset, 0)
    finally:
        os.close(ruleset)
    tcp = ("no TCP bind/connect" + (f" but port {rules.tcp_port}" if rules.tcp_port is not None else "")) if net \
        else "TCP not restricted (ABI < 4)"
    scopes = "signals and abstract unix sockets scoped" if scoped else "signals not scoped (ABI < 6)"
    return f"ABI {abi}, {added} paths, {tcp}, {scopes}"


def _add_path_rule(ruleset: int, path: str, rights: int) -> int:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return 0  # missing, or unreachable for this uid anyway
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FS_FILE_RIGHTS
        if not rights:
            return 0
        attr = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)  # packed struct
        try:
            _syscall("landlock_add_rule", ruleset, _LANDLOCK_RULE_PATH_BENEATH, attr, 0)
        except OSError as exc:
            raise ConfinementError("landlock", f"add_rule {path}: {_reason(exc)}") from exc
        return 1
    finally:
        os.close(fd)


# --- seccomp -------------------------------------------------------------------------------------

class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of args[index] in struct seccomp_data."""
    return 16 + 8 * index + (4 if sys.byteorder == "big" else 0)


def _case(nr: int, body: list[bytes]) -> list[bytes]:
    """if (nr == `nr`) { body } — body must end in a return."""
    return [_ins(_JEQ_K, nr, 0, len(body)), *body]


def _allow_only(arg: int, values: Iterable[int]) -> list[bytes]:
    values = list(values)
    jumps = [_ins(_JEQ_K, v, len(values) - i, 0) for i, v in enumerate(values)]
    return [_ins(_LD_W_ABS, _arg_low(arg)), *jumps, _ins(_RET_K, _RET_ERRNO | errno.EPERM), _ins(_RET_K, _RET_ALLOW)]


def _deny_values(arg: int, values: Iterable[int]) -> list[bytes]:
    values = list(values)
    jumps = [_ins(_JEQ_K, v, len(values) - i, 0) for i, v in enumerate(values)]
    return [_ins(_LD_W_ABS, _arg_low(arg)), *jumps, _ins(_RET_K, _RET_ALLOW), _ins(_RET_K, _RET_ERRNO | errno.EPERM)]


def seccomp_program(arch: _Arch) -> bytes:
    """The filter as classic BPF bytes (struct sock_filter[]), for `arch`."""
    eperm = _ins(_RET_K, _RET_ERRNO | errno.EPERM)
    nrs = arch.syscalls
    out = [_ins(_LD_W_ABS, 4), _ins(_JEQ_K, arch.audit_arch, 1, 0), _ins(_RET_K, _RET_KILL_PROCESS), _ins(_LD_W_ABS, 0)]
    if arch.deny_above is not None:
        out += [_ins(_JGE_K, arch.deny_above, 0, 1), eperm]
    for name in _DENIED_SYSCALLS:
        if name in nrs:
            out += _case(nrs[name], [eperm])
    out += _case(nrs["clone3"], [_ins(_RET_K, _RET_ERRNO | errno.ENOSYS)])
    out += _case(nrs["clone"], [  # threads (CLONE_THREAD) in no new namespace, nothing else
        _ins(_LD_W_ABS, _arg_low(0)), _ins(_JSET_K, _CLONE_THREAD, 1, 0), eperm,
        _ins(_JSET_K, _CLONE_NAMESPACES, 0, 1), eperm, _ins(_RET_K, _RET_ALLOW)])
    out += _case(nrs["socket"], _allow_only(0, (socket.AF_INET, socket.AF_INET6)))
    out += _case(nrs["ioctl"], _deny_values(1, (_TIOCSTI, _TIOCLINUX)))
    out.append(_ins(_RET_K, _RET_ALLOW))
    if len(out) > 4096:
        raise ValueError("seccomp program too long")
    return b"".join(out)


def _apply_seccomp() -> str:
    arch = _arch()
    program = seccomp_program(arch)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    try:  # TSYNC: every thread of the process gets the filter (there should be only one)
        _syscall("seccomp", _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(fprog))
    except OSError as exc:
        raise ConfinementError("seccomp", _reason(exc)) from exc
    denied = sum(1 for name in _DENIED_SYSCALLS if name in arch.syscalls)
    return (f"{platform.machine()} filter of {len(program) // 8} instructions: {denied} syscalls denied, "
            "no new processes, sockets AF_INET/AF_INET6 only")


# --- probe ---------------------------------------------------------------------------------------

def probe() -> dict[str, dict]:
    """Which layers this kernel and process can apply, without confining the caller: a throwaway
    child (os.fork, then os._exit) enters a network namespace and applies every layer, checks
    that each one bites, and reports through a pipe. Cached per process. Returns {layer:
    {"available": bool, "detail": str}} for "landlock", "seccomp", "network", "privileges",
    "rlimits" and "no_new_privs"."""
    pid = os.getpid()
    if pid not in _PROBED:
        _PROBED[pid] = _probe_in_child()
    return {name: dict(info) for name, info in _PROBED[pid].items()}


def _probe_in_child(timeout: float = 30.0) -> dict[str, dict]:
    read_paths = runtime_read_paths()  # before the fork: it may import
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        code = 1
        try:
            os.close(read_end)
            try:
                report = _probe_layers(read_paths)
            except BaseException as exc:  # noqa: BLE001 - reported, never raised into a forked copy of the caller
                report = _unavailable(f"the probe failed: {type(exc).__name__}: {exc}")
            data = json.dumps(report).encode()
            while data:
                data = data[os.write(write_end, data):]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        raw = _read_all(read_end, timeout)
    finally:
        os.close(read_end)
        _reap(child)
    return json.loads(raw) if raw else _unavailable(f"the probe child did not report within {timeout:g} s")


def _unavailable(detail: str) -> dict[str, dict]:
    return {name: {"available": False, "detail": detail} for name in ("network", *LAYERS)}


def _read_all(fd: int, timeout: float) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    return b""


def _reap(child: int) -> None:
    done, _ = os.waitpid(child, os.WNOHANG)
    if done == 0:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def runtime_read_paths() -> tuple[str, ...]:
    """The Python runtime of this process: prefixes and the standard library and site folders."""
    paths = sysconfig.get_paths()
    found = {sys.prefix, sys.base_prefix, *(paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))}
    return tuple(sorted(p for p in found if p and os.path.exists(p)))


def _probe_layers(read_paths: tuple[str, ...]) -> dict[str, dict]:  # pragma: no cover - runs in the forked child
    report: dict[str, dict] = {}
    try:
        mode = "as root" if os.geteuid() == 0 else "with a user namespace"
        enter_network_namespace()
        report["network"] = {"available": True, "detail": f"private network namespace ({mode}), loopback only"}
    except ConfinementError as exc:
        report["network"] = {"available": False, "detail": exc.reason}
    status = apply(Rules(read=read_paths), Limits(open_files=None), allow_degraded=True)
    checks = {"landlock": _landlock_bites, "seccomp": _seccomp_bites, "privileges": _privileges_bite,
              "rlimits": lambda: resource.getrlimit(resource.RLIMIT_CORE) == (0, 0), "no_new_privs": lambda: True}
    for layer, state in status.items():
        on, detail = state.startswith("on: "), state.split(": ", 1)[1]
        if on and not checks[layer]():
            on, detail = False, f"applied but not enforced: {detail}"
        if layer == "privileges" and on:
            detail = f"apply() with the Python runtime in the read paths would use: {detail}"
        report[layer] = {"available": on, "detail": detail}
    return report


def _landlock_bites() -> bool:  # pragma: no cover - runs in the forked child
    try:
        os.close(os.open("/", os.O_RDONLY | os.O_DIRECTORY))
    except PermissionError:
        return True
    return False


def _seccomp_bites() -> bool:  # pragma: no cover - runs in the forked child
    return _libc.unshare(ctypes.c_int(0)) == -1 and ctypes.get_errno() == errno.EPERM


def _privileges_bite() -> bool:  # pragma: no cover - runs in the forked child
    return not _has_capabilities()


__all__ = [
    "ALWAYS_READ", "ALWAYS_RW_DEVICES", "LAYERS", "RUNTIME_EXTRA_READ", "SYSTEM_INFO_READ", "ConfinementError",
    "Limits", "Rules", "apply", "enter_network_namespace", "landlock_abi", "probe", "runtime_read_paths",
    "seccomp_program", "unreachable_by",
]
