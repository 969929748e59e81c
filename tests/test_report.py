"""The run report: summary maths, JSON/Markdown writing, rendering of partial reports, loading."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from compressor.errors import ArtifactError
from compressor.report import SCHEMA_VERSION, build_summary, load_report, write_report
from compressor.report_md import render_markdown


def profile(model, p50, batch=1, seq=128, target="cpu", fallback=False):
    used = ["CPUExecutionProvider"]
    return {"model": model, "target": target, "providers_requested": ["CPUExecutionProvider"],
            "providers_used": used, "fallback": fallback, "batch": batch, "seq_len": seq,
            "runs": 30, "warmup": 5, "p50_ms": p50, "p90_ms": p50 * 1.1, "p95_ms": p50 * 1.2,
            "p99_ms": p50 * 1.3, "mean_ms": p50 * 1.05, "throughput": batch * 1000 / p50,
            "first_run_ms": 350.0, "size_bytes": 90_000_000, "peak_rss_mb": 812.4,
            "load_rss_mb": 120.0, "min_ms": p50 * 0.9, "max_ms": p50 * 1.5, "options": {"threads": 2}}


# A report as the orchestrator records it for `compress run --method magnitude --sparsity 0.9`.
REPORT = {
    "schema_version": 1, "tool": {"name": "compressor", "version": "0.1.0"},
    "created": "2026-11-25T22:00:00Z",
    "machine": {"platform": "Linux-6.1-x86_64", "cpu_count": 2, "python": "3.11.7",
                "torch": "2.13.0", "transformers": "4.57.6", "onnxruntime": "1.32.0"},
    "run": {"model": "minilm", "model_path": "/models/minilm", "method": "magnitude",
            "sparsity": 0.9, "granularity": "weight", "task": "rotten-tomatoes",
            "pipeline": "finetune,magnitude{sparsity=0.9},export,sparse-init", "seed": 0,
            "command": "compress run --model minilm --method magnitude --sparsity 0.9",
            "targets": ["cpu"]},
    "data": {"task": "rotten-tomatoes", "train_size": 10200, "eval_size": 2500, "num_labels": 2,
             "label_names": ["rotten", "fresh"]},
    "steps": [
        {"index": 1, "name": "finetune", "spec": "finetune", "folder": "runs/x/01-finetune",
         "seconds": 250.1, "modified": True, "metrics": {"train_loss": 0.41234, "eval_accuracy": 0.8}},
        {"index": 2, "name": "magnitude", "spec": "magnitude{sparsity=0.9}",
         "folder": "runs/x/02-magnitude", "seconds": 612.7, "modified": True,
         "metrics": {"sparsity": 0.9, "per_layer": {"encoder.layer.0.attention.self.query": 0.88,
                                                    "encoder.layer.0.output.dense": 0.93}}},
        {"index": 3, "name": "export", "spec": "export", "folder": "runs/x/03-export",
         "seconds": 4.2, "modified": True, "metrics": {"max_abs_diff": 3.1e-7, "opset": 17}},
        {"index": 4, "name": "sparse-init", "spec": "sparse-init", "folder": "runs/x/04-sparse-init",
         "seconds": 1.3, "modified": True, "metrics": {"converted": 36}}],
    "models": {
        "dense": {"accuracy_torch": 0.80, "accuracy_onnx": 0.80, "onnx_path": "runs/x/dense.onnx",
                  "size_bytes": 90_000_000, "params": {"total": 22_700_000}},
        "compressed": {"accuracy_torch": 0.78, "accuracy_onnx": 0.78,
                       "onnx_path": "runs/x/04-sparse-init/model.onnx", "size_bytes": 60_000_000,
                       "size_bytes_before_sparse_init": 90_000_000, "sparsity": 0.9,
                       "params": {"total": 22_700_000, "nonzero": 12_400_000}}},
    "profiles": [profile("dense", 20.4), profile("compressed", 20.0),
                 profile("dense", 160.0, batch=8), profile("compressed", 80.0, batch=8)],
}


@pytest.fixture
def report():
    rep = copy.deepcopy(REPORT)
    rep["summary"] = build_summary(rep["models"], rep["profiles"])
    return rep


def test_build_summary(report):
    s = report["summary"]
    assert s["accuracy_retention"] == pytest.approx(0.975)
    assert s["size_ratio"] == pytest.approx(1.5)
    assert set(s["speedup"]) == {"cpu"}
    assert s["speedup"]["cpu"] == {"b1xs128": pytest.approx(1.02), "b8xs128": pytest.approx(2.0)}


def test_build_summary_without_dense_or_profiles():
    s = build_summary({"compressed": REPORT["models"]["compressed"]}, [])
    assert s == {"accuracy_retention": None, "size_ratio": None, "speedup": {},
                 "accuracy_retention_by_target": {}, "versus_dense_int8": None, "fallback": []}
    # no ONNX accuracy on one side: fall back to torch accuracy on both
    models = copy.deepcopy(REPORT["models"])
    del models["compressed"]["accuracy_onnx"]
    models["dense"]["accuracy_torch"] = 0.8
    assert build_summary(models, [])["accuracy_retention"] == pytest.approx(0.975)


def test_markdown_top_table_reads_first(report):
    md = render_markdown(report)
    top = md.split("## Latency")[0]
    assert "## Summary" in top
    # accuracy, % of dense, size in MB, × smaller, p50 and × faster per shape
    assert md.startswith("# Compression report: minilm, magnitude at 90.0% sparsity")
    for text in ("78.00%", "97.5%", "90.0", "60.0", "×1.50", "20.40", "20.00", "×1.02",
                 "80.00", "×2.00", "magnitude", "90.0%", "latency cpu b1xs128 ms (× faster)",
                 "20.00 (×1.02)", "80.00 (×2.00)"):
        assert text in top, text
    assert top.index("| dense") < top.index("| compressed")


def test_markdown_sections(report):
    md = render_markdown(report)
    for text in ("## Latency", "## Steps", "## Per-layer sparsity (magnitude)",
                 "encoder.layer.0.output.dense", "93.0%", "612.7", "train_loss=0.4123",
                 "max_abs_diff=3.1e-07", "## Machine", "4.57.6",
                 "compress run --model minilm --method magnitude --sparsity 0.9",
                 "finetune,magnitude{sparsity=0.9},export,sparse-init", "CPUExecutionProvider",
                 "rotten, fresh"):
        assert text in md, text
    assert "WARNING" not in md and "**YES**" not in md
    # a table row per profile, with p90 and throughput
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in md.split("\n## Latency\n")[1]
            .split("## Steps")[0].splitlines() if line.startswith("| cpu")]
    assert len(rows) == 4
    assert rows[3][:6] == ["cpu", "compressed", "b8xs128", "80.00", "88.00", "104.00"]
    assert "100.0" in md  # 8 samples / 80 ms


def test_fallback_is_flagged(report):
    report["profiles"][1]["fallback"] = True
    report["profiles"][1]["providers_requested"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    md = render_markdown(report)
    assert "**WARNING: execution-provider fallback.**" in md
    assert md.index("WARNING") < md.index("| Target")
    assert "**YES**" in md
    assert ("target cpu asked for CUDAExecutionProvider, CPUExecutionProvider but ran on "
            "CPUExecutionProvider (compressed)") in md


def test_missing_pieces_render_as_dash(report):
    for key in ("profiles", "summary", "machine", "data"):
        report.pop(key)
    report["models"].pop("dense")
    md = render_markdown(report)
    assert "No latency profiles were recorded." in md
    row = next(line for line in md.splitlines() if line.startswith("| compressed"))
    assert "—" in row and "78.00%" in row
    assert "p50" not in md.split("## Latency")[0]
    # a bare or odd report never crashes
    assert "# Compression report" in render_markdown({})
    odd = {"models": {"dense": {"accuracy_onnx": "n/a", "size_bytes": None}},
           "profiles": [{"model": "dense"}], "steps": [{"name": "x", "metrics": None}]}
    assert "| dense" in render_markdown(odd)


def test_write_and_load_round_trip(tmp_path, report):
    from pathlib import Path
    report["run"]["model_path"] = Path("/models/minilm")  # Paths are written as text
    paths = write_report(tmp_path / "run", report)
    assert [p.name for p in paths] == ["report.json", "report.md", "report.html"]
    loaded = load_report(tmp_path / "run")
    assert loaded["schema_version"] == SCHEMA_VERSION
    assert loaded["run"]["model_path"] == "/models/minilm"
    assert loaded["summary"]["size_ratio"] == pytest.approx(1.5)
    assert paths[1].read_text() == render_markdown(loaded)
    assert paths[2].read_text().startswith("<!DOCTYPE html>") and "<table>" in paths[2].read_text()
    assert load_report(paths[0]) == loaded
    assert not list((tmp_path / "run").glob(".*tmp*"))


def test_write_report_accepts_profile_objects(tmp_path, report):
    from targets.base import Profile
    fields = set(Profile.__dataclass_fields__)
    report["profiles"] = [Profile(**{k: v for k, v in p.items() if k in fields})
                          for p in report["profiles"]]
    report["profiles"][0].throughput = float("inf")  # not valid JSON: written as null
    write_report(tmp_path, report)
    loaded = load_report(tmp_path)
    assert loaded["profiles"][1]["p50_ms"] == 20.0 and loaded["profiles"][0]["throughput"] is None
    json.loads((tmp_path / "report.json").read_text())  # strict JSON


def test_load_report_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no run report"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("{\"schema_version\": 1, ")
    with pytest.raises(ArtifactError, match="corrupt"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="JSON object"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema_version=99"):
        load_report(tmp_path)


def test_machine_info_without_heavy_imports():
    """In a fresh interpreter (here torch may already be imported by an earlier test)."""
    import subprocess
    import sys
    code = ("import json, sys\n"
            "from compressor.report import machine_info\n"
            "info = machine_info()\n"
            "print(json.dumps({'info': info, 'heavy': sorted({'torch', 'onnx', 'onnxruntime', 'transformers'} & set(sys.modules))}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    info = out["info"]
    assert info["cpu_count"] >= 1 and info["python"].count(".") == 2
    assert info["onnxruntime"] and info["transformers"]
    assert out["heavy"] == []


# ---- real shapes, several targets, HTML, plots, compare ---------------------------------------

def rich_report(sparsity=0.9, comp_acc=0.78, factor=1.0) -> dict:
    """REPORT plus real-length profiles on cpu and a cuda target that fell back to the CPU,
    accuracy per target and the profile grid, as `compress run --target cpu --target cuda
    --allow-fallback` records it."""
    rep = copy.deepcopy(REPORT)
    rep["run"]["sparsity"] = rep["models"]["compressed"]["sparsity"] = sparsity
    rep["models"]["compressed"]["accuracy_onnx"] = comp_acc
    for target in ("cpu", "cuda"):
        for batch, dense_ms, comp_ms in ((1, 5.0, 2.5), (8, 30.0, 10.0)):
            for model, ms in (("dense", dense_ms), ("compressed", comp_ms * factor)):
                p = profile(model, ms, batch=batch, seq=41, target=target, fallback=target == "cuda")
                p.update(shape_kind="real", padded_lens=[33, 41, 52])
                if target == "cuda":
                    p["providers_requested"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
                rep["profiles"].append(p)
    rep["models"]["dense"]["accuracy_by_target"] = {"cpu": 0.80, "cuda": 0.80}
    rep["models"]["compressed"]["accuracy_by_target"] = {"cpu": comp_acc, "cuda": 0.77}
    rep["profile_grid"] = {"batch_sizes": [1, 8], "seq_lens": [128], "runs": 30, "warmup": 5,
                           "real_shapes": True, "real_batches_per_size": 8, "max_length": 64,
                           "eval_token_lengths": {"count": 2500, "mean": 27.1, "median": 26.0,
                                                  "p95": 47.0, "max": 64, "truncated": 0.002}}
    rep["summary"] = build_summary(rep["models"], rep["profiles"])
    return rep


def test_summary_per_target_and_fallback():
    s = rich_report()["summary"]
    assert s["speedup"]["cpu"] == {"b1xs128": pytest.approx(1.02), "b8xs128": pytest.approx(2.0),
                                   "b1xreal": pytest.approx(2.0), "b8xreal": pytest.approx(3.0)}
    assert s["speedup"]["cuda"] == {"b1xreal": pytest.approx(2.0), "b8xreal": pytest.approx(3.0)}
    assert s["accuracy_retention_by_target"] == {"cpu": pytest.approx(0.975), "cuda": pytest.approx(0.9625)}
    assert s["fallback"] == [
        {"target": "cuda", "model": m, "providers_requested": ["CUDAExecutionProvider", "CPUExecutionProvider"],
         "providers_used": ["CPUExecutionProvider"]} for m in ("dense", "compressed")]


def test_headline_prefers_real_lengths_and_shows_each_target():
    from compressor.report_md import headline_shapes
    rep = rich_report()
    assert headline_shapes(rep["profiles"]) == [("cpu", "b1xreal"), ("cpu", "b8xreal"),
                                                ("cuda", "b1xreal"), ("cuda", "b8xreal")]
    fixed = [profile("dense", 1.0, batch=b, seq=s) for b in (1, 8, 32) for s in (32, 128)]
    assert headline_shapes(fixed) == [("cpu", "b1xs128"), ("cpu", "b32xs128")]
    md = render_markdown(rep)
    top = md.split("## Latency grid")[0]
    assert md.splitlines()[2].startswith("> **WARNING: execution-provider fallback.** target cuda asked "
                                         "for CUDAExecutionProvider, CPUExecutionProvider but ran on "
                                         "CPUExecutionProvider (dense, compressed)")
    row = next(line for line in top.splitlines() if line.startswith("| compressed"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[7] == "77.00% (96.2%)"  # accuracy on cuda and % of dense there (after gap closed)
    assert cells[-4:] == ["2.50 (×2.00)", "10.00 (×3.00)", "2.50 (×2.00)", "10.00 (×3.00)"]
    assert "latency cuda b8xreal ms (× faster)" in top and "33-52 tokens" in top
    grid = md.split("## Latency grid")[1].split("## Latency\n")[0]
    assert "| cpu      | b8xs128 | 160.00" in grid and grid.count("| cuda") == 2
    run_table = md.split("## Run")[1]
    assert "1, 8" in run_table and "median 26, p95 47, max 64 (0.2% cut at 64)" in run_table


def test_html_from_recorded_report(tmp_path):
    import base64
    import re

    from compressor.report_html import render_html
    rep = rich_report()
    (tmp_path / "report.json").write_text(json.dumps(rep))
    html = render_html(load_report(tmp_path))
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<table>" in html and "<th>Model</th>" in html and "77.00% (96.2%)" in html
    assert html.index('class="warning"') < html.index("<table>")
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert [alt for alt, _ in images] == ["Accuracy vs measured latency: up and to the left is better",
                                          "Accuracy vs size", "Latency vs batch", "Speedup per target"]
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for _, data in images)
    assert html.index("<h2>Plots</h2>") < html.index("<h2>Latency grid</h2>")
    assert "src=\"http" not in html and "<script" not in html  # self-contained
    assert "<b>" not in render_html({"run": {"model": "<b>x</b>"}}).split("<body>")[1]  # escaped


def test_plots_skip_what_is_missing():
    from compressor.plots import report_plots
    assert report_plots({}) == {}
    only_models = report_plots({"models": REPORT["models"]})
    assert list(only_models) == ["accuracy_vs_size"]


def test_cli_report_formats(tmp_path, capsys):
    from compressor.cli import main
    write_report(tmp_path, rich_report())
    assert main(["report", str(tmp_path), "--format", "html"]) == 0
    assert capsys.readouterr().out.startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path), "--format", "md"]) == 0
    assert capsys.readouterr().out.startswith("# Compression report: minilm, magnitude")
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["fallback"][0]["target"] == "cuda"


def test_compare_two_recorded_runs(tmp_path, capsys):
    from compressor.cli import main
    write_report(tmp_path / "run-90", rich_report())
    clean = rich_report(sparsity=0.5, comp_acc=0.795, factor=2.0)
    clean["profiles"] = [p for p in clean["profiles"] if p["target"] == "cpu"]
    clean["summary"] = build_summary(clean["models"], clean["profiles"])
    write_report(tmp_path / "run-50", clean)
    assert main(["compare", str(tmp_path / "run-90"), str(tmp_path / "run-50")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Comparison of 2 runs")
    assert "> run-90: **WARNING: execution-provider fallback.**" in out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in out.split("## Commands")[0].splitlines() if line.startswith("| run-")}
    assert set(rows) == {"run-90 (FALLBACK)", "run-50"}
    assert rows["run-90 (FALLBACK)"][3:7] == ["90.0%", "80.00%", "78.00%", "97.5%"]
    assert rows["run-50"][3:7] == ["50.0%", "80.00%", "79.50%", "99.4%"]
    assert "5.00 (×1.00)" in rows["run-50"]  # 2x slower compressed model: dense 5.0 / 5.0
    assert rows["run-50"][-1] == "—"  # no cuda profile in that run
    assert main(["compare", str(tmp_path / "run-90"), str(tmp_path / "run-50"), "--format", "html"]) == 0
    html = capsys.readouterr().out
    assert html.startswith("<!DOCTYPE html>") and html.count("data:image/png;base64,") == 2
    code = main(["compare", str(tmp_path / "run-90"), str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2 and "no run report" in err and len(err.strip().splitlines()) == 1


def test_run_table_counts_real_batches_per_size():
    import re
    rep = rich_report()
    assert re.search(r"\| real-length batches +\| 8 per batch size", render_markdown(rep))  # older reports
    rep["profile_grid"]["real_batches_by_size"] = {"1": 64, "8": 8}
    assert re.search(r"\| real-length batches +\| 64 at b1, 8 at b8 ", render_markdown(rep))
