"""``choose-deploy``: the deployment graph measured per run (onnx fp32 export -> onnx).

Which INT8 graph is fastest depends on the model and the shape (``benchmarks/int8_graph.py``,
MiniLM-L6 on 2 CPU cores): ``ort-fuse`` then ``quantize`` (``QAttention``) was x1.20 faster than
plain dynamic INT8 at b1 on the dense model and x1.11 on a x1.41 stripped one, but 0.91-0.93 at
b32 and slower at both shapes (0.88 / 0.66) on a x2 stripped one; per-channel weights were
0.91-0.96 at b1 at about the same dev accuracy; static QDQ 0.3-0.46x and ~3 dev points lower. So
this pass builds the variants, scores and times them, and deploys the fastest accurate one:

1. each of ``variants`` (joined by ``+``: a spec value cannot hold commas) is built by the
   existing passes into ``<step>/variants/<variant>/``: ``fp32`` (the input as is), ``dynamic``
   (``quantize``, what ``--quantize dynamic`` deploys; the reference), ``per-channel``
   (``quantize{per_channel=true}``), ``fused-dynamic`` (``ort-fuse{strict=false}`` then
   ``quantize``), ``static`` (``quantize{mode=static}``, calibrated on training texts). A
   variant whose build fails is left out with its error; all failing is an error;
2. each is scored on the dev split with the task metric (:func:`compressor.onnx_utils.onnx_accuracy`,
   as ``--max-drop`` does), never on eval (the builds get the task without it);
3. all are timed interleaved by the target's profiler on real dev texts at ``batch``, each with
   its speed ratio over ``dynamic`` and the paired bootstrap 95% interval
   (:func:`compressor.profiling.speed_intervals`);
4. :func:`choose`: among the variants at most ``tolerance`` points below the most accurate one
   and at or above ``floor``, the fastest. Speed is ``typical_ms`` (each text's median latency,
   averaged over the texts: what the ratio and the report's speedups use; the p50 of the mixed
   run times is reported beside it, see :class:`targets.base.Profile`).

The chosen variant's folder is copied into the step's folder, as ``quantize`` leaves its output
(model, tokenizer and config, the ``quantized`` info), so later steps and the report see the
same kind of artifact. ``compress run --quantize auto`` runs it in place of ``quantize``; with
``--max-drop`` each candidate runs it with ``fp32`` added and ``floor`` at the dense dev metric
less the budget (:meth:`ChooseDeploy.with_floor`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import OnnxModel, atomic_dir
from compressor.config import MIN_SECONDS
from compressor.errors import ConfigError, DataError, check_choice, check_range
from compressor.onnx_utils import output_folder
from compressor.pass_base import Pass, PassResult, option

log = logging.getLogger(__name__)

REFERENCE = "dynamic"
VARIANTS = ("fp32", "dynamic", "per-channel", "fused-dynamic", "static")
TARGETS = ("cpu", "cuda")
_EPS = 1e-9  # metric comparisons: equal values stay equal after subtracting a tolerance


def variant_steps(variant: str, max_length: int) -> list[str]:
    """The pass specs that build ``variant`` from the fp32 export (none for ``fp32``)."""
    q = f"max_length={max_length}"
    return {"fp32": [], "dynamic": [f"quantize{{{q}}}"], "per-channel": [f"quantize{{per_channel=true,{q}}}"],
            "fused-dynamic": ["ort-fuse{strict=false}", f"quantize{{{q}}}"],
            "static": [f"quantize{{mode=static,{q}}}"]}[variant]


def choose(rows: dict, tolerance: float, floor: float = 0.0) -> tuple[str, dict, bool]:
    """``rows``: ``{variant: {"dev_metric", "ms"}}``. Returns ``(chosen, {variant: why}, below_floor)``:
    the fastest variant whose dev metric is at most ``tolerance`` points below the best one and at
    least ``floor`` (0: no floor); when every variant is below the floor, the most accurate one,
    with ``below_floor`` True."""
    best = max(r["dev_metric"] for r in rows.values())
    bar = best - tolerance / 100 - _EPS

    def why_not(r):
        if r["dev_metric"] < bar:
            return f"dev {r['dev_metric']:.4f} more than {tolerance:g} point(s) below the best {best:.4f}"
        if floor and r["dev_metric"] < floor - _EPS:
            return f"dev {r['dev_metric']:.4f} below the floor {floor:.4f}"
        return ""
    ok = [v for v, r in rows.items() if not why_not(r)]
    below = not ok
    chosen = (max(rows, key=lambda v: rows[v]["dev_metric"]) if below
              else min(ok, key=lambda v: rows[v]["ms"]))
    why = {}
    for v, r in rows.items():
        if v == chosen:
            why[v] = "chosen: every variant below the floor, the most accurate" if below else "chosen: fastest within"
        else:
            why[v] = why_not(r) or f"slower ({r['ms']:.3g} ms vs {rows[chosen]['ms']:.3g} ms)"
    return chosen, why, below


@dataclass(frozen=True)
class ChooseDeploy(Pass):
    """Build INT8 (and fp32) variants of the export, score them on dev, time them, deploy the
    fastest within ``tolerance``; see the module doc."""

    name: ClassVar[str] = "choose-deploy"
    consumes: ClassVar[str] = "onnx"
    produces: ClassVar[str] = "onnx"
    run_order: ClassVar[int] = 80  # quantize's place; --quantize auto runs this instead
    starts_deployment: ClassVar[bool] = True

    @classmethod
    def run_step(cls, cfg, method) -> str | None:
        """``--quantize auto``: timed on the CPU, or on CUDA when it is the run's first target."""
        if cfg.quantize != "auto":
            return None
        opts = [f"max_length={cfg.max_length}"] + (["target=cuda"] if cfg.targets and cfg.targets[0] == "cuda" else [])
        return f"choose-deploy{{{','.join(opts)}}}"

    variants: str = option("dynamic+per-channel+fused-dynamic", "variants to build and compare, joined by '+': "
                           + ", ".join(VARIANTS))
    batch: int = option(1, "batch size of real dev texts the choice optimizes")
    tolerance: float = option(0.5, "dev metric points a variant may be below the most accurate one and be chosen")
    floor: float = option(0.0, "minimum dev metric (a fraction) of the chosen variant (0 = none)")
    runs: int = option(64, "timed runs per variant, at least (rounded up to a multiple of the texts)")
    min_seconds: float = option(MIN_SECONDS, "more runs for fast variants, until the rounds fill about this long")
    max_length: int = option(128, "truncate dev, calibration and timing texts to this many tokens")
    target: str = option("cpu", "target the variants are timed on", choices=TARGETS)

    def __post_init__(self):
        names = self.variants.split("+")
        if not all(v in VARIANTS for v in names) or len(set(names)) != len(names):
            raise ConfigError(f"choose-deploy.variants={self.variants!r} is not allowed: give distinct "
                              f"variants joined by '+' among {', '.join(VARIANTS)}")
        check_range("choose-deploy.batch", self.batch, 1, 4096)
        check_range("choose-deploy.tolerance", self.tolerance, 0.0, 100.0)
        check_range("choose-deploy.floor", self.floor, 0.0, 1.0)
        check_range("choose-deploy.runs", self.runs, 1, 100_000)
        check_range("choose-deploy.min_seconds", self.min_seconds, 0.0, 3600.0)
        check_range("choose-deploy.max_length", self.max_length, 8, 4096)
        check_choice("choose-deploy.target", self.target, TARGETS)

    def with_floor(self, floor: float) -> "ChooseDeploy":
        """This pass for a ``--max-drop`` candidate: ``fp32`` among the variants (a candidate whose
        INT8 is outside the budget may deploy in fp32) and the chosen one at least ``floor``."""
        names = self.variants.split("+")
        return dataclasses.replace(self, floor=round(min(1.0, max(0.0, floor)), 6),
                                   variants="+".join(names + ["fp32"] * ("fp32" not in names)))

    def run(self, artifact, ctx) -> PassResult:
        data = getattr(ctx, "data", None)
        dev = list(getattr(data, "dev", None) or [])
        if not dev:
            raise DataError("choose-deploy scores the variants on the dev split and this run has none: give a "
                            "task with training data (--dev-size N), or use quantize")
        folder = output_folder(ctx)
        built, errors = self._build(artifact, ctx, dataclasses.replace(data, eval=[]), folder / "variants")
        if not built:
            raise RuntimeError(f"no variant could be built: {errors}")
        rows = self._measure(built, dev, artifact, ctx)
        chosen, why, below = choose(rows, self.tolerance, self.floor)
        for v, r in rows.items():
            r.update(chosen=v == chosen, why=why[v])
            log.info("choose-deploy %s: dev %.4f, %.3f ms (p50 %.3f) at b%d, x%s vs %s, %.1f MB: %s", v,
                     r["dev_metric"], r["ms"], r["p50_ms"], self.batch, _fmt_ratio(r["ratio_vs_dynamic"]),
                     REFERENCE, r["size_mb"], why[v])
        log.info("choose-deploy: deploying %s%s", chosen, " (every variant below the floor)" if below else "")
        source = built[chosen]
        with atomic_dir(folder) as tmp:
            for item in source.folder.iterdir():  # model, data, tokenizer, config; not the variant's step marker
                if item.is_file() and item.name != "step.json":
                    shutil.copy2(item, tmp / item.name)
            if (folder / "variants").is_dir():
                (folder / "variants").rename(tmp / "variants")
        out = OnnxModel(folder, info={**artifact.info, **source.info, "deploy_variant": chosen},
                        filename=source.filename)
        metrics = {"chosen": chosen, "batch": self.batch, "tolerance": self.tolerance, "floor": self.floor,
                   "below_floor": below, "variants": [{"variant": v, **r} for v, r in rows.items()],
                   "failed": errors, "size_bytes_before": artifact.size_bytes(), "size_bytes": out.size_bytes()}
        return PassResult(out, True, metrics)

    def _build(self, artifact, ctx, dev_only, root) -> tuple[dict, dict]:
        """``{variant: OnnxModel}`` built by the existing passes, and ``{variant: error}``."""
        from compressor.pipeline import Pipeline
        built, errors = {}, {}
        for v in self.variants.split("+"):
            steps = variant_steps(v, self.max_length)
            if not steps:
                built[v] = artifact
                continue
            # resume=False: a variant is rebuilt whenever this step runs (its input may have changed)
            sub = dataclasses.replace(ctx, workdir=root / v, step_dir=None, state={}, data=dev_only, resume=False)
            try:
                built[v] = Pipeline(",".join(steps)).run(artifact, sub).artifact
            except Exception as exc:  # a variant ORT cannot build on this graph is a result, not a crash
                errors[v] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
                log.warning("choose-deploy: variant %s failed: %s", v, errors[v])
        return built, errors

    def _measure(self, built: dict, dev, artifact, ctx) -> dict:
        """Per variant: dev metric, latency at ``batch`` on real dev texts, ratio vs dynamic, size."""
        from compressor.onnx_utils import folder_tokenizer, onnx_accuracy
        from compressor.profiling import real_batches, speed_intervals
        from compressor.registry import get_target
        rows = {v: {"dev_metric": onnx_accuracy(m, dev, max_length=self.max_length, threshold="dev")}
                for v, m in built.items()}
        real = real_batches(folder_tokenizer(artifact.folder), dev, (self.batch,), self.max_length, seed=ctx.seed)
        target = get_target(self.target)()
        profiles = speed_intervals([p.to_dict() for p in target.profile(
            {v: m.path for v, m in built.items()}, batch_sizes=(), seq_lens=(), runs=self.runs,
            seed=ctx.seed, real_inputs=real, min_seconds=self.min_seconds)], references=(REFERENCE,), seed=ctx.seed)
        for p in profiles:
            iv = (p.get("speedup_interval") or {}).get(REFERENCE)
            rows[p["model"]].update(
                ms=p["typical_ms"], p50_ms=p["p50_ms"],
                ratio_vs_dynamic=[1.0, 1.0, 1.0] if p["model"] == REFERENCE else
                [iv["ratio"], iv["low"], iv["high"]] if iv else None)
        for v, m in built.items():
            rows[v]["size_mb"] = m.size_bytes() / 1e6
        return rows


def _fmt_ratio(r) -> str:
    return "n/a" if not r else f"{r[0]:.2f} ({r[1]:.2f}..{r[2]:.2f})"
