"""Pipelines: parse a text spec, check pass order before anything runs, run each step into
``workdir/NN-name/`` and record its time and metrics."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from compressor import ranks, resume
from compressor.errors import CompressorError, ConfigError, OutputError, StepFailed
from compressor.pass_base import Pass, StepRecord, coerce_option
from compressor.registry import get_pass

log = logging.getLogger(__name__)

_ITEM = re.compile(r"\s*([A-Za-z][\w-]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def parse_spec(spec: str) -> list[Pass]:
    """Parse ``"magnitude{sparsity=0.9,schedule=cubic},export,sparse-init"`` into pass objects.

    Unknown passes and options are rejected by name; option values are converted to the
    option's type and validated by the pass itself.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty pipeline spec {spec!r}: expected e.g. 'magnitude{{sparsity=0.9}},export'")
    passes, pos, text = [], 0, spec.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise ConfigError(f"cannot parse pipeline spec {spec!r} at position {pos}: expected "
                              "name or name{key=value,...} separated by commas")
        name, body = m.group(1), m.group(2)
        cls = get_pass(name)
        kwargs = {}
        for part in (body or "").split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ConfigError(f"option {part.strip()!r} of pass '{name}' must be key=value")
            key, raw = (s.strip() for s in part.split("=", 1))
            if key in kwargs:
                raise ConfigError(f"option '{key}' given twice for pass '{name}'")
            kwargs[key] = coerce_option(cls, key, raw)
        passes.append(cls(**kwargs))
        pos = m.end()
        if text[m.end() - 1:m.end()] == "," and pos >= len(text):
            raise ConfigError(f"pipeline spec {spec!r} ends with a comma")
    return passes


@dataclass
class PipelineResult:
    artifact: object
    records: list[StepRecord]


class Pipeline:
    """An ordered list of passes. ``check`` verifies that each pass consumes what the previous
    one produces; ``run`` executes them with a folder and a record per step."""

    def __init__(self, passes: list[Pass] | str):
        self.passes = parse_spec(passes) if isinstance(passes, str) else list(passes)
        for p in self.passes:
            if not isinstance(p, Pass):
                raise ConfigError(f"pipeline item {p!r} is not a Pass")

    @property
    def spec(self) -> str:
        return ",".join(p.to_spec() for p in self.passes)

    def check(self, input_kind: str = "torch") -> None:
        """Reject a wrong order (e.g. a torch pass after export) before anything runs."""
        kind = input_kind
        for i, p in enumerate(self.passes):
            if p.consumes != kind:
                where = f"after '{self.passes[i - 1].name}'" if i else "at the start"
                raise ConfigError(f"pass '{p.name}' cannot run {where}: it consumes a {p.consumes} "
                                  f"model but gets a {kind} model (order: {self.spec})")
            kind = p.produces

    def run(self, artifact, ctx, first_index: int = 1) -> PipelineResult:
        """Run the passes; each finished step leaves a completion marker (``step.json``) and,
        with ``ctx.resume``, leading steps that finished in an earlier run are skipped
        (:mod:`compressor.resume`)."""
        self.check(artifact.kind)
        records: list[StepRecord] = []
        for i, p in enumerate(self.passes, start=first_index):
            ctx.step_dir = ctx.workdir / f"{i:02d}-{p.name}"
            done = _skip(ctx, p)
            if done is not None:
                record, artifact, teacher = done
                records.append(record)
                if teacher is not None:
                    ctx.teacher = teacher
                continue
            resume.begin_step(ctx)  # drop a stale marker (and, unless resuming, old checkpoints)
            log.info("step %d/%d: %s", i - first_index + 1, len(self.passes), p.to_spec())
            start = time.perf_counter()
            try:
                result = p(artifact, ctx)
            except CompressorError:
                raise
            except StepFailed:
                raise
            except OSError as exc:  # disk full / read-only output: the user's to fix, one line
                raise (OutputError.from_os_error(exc) or StepFailed(
                    p.name, [r.name for r in records], f"{type(exc).__name__}: {exc}")) from exc
            except Exception as exc:
                raise StepFailed(p.name, [r.name for r in records], f"{type(exc).__name__}: {exc}") from exc
            seconds = time.perf_counter() - start
            records.append(StepRecord(i, p.name, p.to_spec(), str(ctx.step_dir), round(seconds, 3),
                                      result.modified, dict(result.metrics)))
            resume.finish_step(ctx, records[-1], result.artifact, result.teacher)
            log.info("step %s done in %.1fs: %s", p.name, seconds, result.metrics)
            artifact, teacher = result.artifact, result.teacher
            if _together(p):  # every rank goes on from the leader's saved output
                ranks.barrier()
                if getattr(ctx, "leader_workdir", None) is not None:
                    records[-1], artifact, teacher = _leaders(ctx)
            if teacher is not None:
                ctx.teacher = teacher
        ctx.step_dir = None
        return PipelineResult(artifact, records)


def run_parts(parts, artifact, ctx, first_index: int = 1) -> tuple[list[StepRecord], list]:
    """Run pipelines one after another, each from the artifact the one before produced (the first
    from ``artifact``), their steps numbered on from ``first_index``: ``(every step's record, each
    part's output artifact)``."""
    records, artifacts = [], []
    for part in parts:
        res = part.run(artifacts[-1] if artifacts else artifact, ctx, first_index=first_index + len(records))
        records += res.records
        artifacts.append(res.artifact)
    return records, artifacts


def _skip(ctx, p):
    """The finished step to skip (``resume.skip_step``), or None to run it. Under a launcher the
    leader decides for every rank, and a follower takes the leader's output (:mod:`compressor.ranks`)."""
    follower = getattr(ctx, "leader_workdir", None) is not None
    done = resume.skip_step(ctx, p) if getattr(ctx, "resume", False) and not follower else None
    if _together(p) and ranks.agree(done is not None) and follower:
        return _leaders(ctx)
    return done


def _together(p) -> bool:
    """Whether every rank of a launch runs step ``p``: the torch-to-torch passes (followers stop
    before export)."""
    return ranks.launched() and p.consumes == p.produces == "torch"


def _leaders(ctx):
    """The leader's ``(StepRecord, artifact, teacher)`` of the current step."""
    return resume.load_step(ctx.leader_workdir / ctx.step_dir.name, ctx.leader_workdir)
