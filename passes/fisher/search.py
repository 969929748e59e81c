"""Structure search: which heads and FFN neurons each layer keeps under a cost budget.

Given nonnegative importances of heads ``[L, H]`` and neurons ``[L, F]`` (e.g. the diagonal
Fisher of their masks, Kwon et al. 2022, arXiv:2204.09656, section 1.3 of
METHODS-structured.md) and a cost model with ``fixed``, ``attention_cost(h, layer)`` and
``ffn_cost(n, layer)`` (:mod:`passes.fisher.cost`: a latency table or FLOPs), maximise the
total kept importance subject to ``predicted cost <= budget``.

Costs of a layer depend only on how many heads / neurons it keeps, so for a given count keeping
the top-k by importance is optimal; what is left is a multiple-choice knapsack over the 2L
sublayers' counts (uneven per layer, a sublayer may drop to 0). :func:`search_structure` solves
it by dynamic programming on a cost axis cut into ``resolution`` buckets (as SPDY's ``dp``,
METHODS-structured.md section 2.4, which ZipLM builds on) and re-checks the candidates with
their true costs, so the answer never exceeds the budget; with costs on the bucket grid it is
exact. Neuron counts are searched on a grid (multiples of ``ffn_step``, plus F).

:func:`kwon_flops_search` is Kwon et al.'s 1-D sweep for a MAC budget (section 1.4): heads and
neurons ranked globally; exact for linear costs; the head count whose cost alone exceeds the
budget is rejected (the authors' code scores it anyway and can overshoot).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from compressor.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """Kept heads ``[L, H]`` and neurons ``[L, F]`` (bool), their importance and predicted cost."""

    heads: np.ndarray
    ffn: np.ndarray
    value: float
    cost: float

    def structure(self) -> list[dict]:
        """``[{"heads": h, "ffn": f}, ...]`` per layer."""
        return [{"heads": int(h), "ffn": int(f)} for h, f in zip(self.heads.sum(1), self.ffn.sum(1))]


def _top_k_masks(importance: np.ndarray, counts) -> np.ndarray:
    """Per row, True for the ``counts[row]`` most important units (ties: lower index first)."""
    keep = np.zeros(importance.shape, dtype=bool)
    for row, k in enumerate(counts):
        order = np.argsort(-importance[row], kind="stable")
        keep[row, order[:int(k)]] = True
    return keep


def _prefix(importance: np.ndarray) -> np.ndarray:
    """Per row, the sum of the top-k importances for k = 0..n."""
    ranked = -np.sort(-importance, axis=1)
    return np.concatenate([np.zeros((importance.shape[0], 1)), np.cumsum(ranked, axis=1)], axis=1)


def _check(head_imp, ffn_imp):
    head_imp, ffn_imp = np.asarray(head_imp, dtype=float), np.asarray(ffn_imp, dtype=float)
    if head_imp.ndim != 2 or ffn_imp.ndim != 2 or head_imp.shape[0] != ffn_imp.shape[0]:
        raise ConfigError(f"importances must be [L, H] and [L, F]: got {head_imp.shape} and {ffn_imp.shape}")
    if (head_imp < 0).any() or (ffn_imp < 0).any() or not (np.isfinite(head_imp).all() and np.isfinite(ffn_imp).all()):
        raise ConfigError("importances must be finite and nonnegative")
    return head_imp, ffn_imp


def ffn_grid(width: int, step: int) -> list[int]:
    """0, step, 2 step, ... up to ``width``, and ``width``."""
    return sorted(set(range(0, width + 1, max(1, int(step)))) | {width})


def search_structure(head_imp, ffn_imp, cost, budget: float, ffn_step: int = 16,
                     resolution: int = 10000) -> SearchResult:
    """Per-layer counts maximising kept importance with ``cost.fixed + sum of sublayer costs
    <= budget`` (module doc). ConfigError when even the empty structure exceeds the budget."""
    head_imp, ffn_imp = _check(head_imp, ffn_imp)
    L, H = head_imp.shape
    F = ffn_imp.shape[1]
    hp, fp = _prefix(head_imp), _prefix(ffn_imp)
    widths = np.array(ffn_grid(F, ffn_step))
    groups = []  # per sublayer: (kind, layer, counts, values, costs)
    for layer in range(L):
        counts = np.arange(H + 1)
        groups.append(("heads", layer, counts, hp[layer],
                       np.array([cost.attention_cost(int(h), layer) for h in counts], dtype=float)))
        groups.append(("ffn", layer, widths, fp[layer, widths],
                       np.asarray([cost.ffn_cost(int(n), layer) for n in widths], dtype=float)))
    base = [g[4].min() for g in groups]
    capacity = budget - cost.fixed - sum(base)
    if capacity < -1e-12 * max(1.0, abs(budget)):
        raise ConfigError(f"budget {budget:.6g} is below the cost of removing every head and neuron "
                          f"({cost.fixed + sum(base):.6g} {getattr(cost, 'unit', '')}): ask for less")
    capacity = capacity if capacity > 1e-12 * max(1.0, abs(budget)) else 0.0
    unit = capacity / resolution if capacity > 0 else 1.0
    slack = len(groups)  # rounding to the nearest bucket moves a total by at most len(groups) / 2
    size = resolution + slack + 1
    dp = np.full(size, -np.inf)
    dp[0] = 0.0
    choice = np.zeros((len(groups), size), dtype=np.int32)
    for g, (_, _, _, values, costs) in enumerate(groups):
        extra = costs - base[g]
        steps = np.rint(extra / unit) if capacity > 0 else np.where(extra <= 0, 0, size)
        steps = np.minimum(steps, size).astype(np.int64)  # >= size: does not fit
        new = np.full(size, -np.inf)
        for j, (w, v) in enumerate(zip(steps, values)):
            if w >= size:
                continue
            cand = np.full(size, -np.inf)
            cand[w:] = dp[:size - w] + v
            better = cand > new
            new[better], choice[g, better] = cand[better], j
        dp = new
    best = None  # states in decreasing importance; rounding may have let some overshoot
    for tau in np.argsort(-dp, kind="stable"):
        if not np.isfinite(dp[tau]):
            break
        picks, t = [], int(tau)
        for g in range(len(groups) - 1, -1, -1):
            j = int(choice[g, t])
            picks.append(j)
            costs = groups[g][4]
            w = int(min(np.rint((costs[j] - base[g]) / unit), size)) if capacity > 0 else 0
            t -= w
        picks.reverse()
        true = cost.fixed + sum(groups[g][4][j] for g, j in enumerate(picks))
        if true <= budget * (1 + 1e-12) + 1e-12:  # the best DP state whose true cost fits
            best = (float(dp[tau]), picks, float(true))
            break
    if best is None:  # cannot happen: the all-minimum choice is always feasible
        raise ConfigError(f"no structure fits budget {budget:.6g}")
    heads_n = [groups[2 * layer][2][best[1][2 * layer]] for layer in range(L)]
    ffn_n = [groups[2 * layer + 1][2][best[1][2 * layer + 1]] for layer in range(L)]
    return SearchResult(_top_k_masks(head_imp, heads_n), _top_k_masks(ffn_imp, ffn_n), best[0], best[2])


def kwon_flops_search(head_imp, ffn_imp, head_cost: float, neuron_cost: float, budget: float) -> SearchResult:
    """Kwon et al.'s MAC search (section 1.4): for n_h = 0..L*H keep the n_h globally best heads
    and then as many globally best neurons as the remaining budget pays for; return the best.
    Head counts whose cost alone exceeds the budget are skipped (the authors' code does not)."""
    head_imp, ffn_imp = _check(head_imp, ffn_imp)
    h_sorted = np.concatenate([[0.0], np.cumsum(np.sort(head_imp.ravel())[::-1])])
    f_sorted = np.concatenate([[0.0], np.cumsum(np.sort(ffn_imp.ravel())[::-1])])
    best = None
    for n_h in range(head_imp.size + 1):
        left = budget - n_h * head_cost
        if left < 0:
            break
        n_f = min(ffn_imp.size, int(math.floor(left / neuron_cost + 1e-9)))
        score = h_sorted[n_h] + f_sorted[n_f]
        if best is None or score > best[0]:
            best = (score, n_h, n_f)
    if best is None:
        raise ConfigError(f"MAC budget {budget:.6g} is negative")
    _, n_h, n_f = best

    def global_top(imp, n):
        keep = np.zeros(imp.size, dtype=bool)
        keep[np.argsort(-imp.ravel(), kind="stable")[:n]] = True
        return keep.reshape(imp.shape)
    return SearchResult(global_top(head_imp, n_h), global_top(ffn_imp, n_f), float(best[0]),
                        n_h * head_cost + n_f * neuron_cost)


def calibrate(search, measure, speedup: float, budget: float, floor: float, dense: float, checks: int = 4,
              tolerance: float = 0.03):
    """Set the budget by measuring candidates (ours): ``search(budget) -> SearchResult`` picks a
    structure from the cost model, ``measure(structure) -> speedup`` times it against dense on
    the target. An additive table can miss effects of the whole model (on 2 loaded CPU cores at
    batch 1, a model whose weights fit the cache ran 2x faster than its layers timed alone
    predicted; see :mod:`passes.fisher.latency_table`), so the table sets how heads and neurons trade against each other and up to
    ``checks`` measurements set the level. The first candidate is the table's (``budget``); then
    regula falsi on measured time (1 / speedup) against budget, between the tightest candidates
    known to pass and to fail, anchored at ``dense`` (time 1) and ``floor`` (the budget of the
    smallest structure, measured when needed), aiming ``tolerance / 2`` above the asked speedup.
    Returns the most important structure measured at >= ``speedup`` (stopping once one is within
    ``tolerance`` of it), else the fastest one measured, and the list of trials.

    The empty structure (the ``floor``) is an anchor, not an answer, when it overshoots the ask:
    if it is the only one measured fast enough, up to ``checks`` more probes bisect between the
    tightest pass and the tightest miss (stopping within ``tolerance`` of the ask; the most
    important passing structure is returned), and if none of them passes, the fastest other structure measured is
    returned with a warning (the speedup gate then judges the miss). Measured on a 2-core machine
    under 4x load: timings that fell as the budget shrank left only the empty model passing, and
    a ×2 search returned it (a model with no heads or neurons, collapsed)."""
    trials, seen, points = [], {}, [(dense, 1.0, None)]  # (budget, measured time / dense time, result)
    aim, limit = 1 / (speedup * (1 + tolerance / 2)), 1 / speedup

    def probe(b):
        res = search(b)
        key = tuple((s["heads"], s["ffn"]) for s in res.structure())
        if key not in seen:
            seen[key] = measure(res.structure())
            trials.append({"budget": b, "predicted_cost": res.cost, "measured_speedup": seen[key],
                           "structure": res.structure()})
        points.append((b, 1 / seen[key], res))
        return seen[key]

    def on_aim(measured):
        return speedup <= measured <= speedup * (1 + tolerance)

    def passing():
        return [p for p in points if p[2] is not None and p[1] <= limit]

    measured = probe(budget)
    while len(trials) < checks and not on_aim(measured):
        lo = max((p for p in points if p[1] <= limit), key=lambda p: p[0], default=None)
        if lo is None:
            if any(p[0] <= floor for p in points):
                break  # even the smallest structure is too slow
            probe(floor)
            continue
        hi = min((p for p in points if p[1] > limit), key=lambda p: p[0])
        if hi[0] - lo[0] <= 1e-9 * max(1.0, abs(hi[0])):
            break
        nxt = lo[0] + (aim - lo[1]) * (hi[0] - lo[0]) / (hi[1] - lo[1]) if hi[1] != lo[1] else (lo[0] + hi[0]) / 2
        nxt = min(max(nxt, lo[0] + 0.05 * (hi[0] - lo[0])), hi[0] - 0.05 * (hi[0] - lo[0]))  # stay inside
        measured = probe(nxt)
    passed = passing()
    if passed and all(p[0] <= floor for p in passed) and 1 / passed[0][1] > speedup * (1 + tolerance):
        for _ in range(checks):  # only the empty structure passed: bisect between the tightest pass and miss
            lo = max(p[0] for p in passing())
            hi = min(p[0] for p in points if p[1] > limit)
            if hi - lo <= 1e-9 * max(1.0, abs(hi)) or on_aim(probe((lo + hi) / 2)):
                break
        passed = passing()
        others = [p for p in points if p[2] is not None and p[0] > floor]
        if all(p[0] <= floor for p in passed) and others:
            fastest = min(others, key=lambda p: p[1])
            log.warning("structure search: only the empty structure measured at least ×%g (×%.2f); keeping the "
                        "fastest other structure measured, ×%.2f (measured: %s). The timings look unstable: a "
                        "quieter machine, or a lower speedup, may be needed", speedup, 1 / passed[0][1],
                        1 / fastest[1], ", ".join(f"×{t['measured_speedup']:.2f}" for t in trials))
            return fastest[2], trials
    if passed:
        return max(passed, key=lambda p: p[2].value)[2], trials
    return min((p for p in points if p[2] is not None), key=lambda p: p[1])[2], trials
