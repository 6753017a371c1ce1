"""Uploaded model archives are untrusted: every attack below is built here (tarfile, torch.save,
hand-written pickle opcodes, raw safetensors headers, onnx.helper) and must be refused with a
finding that names the file, without running anything, reading or writing outside the destination,
or leaving anything half-extracted behind. Valid models of each format must go through."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from engine.models import validate as validate_module
from engine.models.pickle_scan import ALLOWED_GLOBALS, scan_pickle
from engine.models.validate import MODEL_FORMATS, ModelLimits, ModelRejected, extract_archive, validate_model_archive

pytestmark = [pytest.mark.integration, pytest.mark.torch]


# --- building archives ---------------------------------------------------------------------------

def tar_entries(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]], *, gz: bool = True) -> Path:
    """A tar (gzip-compressed unless gz=False) with exactly these members, in order."""
    with tarfile.open(path, "w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, data: bytes = b"x", *, mode: int = 0o644, type_: bytes = tarfile.REGTYPE,
           linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = type_, mode, linkname
    if type_ in (tarfile.REGTYPE, tarfile.AREGTYPE):
        info.size = len(data)
        return info, data
    return info, None


def tar_files(path: Path, files: dict[str, bytes], *, gz: bool = True) -> Path:
    return tar_entries(path, [member(name, data) for name, data in files.items()], gz=gz)


def torch_bytes(obj: object, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def torch_zip_with_pickle(pkl: bytes) -> bytes:
    """A torch.save-shaped zip whose data.pkl is the given bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
    return buffer.getvalue()


def linear_state_dict() -> dict:
    torch.manual_seed(0)
    return torch.nn.Linear(768, 256).state_dict()


def rejected(excinfo: pytest.ExceptionInfo[ModelRejected]) -> list[tuple[str, str, str]]:
    return [(f.rule_id, f.file, f.message) for f in excinfo.value.findings]


def assert_empty_or_gone(dest: Path) -> None:
    assert not dest.exists() or not any(dest.iterdir()), list(dest.rglob("*"))


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "dest"


@pytest.fixture
def torch_load_spy(monkeypatch: pytest.MonkeyPatch) -> list:
    """Records every torch.load call: a refused pickle must never reach torch at all."""
    calls: list = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


# --- PyTorch: accepted ---------------------------------------------------------------------------

def test_linear_state_dict_is_accepted(tmp_path: Path, dest: Path) -> None:
    archive = tar_files(tmp_path / "m.tar.gz", {"model.pt": torch_bytes(linear_state_dict())})
    model = validate_model_archive(archive, dest, "pytorch")
    assert model.model_format == "pytorch"
    assert model.root == dest and model.files == ["model.pt"]
    assert model.details["kind"] == "state_dict"
    assert model.details["tensors"] == 2
    assert model.details["parameters"] == 768 * 256 + 256
    assert model.details["dtype"] == "float32"
    assert model.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert model.total_bytes == (dest / "model.pt").stat().st_size
    assert oct((dest / "model.pt").stat().st_mode & 0o7777) == oct(0o644)


def test_wrapped_folder_nested_checkpoint_and_legacy_format(tmp_path: Path, dest: Path) -> None:
    """One folder wrapping everything, {"state_dict": ...} with metadata beside it, and the pre-zip
    torch.save format, all at once."""
    checkpoint = {"state_dict": linear_state_dict(), "epoch": 3,
                  "device": torch.device("cuda", 0), "dtype": torch.float16}
    archive = tar_files(tmp_path / "m.tgz", {
        "my-model/model.pt": torch_bytes(checkpoint),
        "my-model/legacy.pth": torch_bytes({"w": torch.zeros(2, 3, dtype=torch.bfloat16)},
                                           _use_new_zipfile_serialization=False),
        "my-model/README.md": b"hello",
    })
    model = validate_model_archive(archive, dest, "pytorch")
    assert model.root == dest / "my-model"
    assert model.files == ["README.md", "legacy.pth", "model.pt"]
    assert model.details["files"]["model.pt"]["key"] == "state_dict"
    assert model.details["files"]["legacy.pth"]["parameters"] == 6
    assert model.details["tensors"] == 3 and model.details["dtype"] == "mixed"


