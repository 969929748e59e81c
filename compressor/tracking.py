"""MLflow tracking of a run (the optional ``[mlflow]`` extra): parameters, metrics (accuracy,
retention, sizes, latencies, speedups, gates), the report files and the final ONNX model.

Uses an explicit ``MlflowClient`` (no global active run), so embedding ``compressor`` in a job
that has its own MLflow run does not interfere with it. mlflow is imported only here, on use.

Metric names (all numbers from ``report.json``)::

    accuracy_onnx, accuracy_torch, dense_accuracy_onnx, dense_accuracy_torch, retention,
    sparsity, size_mb, dense_size_mb, size_ratio, params_encoder, ...
    accuracy_onnx/<target>, dense_accuracy_onnx/<target>, retention/<target>
    latency_p50_ms/<model>/<target>/<shape>   (also p90, p99; model = dense | compressed)
    throughput/<model>/<target>/<shape>
    speedup/<target>/<shape>                 (dense / compressed latency, compressor.profiling.speed_ms)
    gate/<name>/passed (1 or 0), gate/<name>/measured

Artifacts: ``report/`` (report.json, report.md and any other ``report*`` file of the run
folder) and ``model/`` (the folder holding the final ONNX model).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from compressor.errors import ConfigError, StepFailed

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'compressor[mlflow]'"
MAX_PARAM_LEN = 6000  # MLflow 3's limit on a parameter value
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /:]")


def require_mlflow():
    """Import and return ``mlflow``; ConfigError with the install command when it is missing."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError(f"--mlflow-uri needs MLflow, which is not installed: {INSTALL_HINT}") from None
    return mlflow


def client(uri: str):
    """An ``MlflowClient`` for ``uri`` after one cheap call to check the store answers;
    ConfigError naming the URI otherwise."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"mlflow_uri={uri!r} is empty: give e.g. sqlite:///mlflow.db or http://host:5000")
    mlflow = require_mlflow()
    try:
        c = mlflow.MlflowClient(tracking_uri=uri)
        c.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types for a bad URI or an unreachable store
        raise ConfigError(f"cannot use MLflow tracking URI {uri!r}: {_first_line(exc)}") from None
    return c


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _key(*parts) -> str:
    return _BAD_KEY.sub("_", "/".join(str(p) for p in parts))


def _number(x) -> float | None:
    import math
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def params_of(report: dict) -> dict[str, str]:
    """The MLflow parameters of a report: the run's settings and the gate thresholds."""
    run, data, tool = (report.get(k) or {} for k in ("run", "data", "tool"))
    params = {k: run.get(k) for k in ("model", "method", "sparsity", "granularity", "task",
                                      "pipeline", "seed")}
    params["targets"] = ",".join(map(str, run.get("targets") or []))
    params["train_size"], params["eval_size"] = data.get("train_size"), data.get("eval_size")
    params["compressor_version"] = tool.get("version")
    params["schema_version"] = report.get("schema_version")
    for g in report.get("gates") or []:
        params[f"gate.{g.get('name')}"] = g.get("threshold")
    return {_key(k): str(v)[:MAX_PARAM_LEN] for k, v in params.items() if v is not None}


def metrics_of(report: dict) -> dict[str, float]:
    """The MLflow metrics of a report (see the module docstring for the names)."""
    out: dict[str, float | None] = {}
    models = report.get("models") or {}
    for label, prefix in (("compressed", ""), ("dense", "dense_")):
        m = models.get(label) or {}
        out[f"{prefix}accuracy_onnx"] = m.get("accuracy_onnx")
        out[f"{prefix}accuracy_torch"] = m.get("accuracy_torch")
        size = _number(m.get("size_bytes"))
        out[f"{prefix}size_mb"] = None if size is None else size / 1e6
        out[f"{prefix}size_bytes"] = size
        for target, acc in (m.get("accuracy_by_target") or {}).items():
            out[_key(f"{prefix}accuracy_onnx", target)] = acc
        params = m.get("params")
        for k, v in (params.items() if isinstance(params, dict) else ()):
            out[f"{prefix}params_{k}"] = v
    out["sparsity"] = (models.get("compressed") or {}).get("sparsity")
    summary = report.get("summary") or {}
    out["retention"] = summary.get("accuracy_retention")
    out["size_ratio"] = summary.get("size_ratio")
    for target, x in (summary.get("accuracy_retention_by_target") or {}).items():
        out[_key("retention", target)] = x
    for target, by_shape in (summary.get("speedup") or {}).items():
        for shape, x in (by_shape or {}).items():
            out[_key("speedup", target, shape)] = x
    for p in report.get("profiles") or []:
        size = "real" if p.get("shape_kind") == "real" else f"s{p.get('seq_len')}"
        shape = f"b{p.get('batch')}x{size}"
        for stat in ("p50", "p90", "p99"):
            out[_key(f"latency_{stat}_ms", p.get("model"), p.get("target"), shape)] = p.get(f"{stat}_ms")
        out[_key("throughput", p.get("model"), p.get("target"), shape)] = p.get("throughput")
    for g in report.get("gates") or []:
        out[_key("gate", g.get("name"), "passed")] = 1.0 if g.get("passed") else 0.0
        out[_key("gate", g.get("name"), "measured")] = g.get("measured")
    return {k: float(v) for k, v in out.items() if _number(v) is not None}


