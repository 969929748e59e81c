"""Resuming a killed run (``compress run ... --resume``).

Every finished pipeline step leaves a completion marker ``<step dir>/step.json`` (written
atomically, last): its :class:`~compressor.pass_base.StepRecord`, where its output artifact lives
(the step's saved model folder, or its ONNX folder) with the artifact's ``info``, and the teacher
it returned (``PassResult.teacher``: ``finetune``'s). On resume the pipeline skips the leading
steps whose marker matches the pass spec and reloads their output (a reloaded teacher becomes
``ctx.teacher``); the first step without one runs (a training pass continues from its
checkpoint, see :mod:`passes._checkpoint`) and every step after it runs again. A marker is only
written after the step's outputs are complete, so a step killed while saving is simply run again.

Importing this module imports no torch: model loading happens inside the functions.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

from compressor.artifact import atomic_write_text
from compressor.context import CHECKPOINTS
from compressor.pass_base import StepRecord, same_spec

log = logging.getLogger(__name__)

MARKER = "step.json"
FORMAT = 1
_BROKEN = "_resume_broken"   # ctx.state key: a step ran, so later steps must run too


def begin_step(ctx) -> None:
    """Before a step runs: remove its completion marker from an earlier run (and, unless
    resuming, its old training checkpoints, which belong to another run) and give the step a
    fresh training hook (:class:`compressor.context.StepTraining`)."""
    step = Path(ctx.step_dir)
    (step / MARKER).unlink(missing_ok=True)
    if not getattr(ctx, "resume", False):
        shutil.rmtree(step / CHECKPOINTS, ignore_errors=True)
    ctx.start_step_training()


def skip_step(ctx, p):
    """``(StepRecord, artifact, teacher or None)`` of the current step (``ctx.step_dir``) when it
    finished in an earlier run with the same spec and every step before it was skipped too;
    else None."""
    if ctx.state.get(_BROKEN):
        return None
    marker = Path(ctx.step_dir) / MARKER
    entry = _read(marker)
    rec = (entry or {}).get("record") or {}
    if entry is None or entry.get("format") != FORMAT or not same_spec(rec.get("spec"), p.to_spec()):
        ctx.state[_BROKEN] = True
        return None
    try:
        done = _load_entry(entry, ctx.workdir)
    except Exception as exc:  # a folder deleted or damaged by hand: run the step again
        log.warning("step %s: cannot reload its output (%s): running it again", ctx.step_dir, exc)
        ctx.state[_BROKEN] = True
        return None
    log.info("step %s already done: skipped (resume)", Path(ctx.step_dir).name)
    return done


def load_step(step_dir: Path, workdir: Path):
    """``(StepRecord, artifact, teacher or None)`` that a finished step left in ``step_dir`` (its
    paths relative to ``workdir``): how a follower rank takes the leader's output
    (:mod:`compressor.ranks`). FileNotFoundError when the step left no completion marker."""
    entry = _read(Path(step_dir) / MARKER)
    if entry is None or entry.get("format") != FORMAT:
        raise FileNotFoundError(f"{Path(step_dir) / MARKER}: no completion marker")
    return _load_entry(entry, workdir)


def _load_entry(entry: dict, workdir: Path):
    artifact = _load_artifact(entry["artifact"], workdir)
    teacher = _load_teacher(entry["teacher"], artifact, workdir) if entry.get("teacher") else None
    return StepRecord(**entry["record"]), artifact, teacher


def finish_step(ctx, record, artifact, teacher=None) -> None:
    """Add the training log to ``record.metrics``, write the step's completion marker (with the
    ``teacher`` the step returned, if any) and delete its training checkpoints (the saved outputs
    replace them)."""
    step = Path(ctx.step_dir)
    hook = ctx.training
    training = hook.take_log() if hook is not None else None
    if training:
        record.metrics["training"] = training
    ctx.state[_BROKEN] = True  # this step ran: the ones after it must run again on resume
    described = _describe(artifact, step, ctx.workdir)
    if described is not None:  # an artifact of another kind cannot be reloaded: no marker
        entry = {"format": FORMAT, "record": record.to_dict(), "artifact": described}
        if teacher is not None:
            entry["teacher"] = _describe_teacher(teacher, artifact, step, ctx.workdir)
        atomic_write_text(step / MARKER, json.dumps(entry, indent=1, default=_plain) + "\n")
    shutil.rmtree(step / CHECKPOINTS, ignore_errors=True)


# -- helpers -----------------------------------------------------------------------------------
def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _plain(obj):
    """JSON fallback: numpy/torch scalars as numbers, anything else as its text."""
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def _rel(path: Path, workdir: Path) -> str:
    path, workdir = Path(path).resolve(), Path(workdir).resolve()
    try:
        return str(path.relative_to(workdir))
    except ValueError:
        return str(path)


def _abs(text: str, workdir: Path) -> Path:
    p = Path(text)
    return p if p.is_absolute() else Path(workdir) / p


def _model_folder(artifact, step: Path) -> Path:
    """The folder the step saved its torch model in (``model/`` or the step folder itself, as
    ``strip`` does); the model is saved to ``model/`` when the pass saved nothing."""
    for folder in (step / "model", step):
        if (folder / "config.json").is_file():
            return folder
    return artifact.save(step / "model")


def _describe(artifact, step: Path, workdir: Path) -> dict | None:
    """Where the artifact lives and its info; None for an artifact that is neither a
    :class:`~compressor.artifact.TorchModel` nor an :class:`~compressor.artifact.OnnxModel`."""
    from compressor.artifact import OnnxModel, TorchModel
    if isinstance(artifact, OnnxModel):
        return {"kind": "onnx", "folder": _rel(artifact.folder, workdir), "filename": artifact.filename,
                "info": json.loads(json.dumps(artifact.info, default=_plain))}
    if isinstance(artifact, TorchModel):
        return {"kind": "torch", "folder": _rel(_model_folder(artifact, step), workdir),
                "info": json.loads(json.dumps(artifact.info, default=_plain))}
    return None


def _same_weights(a, b) -> bool:
    import torch
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _describe_teacher(teacher, artifact, step: Path, workdir: Path) -> dict:
    if getattr(artifact, "kind", None) == "torch" and _same_weights(teacher.model, artifact.model):
        return {"same_as": "artifact"}
    return {"folder": _rel(teacher.save(step / "teacher"), workdir)}


def _load_torch(folder: Path, info: dict):
    from compressor.models import MULTI_LABEL_PROBLEM, load_model
    config = json.loads((folder / "config.json").read_text())
    labels = config.get("id2label") or {}
    names = [labels[k] for k in sorted(labels, key=int)] if labels else None
    problem = config.get("problem_type") if config.get("problem_type") in ("regression", MULTI_LABEL_PROBLEM) else None
    tagger = any(str(a).endswith("ForTokenClassification") for a in config.get("architectures") or [])
    reader = any(str(a).endswith("ForQuestionAnswering") for a in config.get("architectures") or [])
    tm = load_model(str(folder), num_labels=len(names) if names else int(config.get("num_labels", 2)),
                    label_names=names, problem_type=problem,
                    token_classification=tagger, question_answering=reader)
    tm.info = dict(info)
    return tm


def _load_artifact(entry: dict, workdir: Path):
    from compressor.artifact import OnnxModel
    folder = _abs(entry["folder"], workdir)
    if entry["kind"] == "onnx":
        out = OnnxModel(folder, dict(entry.get("info") or {}), entry.get("filename", "model.onnx"))
        if not out.path.is_file():
            raise FileNotFoundError(out.path)
        return out
    return _load_torch(folder, entry.get("info") or {})


def _load_teacher(entry: dict, artifact, workdir: Path):
    from compressor.artifact import TorchModel
    if entry.get("same_as") == "artifact":
        return TorchModel(copy.deepcopy(artifact.model).eval(), artifact.tokenizer, dict(artifact.info))
    return _load_torch(_abs(entry["folder"], workdir), {})


__all__ = ["MARKER", "begin_step", "skip_step", "finish_step", "load_step"]
