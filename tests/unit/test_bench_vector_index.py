"""bench/vector_index.py runs end to end at a tiny size: every adapter is upserted, counted and
searched through the port (and the bare Edge engine beside it), the table, the ratio lines and the
port-against-bare targets are printed, recall is high, and the temporary folders are gone
afterwards. No timing is judged here."""

from __future__ import annotations

import importlib.util
import re
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "vector_index.py"
TINY = ["--points", "500", "--dim", "16", "--queries", "10", "--batch", "100", "--seed", "3"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sluice_bench_vector_index", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the script's temporary folders go, to check that it removes them."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("SLUICE_QDRANT_URL", raising=False)
    return tmp_path


def table_rows(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("adapter ") and "recall@10" in line)
    rows = {}
    for line in lines[header + 1:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


@pytest.mark.integration
def test_the_benchmark_measures_each_adapter_and_prints_the_table_and_ratios(
    bench: ModuleType, scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main([*TINY, "--adapters", "edge,bare,qdrant-local,qdrant-memory"]) == 0
    out = capsys.readouterr().out

    rows = table_rows(out)
    assert list(rows) == ["edge", "bare", "qdrant-local", "qdrant-memory"]
    header = next(line for line in out.splitlines() if line.startswith("adapter "))
    for column in ("points", "upsert/s", "search p50", "p95", "recall@10"):
        assert column in header
    for adapter, cells in rows.items():
        assert cells[1] == "500", adapter
        assert float(cells[2]) > 0, adapter  # upsert/s
        recall = float(cells[7])
        assert recall >= 0.9, f"{adapter}: recall@10 {recall}"
        assert f"{adapter:13}: 500 points upserted in" in out
        assert re.search(rf"^{re.escape(adapter)}\s*: recall@10 mean [01]\.\d{{3}}, min [01]\.\d\d over 10 queries$", out, re.M)

    for other in ("bare", "qdrant-local", "qdrant-memory"):
        assert re.search(rf"^edge upsert / {other} upsert = \d+\.\d\dx", out, re.M)
        assert re.search(rf"^{other} p50 / edge p50 = \d+\.\d\dx", out, re.M)
        assert re.search(rf"^{other} p95 / edge p95 = \d+\.\d\dx", out, re.M)
    assert re.search(r"^edge upsert / bare upsert = \d+\.\d\dx   \(target >= 0\.9x: (met|MISSED);", out, re.M)
    assert re.search(r"^edge search p50 - bare search p50 = [+-]\d+\.\d\d ms   \(target <= 0\.2 ms: (met|MISSED)\)$", out, re.M)
    assert re.search(r"^  writes alone: edge / bare = \d+\.\d\dx", out, re.M)
    assert re.search(r"^  on the port.s own shard, query by query: port p50 [\d.]+ ms, shard.search p50 [\d.]+ ms: [+-]", out, re.M)
    assert re.search(r"^edge         : 500 points upserted in [\d.]+ s \([\d.]+ s of writes, [\d.]+ s to optimize\)", out, re.M)
    assert "NOTE" not in out
    assert list(scratch.iterdir()) == []


@pytest.mark.integration
def test_a_smaller_local_mode_run_is_announced_and_compared_per_point(
    bench: ModuleType, scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*TINY, "--adapters", "edge,qdrant-memory", "--points-local", "200", "--data", "lowrank", "--rank", "4"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out

    rows = table_rows(out)
    assert rows["edge"][1] == "500" and rows["qdrant-memory"][1] == "200"
    assert "near a rank-4 subspace" in out
    assert "NOTE         : qdrant-memory ran with 200 points (--points-local), not 500" in out
    assert "edge upsert / qdrant-memory upsert = " in out and "(points/s)" in out
    assert re.search(r"^qdrant-memory p50 / edge p50 = \d+\.\d\dx   \(at 500 vs 200 points\)$", out, re.M)
    assert float(rows["qdrant-memory"][7]) >= 0.9
    assert list(scratch.iterdir()) == []


@pytest.mark.integration  # loading the benchmark script imports every vector engine
def test_the_server_adapter_needs_a_url(bench: ModuleType, scratch: Path) -> None:
    with pytest.raises(SystemExit):
        bench.main([*TINY, "--adapters", "edge,qdrant-server"])
    with pytest.raises(SystemExit):
        bench.main([*TINY, "--adapters", "edge,nosuch"])
