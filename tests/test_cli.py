"""The CLI: passes listing, exit codes, a tiny run end to end (bad input: test_bad_input.py)."""

from __future__ import annotations

import json
import subprocess
import sys


from compressor.cli import main


def _run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


# The bad-input table (exit 2, one line, nothing written) lives in tests/test_bad_input.py.


def test_passes_lists_options(capsys):
    code, out, _ = _run_cli(["passes"], capsys)
    assert code == 0
    for name in ("finetune", "magnitude", "export", "sparse-init"):
        assert name in out
    assert "sparsity" in out and "0.9" in out


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "compressor.cli", "run", "minilm", "--sparsity", "2"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: sparsity=2.0 is out of range: allowed [0.0, 1.0)"


def test_tiny_end_to_end_run(tmp_path, capsys):
    from tests.conftest import write_tiny_run_inputs
    model_dir, train_tsv, eval_tsv = write_tiny_run_inputs(tmp_path, n_train=48, n_eval=24)
    out_dir = tmp_path / "run"
    code, out, err = _run_cli(["run", str(model_dir), "--train", str(train_tsv),
                               "--eval", str(eval_tsv), "--sparsity", "0.5", "--epochs", "1",
                               "--runs", "3", "--batch-sizes", "1,2", "--seq-lens", "16",
                               "-o", str(out_dir), "--quiet"], capsys)
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["finetune", "magnitude", "export", "quantize",
                                                    "sparse-init"]
    assert report["run"]["method"] == "magnitude"
    models = report["models"]
    comp, fp32 = models["compressed"], models["compressed-fp32"]
    assert abs(comp["sparsity"] - 0.5) < 0.005
    assert comp["int8"] and not fp32["int8"] and models["dense-int8"]["int8"]
    assert abs(fp32["accuracy_onnx"] - fp32["accuracy_torch"]) <= 0.002
    # the dense INT8 baseline is scored on the same eval split and profiled in the same run
    assert 0.0 <= models["dense-int8"]["accuracy_onnx"] <= 1.0 and models["dense-int8"]["size_bytes"] > 0
    assert {p["model"] for p in report["profiles"]} == {"dense", "dense-int8", "compressed", "compressed-fp32"}
    assert report["data"]["dev_size"] > 0 and report["data"]["train_size"] + report["data"]["dev_size"] == 48
    versus = report["summary"]["versus_dense_int8"]
    assert versus["reference"] == "dense-int8" and isinstance(versus["dominates"], bool)
    split = comp["size_split"]
    assert split["total_bytes"] == comp["size_bytes"] and split["embeddings_bytes"] > split["head_bytes"]
    assert sum(split[f"{p}_bytes"] for p in ("embeddings", "encoder", "head", "other")) == split["total_bytes"]
    md = (out_dir / "report.md").read_text()
    assert "## Size on disk" in md and "| dense-int8 " in md and "dense-int8" in versus["verdict"] and versus["verdict"] in md
    fixed = {(p["batch"], p["seq_len"]) for p in report["profiles"] if p["shape_kind"] == "fixed"}
    assert fixed == {(1, 16), (2, 16)}
    assert all(p["providers_used"][0] == "CPUExecutionProvider" for p in report["profiles"])
    assert (out_dir / "report.md").read_text().count("|") > 10
    assert (out_dir / "01-finetune").is_dir() and (out_dir / "03-export" / "model.onnx").is_file()
    assert (out_dir / "dense" / "model.onnx").is_file()
    code, out, _ = _run_cli(["report", str(out_dir), "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["models"]["compressed"]["sparsity"] == comp["sparsity"]


def test_pipeline_run_reports_no_method(tmp_path, capsys):
    """With --pipeline no --method ran: run.method is null (the schema allows it), not the default."""
    import compressor
    from tests.conftest import write_tiny_run_inputs
    model_dir, train_tsv, eval_tsv = write_tiny_run_inputs(tmp_path, n_train=16, n_eval=8)
    out_dir = tmp_path / "run"
    code, _, err = _run_cli(["run", str(model_dir), "--train", str(train_tsv), "--eval", str(eval_tsv),
                             "--pipeline", "magnitude{sparsity=0.5,epochs=0,schedule=oneshot},export",
                             "--runs", "1", "--batch-sizes", "1", "--seq-lens", "8", "--no-real-shapes",
                             "-o", str(out_dir), "--quiet"], capsys)
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["run"]["method"] is None
    assert report["run"]["sparsity"] is None and report["run"]["granularity"] is None
    from compressor.pipeline import parse_spec
    assert parse_spec(report["run"]["pipeline"]) == parse_spec("magnitude{sparsity=0.5,epochs=0,schedule=oneshot},export")
    compressor.validate_report(report)
    assert (out_dir / "report.md").read_text().startswith(f"# Compression report: {model_dir}, —")


def test_model_and_target_are_checked_before_the_data(tmp_path, capsys, monkeypatch):
    """Cheap checks first: a missing model folder (or an unknown target) is reported even when the
    data file is missing too, and the data is never read."""
    from compressor import data as data_mod

    def must_not_read(*args, **kwargs):
        raise AssertionError("the task data was read before the model name was checked")
    monkeypatch.setattr(data_mod, "load_task", must_not_read)
    missing = tmp_path / "nope.tsv"
    code, _, err = _run_cli(["run", str(tmp_path / "no-model"), "--train", str(missing), "--eval",
                             str(missing), "-o", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "no-model" in err and "does not exist" in err
    code, _, err = _run_cli(["run", "minilm", "--target", "tpu", "-o", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "target='tpu'" in err
    assert not (tmp_path / "o").exists()
