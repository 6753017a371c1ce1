"""AST scanner: the lint and first layer every uploaded plugin passes before any of its code runs.

Plugins are arbitrary Python written by strangers, so the scanner reads each `.py` file as a
syntax tree (never importing or executing it) and refuses the doors through which plugin code
could leave its sandbox: processes, native code, dynamic imports and evaluation, interpreter
internals, raw file access, unsafe deserialisation, package installers, the platform's own modules
and network libraries the manifest does not declare. It resolves import aliases and simple
re-bindings (`x = os; x.system`) because that is the first thing an attacker tries, and it
deliberately leaves ordinary ML code alone (`torch.load(p, weights_only=True)`, `np.load`,
`json.loads`, `os.environ`, `getattr(cfg, "name", None)`, `Path(p).read_text()`).

The scanner is no longer the only wall. Plugin code runs in a confined child process (Landlock
file rules, a private network namespace whose only way out is a proxy to the hosts manifest.py
declares, seccomp without exec/fork, an audit hook), and every module imported from a plugin folder
gets guarded builtins (`engine.plugins.loader`) whose `getattr`/`hasattr` refuse private and dunder
names at run time. Rules that only protected what those layers now protect, and that refused
honest code, are relaxed:

- SLU601 (pathlib file access: `Path.read_text/write_bytes/open/mkdir/touch/unlink/...`) is retired
  (`RETIRED_RULES`; its id is never reused): the host confines files to the plugin's folder, its
  models and a private scratch folder that is HOME/TMPDIR.
- SLU204 no longer refuses `getattr(obj, name)` / `hasattr(obj, name)` with a computed name: the
  guarded builtins refuse underscore names when the code runs. A literal dunder or internal name
  (`getattr(x, "__globals__")`), `getattr` passed as a value, and a computed `getattr` on a
  sensitive module (`getattr(os, name)`) are still refused; `setattr`/`delattr` keep SLU203.

A static scanner cannot prove a program safe; it raises the cost of an escape and names every
finding precisely (rule, file, line, alias) so an honest author can fix it in one pass.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import stat
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal, cast

from events.payloads import Finding

__all__ = ["RETIRED_RULES", "RULES", "PluginSecurityScanner", "Rule", "ScanReport", "manifest_declares_network",
           "scan_directory", "scan_source"]


@dataclass(frozen=True)
class Rule:
    rule_id: str
    severity: Literal["error", "warning"]
    title: str
    hint: str


_ASSET_HINT = ("Read inputs with shared.plugins.open_asset/download_asset; read the plugin's own files and write scratch "
               "files with pathlib.Path (read_text, write_bytes, open, mkdir, unlink).")
_NETWORK_HINT = ("Declare the hosts the plugin calls in manifest.py: network = {\"allow\": [\"api.example.com:443\"]}; "
                 "plugins reach declared hosts over HTTP(S) through the platform's proxy.")

# --- the rule table -----------------------------------------------------------------------------
# Ids are stable: 0xx parse/file, 1xx imports, 2xx builtins, 3xx module functions,
# 4xx introspection, 5xx deserialisation, 6xx pathlib (retired), 7xx warnings. A retired id is never reused.
RULES: dict[str, Rule] = {r.rule_id: r for r in (
    Rule("SLU001", "error", "file does not parse", "Fix the syntax error: plugins must be valid Python 3.11."),
    Rule("SLU002", "error", "source file too large", "Keep .py files under 2 MB; ship data and weights as assets."),
    Rule("SLU003", "error", "unreadable source (null bytes or invalid UTF-8)", "Save the file as plain UTF-8 text."),
    Rule("SLU004", "error", "non-UTF-8 coding declaration", "Delete the `# coding:` line (UTF-8 is the default) or declare utf-8."),
    Rule("SLU005", "error", "source nested too deeply to scan", "Split the expression into smaller statements."),
    Rule("SLU010", "error", "compiled, native or importable binary file", "Ship Python source only; declare dependencies instead of bundling them."),  # noqa: E501 - the rule table keeps one line per rule
    Rule("SLU011", "error", "__pycache__ folder", "Delete __pycache__ folders before zipping the plugin."),
    Rule("SLU012", "error", "symbolic link or special file", "Replace links with the files themselves; upload regular files only."),
    Rule("SLU101", "error", "forbidden module", "Plugins may not start processes or threads, open sockets, call native code or import dynamically; use the shared.plugins helpers and the container services."),  # noqa: E501 - the rule table keeps one line per rule
    Rule("SLU102", "error", "star import from a sensitive module", "Import the names you use explicitly (`from os import path`)."),
    Rule("SLU103", "error", "platform module", "Import only the plugin SDK (shared.*, engine.plugins.extractors.pipeline, engine.models, "
         "engine.llm, engine.namespace_secrets, engine.assets, events.errors); the platform's own modules are not available to plugins."),
    Rule("SLU105", "error", "network protocol other than HTTP(S)", "Call the service over HTTP(S) with httpx, requests or "
         "urllib.request; declared hosts are reachable only through the platform's HTTP(S) proxy."),
    Rule("SLU201", "error", "dynamic code execution or import by name", "Write the code out; plugins may not evaluate, compile or import code by string."),  # noqa: E501 - the rule table keeps one line per rule
    Rule("SLU202", "error", "open() builtin", _ASSET_HINT),
    Rule("SLU203", "error", "namespace-reflection builtin", "Assign attributes directly (`obj.name = value`) and keep dynamic state in an explicit dict."),  # noqa: E501 - the rule table keeps one line per rule
    Rule("SLU204", "error", "hidden, dunder or sensitive attribute lookup", "Use a literal, non-dunder attribute name "
         "(`getattr(cfg, \"name\", default)`) or a dict lookup; call a sensitive module's functions by name."),
    Rule("SLU301", "error", "process execution or signalling", "Plugins run inside a worker and may not start or signal processes; call a Python library or an HTTP API instead."),  # noqa: E501 - the rule table keeps one line per rule
    Rule("SLU302", "error", "raw file descriptors, file-system mutation or process privileges", _ASSET_HINT),
    Rule("SLU303", "error", "code object construction", "Define functions with `def`; building code objects is not allowed."),
    Rule("SLU304", "error", "interpreter internals (sys.modules, sys.path, stack frames)", "Import what you need at the top of the module; do not reach into the interpreter."),  # noqa: E501 - the rule table keeps one line per rule
    Rule("SLU305", "error", "direct file access (io, codecs, shutil)", _ASSET_HINT),
    Rule("SLU306", "error", "remote code execution flag", "Drop trust_remote_code=True: code downloaded with a model is never scanned."),
    Rule("SLU307", "error", "package installation or entry-point loading", "Declare dependencies with the plugin instead of "
         "installing them at run time, and import what you use by name instead of loading entry points."),
    Rule("SLU308", "error", "file or source reader that bypasses the file rules", _ASSET_HINT),
    Rule("SLU401", "error", "__builtins__ access", "Use builtins by name; never through __builtins__."),
    Rule("SLU402", "error", "function or class internals", "Do not reach __subclasses__, __globals__, __code__ and the like; call the API you need."),  # noqa: E501 - the rule table keeps one line per rule
    Rule("SLU403", "error", "frame or loader attribute", "Do not walk stack frames or module loaders; pass values explicitly."),
    Rule("SLU404", "error", "module or computed __dict__ access", "Use the module's attributes by name instead of its __dict__."),
    Rule("SLU405", "error", "sensitive module passed as a value", "Use the module through its name (`os.path.join`); passing it around hides what is called on it."),  # noqa: E501 - the rule table keeps one line per rule
    Rule("SLU501", "error", "pickle-family deserialisation", "Store data as JSON, .npy, parquet or safetensors and load it with a safe loader."),  # noqa: E501 - the rule table keeps one line per rule
    Rule("SLU502", "error", "marshal or shelve load", "Store data as JSON or .npy; marshal and shelve can load code."),
    Rule("SLU503", "error", "unsafe torch load", "Call torch.load(path, weights_only=True) or use safetensors; TorchScript archives are not allowed."),  # noqa: E501 - the rule table keeps one line per rule
    Rule("SLU504", "error", "pandas.read_pickle", "Use pd.read_parquet or pd.read_csv."),
    Rule("SLU505", "error", "numpy.load with allow_pickle", "Leave allow_pickle at its default (False); save object arrays as JSON."),
    Rule("SLU506", "error", "unsafe YAML loader", "Use yaml.safe_load(text) or yaml.load(text, Loader=yaml.SafeLoader)."),
    Rule("SLU701", "warning", "class introspection dunder", "Prefer isinstance() and type(obj).__name__; class internals are a common sandbox-escape path."),  # noqa: E501 - the rule table keeps one line per rule
    Rule("SLU702", "warning", "__dict__ access", "Read attributes by name, or use dataclasses.asdict() / model.model_dump()."),
    Rule("SLU703", "warning", "pickle-family module imported", "Prefer JSON, .npy, parquet or safetensors; loading pickles is an error."),
    Rule("SLU704", "warning", "type() with three arguments builds a class dynamically", "Declare the class with a `class` statement."),
    Rule("SLU705", "warning", "network library without a network declaration in manifest.py: its calls are refused at run time", _NETWORK_HINT),  # noqa: E501 - the rule table keeps one line per rule
)}

# Rules that no longer exist. Their ids stay reserved so old scan reports keep their meaning.
RETIRED_RULES: dict[str, str] = {
    "SLU601": "pathlib file access (Path.read_text/write_bytes/open/mkdir/touch/unlink/...): retired when plugin code moved into "
              "the confined plugin host, which limits files to the plugin's folder, its models and its scratch folder.",
}

FORBIDDEN_MODULES: dict[str, str] = {
    **dict.fromkeys(("subprocess", "_posixsubprocess", "commands", "popen2", "pty", "_winapi", "webbrowser"), "runs processes"),
    **dict.fromkeys(("multiprocessing", "_multiprocessing", "threading", "_thread"),
                    "starts processes or threads outside the worker's control"),
    **dict.fromkeys(("ctypes", "_ctypes", "cffi", "mmap", "pyximport"), "reaches native code and raw memory"),
    **dict.fromkeys(("socket", "_socket"), "opens raw network sockets"),
    **dict.fromkeys(("fcntl", "resource", "signal", "_signal", "posix", "nt"), "reaches the operating system directly"),
    **dict.fromkeys(("importlib", "imp", "_imp", "runpy", "pkgutil", "zipimport", "pydoc", "site", "__main__",
                     "_frozen_importlib", "_frozen_importlib_external"), "imports or resolves code by name at run time"),
    **dict.fromkeys(("builtins", "__builtin__"), "exposes eval, exec, open and __import__"),
    **dict.fromkeys(("code", "codeop", "timeit", "pdb", "bdb", "trace", "cProfile", "profile", "doctest"),
                    "compiles and runs code from strings"),
    "gc": "reaches every live object in the interpreter",
    "ray": "reaches the cluster directly (other tenants' actors, deployed models and objects); the platform runs your steps on Ray for you",
}
PICKLE_MODULES = frozenset({"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"})

# Qualified-name patterns (fnmatch) -> (rule, what it does). Matched after alias resolution.
FORBIDDEN_FUNCTIONS: tuple[tuple[str, str, str], ...] = (
    *((p, "SLU301", "runs shell commands") for p in ("os.system", "os.popen")),
    *((p, "SLU301", "starts processes") for p in ("os.spawn*", "os.exec[lv]*", "os.fork", "os.forkpty", "os.posix_spawn*",
                                                 "asyncio.create_subprocess_exec", "asyncio.create_subprocess_shell",
                                                 "*.subprocess_exec", "*.subprocess_shell")),  # asyncio.subprocess re-roots at subprocess
    *((p, "SLU301", "signals processes") for p in ("os.kill", "os.killpg")),
    *((p, "SLU302", "works on raw file descriptors") for p in ("os.open", "os.fdopen", "os.dup2")),
    *((p, "SLU302", "changes process privileges") for p in ("os.setuid", "os.setgid", "os.seteuid", "os.setegid", "os.setreuid",
                                                          "os.setregid", "os.setresuid", "os.setresgid", "os.setgroups", "os.chroot")),
    *((p, "SLU302", "moves, links or re-permissions files") for p in ("os.rename", "os.renames", "os.replace", "os.link", "os.symlink",
                                                                     "os.chmod", "os.chown", "os.truncate", "os.mkfifo", "os.mknod")),
    *((p, "SLU303", "builds functions from raw bytecode") for p in ("types.CodeType", "types.FunctionType")),
    ("sys.modules", "SLU304", "reaches every loaded module"),
    *((p, "SLU304", "rewires the import system") for p in ("sys.path", "sys.meta_path", "sys.path_hooks", "sys.path_importer_cache")),
    *((p, "SLU304", "walks stack frames") for p in ("sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile",
                                                  "inspect.currentframe", "inspect.stack", "inspect.trace",
                                                  "inspect.getouterframes", "inspect.getinnerframes")),
    ("inspect.getmembers", "SLU304", "enumerates objects' internals"),
    ("inspect.getattr_static", "SLU304", "reads attributes by computed name"),
    *((p, "SLU201", "imports objects named in strings") for p in ("logging.config", "logging.config.*", "pydantic.ImportString",
                                                                 "pydantic.types.ImportString")),
    *((p, "SLU301", "starts processes") for p in ("concurrent.futures.ProcessPoolExecutor", "concurrent.futures.process",
                                                  "concurrent.futures.process.*", "os.startfile")),
    *((p, "SLU305", "opens files directly") for p in ("io.open", "io.open_code", "io.FileIO", "codecs.open")),
    *((p, "SLU305", "copies, moves and deletes files") for p in ("shutil", "shutil.*")),
    *((p, "SLU101", "loads native code") for p in ("numpy.ctypeslib", "numpy.ctypeslib.*", "torch.ops.load_library",
                                                  "torch.classes.load_library", "torch.utils.cpp_extension", "torch.utils.cpp_extension.*")),  # noqa: E501 - the rule table keeps one line per rule
    *((f"{m}.{f}", "SLU501", "runs arbitrary code while unpickling")
      for m in ("pickle", "dill", "cloudpickle") for f in ("load", "loads", "Unpickler", "_load", "_loads", "_Unpickler")),
    ("joblib.load", "SLU501", "unpickles arbitrary objects"),
    *((p, "SLU502", "loads raw code objects") for p in ("marshal.load", "marshal.loads")),
    ("shelve.open", "SLU502", "unpickles on every read"),
    ("torch.jit.load", "SLU503", "loads a TorchScript archive (pickle plus code)"),
    ("torch.hub.load", "SLU503", "downloads and runs hubconf.py"),
    ("pandas.read_pickle", "SLU504", "unpickles arbitrary objects"),
    *((p, "SLU506", "constructs arbitrary Python objects") for p in ("yaml.unsafe_load*", "yaml.full_load*", "yaml.Loader",
                                                                   "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.CLoader",
                                                                   "yaml.CUnsafeLoader", "yaml.CFullLoader")),
    *((p, "SLU307", "installs packages at run time") for p in (
        "pip", "pip.*", "ensurepip", "ensurepip.*", "easy_install", "easy_install.*", "setuptools.command", "setuptools.command.*",
        "setuptools.setup", "setuptools.sandbox", "setuptools.sandbox.*", "setuptools.installer", "setuptools.installer.*",
        "setuptools.package_index", "setuptools.package_index.*", "setuptools._distutils*", "distutils", "distutils.*",
        "*.distutils", "*.distutils.*", "conda", "conda.*", "conda_*", "mamba", "mamba.*", "libmambapy", "libmambapy.*",
        "uv", "uv.*")),
    ("site.addsitedir", "SLU307", "adds a folder of packages (and runs its .pth files) at run time"),
    *((p, "SLU307", "loads code named by installed packages' entry points") for p in (
        "importlib.metadata.entry_points", "importlib.metadata.EntryPoint", "importlib.metadata.EntryPoints",
        "importlib_metadata", "importlib_metadata.*", "pkg_resources", "pkg_resources.*")),
    *((f"linecache.{f}", "SLU308", "reads any file through the line cache")
      for f in ("getline", "getlines", "updatecache", "checkcache", "lazycache")),
    ("tokenize.open", "SLU308", "opens files directly"),
    *((p, "SLU308", "opens files directly") for p in ("fileinput", "fileinput.*")),
)
# Final names too common elsewhere (Image.open, json.loads, np.stack, ray.kill, platform.system) to
# flag by name alone: these match only through their exact qualified name.
AMBIGUOUS_NAMES = frozenset({"open", "load", "loads", "stack", "kill", "modules", "system", "path", "trace", "link",
                             "rename", "replace", "truncate", "Loader", "CLoader", "getmembers",
                             "config", "process", "setup"})
# Names attrgetter/methodcaller may use literally although a forbidden function shares them.
COMMON_METHOD_NAMES = frozenset({"*", "path", "stack", "trace", "link", "replace", "rename", "truncate", "Loader", "CLoader",
                                 "setup"})
FORBIDDEN_FINALS = frozenset(p.rpartition(".")[2] for p, _, _ in FORBIDDEN_FUNCTIONS) - COMMON_METHOD_NAMES
# Modules reachable as attributes of other modules (`os.path.os`, `np.compat.pickle`): a chain is
# re-rooted at the last of these it passes through. Ambiguous names (scipy.signal) are left out.
SYNONYMS = {"_io": "io", "_pickle": "pickle", "cPickle": "pickle", "posixpath": "os.path", "ntpath": "os.path",
            "__builtin__": "builtins", "_codecs": "codecs"}
REROOT = frozenset({"os", "sys", "io", "codecs", "shutil", "pickle", "marshal", "shelve", "types", "inspect", "builtins",
                    "joblib", "dill", "cloudpickle", "subprocess", "ctypes", "cffi", "socket", "multiprocessing", "threading",
                    "_thread", "pty", "fcntl", "importlib", "imp", "runpy", "pkgutil", "zipimport", "codeop", "linecache",
                    "fileinput", *SYNONYMS})
SENSITIVE_STAR = frozenset({"os", "sys", "io", "codecs", "shutil", "types", "inspect", "operator", "asyncio", "torch", "numpy",
                            "pandas", "yaml", "joblib", *PICKLE_MODULES, *FORBIDDEN_MODULES})

FORBIDDEN_BUILTINS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(("eval", "exec", "compile"), ("SLU201", "runs a string as code")),
    "__import__": ("SLU201", "imports modules by computed name"), "breakpoint": ("SLU201", "opens an interactive debugger"),
    "open": ("SLU202", "opens files directly"),
    **dict.fromkeys(("globals", "locals", "vars"), ("SLU203", "exposes a namespace as a dict")),
    **dict.fromkeys(("setattr", "delattr"), ("SLU203", "changes attributes by computed name")),
}
INTERNAL_ATTRS: dict[str, tuple[str, str]] = {
    "__builtins__": ("SLU401", "exposes eval, exec, open and __import__"),
    **{a: ("SLU402", "reaches interpreter internals") for a in (
        "__subclasses__", "__globals__", "__code__", "__closure__", "__getattribute__", "__self__", "__import__",
        "__reduce__", "__reduce_ex__")},
    **{a: ("SLU403", "walks frames or module loaders") for a in (
        "f_globals", "f_locals", "f_back", "f_builtins", "gi_frame", "cr_frame", "ag_frame", "tb_frame", "__loader__", "__spec__")},
    **{a: ("SLU701", "inspects class internals") for a in ("__class__", "__bases__", "__base__", "__mro__")},
}
# Dunders that getattr/hasattr may name literally: plain duck typing, no way out of the sandbox.
SAFE_DUNDERS = frozenset({"__name__", "__qualname__", "__doc__", "__module__", "__version__", "__len__", "__iter__",
                          "__getitem__", "__call__", "__enter__", "__exit__", "__array__", "__fspath__", "__annotations__"})
# Modules whose object, passed as a value (`[os]`, `def f(m=os)`, `match os:`), escapes alias tracking.
MODULE_VALUES = frozenset({"os", "os.path", "sys", "io", "codecs", "types", "inspect", "operator", "asyncio", "yaml",
                           "joblib", "logging", *PICKLE_MODULES})
ATTRGETTERS = frozenset({"operator.attrgetter", "operator.methodcaller"})
CONDITIONAL_LOADERS = {"torch.load": "torch.load", "torch.serialization.load": "torch.load", "numpy.load": "numpy.load",
                       "yaml.load": "yaml.load", "yaml.load_all": "yaml.load_all"}
SAFE_YAML_LOADERS = frozenset({"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader", "yaml.CBaseLoader"})
# tokenize functions that read through a `readline`: fine over bytes in memory, a file reader otherwise.
TOKENIZERS = frozenset({"tokenize.tokenize", "tokenize.generate_tokens", "tokenize.detect_encoding"})
IN_MEMORY_STREAMS = frozenset({"io.BytesIO", "io.StringIO"})
# Modules whose attributes getattr may not name by computed string: they hold the functions the rules
# above refuse, so a computed name would hide which one is called. Other objects (torch, nn, a config)
# may be read by computed name: the guarded builtins refuse private names when the code runs. logging is
# left out for `getattr(logging, level_name)`.
SENSITIVE_GETATTR = frozenset({*(m.split(".")[0] for m in MODULE_VALUES), *FORBIDDEN_MODULES, *REROOT, "shutil",
                               "pip"}) - {"logging"}

# The platform's own modules (dotted prefixes): plugin code gets the SDK, never the platform's internals.
PLATFORM_MODULES = ("infra", "functions", "events", "engine.sandbox", "engine.ingest", "engine.realtime",
                    "engine.models.registry", "engine.models.validate", "engine.models.archive",
                    "engine.models.formats", "engine.models.untrusted", "engine.plugins.scanner",
                    "engine.plugins.validate", "engine.plugins.archive", "engine.plugins.loader")
# Error types plugin code sees (raised by the SDK or the host) and may catch; nothing else in them.
PLATFORM_ALLOWED = ("events.errors", "engine.sandbox.errors")
# Network libraries: HTTP(S) clients reach the hosts manifest.py declares through the platform's proxy;
# the other protocols cannot go through it. Raw `socket` stays forbidden (SLU101) either way.
HTTP_MODULES = ("ssl", "http.client", "urllib.request", "urllib3", "requests", "httpx", "httpcore", "aiohttp",
                "xmlrpc.client", "grpc", "websocket*")
OTHER_PROTOCOL_MODULES = ("ftplib", "smtplib", "telnetlib", "poplib", "imaplib", "nntplib")

BINARY_SUFFIXES = frozenset({".pyc", ".pyo", ".so", ".pyd", ".dll", ".dylib", ".pth", ".egg", ".whl", ".pyz"})
SOURCE_SUFFIXES = frozenset({".py", ".pyw"})
MAX_SOURCE_BYTES = 2 * 1024 * 1024
_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
_FORMAT_DUNDER = re.compile(r"\{[^{}]*?[.\[]_")


# --- helpers ------------------------------------------------------------------------------------

def _canonical(qual: str) -> str:
    """Re-root `a.b.os.system` at the last module-like segment and map private twins (`_io`) to
    their public name, so every spelling of one function compares equal."""
    parts = qual.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in REROOT:
            parts = parts[i:]
            break
    if parts[0] in SYNONYMS:
        parts = SYNONYMS[parts[0]].split(".") + parts[1:]
    return ".".join(parts)


@functools.lru_cache(maxsize=4096)  # the same few names recur on every line of a module
def _match(qual: str) -> tuple[str, str, str] | None:
    """(name to report, rule, phrase) when `qual` is a forbidden function: exactly, or by an
    unambiguous final name on any module (`torch.multiprocessing.spawn`, `pd.io.pickle.read_pickle`)."""
    for pattern, rule, phrase in FORBIDDEN_FUNCTIONS:
        if fnmatchcase(qual, pattern):
            return qual, rule, phrase
    head, _, last = qual.rpartition(".")
    if head and last not in AMBIGUOUS_NAMES and _top(qual) not in FORBIDDEN_MODULES:
        for pattern, rule, phrase in FORBIDDEN_FUNCTIONS:
            module, _, final = pattern.rpartition(".")
            if module and final != "*" and not module.startswith("*") and fnmatchcase(last, final):
                return f"{module}.{last}", rule, phrase
    return None


def _top(qual: str | None) -> str:
    return (qual or "").split(".")[0]


def _under(qual: str, prefix: str) -> bool:
    """`qual` is the module `prefix` or something inside it (`prefix` may end in a `*` wildcard)."""
    if prefix.endswith("*"):
        return fnmatchcase(qual.split(".")[0] if "." not in prefix else qual, prefix)
    return qual == prefix or qual.startswith(prefix + ".")


def _platform(qual: str) -> str | None:
    """The platform module `qual` lies in, or None (SDK paths and the error modules are fine)."""
    if any(_under(qual, allowed) for allowed in PLATFORM_ALLOWED):
        return None
    return next((prefix for prefix in PLATFORM_MODULES if _under(qual, prefix)), None)


def _network(qual: str) -> tuple[str, bool] | None:
    """(network module, whether it speaks HTTP(S)) for a name inside a network library."""
    for prefix in HTTP_MODULES:
        if _under(qual, prefix):
            return (_top(qual) if prefix.endswith("*") else prefix), True
    return next(((prefix, False) for prefix in OTHER_PROTOCOL_MODULES if _under(qual, prefix)), None)


def manifest_declares_network(source: bytes | str | None) -> bool:
    """Whether manifest.py declares hosts in `network`, as register reads it
    (`engine.plugins.manifest.read_network_declaration`, the one static reader). A declaration that
    allows nothing, or that register refuses (SLU825/826, reported there), declares nothing."""
    if source is None:
        return False
    from engine.plugins.manifest import read_network_declaration

    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
    try:
        entries, _ = read_network_declaration(text)
    except (RecursionError, MemoryError):
        return False
    return bool(entries)


def _const_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Call)):
        node = node.value if isinstance(node, ast.Attribute) else node.args[0] if node.args else node.func
    return node.id if isinstance(node, ast.Name) else None


def _resolve(node: ast.AST, aliases: dict[str, tuple[str, str]]) -> str | None:
    """Canonical qualified name of a Name/Attribute chain rooted at an alias, also through
    `getattr(x, "literal")`; None for anything else (locals, call results, subscripts)."""
    attrs: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and node.func.id not in aliases and len(node.args) >= 2 and (literal := _const_str(node.args[1])) is not None):
            attrs.append(literal)
            node = node.args[0]
        else:
            break
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return _canonical(".".join([aliases[node.id][0], *reversed(attrs)]))


def _collect_aliases(tree: ast.AST) -> tuple[dict[str, tuple[str, str]], set[int]]:
    """Module-wide map local name -> (qualified name, how it was bound), flow-insensitive on
    purpose: a binding anywhere counts everywhere. Also the ids of right-hand sides that only
    create an alias (`load = torch.load`), which are checked where the alias is called."""
    aliases: dict[str, tuple[str, str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = (a.name, "imported as")
                else:
                    aliases[_top(a.name)] = (_top(a.name), "imported as")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                if a.name != "*":
                    aliases[a.asname or a.name] = (f"{node.module}.{a.name}", "imported as")
    pairs: list[tuple[ast.expr, ast.expr]] = []
    in_class = {id(s) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for s in c.body}  # `A.mod` escapes tracking
    for node in ast.walk(tree):
        if id(node) in in_class:
            continue
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)):
                pairs.extend(zip(target.elts, value.elts, strict=False))
            else:
                pairs.append((target, value))
    rhs: set[int] = set()
    for _ in range(8):  # chains like a = os; b = a; c = b.system settle in a few rounds
        changed = False
        for target, value in pairs:
            qual = _resolve(value, aliases)
            if isinstance(target, ast.Name) and qual:
                rhs.add(id(value))
                if aliases.get(target.id, ("",))[0] != qual:
                    aliases[target.id] = (qual, "assigned to")
                    changed = True
        if not changed:
            break
    return aliases, rhs


class _Checker(ast.NodeVisitor):
    """Walks one module's tree and records findings; aliases were collected beforehand."""

    def __init__(self, filename: str, tree: ast.AST, *, network_declared: bool = False) -> None:
        self.filename = filename
        self.network_declared = network_declared
        self.aliases, self.alias_values = _collect_aliases(tree)
        self.flagged_imports: set[str] = set()  # local names bound by an import that module_rule reports
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                self.flagged_imports.update(a.asname or _top(a.name) for a in n.names if self.module_rule(_canonical(a.name)))
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                self.flagged_imports.update(a.asname or a.name for a in n.names
                                            if a.name != "*" and self.module_rule(_canonical(f"{n.module}.{a.name}")))
        self.called: set[int] = set()
        self.bases: set[int] = set()  # nodes used as `node.attr` or as getattr's object with a literal name
        self.in_string = ""
        self.findings: list[Finding] = []

    def report(self, rule_id: str, node: ast.AST, message: str) -> None:
        if self.in_string:
            message = f"in the string {self.in_string[:80]!r}, which Python may evaluate: {message}"
        self.findings.append(_file_finding(rule_id, self.filename, getattr(node, "lineno", 0), message))

    def resolve(self, node: ast.AST) -> str | None:
        return _resolve(node, self.aliases)

    def label(self, node: ast.AST, qual: str) -> str:
        """`qual` plus how the source spelled it, so the author can find the alias."""
        text = ast.unparse(node)
        root = _root_name(node)
        if text == qual or root not in self.aliases:
            return qual if text == qual else f"{qual} (as `{text}`)"
        origin, how = self.aliases[root]
        if isinstance(node, ast.Name):
            return f"{qual} ({how} `{root}`)"
        if origin == root:
            return f"{qual} (as `{text}`)"
        return f"{qual} (as `{text}`, {origin} {how} `{root}`)"

    # -- imports --

    def module_rule(self, qual: str) -> tuple[str, str] | None:
        """(rule, phrase) when `qual` lies in a platform module or a network library this plugin may
        not use; None otherwise."""
        if (platform := _platform(qual)):
            return "SLU103", f"{platform} is the platform's own code, not part of the plugin SDK"
        if (network := _network(qual)):
            module, http = network
            if not http:
                return "SLU105", f"{module} connects to servers directly; declared hosts are reachable only over HTTP(S)"
            if not self.network_declared:
                return "SLU705", (f"{module} reaches the network, but manifest.py declares no network access; add "
                                  f"network = {{\"allow\": [\"host:port\"]}} to manifest.py")
        return None

    def check_module(self, node: ast.AST, module: str, shown: str, *, platform_and_network: bool = True) -> None:
        canon = _canonical(module)
        if _top(canon) in FORBIDDEN_MODULES:
            self.report("SLU101", node, f"import of {shown}: {_top(canon)} {FORBIDDEN_MODULES[_top(canon)]}")
        elif platform_and_network and (rule := self.module_rule(canon)):
            self.report(rule[0], node, f"import of {shown}: {rule[1]}")
        elif (m := _match(canon)):
            self.report(m[1], node, f"import of {shown}: {m[0]} {m[2]}")
        elif _top(canon) in PICKLE_MODULES:
            self.report("SLU703", node, f"import of {shown}: {_top(canon)} can deserialise code")

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.check_module(node, a.name, f"`{a.name}`" + (f" (as `{a.asname}`)" if a.asname else ""))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return  # relative imports stay inside the plugin, which is scanned file by file
        star = any(a.name == "*" for a in node.names)
        # `from events import errors` is fine though `events` is not: names are judged one by one below
        self.check_module(node, node.module, f"`{ast.unparse(node)}`", platform_and_network=star)
        canon_module = _canonical(node.module)
        for a in node.names:
            local = a.asname or a.name
            if a.name == "*":
                if _top(canon_module) in SENSITIVE_STAR:
                    self.report("SLU102", node, f"`from {node.module} import *` hides which of its functions are used")
                continue
            qual = _canonical(f"{node.module}.{a.name}")
            if _top(canon_module) not in FORBIDDEN_MODULES and (rule := self.module_rule(qual)):
                self.report(rule[0], node, f"import of `{ast.unparse(node)}`: {rule[1]}")
                continue
            written = f"{node.module}.{a.name}"
            alias = f" (imported as `{local}`)" if local != qual.rpartition(".")[2] else "" if written == qual else f" (as `{written}`)"
            shown = qual + alias
            if (m := _match(qual)) and _top(canon_module) not in FORBIDDEN_MODULES:
                self.report(m[1], node, f"{shown} {m[2]}")
            elif _top(qual) in FORBIDDEN_MODULES and _top(canon_module) not in FORBIDDEN_MODULES:
                self.report("SLU101", node, f"{shown}: {_top(qual)} {FORBIDDEN_MODULES[_top(qual)]}")
            elif a.name in INTERNAL_ATTRS and RULES[INTERNAL_ATTRS[a.name][0]].severity == "error":
                rule_id, phrase = INTERNAL_ATTRS[a.name]
                self.report(rule_id, node, f"importing `{a.name}` from {node.module} {phrase}")

    # -- names and attributes --

    def check_qual(self, node: ast.AST, qual: str) -> bool:
        """Report `node` if it resolves to something forbidden; True when reported."""
        if (m := _match(qual)):
            self.report(m[1], node, f"{self.label(node, m[0])} {m[2]}")
            return True
        called, alias_rhs = id(node) in self.called, id(node) in self.alias_values
        if qual in CONDITIONAL_LOADERS and not called and not alias_rhs:
            self.report("SLU503" if qual.startswith("torch") else "SLU505" if qual.startswith("numpy") else "SLU506",
                        node, f"{self.label(node, qual)} is passed around uncalled, so its arguments cannot be checked")
            return True
        if qual in ATTRGETTERS and not called and not alias_rhs:
            self.report("SLU204", node, f"{self.label(node, qual)} is passed around uncalled, so its names cannot be checked")
            return True
        if qual in TOKENIZERS and not called and not alias_rhs:
            self.report("SLU308", node, f"{self.label(node, qual)} is passed around uncalled, so what it reads cannot be checked")
            return True
        if qual in MODULE_VALUES and id(node) not in self.bases and not alias_rhs:
            self.report("SLU405", node, f"module {self.label(node, qual)} is passed as a value, so what is called on it cannot be checked")
            return True
        root = _root_name(node)
        origin = _canonical(self.aliases[root][0]) if root in self.aliases else ""
        if _top(qual) in FORBIDDEN_MODULES and _top(origin) not in FORBIDDEN_MODULES:
            self.report("SLU101", node, f"{self.label(node, qual)} reaches {_top(qual)}, which {FORBIDDEN_MODULES[_top(qual)]}")
            return True
        # `import engine.models` binds `engine`, through which `engine.sandbox...` is reachable; a name
        # whose import (or assignment) was already reported is not reported again where it is used
        already = root in self.flagged_imports or (
            root in self.aliases and self.aliases[root][1] == "assigned to" and self.module_rule(origin) is not None)
        if not already and (rule := self.module_rule(qual)):
            self.report(rule[0], node, f"{self.label(node, qual)}: {rule[1]}")
            return True
        return False

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load):
            return
        name = node.id
        if name in self.aliases:
            self.check_qual(node, self.resolve(node) or "")
        elif name in FORBIDDEN_BUILTINS:
            rule, phrase = FORBIDDEN_BUILTINS[name]
            self.report(rule, node, f"builtin `{name}` {phrase}")
        elif name in INTERNAL_ATTRS:  # __builtins__, __class__ as bare names
            rule, phrase = INTERNAL_ATTRS[name]
            self.report(rule, node, f"`{name}` {phrase}")
        elif name == "getattr" and id(node) not in self.called:
            self.report("SLU204", node, "builtin `getattr` is passed around as a value, hiding which attributes it reads")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if attr in INTERNAL_ATTRS:
            rule, phrase = INTERNAL_ATTRS[attr]
            self.report(rule, node, f"`.{attr}` in `{ast.unparse(node)}` {phrase}")
        elif attr == "__dict__":
            if self.resolve(node.value):
                self.report("SLU404", node, f"`{ast.unparse(node)}` exposes a module's namespace")
            else:
                self.report("SLU702", node, f"`{ast.unparse(node)}` reads an object's namespace")
        elif attr in ("subprocess_exec", "subprocess_shell"):
            self.report("SLU301", node, f"`{ast.unparse(node)}` starts processes")
        self.bases.add(id(node.value))
        qual = self.resolve(node)
        if qual and self.check_qual(node, qual):
            return  # the chain below is plain names already accounted for
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        key = _const_str(node.slice)
        if key in INTERNAL_ATTRS and RULES[INTERNAL_ATTRS[key][0]].severity == "error":
            self.report(INTERNAL_ATTRS[key][0], node, f"`{ast.unparse(node)}` {INTERNAL_ATTRS[key][1]}")
        elif isinstance(node.value, ast.Attribute) and node.value.attr == "__dict__" and (
                key is None or (_is_dunder(key) and key not in SAFE_DUNDERS)):
            self.report("SLU404", node, f"`{ast.unparse(node)}` reads a namespace entry by computed or dunder name")
        self.generic_visit(node)

    # -- strings --

    def visit_Expr(self, node: ast.Expr) -> None:
        if _const_str(node.value) is None:  # a docstring is never evaluated
            self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        """typing.get_type_hints, pydantic and ForwardRef evaluate strings (`x: "__import__('os')..."`),
        so a string that parses as an expression with a call or a dunder is scanned as code."""
        text = node.value
        if not isinstance(text, str) or len(text) > 2000 or ("(" not in text and "__" not in text):
            return
        try:
            expr = ast.parse(text.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return
        if not any(isinstance(n, ast.Call) or (isinstance(n, ast.Attribute) and _is_dunder(n.attr)) for n in ast.walk(expr)):
            return
        for sub in ast.walk(expr):
            if "lineno" in sub._attributes:  # the node types that carry a position (expressions, keywords, arguments)
                cast(ast.expr, sub).lineno = node.lineno
        outer, self.in_string = self.in_string, self.in_string or text
        try:
            self.visit(expr)
        finally:
            self.in_string = outer

    # -- calls --

    def visit_Call(self, node: ast.Call) -> None:
        self.called.add(id(node.func))
        func = node.func
        if isinstance(func, ast.Name) and func.id not in self.aliases:
            if func.id in ("getattr", "hasattr"):
                self.check_getattr(node, func.id)
            elif func.id == "type" and len(node.args) == 3:
                self.report("SLU704", node, "type(name, bases, namespace) builds a class at run time")
        qual = self.resolve(func)
        if qual in ATTRGETTERS:
            self.check_attrgetter(node, qual)
        elif qual in CONDITIONAL_LOADERS:
            self.check_loader(node, CONDITIONAL_LOADERS[qual], self.label(func, qual))
        elif qual in TOKENIZERS:
            self.check_tokenizer(node, self.label(func, qual))
        if isinstance(func, ast.Attribute):
            fmt = _const_str(func.value)
            if func.attr in ("format", "format_map") and fmt and _FORMAT_DUNDER.search(fmt):
                self.report("SLU402", node, f"format string {fmt!r} reads private or dunder attributes")
        for kw in node.keywords:  # flags that make any library unpickle or run downloaded code
            falsy = isinstance(kw.value, ast.Constant) and not kw.value.value
            if kw.arg == "trust_remote_code" and not falsy:
                self.report("SLU306", kw.value, f"`{ast.unparse(func)}(..., trust_remote_code=...)` runs code downloaded with the model")
            elif kw.arg == "allow_pickle" and not falsy and qual != "numpy.load":
                self.report("SLU505", kw.value, f"`{ast.unparse(func)}(..., allow_pickle=...)` unpickles arbitrary objects")
            elif kw.arg == "weights_only" and falsy and qual not in CONDITIONAL_LOADERS:
                self.report("SLU503", kw.value, f"`{ast.unparse(func)}(..., weights_only=False)` unpickles arbitrary objects")
        self.generic_visit(node)

    def check_getattr(self, node: ast.Call, fname: str) -> None:
        """A literal, non-dunder name on an ordinary object is plain attribute access. A computed name
        is allowed too (the guarded builtins of plugin modules refuse underscore names at run time),
        except for getattr on a sensitive module, where it would hide which function is called."""
        args = node.args
        if len(args) < 2 or any(isinstance(a, ast.Starred) for a in args[:2]):
            self.report("SLU204", node, f"`{ast.unparse(node)}` hides the attribute name")
            return
        name = _const_str(args[1])
        if name is not None:
            self.bases.add(id(args[0]))
        if name is None:
            obj = self.resolve(args[0])
            if fname == "getattr" and obj and _top(obj) in SENSITIVE_GETATTR:
                self.report("SLU204", node, f"getattr() on {self.label(args[0], obj)} with the computed attribute name "
                                            f"`{ast.unparse(args[1])}` hides which of its functions is called")
            else:
                self.bases.add(id(args[0]))
        elif _is_dunder(name) and name not in SAFE_DUNDERS:
            self.report("SLU204", node, f"{fname}(..., {name!r}) reaches a dunder attribute")
        elif name in INTERNAL_ATTRS and RULES[INTERNAL_ATTRS[name][0]].severity == "error":
            self.report(INTERNAL_ATTRS[name][0], node, f"{fname}(..., {name!r}) {INTERNAL_ATTRS[name][1]}")
        elif (obj := self.resolve(args[0])) and (m := _match(_canonical(f"{obj}.{name}"))):
            self.report(m[1], node, f"{m[0]} (via `{ast.unparse(node)}`) {m[2]}")

    def check_attrgetter(self, node: ast.Call, qual: str) -> None:
        names = node.args if qual.endswith("attrgetter") else node.args[:1]
        if not names or node.keywords and qual.endswith("attrgetter"):
            self.report("SLU204", node, f"`{ast.unparse(node)}` hides the attribute name")
        for arg in names:
            text = _const_str(arg)
            if text is None:
                self.report("SLU204", node, f"{qual} with the computed name `{ast.unparse(arg)}`")
                continue
            for part in text.split("."):
                if (_is_dunder(part) and part not in SAFE_DUNDERS) or part in INTERNAL_ATTRS or part in FORBIDDEN_FINALS:
                    self.report("SLU204", node, f"{qual}({text!r}) reaches `{part}`")

    def check_loader(self, node: ast.Call, qual: str, shown: str) -> None:
        """torch.load, numpy.load and yaml.load are safe or not depending on their arguments."""
        kwargs = {kw.arg: kw.value for kw in node.keywords}
        if qual == "torch.load":
            wo = kwargs.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                how = "without weights_only=True" if wo is None else f"with weights_only={ast.unparse(wo)}"
                self.report("SLU503", node, f"{shown} {how} unpickles arbitrary objects")
        elif qual == "numpy.load":
            ap = kwargs.get("allow_pickle", node.args[2] if len(node.args) > 2 else None)
            if None in kwargs or (ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False)):
                allow = ast.unparse(ap) if ap else "**kwargs"
                self.report("SLU505", node, f"{shown} with allow_pickle={allow} unpickles arbitrary objects")
        else:
            loader = kwargs.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or self.resolve(loader) not in SAFE_YAML_LOADERS:
                how = "without a Loader" if loader is None else f"with Loader={ast.unparse(loader)}"
                self.report("SLU506", node, f"{shown} {how} can construct arbitrary Python objects")

    def check_tokenizer(self, node: ast.Call, shown: str) -> None:
        """tokenize over `io.BytesIO(data).readline` is parsing; over a file's readline it is reading the file."""
        arg = node.args[0] if node.args else next((kw.value for kw in node.keywords if kw.arg == "readline"), None)
        if (isinstance(arg, ast.Attribute) and arg.attr == "readline" and isinstance(arg.value, ast.Call)
                and (self.resolve(arg.value.func) in IN_MEMORY_STREAMS
                     or (isinstance(arg.value.func, ast.Name) and arg.value.func.id in ("BytesIO", "StringIO")))):
            return
        shown_arg = ast.unparse(arg) if arg is not None else "**kwargs"
        self.report("SLU308", node, f"{shown} over `{shown_arg}` reads a file; tokenize bytes you hold with io.BytesIO(data).readline")


