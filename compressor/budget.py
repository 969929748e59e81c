"""``--max-drop D``: the fastest deployment whose dev accuracy stays within D points of the dense model.

The user says what accuracy they can give up; the run finds the speed. Candidates are the
``--speedup X`` pipeline at each speedup X of a ladder (default :data:`LADDER`, steps of ×√2;
the speedup over the dense model in the deployment's precision on the first target, as
``--speedup`` means it), each run as a sub-run in ``<out>/candidates/x<X>/``:

1. **dense**: the fine-tuned teacher's accuracy on the dev split (PyTorch, fp32): the reference.
2. **screen** (cheap, no training): the first step of each candidate, the retraining-free
   structure search (``fisher``), in increasing X; its dev accuracy as pruned. Screening stops
   at the first candidate that collapses to the majority class on dev: faster ones are not tried.
3. **decide** (recovery for the finalists): the rest of a candidate's pipeline (recovery,
   vocabulary, export, INT8) and its dev accuracy as deployed (the final ONNX model). The
   fastest screened candidate whose *retraining-free* accuracy is already within D is within
   (recovery is checked when it is deployed); above it a bisection over the faster screened
   candidates runs the recovery of the middle one (of two, the faster) and keeps the faster half
   when it is within D, else the slower half. This assumes accuracy falls as X rises (the search
   removes more of the same ranking); it costs about log2(candidates) recoveries instead of one
   per candidate. Asking the faster of two middles first costs one recovery, not two, when the
   fastest screened candidate recovers within D (the demo's case: ×1.41 and ×2 screened, ×2
   within after recovery), and the same two when it does not.
4. The chosen candidate's steps are the run's steps; every candidate tried is listed in the
   report (asked and measured speedup, dev accuracy pruned and deployed, kept or not).

With ``--quantize auto`` each candidate's deployment step is ``choose-deploy`` with ``fp32`` among
its variants and its ``floor`` at the dense dev metric less D (:func:`_floored`): it deploys the
fastest graph within its tolerance that keeps the floor, so a candidate whose INT8 is outside D
but whose fp32 is within can still be deployed, and the row says which variant it deployed. A
candidate's speed then depends on its chosen precision: the ladder's X is asked of the INT8
deployment, and one deployed in fp32 is slower than its X (the bisection is unchanged).

Nothing here reads the eval split: the candidates run on the task without it (``eval=[]``), and
the decision uses dev numbers only. Candidate sub-runs resume like steps (``--resume``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from compressor.errors import CollapseError, CompressorError

log = logging.getLogger(__name__)

LADDER = tuple(round(2 ** (k / 2), 2) for k in range(1, 6))  # 1.41, 2, 2.83, 4, 5.66


class BudgetError(CompressorError):
    """No candidate of the ladder keeps the dev accuracy within ``--max-drop``: the candidates'
    folders stay in ``<out>/candidates/``; exits 3 (the quality asked for was not reached)."""

    exit_code = 3


@dataclass
class Candidate:
    """One speedup of the ladder: its pipeline parts, its state and what was measured."""

    speedup: float
    parts: list                       # [torch part, onnx part, deploy part] (Pipelines)
    folder: Path
    state: dict = field(default_factory=dict)
    records: list = field(default_factory=list)
    screened: object = None           # the artifact after the first step
    artifacts: tuple | None = None    # (torch, final onnx, fp32 onnx) once deployed
    dev_pruned: float | None = None   # retraining-free dev accuracy
    dev_deployed: float | None = None
    measured: float | None = None     # the search's measured speedup (its calibration check)
    predicted: float | None = None
    note: str = ""

    @property
    def deploy_variant(self) -> str | None:
        """The graph ``choose-deploy`` deployed (``--quantize auto``), else None."""
        return next((r.metrics.get("chosen") for r in self.records if r.name == "choose-deploy"), None)

    def row(self, dense_dev: float, max_drop: float, chosen: bool) -> dict:
        def drop(x):
            return None if x is None else round((dense_dev - x) * 100, 3)
        return {"speedup_asked": self.speedup, "speedup_predicted": self.predicted,
                "speedup_measured": self.measured, "dev_accuracy_pruned": self.dev_pruned,
                "dev_drop_pruned": drop(self.dev_pruned), "dev_accuracy_deployed": self.dev_deployed,
                "dev_drop_deployed": drop(self.dev_deployed),
                "within": None if self.dev_deployed is None else within(dense_dev, self.dev_deployed, max_drop),
                "deploy_variant": self.deploy_variant, "chosen": chosen, "folder": str(self.folder),
                "note": self.note}


def within(dense: float, acc: float, max_drop: float) -> bool:
    """Whether accuracy ``acc`` is at most ``max_drop`` points below ``dense`` (both fractions)."""
    return (dense - acc) * 100 <= max_drop


def bisect(n: int, start: int, within: Callable[[int], bool]) -> tuple[int, list[int]]:
    """The largest index ``i`` in ``[start, n)`` with ``within(i)``, given that ``start`` is within
    (``start = -1``: none known) and assuming ``within`` is true up to some index and false after.
    Of two middles it asks the upper one (the faster candidate). Returns ``(index or -1, the
    indices asked in order)``."""
    lo, hi, asked = start, n, []
    while hi - lo > 1:
        mid = (lo + hi + 1) // 2
        asked.append(mid)
        if within(mid):
            lo = mid
        else:
            hi = mid
    return lo, asked


def search(cfg, ctx, teacher, parts_for: Callable[[float], list], first_index: int,
           ladder: tuple = LADDER, runner=None) -> tuple[list, tuple, dict]:
    """Run the search; returns ``(the chosen candidate's step records, its (torch, final onnx,
    fp32 onnx) artifacts, the search summary for the report)``. ``parts_for(X)`` gives the three
    pipeline parts of ``--speedup X``; ``runner`` (tests) replaces the class that runs candidates.
    BudgetError when no candidate is within ``cfg.max_drop``."""
    from compressor.evaluation import evaluate
    from compressor.metrics import is_collapse, majority_accuracy
    data = ctx.data
    if not data.dev:
        raise CompressorError("--max-drop decides on the dev split, but this run has none: "
                              "give --dev-size (e.g. 0.1) instead of 0")
    D, dev_only = float(cfg.max_drop), dataclasses.replace(data, eval=[])
    dense_dev = evaluate(teacher.model, teacher.tokenizer, data.dev, cfg.max_length, threshold="dev")  # multi-label
    majority = majority_accuracy(data.dev)
    log.info("--max-drop %g: dense dev accuracy %.2f%%; screening speedups %s", D, 100 * dense_dev,
             ", ".join(f"{x:g}" for x in ladder))
    cands = [Candidate(x, _floored(parts_for(x), dense_dev - D / 100), Path(ctx.workdir) / "candidates" / f"x{x:g}")
             for x in ladder]
    runner = (runner or _Runner)(ctx, dev_only, teacher, first_index)
    screened = []
    for c in cands:
        runner.screen(c)
        screened.append(c)
        if c.dev_pruned is not None and is_collapse(c.dev_pruned, majority):
            c.note = "retraining-free collapse: faster candidates not screened"
            break
    start = max((i for i, c in enumerate(screened) if c.dev_pruned is not None
                 and within(dense_dev, c.dev_pruned, D)), default=-1)
    best, _ = bisect(len(screened), start, lambda i: runner.deploy(screened[i], dense_dev, D))
    summary = {"max_drop": D, "dense_dev_accuracy": dense_dev, "dev_size": len(data.dev),
               "majority_dev_accuracy": majority, "ladder": list(ladder)}
    if best < 0:
        summary["candidates"] = [c.row(dense_dev, D, False) for c in screened]
        ctx.state["max_drop_search"] = summary
        tried = ", ".join(f"×{c.speedup:g}: {_fmt_drop(dense_dev, c.dev_deployed or c.dev_pruned)}"
                          for c in screened if (c.dev_deployed or c.dev_pruned) is not None)
        raise BudgetError(f"--max-drop {D:g}: no candidate keeps the dev accuracy within {D:g} point(s) of "
                          f"dense ({100 * dense_dev:.2f}%) ({tried}); ask for a larger --max-drop, or "
                          f"--speedup below {screened[0].speedup:g}")
    chosen = screened[best]
    if chosen.artifacts is None:  # within before recovery: deploy it now
        runner.deploy(chosen, dense_dev, D)
    summary["candidates"] = [c.row(dense_dev, D, c is chosen) for c in screened]
    summary["chosen_speedup"] = chosen.speedup
    ctx.state["max_drop_search"] = summary
    log.info("--max-drop %g: chose ×%g (dev %s)", D, chosen.speedup, _fmt_drop(dense_dev, chosen.dev_deployed))
    return chosen.records, chosen.artifacts, summary


def _floored(parts: list, floor: float) -> list:
    """A candidate's parts with its deployment step's floor at ``floor`` and fp32 among its variants,
    where that step offers it (``choose-deploy``'s ``with_floor``, ``--quantize auto``)."""
    if len(parts) < 3:
        return parts
    from compressor.pipeline import Pipeline
    deploy = [p.with_floor(floor) if hasattr(p, "with_floor") else p for p in parts[2].passes]
    return [parts[0], parts[1], Pipeline(deploy)]


def _fmt_drop(dense: float, acc: float | None) -> str:
    return "n/a" if acc is None else f"{100 * acc:.2f}% ({100 * (acc - dense):+.2f} points)"


class _Runner:
    """Runs candidates' steps in their own folders with their own ``ctx.state``, on the task
    without its eval split; restores the run's context afterwards."""

    def __init__(self, ctx, dev_only, teacher, first_index: int):
        self.ctx, self.dev_only, self.teacher, self.first = ctx, dev_only, teacher, first_index
        self.base_state = dict(ctx.state)

    def _in(self, c: Candidate, fn):
        ctx = self.ctx
        saved = (ctx.workdir, ctx.run_dir, ctx.data, ctx.state, ctx.teacher)
        ctx.workdir, ctx.run_dir, ctx.data, ctx.state, ctx.teacher = (
            c.folder, ctx.run_dir or ctx.workdir, self.dev_only, c.state, self.teacher)
        try:
            return fn()
        finally:
            ctx.workdir, ctx.run_dir, ctx.data, ctx.state, ctx.teacher = saved
            ctx.step_dir = None

    def screen(self, c: Candidate) -> None:
        """The candidate's first step (the retraining-free search) and its dev accuracy."""
        from compressor.pipeline import Pipeline
        c.state = dict(self.base_state)
        first = Pipeline(c.parts[0].passes[:1])
        res = self._in(c, lambda: first.run(copy.deepcopy(self.teacher), self.ctx, first_index=self.first))
        c.records, c.screened = list(res.records), res.artifact
        m = res.records[-1].metrics if res.records else {}
        c.dev_pruned = m.get("dev_accuracy")
        c.predicted, c.measured = m.get("predicted_speedup"), m.get("measured_check_speedup")
        log.info("screen ×%g: dev %.2f%% as pruned (measured ×%s)", c.speedup, 100 * (c.dev_pruned or math.nan),
                 "n/a" if c.measured is None else f"{c.measured:.2f}")

    def deploy(self, c: Candidate, dense_dev: float, max_drop: float) -> bool:
        """The rest of the candidate's pipeline; whether its deployment's dev accuracy is within."""
        from compressor.onnx_utils import onnx_accuracy
        from compressor.pipeline import Pipeline, run_parts
        if c.artifacts is None:
            parts = (Pipeline(c.parts[0].passes[1:]), c.parts[1], c.parts[2])
            try:
                steps, a = self._in(c, lambda: run_parts(parts, c.screened, self.ctx, self.first + 1))
            except CollapseError as exc:  # recovery collapsed on dev: outside, whatever D is
                c.note = f"recovery collapsed: {exc}"
                log.info("candidate ×%g: %s", c.speedup, c.note)
                return False
            c.records += steps
            c.artifacts = (a[0], a[2], a[1])
            c.dev_deployed = onnx_accuracy(c.artifacts[1], self.dev_only.dev, max_length=self.ctx.max_length,
                                           threshold="dev")  # a multi-label model's threshold: chosen on dev
        ok = within(dense_dev, c.dev_deployed, max_drop)
        log.info("candidate ×%g deployed: dev %s: %s", c.speedup, _fmt_drop(dense_dev, c.dev_deployed),
                 "within" if ok else "outside")
        return ok


__all__ = ["LADDER", "BudgetError", "Candidate", "within", "bisect", "search"]
