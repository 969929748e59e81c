"""The Python API: :func:`compress` a model and get a :class:`Report` back, check quality gates
on it, :func:`profile` an ONNX file on a target. The ``compress`` command line is a thin shell
over these functions.

Everything here is re-exported by ``compressor`` (lazily: ``import compressor`` stays free of
torch, onnx and onnxruntime)::

    import compressor
    report = compressor.compress("minilm", method="magnitude", sparsity=0.9, output="out/demo",
                                 max_train=2000, gates={"min_retention": 0.97})
    print(report.retention, report.speedup, report.passed)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from compressor.config import MIN_SECONDS, RunConfig
from compressor.errors import ArtifactError, ConfigError
from compressor.gates import GATES, GatesFailed, check_gates, failed
from compressor.pass_base import Pass
from compressor.pipeline import Pipeline

SCHEMA_FILE = "report.schema.json"

# RunConfig fields that are not compress() keywords: filled in here.
_INTERNAL = {"command", "extra", "pipeline", "progress", "gates", "mlflow_uri", "output",
             "targets", "model", "method", "sparsity", "task", "train_file", "eval_file"}


def _run_options() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig) if f.name not in _INTERNAL]


def compress(model: str | Path = "minilm", *, method: str = "magnitude", sparsity: float = 0.9,
             task: str | None = "rotten-tomatoes", train_file: str | Path | None = None,
             eval_file: str | Path | None = None, targets: str | Iterable[str] = ("cpu",),
             output: str | Path = "out", gates: dict[str, float] | None = None,
             pipeline: Pipeline | str | list[Pass] | None = None, mlflow_uri: str | None = None,
             progress: bool | None = None, **kw: Any) -> "Report | None":
    """Compress ``model`` and return its :class:`Report` (the content of ``output/report.json``).

    Does what ``compress run`` does: fine-tune the dense teacher on the task, compress it with
    ``method`` at ``sparsity`` (or run ``pipeline``: a :class:`Pipeline`, a spec string or a list
    of passes, user passes included), export both models to verified ONNX, score them on the eval
    split, profile them side by side on ``targets`` and write ``report.json``/``report.md``.

    - ``model``: local folder, hub id or alias (``minilm``, ``bert-base``).
    - ``task`` or ``train_file`` + ``eval_file`` (TSV/CSV/JSONL with a text and a label);
      ``task_type="regression"`` (or float labels, detected) trains one output on the scores and
      reports Pearson's r wherever accuracy goes (``report.json``'s ``data.metric_name``);
      CoNLL-style or JSONL tokens/tags files (or ``task_type="token-classification"``) train an NER
      tagger, reported in entity-level F1; label lists (JSONL, detected), ``a,b`` cells with
      ``task_type="multi-label"`` or 0/1 columns (``columns="text=0,labels=2:7"``) train sigmoid
      outputs, reported in micro F1 at a threshold chosen on dev; SQuAD v1.1/v2.0 JSON or JSONL
      question/context/answers files (or ``task_type="question-answering"``) train an extractive
      QA model on windows of ``doc_stride`` shared tokens (``doc_stride=N``, below ``max_length``),
      reported in SQuAD F1 and exact match.
    - ``task_type="embeddings"`` compresses a sentence-embedding model against its own embeddings;
      ``unlabeled_file`` (UTF-8, one text per line) adds training texts labelled by the teacher
      (never dev or eval texts), ``static_baseline`` (a model2vec folder) adds a static-embedding
      baseline row, scored and profiled like the others.
    - ``gates``: ``{"min_retention": 0.98, "min_speedup": 3, "max_latency_ms": 20,
      "max_size_mb": 50}`` (any subset, see :mod:`compressor.gates`); the results are in
      :attr:`Report.gates`. A failed gate does not raise: check :attr:`Report.passed` or call
      :meth:`Report.raise_for_gates`.
    - ``mlflow_uri``: log params, metrics, the report and the ONNX model to MLflow
      (``pip install 'compressor[mlflow]'``); ``mlflow_experiment`` names the experiment.
    - ``progress``: progress bars; None = only when stderr is a terminal.
    - ``**kw``: the other run settings: ``granularity``, ``teacher``, ``seed``, ``max_train``,
      ``max_eval``, ``max_length``, ``epochs``, ``batch_sizes``, ``seq_lens``, ``runs``, ``min_seconds``,
      ``sparse_init``, ``allow_fallback``, ``mlflow_experiment``, ...
    - ``allow_collapse``: a training pass whose dev metric collapses to the majority class trains
      on instead of raising :class:`compressor.errors.CollapseError`. A collapsed deployment never
      raises here: the report marks it (``report["models"]["compressed"]["collapse"]``).

    Under ``torchrun``/``accelerate launch`` every rank calls it; rank 0 returns the report, the
    others None (they only take part in training, :mod:`compressor.ranks`).

    Raises a :class:`compressor.CompressorError` for bad input (before anything is written), its
    :class:`~compressor.errors.CollapseError` when a training pass collapses (unless
    ``allow_collapse``), and :class:`compressor.StepFailed` when a step fails.
    """
    from compressor.run import run
    allowed = _run_options()
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown compress() option '{unknown[0]}': allowed {', '.join(sorted(allowed))}")
    for key in ("batch_sizes", "seq_lens"):
        if key in kw and not isinstance(kw[key], str):
            kw[key] = tuple(kw[key])
    for key in ("unlabeled_file", "static_baseline"):  # paths: a Path is fine too
        if kw.get(key) is not None:
            kw[key] = str(kw[key])
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    cfg = RunConfig(model=str(model), method=method, sparsity=sparsity, task=task,
                    train_file=_str(train_file), eval_file=_str(eval_file), targets=targets,
                    output=str(output), gates=dict(gates or {}),
                    pipeline=None if pipeline is None else pipeline_spec(pipeline),
                    mlflow_uri=mlflow_uri,
                    progress=sys.stderr.isatty() if progress is None else bool(progress),
                    command=f"compressor.compress({str(model)!r}, ...)", **kw)
    with library_progress(cfg.progress):
        doc = run(cfg)
    return None if doc is None else Report.load(output)  # None: a rank other than 0 of a launch


@contextlib.contextmanager
def library_progress(enabled: bool):
    """Within the block, turn off the progress bars of transformers and huggingface_hub (e.g.
    "Loading weights") unless ``enabled``; their previous state is restored afterwards.
    (Our own training bars follow ``RunContext.progress``.)"""
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _str(x) -> str | None:
    return None if x is None else str(x)


def pipeline_spec(pipeline: Pipeline | str | list[Pass]) -> str:
    """The spec string of ``pipeline``; user pass classes not yet registered are registered
    under their ``name``. ConfigError when a name is taken by another class or an option value
    does not survive the round trip through the spec."""
    from compressor.registry import PASSES, get_pass, register_pass
    if isinstance(pipeline, str):
        return pipeline
    if isinstance(pipeline, (list, tuple)):
        pipeline = Pipeline(list(pipeline))
    if not isinstance(pipeline, Pipeline):
        raise ConfigError(f"pipeline={pipeline!r} must be a Pipeline, a spec string or a list of passes")
    for p in pipeline.passes:
        if p.name not in PASSES:
            register_pass(type(p))
        elif get_pass(p.name) is not type(p):
            raise ConfigError(f"pass name '{p.name}' of {type(p).__name__} is already registered for "
                              f"{get_pass(p.name).__name__}: give your pass another name")
    spec = pipeline.spec
    if Pipeline(spec).passes != pipeline.passes:
        raise ConfigError(f"pipeline cannot be written as the spec {spec!r}: an option value "
                          f"does not survive the round trip")
    return spec


class Report:
    """A run report: the content of ``report.json`` with the headline numbers as attributes.

    Attributes are None when the run did not measure them. ``report["models"]`` etc. read the
    raw dict; :meth:`to_dict` returns a copy of it.
    """

    def __init__(self, data: dict, folder: str | Path | None = None):
        if not isinstance(data, dict):
            raise ArtifactError(f"a report is a JSON object, got {type(data).__name__}")
        self._data = data
        self.folder = None if folder is None else Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "Report":
        """Read ``report.json`` from a run folder (or the file itself)."""
        from compressor.report import load_report
        path = Path(folder)
        return cls(load_report(path), path if path.is_dir() else path.parent)

    def __getitem__(self, key: str):
        return self._data[key]

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __repr__(self) -> str:
        return (f"Report(model={self.run.get('model')!r}, method={self.run.get('method')!r}, "
                f"accuracy={self.accuracy}, retention={self.retention}, size_mb={self.size_mb}, "
                f"gates={'passed' if self.passed else 'FAILED'})")

    def to_dict(self) -> dict:
        """A deep copy of the report dict (what ``report.json`` holds)."""
        return copy.deepcopy(self._data)

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text."""
        return json.dumps(self._data, indent=indent)

    def _model(self, label: str) -> dict:
        return (self._data.get("models") or {}).get(label) or {}

    @property
    def schema_version(self) -> int:
        """The report format version (see ``compressor/schema/report.schema.json``)."""
        return self._data.get("schema_version")

    @property
    def run(self) -> dict:
        """The run's settings: model, method, sparsity, task, pipeline, seed, targets, command."""
        return self._data.get("run") or {}

    @property
    def accuracy(self) -> float | None:
        """Accuracy of the compressed ONNX model on the eval split."""
        return self._model("compressed").get("accuracy_onnx")

    @property
    def dense_accuracy(self) -> float | None:
        """Accuracy of the dense ONNX model on the eval split."""
        return self._model("dense").get("accuracy_onnx")

    @property
    def retention(self) -> float | None:
        """Compressed accuracy / dense accuracy (ONNX)."""
        return (self._data.get("summary") or {}).get("accuracy_retention")

    @property
    def sparsity(self) -> float | None:
        """Measured sparsity of the compressed model's pruned weights."""
        return self._model("compressed").get("sparsity")

    @property
    def size_bytes(self) -> int | None:
        """Compressed ONNX model file size in bytes."""
        return self._model("compressed").get("size_bytes")

    @property
    def size_mb(self) -> float | None:
        """Compressed ONNX model file size in MB (10**6 bytes)."""
        return None if self.size_bytes is None else self.size_bytes / 1e6

    @property
    def size_ratio(self) -> float | None:
        """Dense size / compressed size."""
        return (self._data.get("summary") or {}).get("size_ratio")

    @property
    def speedup(self) -> dict:
        """Dense / compressed latency (the p50; at real shapes the per-text medians averaged, see
        :func:`compressor.profiling.speed_ms`): ``{target: {"b1xs128": x, ...}}``."""
        return (self._data.get("summary") or {}).get("speedup") or {}

    @property
    def onnx_path(self) -> Path | None:
        """The final compressed ONNX model."""
        path = self._model("compressed").get("onnx_path")
        return None if path is None else Path(path)

    @property
    def profiles(self) -> list[dict]:
        """Every latency profile (model, target, batch, seq_len, p50_ms, ...)."""
        return list(self._data.get("profiles") or [])

    @property
    def steps(self) -> list[dict]:
        """What each pipeline step did (name, spec, folder, seconds, metrics)."""
        return list(self._data.get("steps") or [])

    @property
    def gates(self) -> list[dict]:
        """Quality-gate results: ``{name, threshold, measured, passed, reason, where}`` each."""
        return list(self._data.get("gates") or [])

    @property
    def passed(self) -> bool:
        """True when every gate passed (also when no gate was set)."""
        return not failed(self.gates)

    def latency_ms(self, target: str = "cpu", batch: int = 1, seq_len: int | None = None,
                   model: str = "compressed", stat: str = "p50") -> float | None:
        """Latency statistic (``p50``, ``p90``, ``p95``, ``p99``, ``mean``) in ms of ``model``
        on ``target`` at a fixed shape; ``seq_len=None`` takes the longest profiled one."""
        rows = [p for p in self.profiles if p.get("model") == model and p.get("target") == target
                and p.get("batch") == batch and p.get("shape_kind", "fixed") == "fixed"
                and (seq_len is None or p.get("seq_len") == seq_len)]
        if not rows:
            return None
        return max(rows, key=lambda p: p.get("seq_len") or 0).get(f"{stat}_ms")

    def check_gates(self, gates: dict[str, float] | None = None, **thresholds: float) -> list[dict]:
        """Check gates on this report's recorded numbers (nothing is re-run or written):
        ``report.check_gates(min_retention=0.98, max_size_mb=50)``."""
        return check_gates(self._data, {**(gates or {}), **thresholds})

    def raise_for_gates(self) -> None:
        """Raise :class:`compressor.GatesFailed` when a gate of this report failed."""
        if not self.passed:
            raise GatesFailed(self.gates)

    def validate(self) -> None:
        """Check the report against its JSON Schema (needs ``jsonschema``)."""
        validate_report(self._data)