# --- PyTorch: code in pickles --------------------------------------------------------------------

class Payload:
    """What an attacker pickles: unpickling it calls `target(*args)`."""

    def __init__(self, target, *args) -> None:
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def marker_cmd(marker: Path) -> str:
    return f"touch {marker}"


def hidden_stack_global(module: str, name: str, arg: str) -> bytes:
    """Protocol 4, with the import's module and name stored in the memo long before, decoys in
    between, and fetched back just before STACK_GLOBAL: looking back at the last two string pushes
    would see 'collections' / 'OrderedDict'."""
    def text(s: str) -> bytes:
        raw = s.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw

    return b"".join([
        pickle.PROTO, b"\x04",
        text(module), pickle.MEMOIZE, pickle.POP,
        text(name), pickle.MEMOIZE, pickle.POP,
        text("collections"), text("OrderedDict"), pickle.POP, pickle.POP,
        pickle.BINGET, b"\x00", pickle.BINGET, b"\x01",
        text("collections"), pickle.POP,
        pickle.STACK_GLOBAL,
        text(arg), pickle.TUPLE1, pickle.REDUCE, pickle.STOP,
    ])


def build_payload(kind: str, marker: Path) -> tuple[bytes, str]:
    """(.pt file bytes, the global the finding must name)."""
    weights = {"weight": torch.zeros(2)}
    system = f"{os.system.__module__}.system"
    if kind == "os.system":
        return torch_bytes({**weights, "x": Payload(os.system, marker_cmd(marker))}), system
    if kind == "builtins.eval":
        code = f"__import__('os').system({marker_cmd(marker)!r})"
        return torch_bytes({**weights, "x": Payload(eval, code)}), "builtins.eval"
    if kind == "subprocess.Popen":
        return torch_bytes({**weights, "x": Payload(subprocess.Popen, ["touch", str(marker)])}), "subprocess.Popen"
    if kind == "stack_global":
        return torch_bytes({**weights, "x": Payload(os.system, marker_cmd(marker))}, pickle_protocol=4), system
    if kind == "memo_hidden":
        return torch_zip_with_pickle(hidden_stack_global(os.system.__module__, "system", marker_cmd(marker))), system
    if kind == "legacy":
        payload = {**weights, "x": Payload(os.system, marker_cmd(marker))}
        return torch_bytes(payload, _use_new_zipfile_serialization=False), system
    if kind == "plain_pickle":
        return pickle.dumps(Payload(os.system, marker_cmd(marker)), protocol=0), system
    if kind == "plain_memo_hidden":
        return hidden_stack_global(os.system.__module__, "system", marker_cmd(marker)), system
    raise AssertionError(kind)


PAYLOADS = ["os.system", "builtins.eval", "subprocess.Popen", "stack_global", "memo_hidden", "legacy",
            "plain_pickle", "plain_memo_hidden"]


def test_hand_written_payload_is_live(tmp_path: Path) -> None:
    """The memo-hidden pickle really runs its command when unpickled: the tests below refuse a real
    exploit, not a malformed file."""
    marker = tmp_path / "ran"
    pickle.loads(hidden_stack_global(os.system.__module__, "system", marker_cmd(marker)))
    assert marker.exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_pickle_payload_is_refused_and_never_runs(kind: str, tmp_path: Path, dest: Path, torch_load_spy: list) -> None:
    marker = tmp_path / "payload-ran"
    data, forbidden = build_payload(kind, marker)
    archive = tar_files(tmp_path / "m.tar.gz", {"model.pt": data})
    with pytest.raises(ModelRejected) as excinfo:
        validate_model_archive(archive, dest, "pytorch")
    findings = rejected(excinfo)
    expected = f"imports {forbidden}, which is not a tensor or a plain container; refusing to load it"
    assert any(rule == "MDL301" and file == "model.pt" and expected in msg for rule, file, msg in findings), findings
    assert f"model.pt: pickle {expected}" in str(excinfo.value)
    assert not marker.exists()
    assert torch_load_spy == []
    assert_empty_or_gone(dest)