class MlflowTracker:
    """Logs one compression run to MLflow: :meth:`start` creates the run (its ids go into the
    report), :meth:`log` sends params, metrics and artifacts and closes the run."""

    def __init__(self, uri: str, experiment: str = "compressor"):
        if not isinstance(experiment, str) or not experiment.strip():
            raise ConfigError(f"mlflow experiment name {experiment!r} is empty")
        self.uri, self.experiment = uri, experiment
        self.client = client(uri)
        self.run_id: str | None = None

    def start(self, report: dict) -> dict:
        """Create the MLflow run; return ``{"tracking_uri", "experiment_id", "run_id"}``."""
        try:
            exp = self.client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.experiment)
            run = report.get("run") or {}
            name = f"{Path(str(run.get('model') or 'model')).name}-{run.get('method') or 'pipeline'}"
            self.run_id = self.client.create_run(exp_id, run_name=name,
                                                 tags={"compressor.version": str((report.get("tool") or {}).get("version"))}
                                                 ).info.run_id
        except Exception as exc:
            raise self._failed(report, exc) from exc
        return {"tracking_uri": self.uri, "experiment_id": str(exp_id), "run_id": self.run_id}

    def log(self, report: dict, folder: str | Path) -> str:
        """Log params, metrics, the report files and the final ONNX model folder; end the run.
        Returns the run id. A failure marks the MLflow run FAILED and raises StepFailed."""
        from mlflow.entities import Metric, Param, RunTag
        folder = Path(folder)
        if self.run_id is None:
            self.start(report)
        try:
            now = int(time.time() * 1000)
            params = [Param(k, v) for k, v in params_of(report).items()]
            metrics = [Metric(k, v, now, 0) for k, v in metrics_of(report).items()]
            gates = report.get("gates") or []
            tags = [RunTag("compressor.gates_passed", str(all(g.get("passed") for g in gates)).lower())]
            for i in range(0, max(len(params), len(metrics), 1), 100):
                self.client.log_batch(self.run_id, metrics=metrics[i:i + 100], params=params[i:i + 100],
                                      tags=tags if i == 0 else ())
            for f in sorted(folder.glob("report*")):
                if f.is_file():
                    self.client.log_artifact(self.run_id, str(f), artifact_path="report")
            onnx_path = ((report.get("models") or {}).get("compressed") or {}).get("onnx_path")
            if onnx_path and Path(onnx_path).is_file():
                self.client.log_artifacts(self.run_id, str(Path(onnx_path).parent), artifact_path="model")
            self.client.set_terminated(self.run_id, "FINISHED")
        except Exception as exc:
            try:
                self.client.set_terminated(self.run_id, "FAILED")
            except Exception:  # the store itself is gone: nothing more to record
                pass
            raise self._failed(report, exc) from exc
        log.info("logged to MLflow %s: run %s", self.uri, self.run_id)
        return self.run_id

    def _failed(self, report: dict, exc: Exception) -> StepFailed:
        done = [s.get("name") for s in report.get("steps") or [] if isinstance(s, dict)]
        return StepFailed("mlflow", done, f"logging to {self.uri!r} failed: {_first_line(exc)} "
                                          f"(the run folder is complete)")


def log_run(report: dict, folder: str | Path, uri: str, experiment: str = "compressor") -> str:
    """Log a finished run whose report is already written in ``folder``: create the MLflow run,
    record its ids in ``report["mlflow"]``, rewrite the report files, log everything. A store
    that fails now raises StepFailed (exit 1); the run folder stays complete."""
    from compressor.report import write_report
    try:
        tracker = MlflowTracker(uri, experiment)
    except ConfigError as exc:
        done = [s.get("name") for s in report.get("steps") or [] if isinstance(s, dict)]
        raise StepFailed("mlflow", done, f"{exc} (the run folder is complete)") from None
    report["mlflow"] = tracker.start(report)
    write_report(folder, report)
    return tracker.log(report, folder)


__all__ = ["MlflowTracker", "log_run", "metrics_of", "params_of", "require_mlflow", "INSTALL_HINT"]