def report_schema() -> dict:
    """The JSON Schema of ``report.json`` (shipped as ``compressor/schema/report.schema.json``)."""
    text = resources.files("compressor").joinpath("schema").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def validate_report(report: dict | Report) -> None:
    """Validate a report dict against :func:`report_schema`; ArtifactError naming the first
    problem and where it is. Needs ``jsonschema`` (``pip install 'compressor[test]'``)."""
    try:
        import jsonschema
    except ImportError:
        raise ConfigError("validating a report needs jsonschema: pip install jsonschema") from None
    data = report.to_dict() if isinstance(report, Report) else report
    schema = report_schema()
    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(map(str, errors[0].absolute_path)) or "(top level)"
        raise ArtifactError(f"report does not match schema version {schema.get('x-schema-version')}: "
                            f"at {where}: {errors[0].message}")


def profile(onnx_path: str | Path, target: str = "cpu", *, baseline: str | Path | None = None,
            batch_sizes: Iterable[int] = (1, 8), seq_lens: Iterable[int] = (128,), runs: int = 30,
            warmup: int = 5, min_seconds: float = MIN_SECONDS, **target_options: Any) -> list:
    """Profile an ONNX model (file or folder holding ``model.onnx``) on ``target``, side by side
    with ``baseline`` when given. Returns :class:`targets.base.Profile` objects, labelled
    ``model`` and ``baseline``; ``target_options`` go to the target (``threads``,
    ``allow_fallback``, ...)."""
    from compressor.onnx_utils import check_bert_io, load_checked
    from compressor.registry import get_target
    cls = get_target(target)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in target_options:
        if key not in known:
            raise ConfigError(f"unknown option '{key}' for target '{target}': allowed "
                              f"{', '.join(sorted(known))}")
    tgt = cls(**target_options)
    models = {}
    for label, path in (("baseline", baseline), ("model", onnx_path)):
        if path:
            proto = load_checked(path)
            check_bert_io(proto)
            p = Path(path)
            models[label] = p / "model.onnx" if p.is_dir() else p
    return tgt.profile(models, batch_sizes=tuple(batch_sizes), seq_lens=tuple(seq_lens), runs=runs,
                       warmup=warmup, min_seconds=min_seconds)


__all__ = ["compress", "Report", "profile", "pipeline_spec", "report_schema", "validate_report",
           "GATES", "GatesFailed"]
