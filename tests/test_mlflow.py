"""MLflow tracking: a real tiny run logged to a local sqlite store is read back through MLflow's
own client (params, metrics equal to report.json, the report files and the ONNX model as
artifacts); without mlflow installed `--mlflow-uri` gives one line with the install command."""

from __future__ import annotations

import json
import sys

import pytest

from compressor.cli import main


def _cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_missing_mlflow_gives_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    out_dir = tmp_path / "out"
    code, _, err = _cli(["run", "minilm", "--mlflow-uri", f"sqlite:///{tmp_path}/m.db",
                         "-o", str(out_dir)], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --mlflow-uri needs MLflow, which is not installed: pip install 'compressor[mlflow]'"]
    assert not out_dir.exists()


def test_metrics_and_params_of_a_recorded_report():
    from compressor.tracking import metrics_of, params_of
    report = {"schema_version": 1, "tool": {"version": "0.1.0"},
              "run": {"model": "minilm", "method": "magnitude", "sparsity": 0.9, "pipeline": "x" * 7000,
                      "targets": ["cpu"]},
              "models": {"dense": {"accuracy_onnx": 0.8, "size_bytes": 90_000_000},
                         "compressed": {"accuracy_onnx": 0.78, "size_bytes": 40_000_000, "sparsity": 0.9,
                                        "accuracy_by_target": {"cpu": 0.78}}},
              "profiles": [{"model": "compressed", "target": "cpu", "batch": 1, "seq_len": 128,
                            "p50_ms": 10.0, "p90_ms": 11.0, "p99_ms": float("nan"), "throughput": 100.0},
                           {"model": "compressed", "target": "cpu", "batch": 8, "seq_len": 30,
                            "shape_kind": "real", "p50_ms": 20.0}],
              "summary": {"accuracy_retention": 0.975, "size_ratio": 2.25,
                          "speedup": {"cpu": {"b1xs128": 4.0}}},
              "gates": [{"name": "max_size_mb", "threshold": 50.0, "measured": 40.0, "passed": True}]}
    m = metrics_of(report)
    assert m["retention"] == 0.975 and m["size_mb"] == 40.0 and m["dense_size_mb"] == 90.0
    assert m["speedup/cpu/b1xs128"] == 4.0 and m["latency_p50_ms/compressed/cpu/b1xs128"] == 10.0
    assert m["latency_p50_ms/compressed/cpu/b8xreal"] == 20.0
    assert m["accuracy_onnx/cpu"] == 0.78 and m["gate/max_size_mb/passed"] == 1.0
    assert "latency_p99_ms/compressed/cpu/b1xs128" not in m  # NaN is not logged
    p = params_of(report)
    assert p["method"] == "magnitude" and p["gate.max_size_mb"] == "50.0"
    assert len(p["pipeline"]) == 6000  # MLflow's limit on a parameter value


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """A real tiny run through the API with mlflow_uri set to a sqlite store in a temp folder."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'compressor[mlflow]')")
    import compressor
    from tests.conftest import write_tiny_run_inputs
    root = tmp_path_factory.mktemp("mlflow")
    write_tiny_run_inputs(root, n_train=48, n_eval=24, model_name="model")
    uri = f"sqlite:///{root}/mlflow.db"
    mp = pytest.MonkeyPatch()
    mp.chdir(root)  # MLflow's default artifact root (./mlruns) lands in the temp folder
    try:
        report = compressor.compress(
            root / "model", train_file=root / "train.tsv", eval_file=root / "eval.tsv",
            sparsity=0.5, epochs=1, runs=2, batch_sizes=(1,), seq_lens=(16,), output=root / "run",
            gates={"min_retention": 0.5, "max_size_mb": 0.001}, mlflow_uri=uri,
            mlflow_experiment="tests", progress=False)
    finally:
        mp.undo()
    return report, uri


def test_round_trip_through_mlflow_client(logged_run):
    from mlflow import MlflowClient
    report, uri = logged_run
    data = report.to_dict()
    assert data["mlflow"]["tracking_uri"] == uri
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(data["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tests"

    params = run.data.params
    assert params["method"] == "magnitude" and float(params["sparsity"]) == 0.5
    assert params["pipeline"] == data["run"]["pipeline"] and params["gate.min_retention"] == "0.5"

    metrics = run.data.metrics
    comp, dense = data["models"]["compressed"], data["models"]["dense"]
    assert metrics["accuracy_onnx"] == pytest.approx(comp["accuracy_onnx"])
    assert metrics["dense_accuracy_onnx"] == pytest.approx(dense["accuracy_onnx"])
    assert metrics["retention"] == pytest.approx(data["summary"]["accuracy_retention"])
    assert metrics["size_mb"] == pytest.approx(comp["size_bytes"] / 1e6)
    assert metrics["sparsity"] == pytest.approx(comp["sparsity"])
    assert metrics["speedup/cpu/b1xs16"] == pytest.approx(data["summary"]["speedup"]["cpu"]["b1xs16"])
    p50 = {(p["model"], p["batch"]): p["p50_ms"] for p in data["profiles"] if p["seq_len"] == 16}
    assert metrics["latency_p50_ms/compressed/cpu/b1xs16"] == pytest.approx(p50["compressed", 1])
    assert metrics["latency_p50_ms/dense/cpu/b1xs16"] == pytest.approx(p50["dense", 1])
    assert metrics["gate/min_retention/passed"] == 1.0 and metrics["gate/max_size_mb/passed"] == 0.0
    assert run.data.tags["compressor.gates_passed"] == "false"
    assert not report.passed  # a failed gate does not raise in the API

    top = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert top == {"report", "model"}
    reports = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.json", "report/report.md"} <= reports
    model_files = {f.path: f.file_size for f in client.list_artifacts(run.info.run_id, "model")}
    assert model_files["model/model.onnx"] == comp["size_bytes"]

    local = client.download_artifacts(run.info.run_id, "report/report.json")
    logged = json.loads(open(local).read())
    assert logged["mlflow"]["run_id"] == run.info.run_id
    assert logged["models"] == data["models"]


def test_bad_tracking_uri_is_a_user_error(tmp_path, capsys):
    pytest.importorskip("mlflow", reason="mlflow is not installed")
    out_dir = tmp_path / "out"
    code, _, err = _cli(["run", "minilm", "--mlflow-uri", "nosuchscheme://x", "-o", str(out_dir)], capsys)
    assert code == 2 and "cannot use MLflow tracking URI 'nosuchscheme://x'" in err
    assert len(err.strip().splitlines()) == 1 and not out_dir.exists()


def test_store_failing_after_the_run_is_a_failed_step(tmp_path):
    pytest.importorskip("mlflow", reason="mlflow is not installed")
    from compressor.errors import StepFailed
    from compressor.tracking import log_run
    report = {"schema_version": 1, "steps": [{"name": "finetune"}, {"name": "export"}]}
    with pytest.raises(StepFailed) as info:
        log_run(report, tmp_path, "nosuchscheme://x")
    assert info.value.exit_code == 1 and info.value.before == ["finetune", "export"]
    assert "the run folder is complete" in str(info.value)
    assert "mlflow" not in report