def test_stack_global_on_computed_values_is_refused(tmp_path: Path, dest: Path) -> None:
    """STACK_GLOBAL whose module is not a literal string (here a tuple fetched from the memo)."""
    pkl = pickle.PROTO + b"\x04" + pickle.EMPTY_TUPLE + pickle.MEMOIZE + pickle.SHORT_BINUNICODE + b"\x06system" \
        + pickle.STACK_GLOBAL + pickle.STOP
    archive = tar_files(tmp_path / "m.tar.gz", {"model.pt": torch_zip_with_pickle(pkl)})
    with pytest.raises(ModelRejected) as excinfo:
        validate_model_archive(archive, dest, "pytorch")
    assert [(r, f) for r, f, _ in rejected(excinfo)] == [("MDL302", "model.pt")]
    assert "cannot tell what it imports" in str(excinfo.value)


@pytest.mark.parametrize("pkl, rule", [
    # REDUCE on something that is not an import (a dict)
    (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP, "MDL303"),
    # BUILD on an imported class: would patch it
    (pickle.PROTO + b"\x02" + pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.EMPTY_DICT + pickle.BUILD
     + pickle.STOP, "MDL305"),
    # the copyreg extension registry names globals by number
    (pickle.PROTO + b"\x02" + pickle.EXT1 + b"\x01" + pickle.STOP, "MDL304"),
    # truncated: no STOP
    (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT, "MDL306"),
    # stack underflow
    (pickle.PROTO + b"\x02" + pickle.POP + pickle.STOP, "MDL306"),
])
def test_pickle_tricks_are_refused(pkl: bytes, rule: str) -> None:
    report = scan_pickle(io.BytesIO(pkl))
    assert [r for r, _ in report.problems] == [rule], report.problems


def test_pickle_scan_reads_a_bounded_amount() -> None:
    """A string declared (and present) beyond the limit is never read whole."""
    huge = pickle.PROTO + b"\x02" + pickle.BINUNICODE + struct.pack("<I", 10_000) + b"a" * 10_000 + pickle.STOP
    report = scan_pickle(io.BytesIO(huge), limit=1_000)
    assert [r for r, _ in report.problems] == ["MDL307"]


def test_rule_ids_are_documented() -> None:
    for rule in ("MDL101", "MDL301", "MDL311", "MDL403", "MDL502", "MDL603"):
        assert rule in validate_module.RULES


def test_real_state_dict_pickles_scan_clean() -> None:
    for protocol in (2, 4):
        data = torch_bytes({"a": torch.zeros(2, dtype=torch.float8_e4m3fn), "b": torch.nn.Parameter(torch.ones(3)),
                            "c": torch.zeros(1, dtype=torch.uint16), "n": torch.Size([1]), "s": {1, 2}},
                           pickle_protocol=protocol)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            report = scan_pickle(io.BytesIO(zf.read("archive/data.pkl")))
        assert report.ok, report.problems
        assert set(report.imports) <= {f"{m}.{n}" for m, n in ALLOWED_GLOBALS}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_is_refused(tmp_path: Path, dest: Path) -> None:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buffer)
    archive = tar_files(tmp_path / "m.tar.gz", {"model.pt": buffer.getvalue()})
    with pytest.raises(ModelRejected) as excinfo:
        validate_model_archive(archive, dest, "pytorch")
    [(rule, file, message)] = rejected(excinfo)
    assert (rule, file) == ("MDL311", "model.pt") and "TorchScript is not accepted" in message


@pytest.mark.parametrize("obj, expected", [
    ([1, 2], "got a list"),
    ({"lr": 0.1}, "got a mapping of 1 entries whose values are float"),
])
def test_not_a_state_dict_is_refused(obj, expected: str, tmp_path: Path, dest: Path) -> None:
    archive = tar_files(tmp_path / "m.tar.gz", {"model.pt": torch_bytes(obj)})
    with pytest.raises(ModelRejected) as excinfo:
        validate_model_archive(archive, dest, "pytorch")
    [(rule, file, message)] = rejected(excinfo)
    assert (rule, file) == ("MDL312", "model.pt") and expected in message


