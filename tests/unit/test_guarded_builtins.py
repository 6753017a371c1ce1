"""Every module imported from a plugin folder runs with guarded builtins: its `getattr` and `hasattr`
refuse private and dunder names with a SandboxViolation naming the plugin file and line, and
otherwise behave like the real ones. Library modules keep the real builtins, and unloading a
plugin leaves no import finder behind."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import pytest

from engine.plugins import loader
from engine.sandbox.errors import SandboxViolation

pytestmark = pytest.mark.unit

MANIFEST = "metadata = {'feature_extractor_name': 'guarded', 'version': '1.0.0'}\n"

PROBE = '''\
class Box:
    def __init__(self):
        self.label = "box"
        self._cache = {"k": 1}


def dunder(obj):
    name = "_" + "_class__"
    return getattr(obj, name)


def private(obj):
    name = "_" + "cache"
    return getattr(obj, name)


def plain(obj, part):
    return getattr(obj, "la" + part)


def with_default(obj, name):
    return getattr(obj, name, "fallback")


def has(obj, name):
    return hasattr(obj, name)


def frame_walk(gen):
    return getattr(gen, "gi_" + "frame")


def duck(obj):
    return getattr(obj, "_" + "_len__", None) is not None


def own_private():
    box = Box()
    return getattr(box, "_" + "cache"), hasattr(box, "_" + "model")
'''

FRAMES = '''\
import numpy as np
import pandas as pd


def summarise(values, column):
    df = pd.DataFrame({"g": [1, 1, 2], column: values})
    grouped = df.groupby("g")[column].sum()
    total = getattr(grouped, "su" + "m")()
    arr = np.asarray(values, dtype=getattr(np, "float" + "32"))
    return float(total), float(arr.mean()), hasattr(df, "shape")


def peek(df):
    return getattr(df, "_" + "mgr")
'''

INIT = '''\
def probe(obj):
    return getattr(obj, "_" + "_dict__")
'''


def write_plugin(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


@pytest.fixture
def plugin(tmp_path: Path):
    root = write_plugin(tmp_path / "guarded", {
        "manifest.py": MANIFEST,
        "probe.py": PROBE,
        "processors/frames.py": FRAMES,  # a folder without __init__.py
        "processors/deep/__init__.py": "",
        "processors/deep/inner.py": "def grab(obj, name):\n    return getattr(obj, name)\n",
    })
    yield root
    loader.unload(root)


def line_of(source: str, text: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), start=1) if text in line)


def test_a_computed_dunder_name_is_refused_with_the_plugin_file_and_line(plugin: Path) -> None:
    probe = loader.import_module(plugin, "probe")
    with pytest.raises(SandboxViolation) as caught:
        probe.dunder(probe.Box())
    violation = caught.value
    assert (violation.action, violation.target) == ("attribute", "__class__")
    assert (violation.file, violation.line) == ("probe.py", line_of(PROBE, "return getattr(obj, name)"))
    assert "probe.py" in str(violation) and isinstance(violation, PermissionError)


def test_a_private_name_of_a_library_object_is_refused(plugin: Path) -> None:
    probe = loader.import_module(plugin, "probe")
    with pytest.raises(SandboxViolation) as caught:
        probe.private(json)
    assert caught.value.target == "_cache"


def test_an_ordinary_computed_name_works_and_missing_ones_raise_attribute_error(plugin: Path) -> None:
    probe = loader.import_module(plugin, "probe")
    box = probe.Box()
    assert probe.plain(box, "bel") == "box"
    with pytest.raises(AttributeError):
        probe.plain(box, "bell")


def test_defaults_work_and_refused_names_ignore_them(plugin: Path) -> None:
    probe = loader.import_module(plugin, "probe")
    box = probe.Box()
    assert probe.with_default(box, "label") == "box"
    assert probe.with_default(box, "missing") == "fallback"
    with pytest.raises(SandboxViolation):
        probe.with_default(box, "__globals__")


def test_hasattr_is_guarded_likewise(plugin: Path) -> None:
    probe = loader.import_module(plugin, "probe")
    box = probe.Box()
    assert probe.has(box, "label") is True and probe.has(box, "nothing") is False
    with pytest.raises(SandboxViolation) as caught:
        probe.has(print, "__self__")
    assert (caught.value.file, caught.value.line) == ("probe.py", line_of(PROBE, "return hasattr(obj, name)"))


def test_frame_walking_names_are_refused_too(plugin: Path) -> None:
    probe = loader.import_module(plugin, "probe")
    with pytest.raises(SandboxViolation) as caught:
        probe.frame_walk(x for x in ())
    assert caught.value.target == "gi_frame"


def test_duck_typing_dunders_and_the_plugins_own_private_names_are_allowed(plugin: Path) -> None:
    probe = loader.import_module(plugin, "probe")
    assert probe.duck([1]) is True and probe.duck(3) is False
    assert probe.own_private() == ({"k": 1}, False)


def test_a_str_subclass_cannot_pose_as_another_name(plugin: Path) -> None:
    probe = loader.import_module(plugin, "probe")

    class Sneaky(str):
        def startswith(self, *args: object) -> bool:
            return False

    with pytest.raises(SandboxViolation):
        probe.with_default(probe.Box(), Sneaky("__class__"))


def test_processors_submodules_are_guarded_at_any_depth(plugin: Path) -> None:
    inner = loader.import_module(plugin, "processors.deep.inner")
    assert inner.__dict__["__builtins__"]["getattr"] is not builtins.getattr
    assert inner.grab(json, "dumps") is json.dumps
    with pytest.raises(SandboxViolation) as caught:
        inner.grab(json, "__loader__")
    assert (caught.value.file, caught.value.line) == ("processors/deep/inner.py", 2)


def test_the_package_init_is_guarded(tmp_path: Path) -> None:
    root = write_plugin(tmp_path / "with_init", {"manifest.py": MANIFEST, "__init__.py": INIT})
    try:
        manifest = loader.import_module(root, "manifest")
        package = sys.modules[loader.package_name(root)]
        assert manifest.__dict__["__builtins__"] is package.__dict__["__builtins__"]
        with pytest.raises(SandboxViolation) as caught:
            package.probe(json)
        assert (caught.value.file, caught.value.line) == ("__init__.py", 2)
    finally:
        loader.unload(root)


def test_numpy_and_pandas_called_from_plugin_code_still_work(plugin: Path) -> None:
    frames = loader.import_module(plugin, "processors.frames")
    assert frames.summarise([1.0, 2.0, 4.0], "v") == (7.0, pytest.approx(7.0 / 3), True)
    import pandas as pd

    with pytest.raises(SandboxViolation):
        frames.peek(pd.DataFrame({"a": [1]}))


def test_library_and_sdk_modules_keep_the_real_builtins(plugin: Path) -> None:
    loader.import_module(plugin, "processors.frames")
    import numpy as np
    import pandas as pd

    from engine.plugins.extractors import pipeline

    assert builtins.getattr is getattr and builtins.hasattr is hasattr
    for module in (np, pd, json, pipeline):
        assert module.__dict__["__builtins__"] in (builtins, builtins.__dict__)
    assert getattr(pd.DataFrame(), "_" + "mgr") is not None  # this test module is not plugin code


def test_unload_forgets_the_modules_and_the_finder(tmp_path: Path) -> None:
    root = write_plugin(tmp_path / "short_lived", {"manifest.py": MANIFEST, "processors/core.py": "X = 1\n"})
    name = loader.package_name(root)
    before = list(sys.meta_path)
    assert loader.import_module(root, "processors.core").X == 1
    assert len(sys.meta_path) == len(before) + 1
    loader.unload(root)
    assert sys.meta_path == before
    assert not [k for k in sys.modules if k == name or k.startswith(name + ".")]
    assert loader.import_module(root, "manifest").metadata["feature_extractor_name"] == "guarded"
    loader.unload(root)
    assert sys.meta_path == before


def test_compiled_files_are_not_imported_from_a_plugin(tmp_path: Path) -> None:
    root = write_plugin(tmp_path / "native", {"manifest.py": MANIFEST})
    (root / "fast.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    try:
        with pytest.raises(SandboxViolation) as caught:
            loader.import_module(root, "fast")
        assert caught.value.action == "import"
    finally:
        loader.unload(root)
