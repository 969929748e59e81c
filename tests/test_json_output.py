"""Machine-friendly CLI: `run --json` (a real tiny run in a subprocess, so stdout and stderr are
real pipes) prints exactly one JSON document holding the report's numbers, logs go to stderr,
progress bars stay off when stderr is not a terminal, and a failed gate exits 3 with every
artifact in place; `report --json` and `profile --json` print one JSON document too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from compressor.cli import main


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    """A tiny seeded BERT folder (MiniLM tokenizer) and small train/eval TSV files."""
    from tests.conftest import write_tiny_run_inputs
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_run_inputs(root, n_train=48, n_eval=24, model_name="model")
    return root


@pytest.fixture(scope="module")
def json_run(tiny_inputs):
    """`compress run --json` with one gate that passes and one that cannot (size < 1 kB)."""
    out_dir = tiny_inputs / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "compressor.cli", "run", str(tiny_inputs / "model"),
         "--train", str(tiny_inputs / "train.tsv"), "--eval", str(tiny_inputs / "eval.tsv"),
         "--sparsity", "0.5", "--epochs", "1", "--runs", "2", "--batch-sizes", "1,2",
         "--seq-lens", "16", "-o", str(out_dir), "--json",
         "--min-retention", "0.5", "--max-size-mb", "0.001"],
        capture_output=True, text=True, env=env, cwd=tiny_inputs, timeout=300)
    return proc, out_dir


def test_run_json_is_one_document_with_the_report_numbers(json_run):
    proc, out_dir = json_run
    doc = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    saved = json.loads((out_dir / "report.json").read_text())
    assert doc == saved
    assert doc["schema_version"] == 1
    comp, dense = doc["models"]["compressed"], doc["models"]["dense"]
    assert abs(comp["sparsity"] - 0.5) < 0.005
    assert doc["summary"]["accuracy_retention"] == pytest.approx(comp["accuracy_onnx"] / dense["accuracy_onnx"])
    assert {(p["model"], p["batch"]) for p in doc["profiles"] if p.get("shape_kind", "fixed") == "fixed"} \
        == {(m, b) for m in ("dense", "dense-int8", "compressed", "compressed-fp32") for b in (1, 2)}
    assert all(p["p50_ms"] > 0 for p in doc["profiles"])


def test_logs_go_to_stderr_and_progress_is_off_without_a_terminal(json_run):
    proc, _ = json_run
    assert "INFO" in proc.stderr and "step 1/" in proc.stderr  # logging went to stderr
    assert "INFO" not in proc.stdout
    assert "%|" not in proc.stderr  # no tqdm bar: stderr is a pipe, not a terminal


def test_failed_gate_exits_3_and_keeps_every_artifact(json_run):
    proc, out_dir = json_run
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: quality gates failed: max_size_mb measured")
    gates = {g["name"]: g for g in json.loads(proc.stdout)["gates"]}
    assert gates["min_retention"]["passed"] is True
    assert gates["max_size_mb"]["passed"] is False
    assert gates["max_size_mb"]["measured"] == pytest.approx(
        json.loads(proc.stdout)["models"]["compressed"]["size_bytes"] / 1e6)
    assert (out_dir / "dense" / "model.onnx").is_file()
    assert (out_dir / "03-export" / "model.onnx").is_file()
    md = (out_dir / "report.md").read_text()
    assert "## Quality gates" in md and "1 of 2 gates FAILED" in md


def _cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("flags", [["--json"], ["--format", "json"]])
def test_report_json(json_run, capsys, flags):
    _, out_dir = json_run
    code, out, _ = _cli(["report", str(out_dir), *flags], capsys)
    assert code == 0
    assert json.loads(out) == json.loads((out_dir / "report.json").read_text())


def test_profile_json(json_run, capsys):
    _, out_dir = json_run
    code, out, err = _cli(["profile", str(out_dir / "03-export"), "--baseline", str(out_dir / "dense"),
                           "--batch-sizes", "1", "--seq-lens", "8,16", "--runs", "2", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["target"] == "cpu"
    assert {(p["model"], p["seq_len"]) for p in doc["profiles"]} == \
        {("baseline", 8), ("model", 8), ("baseline", 16), ("model", 16)}
    p50 = {(p["model"], p["seq_len"]): p["p50_ms"] for p in doc["profiles"]}
    assert doc["speedup"]["b1xs16"] == pytest.approx(p50["baseline", 16] / p50["model", 16])