def test_pytorch_without_weights_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = tar_files(tmp_path / "m.tar.gz", {"README.md": b"no weights"})
    with pytest.raises(ModelRejected) as excinfo:
        validate_model_archive(archive, dest, "pytorch")
    assert [r for r, _, _ in rejected(excinfo)] == ["MDL201"]


# --- safetensors ---------------------------------------------------------------------------------

def raw_safetensors(header: dict, data: bytes, *, declared: int | None = None) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if declared is None else declared) + blob + data


def saved_safetensors(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def test_valid_safetensors_is_accepted(tmp_path: Path, dest: Path) -> None:
    data = saved_safetensors({"w": torch.zeros(3, 4), "b": torch.ones(4, dtype=torch.float16)})
    archive = tar_files(tmp_path / "m.tar.gz", {"model.safetensors": data})
    model = validate_model_archive(archive, dest, "safetensors")
    assert model.details["tensors"] == 2 and model.details["parameters"] == 16
    assert model.details["dtype"] == "mixed"


F32_2x2 = {"dtype": "F32", "shape": [2, 2]}


@pytest.mark.parametrize("content, rule, expected", [
    (raw_safetensors({"w": {**F32_2x2, "data_offsets": [0, 16]}}, b"\0" * 16, declared=10_000),
     "MDL401", "declares a 10000-byte header but only"),
    (raw_safetensors({}, b"", declared=200 * 1000 * 1000), "MDL401", "above the 100000000-byte limit"),
    (b"\x05\x00", "MDL401", "too short"),
    (struct.pack("<Q", 4) + b"[1] ", "MDL401", "not an object"),
    (struct.pack("<Q", 4) + b"{x: ", "MDL401", "not valid JSON"),
    (raw_safetensors({"a": {**F32_2x2, "data_offsets": [0, 16]}, "b": {**F32_2x2, "data_offsets": [8, 24]}},
                     b"\0" * 24), "MDL403", "tensors 'a' and 'b' overlap"),
    (raw_safetensors({"w": {**F32_2x2, "data_offsets": [0, 12]}}, b"\0" * 12), "MDL402",
     "tensor 'w': holds 12 bytes but shape [2, 2] of F32 needs 16"),
    (raw_safetensors({"w": {**F32_2x2, "data_offsets": [0, 16]}}, b"\0" * 20), "MDL403",
     "bytes 16 to 20 of the data region belong to no tensor"),
    (raw_safetensors({"w": {**F32_2x2, "data_offsets": [0, 32]}}, b"\0" * 16),
     "MDL403", "outside the 16-byte data region"),
    (raw_safetensors({"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
     "MDL402", "unknown dtype"),
    (raw_safetensors({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
     "MDL402", "non-negative"),
    (raw_safetensors({"__metadata__": {"k": 1}}, b""), "MDL401", "__metadata__ must map strings to strings"),
])
def test_bad_safetensors_is_refused(content: bytes, rule: str, expected: str, tmp_path: Path, dest: Path) -> None:
    archive = tar_files(tmp_path / "m.tar.gz", {"model.safetensors": content})
    with pytest.raises(ModelRejected) as excinfo:
        validate_model_archive(archive, dest, "safetensors")
    findings = rejected(excinfo)
    assert any(r == rule and f == "model.safetensors" and expected in m for r, f, m in findings), findings
    assert_empty_or_gone(dest)


def test_safetensors_duplicate_json_keys_are_refused(tmp_path: Path, dest: Path) -> None:
    entry = b'{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    blob = b'{"w": ' + entry + b', "w": ' + entry + b"}"
    archive = tar_files(tmp_path / "m.tar.gz", {"model.safetensors": struct.pack("<Q", len(blob)) + blob + b"\0" * 4})
    with pytest.raises(ModelRejected, match="duplicate keys"):
        validate_model_archive(archive, dest, "safetensors")


# --- ONNX ----------------------------------------------------------------------------------------

def tiny_onnx():
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def onnx_with_external_data(folder: Path, location: str | None = None, *, offset: int | None = None) -> Path:
    """model.onnx + weights.bin in folder; optionally rewrite the initializer's location/offset."""
    import onnx

    model = tiny_onnx()
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    if location is not None or offset is not None:
        saved = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        for entry in saved.graph.initializer[0].external_data:
            if entry.key == "location" and location is not None:
                entry.value = location
            if entry.key == "offset" and offset is not None:
                entry.value = str(offset)
        (folder / "model.onnx").write_bytes(saved.SerializeToString())
    return folder


def tar_folder(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        for path in sorted(folder.rglob("*")):
            tf.add(path, path.relative_to(folder).as_posix(), recursive=False)
    return archive


def test_tiny_onnx_is_accepted(tmp_path: Path, dest: Path) -> None:
    archive = tar_files(tmp_path / "m.tar.gz", {"model.onnx": tiny_onnx().SerializeToString()})
    model = validate_model_archive(archive, dest, "onnx")
    assert model.details["opset"] == {"ai.onnx": 17}
    assert model.details["inputs"] == [{"name": "x", "elem_type": "FLOAT", "shape": ["batch", 4]}]
    assert model.details["outputs"] == [{"name": "y", "elem_type": "FLOAT", "shape": ["batch", 2]}]


def test_onnx_with_external_data_is_accepted(tmp_path: Path, dest: Path) -> None:
    archive = tar_folder(onnx_with_external_data(tmp_path / "src"), tmp_path / "m.tar.gz")
    model = validate_model_archive(archive, dest, "onnx")
    assert model.files == ["model.onnx", "weights.bin"] and model.details["initializers"] == 1


_OPENED: list[str] = []
_WATCHED: set[str] = set()


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _WATCHED and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if os.path.basename(path) in _WATCHED:
            _OPENED.append(path)


sys.addaudithook(_audit)


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_onnx_external_data_outside_is_refused_and_never_read(where: str, tmp_path: Path, dest: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    outside = tmp_path / "outside.bin"  # dest/../outside.bin
    outside.write_bytes(b"SECRET" * 10)
    location = "../outside.bin" if where == "relative" else str(outside)
    archive = tar_folder(onnx_with_external_data(tmp_path / "src", location), tmp_path / "m.tar.gz")

    def never(*args, **kwargs):
        raise AssertionError("external data must not be loaded or checked before the location is")

    monkeypatch.setattr(onnx.checker, "check_model", never)
    monkeypatch.setattr(onnx, "load_external_data_for_model", never)
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_tensor", never)
    _OPENED.clear()
    _WATCHED.add("outside.bin")
    try:
        with pytest.raises(ModelRejected) as excinfo:
            validate_model_archive(archive, dest, "onnx")
    finally:
        _WATCHED.clear()
    [(rule, file, message)] = rejected(excinfo)
    assert (rule, file) == ("MDL502", "model.onnx")
    assert message.startswith(f"initializer 'w' stores its data at '{location}'")
    assert message.endswith("outside the archive")
    assert _OPENED == []
    assert outside.read_bytes() == b"SECRET" * 10
    assert_empty_or_gone(dest)


def test_onnx_external_data_past_end_of_file_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = tar_folder(onnx_with_external_data(tmp_path / "src", offset=4096), tmp_path / "m.tar.gz")
    with pytest.raises(ModelRejected, match="run past the end of 'weights.bin'"):
        validate_model_archive(archive, dest, "onnx")


def test_not_an_onnx_file_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = tar_files(tmp_path / "m.tar.gz", {"model.onnx": b"\xff\xff\xff not protobuf"})
    with pytest.raises(ModelRejected) as excinfo:
        validate_model_archive(archive, dest, "onnx")
    [(rule, file, message)] = rejected(excinfo)
    assert (rule, file) == ("MDL501", "model.onnx") and message.startswith("is not a readable ONNX model")


# --- the archive itself --------------------------------------------------------------------------

def snapshot(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.mark.parametrize("evil, rule", [
    (member("../evil.txt", b"pwned"), "MDL111"),
    (member("{tmp_path}/evil.txt", b"pwned"), "MDL110"),
    (member("ok/../../evil.txt", b"pwned"), "MDL111"),
    (member("/tmp/x", b"pwned"), "MDL110"),
    (member("link", type_=tarfile.SYMTYPE, linkname="/etc/passwd"), "MDL120"),
    (member("hard", type_=tarfile.LNKTYPE, linkname="model.pt"), "MDL121"),
    (member("dev", type_=tarfile.CHRTYPE), "MDL122"),
    (member("blk", type_=tarfile.BLKTYPE), "MDL122"),
    (member("fifo", type_=tarfile.FIFOTYPE), "MDL122"),
    (member("a\\b.txt", b"x"), "MDL112"),
    (member("model.pt", b"second copy"), "MDL130"),
    (member("model.pt/inner.txt", b"x"), "MDL131"),
])
def test_unsafe_members_are_refused_and_nothing_is_written(evil, rule: str, tmp_path: Path, dest: Path) -> None:
    info, data = evil
    info.name = info.name.format(tmp_path=tmp_path)
    archive = tar_entries(tmp_path / "m.tar.gz", [member("model.pt", b"weights"), (info, data)])
    before = snapshot(tmp_path)
    with pytest.raises(ModelRejected) as excinfo:
        extract_archive(archive, dest)
    findings = rejected(excinfo)
    assert (rule, info.name) in [(r, f) for r, f, _ in findings], findings
    assert snapshot(tmp_path) == before  # nothing outside, and dest (created by the call) is gone
    assert not dest.exists()


def test_refusal_empties_a_caller_owned_dest(tmp_path: Path, dest: Path) -> None:
    dest.mkdir()
    archive = tar_entries(tmp_path / "m.tar.gz", [member("model.pt", b"w"), member("../evil.txt", b"pwned")])
    with pytest.raises(ModelRejected):
        validate_model_archive(archive, dest, "pytorch")
    assert dest.is_dir() and list(dest.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_format_refusal_removes_what_was_extracted(tmp_path: Path, dest: Path) -> None:
    archive = tar_files(tmp_path / "m.tar.gz", {"a/b/model.pt": b"not a pickle at all"})
    with pytest.raises(ModelRejected):
        validate_model_archive(archive, dest, "pytorch")
    assert not dest.exists()


def test_every_finding_is_reported(tmp_path: Path, dest: Path) -> None:
    archive = tar_entries(tmp_path / "m.tar.gz", [
        member("../a", b"x"), member("/b", b"x"), member("c", type_=tarfile.SYMTYPE, linkname="x"),
    ])
    with pytest.raises(ModelRejected) as excinfo:
        extract_archive(archive, dest)
    assert [(r, f) for r, f, _ in rejected(excinfo)] == [("MDL111", "../a"), ("MDL110", "/b"), ("MDL120", "c")]
    text = str(excinfo.value)
    assert "../a: path climbs out of the archive ('..')" in text and "c: symbolic link (to 'x')" in text


def test_permissions_are_reset(tmp_path: Path, dest: Path) -> None:
    archive = tar_entries(tmp_path / "m.tar.gz", [
        member("bin", mode=0o777, type_=tarfile.DIRTYPE),
        member("bin/run", b"#!/bin/sh\n", mode=0o6755),
    ])
    assert extract_archive(archive, dest) == ["bin/run"]
    assert (dest / "bin").stat().st_mode & 0o7777 == 0o755
    assert (dest / "bin/run").stat().st_mode & 0o7777 == 0o644


@pytest.mark.parametrize("name, gz", [("m.tar.gz", False), ("m.tar", True), ("m.tgz", True), ("upload", True)])
def test_dot_slash_paths_and_detection_by_content(name: str, gz: bool, tmp_path: Path, dest: Path) -> None:
    """`tar czf m.tgz -C folder .` writes './' names; the name of the upload does not matter."""
    archive = tar_entries(tmp_path / name, [
        member(".", type_=tarfile.DIRTYPE, mode=0o755), member("./model.pt", b"w"),
    ], gz=gz)
    assert extract_archive(archive, dest) == ["model.pt"]


@pytest.mark.parametrize("limits, files, rule", [
    (ModelLimits(max_members=2), {"a": b"1", "b": b"2", "c": b"3"}, "MDL104"),
    (ModelLimits(max_unpacked_bytes=100), {"a": b"x" * 60, "b": b"y" * 60}, "MDL105"),
    (ModelLimits(max_archive_bytes=10), {"a": b"1"}, "MDL102"),
    (ModelLimits(max_path_depth=2), {"a/b/c.txt": b"1"}, "MDL114"),
    (ModelLimits(max_name_bytes=8), {"a-long-name.txt": b"1"}, "MDL113"),
])
def test_limits(limits: ModelLimits, files: dict, rule: str, tmp_path: Path, dest: Path) -> None:
    archive = tar_files(tmp_path / "m.tar.gz", files)
    with pytest.raises(ModelRejected) as excinfo:
        extract_archive(archive, dest, limits)
    assert rule in [r for r, _, _ in rejected(excinfo)]
    assert not dest.exists()


def test_declared_terabyte_stops_the_walk_before_decompressing(tmp_path: Path, dest: Path) -> None:
    """A gzip bomb in waiting: one header declaring 1 TB. The walk stops at that header, before
    tarfile would decompress its way past the data to the next one."""
    import gzip

    info = tarfile.TarInfo("huge.bin")
    info.size = 10**12
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(gzip.compress(member("model.pt", b"w")[0].tobuf() + b"w".ljust(512, b"\0")
                                      + info.tobuf(format=tarfile.PAX_FORMAT) + b"\0" * 1024))
    with pytest.raises(ModelRejected) as excinfo:
        extract_archive(archive, dest)
    [(rule, file, message)] = rejected(excinfo)
    assert (rule, file) == ("MDL105", "huge.bin") and "the limit is" in message
    assert not dest.exists()


def test_archive_without_files_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = tar_entries(tmp_path / "m.tar.gz", [member("empty", type_=tarfile.DIRTYPE, mode=0o755)])
    with pytest.raises(ModelRejected) as excinfo:
        extract_archive(archive, dest)
    assert [r for r, _, _ in rejected(excinfo)] == ["MDL103"]


def test_huge_pax_header_is_not_read_into_memory(tmp_path: Path, dest: Path) -> None:
    """tarfile reads a pax header in one call: a header declaring 100 MiB is refused, not read."""
    info = tarfile.TarInfo("PaxHeaders/x")
    info.type, info.size = tarfile.XHDTYPE, 100 * 1024**2
    archive = tmp_path / "m.tar"
    archive.write_bytes(info.tobuf(format=tarfile.USTAR_FORMAT) + b"\0" * 2048)
    with pytest.raises(ModelRejected) as excinfo:
        extract_archive(archive, dest)
    [(rule, _, message)] = rejected(excinfo)
    assert rule == "MDL105" and "104857600 bytes" in message


@pytest.mark.parametrize("content, expected", [
    (b"hello, this is not an archive" * 30, "not a .tar.gz archive: no tar header"),
    (b"", "not a .tar.gz archive: the file is empty"),
    (b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"garbage" * 20, "not a .tar.gz archive: gzip data is corrupt"),
    (b"PK\x03\x04" + b"\x00" * 100, "not a .tar.gz archive: the file is a zip file"),
])
def test_not_a_tar_is_refused(content: bytes, expected: str, tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(content)
    with pytest.raises(ModelRejected) as excinfo:
        validate_model_archive(archive, dest, "pytorch")
    [(rule, file, message)] = rejected(excinfo)
    assert (rule, file) == ("MDL101", "") and message.startswith(expected), message
    assert_empty_or_gone(dest)


def test_truncated_tar_gz_is_refused(tmp_path: Path, dest: Path) -> None:
    whole = tar_files(tmp_path / "whole.tar.gz", {"a": os.urandom(50_000), "b": os.urandom(50_000)}).read_bytes()
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelRejected) as excinfo:
        extract_archive(archive, dest)
    assert [r for r, _, _ in rejected(excinfo)][0] in ("MDL101", "MDL140")
    assert not dest.exists()


def test_unknown_format_lists_the_accepted_ones(tmp_path: Path, dest: Path) -> None:
    archive = tar_files(tmp_path / "m.tar.gz", {"model.pt": b"x"})
    with pytest.raises(ModelRejected) as excinfo:
        validate_model_archive(archive, dest, "keras")
    [(rule, _, message)] = rejected(excinfo)
    assert rule == "MDL200" and all(f in message for f in MODEL_FORMATS)
    assert not dest.exists()


def test_non_empty_dest_is_a_caller_error(tmp_path: Path, dest: Path) -> None:
    dest.mkdir()
    (dest / "keep").write_text("mine")
    archive = tar_files(tmp_path / "m.tar.gz", {"model.pt": b"x"})
    with pytest.raises(ValueError):
        extract_archive(archive, dest)
    assert (dest / "keep").read_text() == "mine"


# --- Hugging Face --------------------------------------------------------------------------------

CONFIG = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 4}


def hf_files(**extra: bytes) -> dict[str, bytes]:
    return {
        "bert-tiny/config.json": json.dumps(CONFIG).encode(),
        "bert-tiny/model.safetensors": saved_safetensors({"embeddings.weight": torch.zeros(10, 4)}),
        "bert-tiny/tokenizer.json": b"{}",
        "bert-tiny/vocab.txt": b"[PAD]\n[UNK]\n",
        **{f"bert-tiny/{name}": data for name, data in extra.items()},
    }


def test_huggingface_folder_is_accepted(tmp_path: Path, dest: Path) -> None:
    archive = tar_files(tmp_path / "m.tar.gz", hf_files())
    model = validate_model_archive(archive, dest, "huggingface")
    assert model.root == dest / "bert-tiny"
    assert model.details["model_type"] == "bert" and model.details["architectures"] == ["BertModel"]
    assert model.details["weights"] == ["model.safetensors"] and model.details["parameters"] == 40


def test_huggingface_pytorch_bin_is_scanned_and_accepted(tmp_path: Path, dest: Path) -> None:
    files = {"config.json": json.dumps(CONFIG).encode(), "pytorch_model.bin": torch_bytes(linear_state_dict())}
    model = validate_model_archive(tar_files(tmp_path / "m.tar.gz", files), dest, "huggingface")
    assert model.details["weights"] == ["pytorch_model.bin"] and model.details["tensors"] == 2


@pytest.mark.parametrize("files, rule, file, expected", [
    ({"bert-tiny/config.json": json.dumps({**CONFIG, "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}).encode()},
     "MDL602", "bert-tiny/config.json", "auto_map"),
    ({"bert-tiny/modeling_evil.py": b"import os\nos.system('id')\n"},
     "MDL603", "bert-tiny/modeling_evil.py",
     "Hugging Face folders may not carry code (trust_remote_code is never used)"),
    ({"bert-tiny/config.json": None}, "MDL601", "bert-tiny/config.json", "config.json is missing"),
    ({"bert-tiny/config.json": b'{"hidden_size": 4}'},
     "MDL601", "bert-tiny/config.json", "neither model_type nor architectures"),
    ({"bert-tiny/config.json": b"[]"}, "MDL601", "bert-tiny/config.json", "not an object"),
    ({"bert-tiny/model.safetensors": None}, "MDL201", "", "no Hugging Face weights"),
    # a Trainer checkpoint's pickled arguments: every pickle in the folder is scanned, weights or not
    ({"bert-tiny/training_args.bin": torch_bytes({"x": Payload(subprocess.Popen, ["true"])})},
     "MDL301", "bert-tiny/training_args.bin", "imports subprocess.Popen"),
])
def test_bad_huggingface_folder_is_refused(files: dict, rule: str, file: str, expected: str,
                                          tmp_path: Path, dest: Path) -> None:
    """`files` replace or add files of a valid folder; None removes one."""
    content = {**hf_files(), **files}
    content = {name: data for name, data in content.items() if data is not None}
    with pytest.raises(ModelRejected) as excinfo:
        validate_model_archive(tar_files(tmp_path / "m.tar.gz", content), dest, "huggingface")
    findings = rejected(excinfo)
    assert any(r == rule and f == file and expected in m for r, f, m in findings), findings
    assert_empty_or_gone(dest)