# --- entry points -------------------------------------------------------------------------------

def _file_finding(rule_id: str, filename: str, line: int, message: str) -> Finding:
    rule = RULES[rule_id]
    return Finding(rule_id=rule_id, severity=rule.severity, file=filename, line=line, message=message, hint=rule.hint)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, str, int, str]] = set()
    unique = []
    for f in findings:
        key = (f.rule_id, f.file, f.line, f.message)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def scan_source(source: bytes | str, filename: str, *, strict: bool = False, network_declared: bool = False) -> list[Finding]:
    """Findings for one file's source. Never raises on hostile input: size, null bytes, encoding
    declarations, syntax errors and pathological nesting all become findings. `strict` does not
    change the findings (warnings stay warnings); it is accepted for symmetry with scan_directory.
    `network_declared`: the plugin's manifest.py declares `network` (scan_directory finds out);
    without it, importing an HTTP client library is a warning (SLU705): the calls would be refused."""
    raw = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else bytes(source)
    if len(raw) > MAX_SOURCE_BYTES:
        return [_file_finding("SLU002", filename, 0, f"{len(raw)} bytes is over the {MAX_SOURCE_BYTES}-byte limit")]
    if b"\x00" in raw:
        return [_file_finding("SLU003", filename, raw[:raw.index(b"\x00")].count(b"\n") + 1, "source contains null bytes")]
    for lineno, line in enumerate(raw.removeprefix(b"\xef\xbb\xbf").splitlines()[:2], start=1):  # PEP 263 lines
        if (cookie := _COOKIE.match(line)):
            name = cookie.group(1).decode("ascii", "replace").lower().replace("_", "-")
            if name not in ("utf-8", "utf8", "ascii", "us-ascii"):
                return [_file_finding("SLU004", filename, lineno,
                                      f"coding declaration {name!r} makes Python decode the file differently from what reviewers see")]
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [_file_finding("SLU003", filename, raw[:exc.start].count(b"\n") + 1, f"invalid UTF-8 at byte {exc.start}")]
    try:
        tree = ast.parse(raw, filename)
        checker = _Checker(filename, tree, network_declared=network_declared)
        checker.visit(tree)
    except SyntaxError as exc:
        return [_file_finding("SLU001", filename, exc.lineno or 0, f"syntax error: {exc.msg}")]
    except (RecursionError, MemoryError):
        return [_file_finding("SLU005", filename, 0, "expressions are nested too deeply to scan")]
    except ValueError as exc:  # e.g. a source Python refuses to decode
        return [_file_finding("SLU003", filename, 0, f"source cannot be read: {exc}")]
    return _dedupe(checker.findings)


