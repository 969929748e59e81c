"""``fisher{speedup=X,hidden_widths=auto}``: the structure search chooses the hidden width too.

Narrowing the hidden stream after the search (``hidden-prune``) trades against the heads and
neurons the search keeps: at fewer hidden units every unit costs less, so the same speedup keeps
more of them. Which width serves a task best is not known in advance (MiniLM-L6, rotten-tomatoes,
x2, one seed: widths 384/320/256 gave 82.8/82.1/81.1 dev accuracy after recovery), so it is
decided on dev, per run. For each width:

1. the search runs at that width (its own latency table and measured checks, timed narrowed
   against the full-width dense model: ``fisher{hidden=N}``), on the importances of one Fisher pass;
2. steps 3-5 of :mod:`passes.fisher.prune` (rearrangement, mask tuning, strip);
3. the hidden units are removed as ``hidden-prune`` removes them (:func:`passes.hidden_prune.narrowed`,
   its default samples and batch size) and the result is scored on the dev split with the task
   metric (never the eval split).

The best dev score wins; a tie goes to the narrower width. The pass hands on the winner's structure
at full width with the width in its info (``searched_hidden``, saved with the step, so ``--resume``
keeps it) for ``hidden-prune{searched=true}``, which then removes the same units.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from compressor.errors import ConfigError
from compressor.pass_base import PassResult
from passes.fisher import steps

log = logging.getLogger(__name__)

AUTO = (1.0, 5 / 6, 2 / 3)  # hidden_widths=auto: these fractions of the hidden size


def check_widths(opts) -> None:
    """ConfigError (one line, naming the value) unless ``opts.hidden_widths`` is ``auto`` or widths
    joined by '/', with ``speedup`` and without ``hidden`` or ``search_only``."""
    text = opts.hidden_widths
    if text != "auto" and not all(p.strip().isdigit() and int(p) > 0 for p in text.split("/")):
        raise ConfigError(f"fisher.hidden_widths={text!r} is not allowed: auto, or hidden widths joined by '/' "
                          "(e.g. 384/320/256)")
    if not opts.speedup:
        raise ConfigError(f"fisher.hidden_widths={text} needs speedup=X: the width is traded against the "
                          "structure on the latency table")
    if opts.hidden or opts.search_only:
        raise ConfigError(f"fisher.hidden_widths={text} chooses the width itself: drop "
                          + (f"hidden={opts.hidden}" if opts.hidden else "search_only"))


def screen_widths(hidden: int, text: str) -> list[int]:
    """The widths to search, widest first, rounded as ``hidden-prune`` rounds them (multiples of
    16, >= 64; ConfigError out of range): ``auto`` is the full width, 5/6 and 2/3 of it (those >= 64)."""
    from passes.hidden_prune import LOWEST, target_width
    if text == "auto":
        asked = [round(hidden * f) for f in AUTO if hidden * f >= LOWEST] or [hidden]
    else:
        asked = [int(p) for p in text.split("/")]
    return sorted({target_width(hidden, a) for a in asked}, reverse=True)


def choose_width(opts, artifact, ctx, task) -> PassResult:
    """A search per width of ``opts.hidden_widths``, the best retraining-free result on dev kept
    (see the module doc); its metrics add ``hidden_chosen`` and ``hidden_search`` (a row per width:
    predicted and measured speedup, dev accuracy)."""
    from compressor.embedder import is_embedder
    from compressor.evaluation import evaluate
    from passes.families import family_of
    from passes.hidden_prune import HiddenPrune, narrowed
    if is_embedder(artifact.model):
        raise ConfigError(f"fisher.hidden_widths={opts.hidden_widths} narrows an embedding model's vectors (their "
                          "size is the hidden size): they would no longer compare with the teacher's; drop it")
    dev = getattr(task, "dev", None) or []
    if not dev:
        raise ConfigError(f"fisher.hidden_widths={opts.hidden_widths} chooses the width on the dev split: "
                          "the task has none")
    t0 = time.perf_counter()
    hidden = family_of(artifact.model).hidden_size()
    widths = screen_widths(hidden, opts.hidden_widths)
    after = HiddenPrune(searched=True)  # its samples and batch size: what hidden-prune{searched=true} runs
    w = steps.sample(opts, artifact, ctx, task)
    grads, importance = steps.mask_importance(w)
    rows, best = [], None
    for width in widths:
        each = dataclasses.replace(opts, hidden=width, hidden_widths="")
        work = steps.fresh(w, artifact.model) if rows else w
        found = steps.search(each, work, importance, ctx)
        out, metrics = each.prune(artifact, ctx, work, found, grads, importance, save=False)
        model = out.model if width == hidden else narrowed(
            out.model, w.tok, task.train, ctx.seed, width, after.samples, opts.max_length, after.batch_size)[0]
        score = evaluate(model, w.tok, dev, opts.max_length, threshold="dev")
        rows.append({"width": width, "predicted_speedup": metrics["predicted_speedup"],
                     "measured_speedup": metrics.get("measured_check_speedup"), "dev_accuracy": round(score, 6)})
        log.info("fisher: hidden %d: predicted speedup %.2f, dev %.4f", width, metrics["predicted_speedup"], score)
        if best is None or score >= best[0]:  # widest first: a tie goes to the narrower
            best = (score, width, out, model, found, metrics)
    score, width, out, model, found, metrics = best
    out.info.update(searched_hidden=width, pruning={**out.info["pruning"], "spec": opts.to_spec()})
    out.save(ctx.out_dir())
    opts._evaluate(task, model, w.tok, found, metrics)  # the result as chosen: structure and width
    metrics.update(hidden_chosen=width, hidden_search=rows, prune_seconds=round(time.perf_counter() - t0, 2))
    log.info("fisher: hidden width %d chosen of %s (dev %.4f)", width, widths, score)
    return PassResult(out, True, metrics)
