"""The CLI: bad input gives one line and exit code 2 with nothing written; a tiny run works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compressor.cli import main


def _run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def data_files(tmp_path):
    from tests.conftest import make_toy_task
    task = make_toy_task(n_train=48, n_eval=24)
    paths = {}
    for split, rows in (("train", task.train), ("eval", task.eval)):
        p = tmp_path / f"{split}.tsv"
        p.write_text("sentence\tlabel\n" + "".join(f"{r.text}\t{r.label}\n" for r in rows))
        paths[split] = p
    return paths


BAD = [
    (["run", "minilm", "--sparsity", "1.0"], "sparsity=1.0 is out of range"),
    (["run", "minilm", "--sparsity", "-0.1"], "sparsity=-0.1 is out of range"),
    (["run", "minilm", "--sparsity", "abc"], "'abc' is not a valid float"),
    (["run", "minilm", "--method", "foo"], "method='foo' is not allowed"),
    (["run", "minilm", "--target", "tpu"], "target='tpu' is not allowed"),
    (["run", "minilm", "--batch-sizes", "0"], "each value must be an integer >= 1"),
    (["run", "minilm", "--pipeline", "magnitude{sparsity=0.9},nope"], "unknown pass 'nope'"),
    (["run", "minilm", "--pipeline", "magnitude{size=3},export"], "unknown option 'size'"),
    (["run", "minilm", "--pipeline", "export,magnitude"], "cannot run after 'export'"),
    (["run", "minilm", "--pipeline", "magnitude"], "must end with an ONNX model"),
    (["run", "minilm", "--train", "x.tsv"], "--train and --eval go together"),
    (["run", "./no/such/model"], "no/such/model"),
    (["run", "minilm", "--task", "no-such-task"], "no-such-task"),
    (["run", "minilm", "--train", "missing.tsv", "--eval", "missing2.tsv"], "missing.tsv"),
    (["profile", "does-not-exist.onnx"], "does-not-exist.onnx"),
    (["report", "no-such-run"], "no-such-run"),
]


@pytest.mark.parametrize("args, fragment", BAD, ids=[" ".join(a[:4]) for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_written(args, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "out"
    code, out, err = _run_cli(args + (["-o", str(out_dir)] if args[0] == "run" else []), capsys)
    assert code == 2, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try "))]
    assert len(lines) == 1, err
    assert fragment in lines[0]
    assert "Traceback" not in err
    assert not out_dir.exists()


def test_garbage_onnx_is_rejected(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00not an onnx model" * 10)
    code, _, err = _run_cli(["profile", str(bad)], capsys)
    assert code == 2 and str(bad) in err and "Traceback" not in err


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


def test_tiny_end_to_end_run(tmp_path, data_files, capsys):
    from tests.conftest import make_tiny_model
    from transformers import AutoTokenizer

    from tests.conftest import minilm_dir
    model_dir = tmp_path / "tiny"
    make_tiny_model().save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(str(minilm_dir())).save_pretrained(model_dir)
    out_dir = tmp_path / "run"
    code, out, err = _run_cli(["run", str(model_dir), "--train", str(data_files["train"]),
                               "--eval", str(data_files["eval"]), "--sparsity", "0.5", "--epochs", "1",
                               "--runs", "3", "--batch-sizes", "1,2", "--seq-lens", "16",
                               "-o", str(out_dir), "--quiet"], capsys)
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["finetune", "magnitude", "export", "sparse-init"]
    comp = report["models"]["compressed"]
    assert abs(comp["sparsity"] - 0.5) < 0.005
    assert abs(comp["accuracy_onnx"] - comp["accuracy_torch"]) <= 0.002
    assert {p["model"] for p in report["profiles"]} == {"dense", "compressed"}
    assert {(p["batch"], p["seq_len"]) for p in report["profiles"]} == {(1, 16), (2, 16)}
    assert all(p["providers_used"][0] == "CPUExecutionProvider" for p in report["profiles"])
    assert (out_dir / "report.md").read_text().count("|") > 10
    assert (out_dir / "01-finetune").is_dir() and (out_dir / "03-export" / "model.onnx").is_file()
    assert (out_dir / "dense" / "model.onnx").is_file()
    code, out, _ = _run_cli(["report", str(out_dir), "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["models"]["compressed"]["sparsity"] == comp["sparsity"]
