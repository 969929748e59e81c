"""The per-operator breakdown (ONNX Runtime's profiler summed by operator type): what it counts,
that warm-up runs are left out, that the profile step records it, and the report's table."""

from __future__ import annotations

import re

import onnx
import pytest

from compressor.op_profile import op_breakdown, summarize, top_rows
from compressor.profiling import profile_targets
from compressor.report_md import render_markdown
from targets._io import make_token_arrays
from targets.cpu import CpuTarget
from tests.test_targets import save_tiny_bert


def _event(cat, name, ts, dur, op=None):
    return {"cat": cat, "name": name, "ts": ts, "dur": dur, **({"args": {"op_name": op}} if op else {})}


def test_summarize_counts_only_the_last_runs():
    trace = [_event("Session", "model_run", 0, 100), _event("Node", "a_kernel_time", 10, 50, "MatMul"),
             _event("Session", "model_run", 200, 100), _event("Node", "a_kernel_time", 210, 30, "MatMul"),
             _event("Node", "b_kernel_time", 250, 10, "Relu"), _event("Node", "b_fence_before", 249, 1, "Relu"),
             _event("Session", "model_run", 400, 100), _event("Node", "a_kernel_time", 410, 10, "MatMul"),
             _event("Node", "c_kernel_time", 430, 30, "MatMul")]
    out = summarize(trace, runs=2)  # the first run (a warm-up) and the fence event are left out
    ops = {r["op"]: r for r in out["ops"]}
    assert set(ops) == {"MatMul", "Relu"}
    assert ops["MatMul"]["ms_per_run"] == pytest.approx(70 / 1000 / 2)
    assert ops["MatMul"]["nodes"] == 2 and ops["Relu"]["nodes"] == 1
    assert ops["MatMul"]["share"] == pytest.approx(70 / 80)
    assert out["kernel_ms_per_run"] == pytest.approx(80 / 1000 / 2)
    assert [r["op"] for r in out["ops"]] == ["MatMul", "Relu"]  # largest first


def test_top_rows_sums_the_rest():
    ops = [{"op": f"op{i}", "ms_per_run": float(10 - i), "share": (10 - i) / 55, "nodes": 1} for i in range(10)]
    rows = top_rows({"ops": ops}, top=3)
    assert [r["op"] for r in rows] == ["op0", "op1", "op2", "other"]
    assert rows[-1]["ms_per_run"] == pytest.approx(sum(range(1, 8)))
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert top_rows({"ops": ops[:2]}, top=3) == ops[:2]


def test_op_breakdown_sees_every_operator_of_the_graph(tmp_path):
    path = save_tiny_bert(tmp_path / "m", hidden=16, layers=2)
    graph_ops = {}
    for node in onnx.load(str(path)).graph.node:
        graph_ops[node.op_type] = graph_ops.get(node.op_type, 0) + 1
    inputs = [make_token_arrays(1, 8, 50, seed=s) for s in range(3)]
    out = op_breakdown(CpuTarget(threads=1, graph_optimization="disabled"), path, inputs, warmup=2)
    assert out["runs"] == 3 and out["providers_used"][0] == "CPUExecutionProvider"
    assert {r["op"]: r["nodes"] for r in out["ops"]} == graph_ops
    assert sum(r["share"] for r in out["ops"]) == pytest.approx(1.0)
    assert out["kernel_ms_per_run"] > 0
    assert out["kernel_ms_per_run"] == pytest.approx(sum(r["ms_per_run"] for r in out["ops"]))


def test_profile_step_records_the_breakdown_and_the_report_shows_it(tokenizer, toy_task, tmp_path):
    models = {}
    for label, hidden in (("dense", 16), ("compressed", 8)):
        models[label] = save_tiny_bert(tmp_path / label, hidden=hidden, vocab=tokenizer.vocab_size, max_positions=64)
        tokenizer.save_pretrained(tmp_path / label)
    out = profile_targets([CpuTarget(threads=1)], models, examples=toy_task.eval, tokenizer=tokenizer,
                          batch_sizes=(1,), seq_lens=(8,), runs=1, warmup=0, max_length=16)
    by_model = out["grid"]["op_breakdown"]["cpu"]
    assert set(by_model) == {"dense", "compressed"}
    assert all(b["runs"] == 64 and b["ops"] for b in by_model.values())  # every real b1 text once
    md = render_markdown({"models": {"dense": {}, "compressed": {}}, "profile_grid": out["grid"]})
    section = md.split("## Where the time goes (cpu, b1 real texts)")[1]
    assert re.search(r"\| Operator\s+\| dense\s+\| compressed\s+\|", section)
    top = by_model["compressed"]["ops"][0]["op"]
    first_row = [line for line in section.splitlines() if line.startswith("|")][2]  # after header, rule
    assert re.match(rf"\| {top}\s+\|", first_row) and "kernel total" in section
    # no real texts: no breakdown and no section
    bare = profile_targets([CpuTarget(threads=1)], models, batch_sizes=(1,), seq_lens=(8,), runs=1, warmup=0)
    assert "op_breakdown" not in bare["grid"]
    assert "Where the time goes" not in render_markdown({"profile_grid": bare["grid"]})
