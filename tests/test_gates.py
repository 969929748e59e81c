"""Quality gates on recorded numbers: each gate's measure, pass/fail, gates that cannot be
evaluated, and the exit codes of `compress gate` (0 pass, 3 fail, 2 bad input)."""

from __future__ import annotations

import copy
import json

import pytest

from compressor.cli import main
from compressor.errors import ConfigError
from compressor.gates import GatesFailed, check_gates, parse_gates, raise_if_failed, render_markdown


def _profile(model, batch, seq, p50, target="cpu", kind="fixed", fallback=False):
    return {"model": model, "target": target, "batch": batch, "seq_len": seq, "p50_ms": p50,
            "shape_kind": kind, "fallback": fallback, "providers_used": ["CPUExecutionProvider"]}


# Recorded numbers: dense 0.80 -> compressed 0.78 (retention 0.975); 40 MB; speedups 4x (b1xs128),
# 5x (b8xs128), 3.5x (b1xreal); compressed p50 at batch 1: 10 ms (s128), 4 ms (real).
RECORDED = {
    "schema_version": 1,
    "run": {"targets": ["cpu"]},
    "models": {"dense": {"accuracy_onnx": 0.80, "size_bytes": 90_000_000},
               "compressed": {"accuracy_onnx": 0.78, "size_bytes": 40_000_000}},
    "profiles": [_profile("dense", 1, 128, 40.0), _profile("compressed", 1, 128, 10.0),
                 _profile("dense", 8, 128, 300.0), _profile("compressed", 8, 128, 60.0),
                 _profile("dense", 1, 20, 14.0, kind="real"),
                 _profile("compressed", 1, 20, 4.0, kind="real")],
}


def _by_name(results):
    return {r["name"]: r for r in results}


def test_each_gate_measures_the_documented_number():
    res = _by_name(check_gates(RECORDED, {"min_retention": 0.97, "min_speedup": 3,
                                          "max_latency_ms": 20, "max_size_mb": 50}))
    assert res["min_retention"]["measured"] == pytest.approx(0.78 / 0.80)
    assert res["min_speedup"]["measured"] == pytest.approx(3.5)       # the smallest of 4, 5, 3.5
    assert res["min_speedup"]["where"] == "cpu b1xreal"
    assert res["max_latency_ms"]["measured"] == pytest.approx(10.0)   # largest batch-1 p50
    assert res["max_latency_ms"]["where"] == "cpu b1xs128"
    assert res["max_size_mb"]["measured"] == pytest.approx(40.0)
    assert all(r["passed"] for r in res.values())
    assert list(res) == ["min_retention", "min_speedup", "max_latency_ms", "max_size_mb"]


@pytest.mark.parametrize("gate, threshold, passed", [
    ("min_retention", 0.975, True), ("min_retention", 0.98, False),
    ("min_speedup", 3.5, True), ("min_speedup", 3.6, False),
    ("max_latency_ms", 10.0, True), ("max_latency_ms", 9.9, False),
    ("max_size_mb", 40.0, True), ("max_size_mb", 39.9, False),
])
def test_threshold_edges(gate, threshold, passed):
    (r,) = check_gates(RECORDED, {gate: threshold})
    assert r["passed"] is passed and r["threshold"] == threshold
    assert ("meets" if passed else "misses") in r["reason"]


@pytest.mark.parametrize("mutate, gate, fragment", [
    (lambda r: r["models"]["compressed"].pop("accuracy_onnx"), "min_retention",
     "no ONNX accuracy of the compressed model"),
    (lambda r: r["models"]["compressed"].pop("size_bytes"), "max_size_mb", "no size"),
    (lambda r: r.update(profiles=[]), "max_latency_ms", "target 'cpu' did not produce"),
    (lambda r: r["run"].update(targets=["cpu", "cuda"]), "max_latency_ms",
     "target 'cuda' did not produce a latency profile"),
    (lambda r: r["run"].update(targets=["cpu", "cuda"]), "min_speedup", "target 'cuda'"),
    (lambda r: r.update(profiles=[p for p in r["profiles"] if p["batch"] != 1]), "max_latency_ms",
     "no batch-1 latency profile"),
    (lambda r: r["profiles"].pop(0), "min_speedup", "no dense and compressed latency side by side at cpu b1xs128"),
    (lambda r: r["profiles"][1].update(fallback=True), "max_latency_ms", "fell back"),
    (lambda r: r.update(run={"targets": []}, profiles=[]), "min_speedup",
     "no latency profile of the compressed model"),
])
def test_gates_that_cannot_be_evaluated_fail_loudly(mutate, gate, fragment):
    report = copy.deepcopy(RECORDED)
    mutate(report)
    (r,) = check_gates(report, {gate: 0.0001 if gate.startswith("min") else 1e6})
    assert r["passed"] is False and r["measured"] is None
    assert r["reason"].startswith("cannot be evaluated") and fragment in r["reason"]


