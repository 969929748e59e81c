"""`compress run` as straight-line named steps: load data and model, train the dense teacher,
compress, export both models, measure accuracy on ONNX, profile both side by side, report."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from compressor import __version__
from compressor.context import RunContext
from compressor.errors import ConfigError, check_choice, check_range
from compressor.pipeline import Pipeline, StepRecord
from compressor.registry import METHODS, PLANNED_METHODS, TARGETS, get_target

log = logging.getLogger(__name__)

GRANULARITIES = ("weight", "structured")
# Methods whose student starts from the pre-trained model (the teacher only distils into it);
# the others prune the fine-tuned teacher itself.
FROM_PRETRAINED = ("cap", "sparsebert")


@dataclass(frozen=True)
class RunConfig:
    """Everything `compress run` needs; the CLI flags map one to one onto these fields."""

    model: str = "minilm"
    method: str = "magnitude"
    sparsity: float = 0.9
    granularity: str = "weight"
    task: str | None = "rotten-tomatoes"
    train_file: str | None = None
    eval_file: str | None = None
    teacher: str | None = None
    pipeline: str | None = None
    targets: tuple[str, ...] = ("cpu",)
    output: str = "out"
    seed: int = 0
    max_train: int = 0
    max_eval: int = 0
    max_length: int = 64
    epochs: int = 0
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    seq_lens: tuple[int, ...] = (32, 128)
    runs: int = 30
    real_shapes: bool = True
    sparse_init: bool = True
    allow_fallback: bool = False
    progress: bool = True
    command: str = ""
    extra: dict = field(default_factory=dict)
    gates: dict = field(default_factory=dict)  # quality gates, see compressor.gates
    mlflow_uri: str | None = None
    mlflow_experiment: str = "compressor"
    resume: bool = False              # continue the run in `output` (compressor.resume)
    checkpoint_every: int = 200       # optimizer steps between training checkpoints (0 = none)
    num_processes: int = 1            # data-parallel training processes
    trust_remote_code: bool = False   # only from --trust-remote-code, never from a recipe
    method_options: dict = field(default_factory=dict)  # extra options of the method's pass

    def validate(self) -> None:
        """Reject bad values before anything is loaded or written."""
        if not isinstance(self.sparsity, (int, float)) or isinstance(self.sparsity, bool):
            raise ConfigError(f"sparsity={self.sparsity!r} is not a number: allowed [0, 1)")
        check_range("sparsity", float(self.sparsity), 0.0, 1.0, hi_open=True)
        if self.method in PLANNED_METHODS and self.method not in METHODS:
            raise ConfigError(f"method '{self.method}' is not available yet: available "
                              f"{', '.join(sorted(METHODS))}")
        check_choice("method", self.method, sorted(METHODS))
        check_choice("granularity", self.granularity, GRANULARITIES)
        for t in self.targets:
            check_choice("target", t, sorted(TARGETS))
        for name, values in (("batch size", self.batch_sizes), ("sequence length", self.seq_lens)):
            for v in values:
                check_range(name, v, 1, 4096)
        check_range("runs", self.runs, 1, 100000)
        check_range("max_length", self.max_length, 8, 512)
        if bool(self.train_file) != bool(self.eval_file):
            raise ConfigError("--train and --eval go together: give both files or neither")
        from compressor.gates import parse_gates
        parse_gates(self.gates)
        if self.mlflow_uri is not None:
            from compressor.tracking import client
            client(self.mlflow_uri)  # MLflow installed and the store answers
        from compressor.run_settings import check_settings
        check_settings(self)  # resume, processes, checkpoints, method options


def method_spec(cfg: RunConfig) -> str:
    """The compression pipeline for ``--method``: prune/distill, strip if structured, export."""
    opts = [f"sparsity={cfg.sparsity}", f"granularity={cfg.granularity}",
            f"max_length={cfg.max_length}"]
    if cfg.epochs:
        opts.append(f"epochs={cfg.epochs}")
    opts += [f"{k}={v}" for k, v in cfg.method_options.items()]  # checked by check_settings
    steps = [f"{METHODS[cfg.method]}{{{','.join(opts)}}}"]
    if cfg.granularity == "structured" and "strip" in _pass_names():
        steps.append("strip")
    steps.append("export")
    if cfg.sparse_init:
        steps.append("sparse-init")
    return ",".join(steps)


def _pass_names():
    from compressor.registry import PASSES
    return PASSES


def run(cfg: RunConfig) -> dict:
    """Run the whole job and return the report dict (also written to ``cfg.output``)."""
    cfg.validate()
    from compressor.data import load_task
    from compressor.models import count_parameters, load_model
    from compressor.onnx_utils import onnx_accuracy
    from compressor.report import build_summary, machine_info, write_report

    torch_spec, onnx_spec = _split(Pipeline(cfg.pipeline or method_spec(cfg)))
    targets = [get_target(t)(allow_fallback=cfg.allow_fallback) for t in cfg.targets]
    for target in targets:
        target.check_available()  # a missing GPU provider fails now, not after training
    out = _prepare_output(cfg.output)
    targets = [target.with_workdir(out) for target in targets]
    from compressor.resume import prepare_workdir
    prepare_workdir(out, cfg)  # --resume: same settings as before; else: old checkpoints go

    # 1. Data and models (all inputs are checked before the output folder is written to).
    data = load_task(cfg.task if not cfg.train_file else None, cfg.train_file, cfg.eval_file,
                     seed=cfg.seed)
    data = data.subsample(cfg.max_train or None, cfg.max_eval or None, seed=cfg.seed)
    _seed_everything(cfg.seed)  # the new classifier head is drawn from the global RNG
    pretrained = load_model(cfg.model, num_labels=data.num_labels, label_names=data.label_names,
                            trust_remote_code=cfg.trust_remote_code)
    from targets.grid import check_seq_lens
    check_seq_lens(cfg.seq_lens, getattr(pretrained.model.config, "max_position_embeddings", None))
    teacher = None
    if cfg.teacher:
        teacher = load_model(cfg.teacher, num_labels=data.num_labels, label_names=data.label_names,
                             trust_remote_code=cfg.trust_remote_code)
    ctx = RunContext(workdir=out, seed=cfg.seed, data=data, teacher=teacher, pretrained=pretrained,
                     max_length=cfg.max_length, progress=cfg.progress, resume=cfg.resume,
                     checkpoint_every=cfg.checkpoint_every, num_processes=cfg.num_processes)
    from compressor.recipe import write_recipe
    write_recipe(out, cfg)  # inputs are checked: the first file of the run
    records: list[StepRecord] = []

    # 2. The dense teacher: fine-tuned here unless given.
    if ctx.teacher is None and cfg.pipeline is None:
        spec = "finetune" + (f"{{epochs={cfg.epochs},max_length={cfg.max_length}}}" if cfg.epochs
                             else f"{{max_length={cfg.max_length}}}")
        res = Pipeline(spec).run(pretrained, ctx)
        records += res.records
    dense_torch = ctx.teacher or pretrained

    # 3. Compress (torch passes), then export and graph passes.
    start = dense_torch if cfg.method not in FROM_PRETRAINED else pretrained
    if cfg.pipeline is not None:
        start = pretrained
    res = torch_spec.run(start, ctx, first_index=len(records) + 1)
    records += res.records
    compressed_torch = res.artifact
    res = onnx_spec.run(compressed_torch, ctx, first_index=len(records) + 1)
    records += res.records
    compressed_onnx = res.artifact
    dense_torch = ctx.teacher or dense_torch

    # 4. The dense baseline, exported and verified the same way.
    from compressor.registry import get_pass
    ctx.step_dir = out / "dense"
    dense_onnx = get_pass("export")()(dense_torch, ctx).artifact
    ctx.step_dir = None

    # 5. Accuracy on the eval split: PyTorch and the final ONNX models.
    from passes._train import evaluate
    models = {}
    for label, tm, om in (("dense", dense_torch, dense_onnx), ("compressed", compressed_torch, compressed_onnx)):
        log.info("evaluating %s on %d eval examples", label, len(data.eval))
        models[label] = {
            "accuracy_torch": evaluate(tm.model, tm.tokenizer, data.eval, cfg.max_length),
            "accuracy_onnx": onnx_accuracy(om, data.eval, max_length=cfg.max_length),
            "onnx_path": str(om.path), "size_bytes": om.size_bytes(),
            "params": count_parameters(tm.model),
        }
    models["compressed"]["size_bytes_before_sparse_init"] = _export_size(records) or models["compressed"]["size_bytes"]
    models["compressed"]["sparsity"] = _last_metric(records, "sparsity")

    # 6. Profile dense and compressed side by side on every target (fixed shapes and real
    #    eval-text batches), and measure the final ONNX models' accuracy on each target.
    from targets.grid import profile_targets
    grid = profile_targets(
        targets, {"dense": dense_onnx.path, "compressed": compressed_onnx.path},
        examples=data.eval, tokenizer=dense_torch.tokenizer, batch_sizes=cfg.batch_sizes,
        seq_lens=cfg.seq_lens, runs=cfg.runs, max_length=cfg.max_length,
        real_shapes=cfg.real_shapes, seed=cfg.seed,
        known_accuracy={k: m["accuracy_onnx"] for k, m in models.items()})
    profiles = grid["profiles"]
    for label, by_target in grid["accuracy"].items():
        models[label]["accuracy_by_target"] = by_target

    # 7. Report.
    report = {
        "schema_version": 1,
        "tool": {"name": "compressor", "version": __version__},
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(),
        "run": {"model": cfg.model, "model_path": pretrained.info.get("path"),
                # --pipeline: no --method ran, its sparsity/granularity options do not apply
                "method": None if cfg.pipeline is not None else cfg.method,
                "sparsity": None if cfg.pipeline is not None else cfg.sparsity,
                "granularity": None if cfg.pipeline is not None else cfg.granularity,
                "task": data.name, "pipeline": ",".join(r.spec for r in records), "seed": cfg.seed,
                "command": cfg.command or "", "targets": list(cfg.targets)},
        "data": {"task": data.name, "train_size": len(data.train), "eval_size": len(data.eval),
                 "num_labels": data.num_labels, "label_names": data.label_names},
        "steps": [r.to_dict() for r in records],
        "models": models,
        "profiles": profiles,
        "profile_grid": grid["grid"],
    }
    report["summary"] = build_summary(models, profiles)
    from compressor.gates import check_gates
    report["gates"] = check_gates(report, cfg.gates)
    write_report(out, report)
    if cfg.mlflow_uri is not None:  # adds report["mlflow"] (the run id) and rewrites the report
        from compressor.tracking import log_run
        log_run(report, out, cfg.mlflow_uri, cfg.mlflow_experiment)
    return report


def _split(pipeline: Pipeline) -> tuple[Pipeline, Pipeline]:
    """Split into the torch part (ending at the last torch->torch pass) and the rest."""
    pipeline.check("torch")
    cut = 0
    for i, p in enumerate(pipeline.passes):
        if p.produces == "torch":
            cut = i + 1
    rest = pipeline.passes[cut:]
    if not rest or rest[-1].produces != "onnx":
        raise ConfigError(f"pipeline '{pipeline.spec}' must end with an ONNX model: add 'export'")
    return Pipeline(pipeline.passes[:cut]), Pipeline(rest)


def _prepare_output(path: str) -> Path:
    """Check the output folder can be written without writing anything into it yet."""
    out = Path(path)
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output '{out}' exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder '{out}' is not writable (checked '{probe}')")
    return out


def _export_size(records: list[StepRecord]):
    for r in records:
        if r.name == "export":
            return r.metrics.get("size_bytes")
    return None


def _last_metric(records: list[StepRecord], key: str):
    for r in reversed(records):
        if key in r.metrics:
            return r.metrics[key]
    return None


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["compress", *sys.argv[1:]])


__all__ = ["RunConfig", "run", "method_spec"]