@dataclass(frozen=True)
class ScanReport:
    """`files_scanned` counts the Python source files parsed."""

    passed: bool
    findings: list[Finding]
    files_scanned: int


def _sort_key(f: Finding) -> tuple[int, str, int, str]:
    return (0 if f.severity == "error" else 1, f.file, f.line, f.rule_id)


def _read_manifest(root: Path) -> bytes | None:
    """manifest.py's bytes when it is a regular file (never a link) of a scannable size."""
    path = root / "manifest.py"
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SOURCE_BYTES:
            return None
        return path.read_bytes()
    except OSError:
        return None


def scan_directory(root: Path, *, strict: bool = False) -> ScanReport:
    """Walk every entry under `root` without following links: links, special files, compiled or
    native files and __pycache__ folders are findings; `.py` files are scanned; data files pass.
    Network libraries are allowed when `root/manifest.py` (a regular file) declares `network`."""
    root = Path(root)
    network_declared = manifest_declares_network(_read_manifest(root))
    findings: list[Finding] = []
    scanned = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            rel = folder.relative_to(root).as_posix()
            findings.append(_file_finding("SLU012", rel, 0, f"{rel} cannot be listed: {exc.strerror}"))
            continue
        for entry in entries:
            rel = Path(entry.path).relative_to(root).as_posix()
            if entry.is_symlink():
                findings.append(_file_finding("SLU012", rel, 0, f"{rel} is a symbolic link"))
            elif entry.is_dir(follow_symlinks=False):
                if entry.name == "__pycache__":
                    findings.append(_file_finding("SLU011", rel, 0, f"{rel} holds compiled bytecode Python would import"))
                else:
                    stack.append(Path(entry.path))
            elif not entry.is_file(follow_symlinks=False):
                findings.append(_file_finding("SLU012", rel, 0, f"{rel} is not a regular file"))
            elif any(s.lower() in BINARY_SUFFIXES for s in Path(entry.name).suffixes[-2:]):
                findings.append(_file_finding("SLU010", rel, 0, f"{rel} is compiled, native or importable code the scanner cannot read"))
            elif Path(entry.name).suffix.lower() in SOURCE_SUFFIXES:
                scanned += 1
                try:
                    data = Path(entry.path).read_bytes()
                except OSError as exc:
                    findings.append(_file_finding("SLU003", rel, 0, f"{rel} cannot be read: {exc.strerror}"))
                    continue
                findings.extend(scan_source(data, rel, strict=strict, network_declared=network_declared))
    findings.sort(key=_sort_key)
    passed = not any(f.severity == "error" or strict for f in findings)
    return ScanReport(passed=passed, findings=findings, files_scanned=scanned)


@dataclass(frozen=True)
class Violation:
    filename: str
    line: int
    severity: str
    message: str
    rule_id: str
    hint: str


@dataclass(frozen=True)
class ScanResult:
    passed: bool
    violations: list[Violation]


class PluginSecurityScanner:
    """The hosted product's documented local entry point:
    `PluginSecurityScanner(strict_mode=False).scan_directory("my_extractor/")`."""

    def __init__(self, strict_mode: bool = False) -> None:
        self.strict_mode = strict_mode

    def scan_directory(self, path: str | os.PathLike[str]) -> ScanResult:
        report = scan_directory(Path(path), strict=self.strict_mode)
        return ScanResult(passed=report.passed, violations=[
            Violation(filename=f.file, line=f.line, severity=f.severity, message=f.message, rule_id=f.rule_id, hint=f.hint)
            for f in report.findings])