@pytest.mark.parametrize("gates, fragment", [
    ({"min_accuracy": 0.9}, "unknown gate 'min_accuracy'"),
    ({"max_size_mb": 0}, "max_size_mb=0.0 is out of range"),
    ({"min_retention": -0.1}, "min_retention=-0.1 is out of range"),
    ({"min_speedup": "fast"}, "is not a finite number"),
    ({"max_latency_ms": float("nan")}, "is not a finite number"),
    ([("min_retention", 0.9)], "must be a dict"),
])
def test_bad_gates_are_rejected(gates, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_gates(gates)


def test_raise_and_markdown():
    results = check_gates(RECORDED, {"min_retention": 0.99, "max_size_mb": 50})
    with pytest.raises(GatesFailed) as info:
        raise_if_failed(results)
    assert info.value.exit_code == 3 and "min_retention" in str(info.value)
    assert "max_size_mb" not in str(info.value)  # only failed gates are named
    raise_if_failed([r for r in results if r["passed"]])
    md = "\n".join(render_markdown(results))
    assert "## Quality gates" in md and "1 of 2 gates FAILED" in md and "**FAIL**" in md
    assert render_markdown([]) == []


@pytest.fixture
def run_folder(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(RECORDED))
    return tmp_path


def _cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_gate_command_passes_with_exit_0(run_folder, capsys):
    code, out, err = _cli(["gate", str(run_folder), "--min-retention", "0.97", "--min-speedup", "3",
                           "--max-latency-ms", "20", "--max-size-mb", "50"], capsys)
    assert code == 0, err
    assert out.count("PASS") == 4 and "FAIL" not in out


def test_gate_command_fails_with_exit_3(run_folder, capsys):
    before = (run_folder / "report.json").read_text()
    code, out, err = _cli(["gate", str(run_folder), "--min-retention", "0.98",
                           "--max-size-mb", "50"], capsys)
    assert code == 3
    assert "FAIL  min_retention" in out and "PASS  max_size_mb" in out
    assert err.strip().startswith("error: quality gates failed: min_retention measured 0.975")
    assert (run_folder / "report.json").read_text() == before  # gate only reads


def test_gate_command_json(run_folder, capsys):
    code, out, _ = _cli(["gate", str(run_folder), "--min-speedup", "4", "--json"], capsys)
    data = json.loads(out)
    assert code == 3 and data["passed"] is False
    assert data["gates"][0]["measured"] == pytest.approx(3.5)


@pytest.mark.parametrize("args, fragment", [
    (["--min-retention", "abc"], "'abc' is not a valid float"),
    (["--max-size-mb", "-1"], "max_size_mb=-1.0 is out of range"),
    ([], "give at least one gate"),
])
def test_gate_command_bad_input_exit_2(run_folder, capsys, args, fragment):
    code, _, err = _cli(["gate", str(run_folder), *args], capsys)
    assert code == 2 and fragment in err and "Traceback" not in err


def test_gate_command_missing_report_exit_2(tmp_path, capsys):
    code, _, err = _cli(["gate", str(tmp_path / "nope"), "--min-retention", "0.9"], capsys)
    assert code == 2 and "no run report" in err


def test_run_rejects_bad_gate_before_anything_is_written(tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, _, err = _cli(["run", "minilm", "--max-latency-ms", "0", "-o", str(out_dir)], capsys)
    assert code == 2 and "max_latency_ms=0.0 is out of range" in err
    assert not out_dir.exists()


def test_speedup_asked_reads_the_typical_latency_at_the_searched_shape():
    # p50s give 1.2x (a miss of 1.5 by more than 10%); the per-text medians averaged give 1.4x
    report = {"schema_version": 1, "run": {"targets": ["cpu"], "speedup_shape": "cpu b1xreal",
                                           "speedup_reference": "dense-int8"},
              "profiles": [dict(_profile("dense-int8", 1, 30, 3.6, kind="real"), typical_ms=2.8),
                           dict(_profile("compressed", 1, 30, 3.0, kind="real"), typical_ms=2.0),
                           _profile("dense", 1, 30, 9.0, kind="real")]}
    (res,) = check_gates(report, {"speedup_asked": 1.5})
    assert res["measured"] == pytest.approx(1.4) and res["passed"] and res["where"] == "cpu b1xreal"
    report["profiles"][1]["typical_ms"] = 2.2  # 2.8 / 2.2 = 1.27 < 1.35
    (res,) = check_gates(report, {"speedup_asked": 1.5})
    assert not res["passed"] and "misses" in res["reason"]
    for p in report["profiles"]:
        p.pop("typical_ms", None)  # a report from before typical_ms: the p50s
    (res,) = check_gates(report, {"speedup_asked": 1.5})
    assert res["measured"] == pytest.approx(1.2) and not res["passed"]
