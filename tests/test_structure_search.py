"""The structure search: optimal against brute force on small cases, never over budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from compressor.errors import ConfigError
from passes.fisher.cost import CostModel, ModelShape, flop_cost_model
from passes.fisher.search import kwon_flops_search, search_structure


def table(att, ffn, fixed=0.0):
    """A cost model with ``att[h]`` per head count and ``ffn[n]`` per width (every width on the grid)."""
    L = 2
    shape = ModelShape(hidden=8, heads=len(att) - 1, ffn=len(ffn) - 1, layers=L, vocab=10)
    return CostModel(shape, "ms", fixed, list(map(float, att)), list(range(len(ffn))), list(map(float, ffn)))


def brute_force(head_imp, ffn_imp, cost, budget):
    """Best total kept importance over every subset of heads and neurons of every layer."""
    L, H = head_imp.shape
    F = ffn_imp.shape[1]
    per_layer = []
    for layer in range(L):
        opts = []
        for hs in itertools.product((0, 1), repeat=H):
            for fs in itertools.product((0, 1), repeat=F):
                c = cost.attention_cost(sum(hs), layer) + cost.ffn_cost(sum(fs), layer)
                v = float(np.dot(hs, head_imp[layer]) + np.dot(fs, ffn_imp[layer]))
                opts.append((c, v))
        per_layer.append(opts)
    best = -1.0
    for combo in itertools.product(*per_layer):
        c = cost.fixed + sum(o[0] for o in combo)
        if c <= budget + 1e-12:
            best = max(best, sum(o[1] for o in combo))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_search_equals_brute_force_on_integer_costs(seed):
    rng = np.random.default_rng(seed)
    head_imp, ffn_imp = rng.random((2, 2)), rng.random((2, 4))
    att = np.concatenate([[1], 1 + np.cumsum(rng.integers(1, 6, 2))])  # 0 heads: LayerNorm only
    ffn = np.concatenate([[1], 1 + np.cumsum(rng.integers(0, 4, 4))])
    if seed % 2:  # a non-monotone measured table must work too
        ffn[2], ffn[3] = ffn[3], ffn[2]
    cost = table(att, ffn, fixed=3.0)
    dense = cost.dense
    for frac in (0.35, 0.5, 0.7, 0.9):
        budget = float(np.floor(frac * dense))
        if budget < cost.fixed + 2 * (att.min() + ffn.min()):
            continue
        capacity = int(budget - cost.fixed - 2 * (att.min() + ffn.min()))
        res = search_structure(head_imp, ffn_imp, cost, budget, ffn_step=1, resolution=max(1, capacity))
        assert res.value == pytest.approx(brute_force(head_imp, ffn_imp, cost, budget), abs=1e-12)
        assert res.cost <= budget
        assert cost.predict(res.structure()) == pytest.approx(res.cost)
        kept = head_imp[res.heads].sum() + ffn_imp[res.ffn].sum()
        assert kept == pytest.approx(res.value)


@pytest.mark.parametrize("seed", range(4))
def test_search_on_float_costs_is_optimal_and_within_budget(seed):
    rng = np.random.default_rng(100 + seed)
    head_imp, ffn_imp = rng.random((2, 2)), rng.random((2, 4))
    cost = table(np.concatenate([[0.1], 0.1 + np.cumsum(rng.random(2))]),
                 np.concatenate([[0.1], 0.1 + np.cumsum(rng.random(4))]), fixed=0.5)
    for frac in (0.3, 0.55, 0.8):
        budget = frac * cost.dense
        res = search_structure(head_imp, ffn_imp, cost, budget, ffn_step=1)
        assert res.cost <= budget
        assert res.value >= brute_force(head_imp, ffn_imp, cost, budget) - 1e-9


def test_search_drops_whole_sublayers_unevenly():
    head_imp = np.array([[5.0, 5.0], [0.01, 0.01]])
    ffn_imp = np.array([[0.01] * 4, [3.0] * 4])
    cost = table([0, 2, 4], [0, 1, 2, 3, 4])
    res = search_structure(head_imp, ffn_imp, cost, budget=8.0, ffn_step=1, resolution=8)
    assert res.structure() == [{"heads": 2, "ffn": 0}, {"heads": 0, "ffn": 4}]


def test_search_uses_the_ffn_grid_and_rejects_an_impossible_budget():
    rng = np.random.default_rng(0)
    cost = flop_cost_model({"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256,
                            "num_hidden_layers": 3, "vocab_size": 100}, seq=32)
    res = search_structure(rng.random((3, 4)), rng.random((3, 256)), cost, 0.5 * cost.dense, ffn_step=32)
    assert all(s["ffn"] % 32 == 0 for s in res.structure())
    assert res.cost <= 0.5 * cost.dense
    with pytest.raises(ConfigError, match="below the cost"):
        search_structure(rng.random((2, 2)), rng.random((2, 4)), table([1, 2, 3], [1, 2, 3, 4, 5], fixed=1.0),
                         budget=2.0)


@pytest.mark.parametrize("seed", range(4))
def test_kwon_sweep_equals_brute_force_with_linear_costs(seed):
    rng = np.random.default_rng(seed)
    head_imp, ffn_imp = rng.random((2, 2)), rng.random((2, 4))
    head_cost, neuron_cost = 3.0, 1.0
    cost = table([0, 3, 6], [0, 1, 2, 3, 4])
    for budget in (2.0, 5.0, 9.0, 13.0, 20.0):
        res = kwon_flops_search(head_imp, ffn_imp, head_cost, neuron_cost, budget)
        assert res.cost <= budget
        assert res.value == pytest.approx(brute_force(head_imp, ffn_imp, cost, budget))


@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.5, 0.6])
def test_kwon_sweep_meets_the_mac_budget_and_matches_the_dp(fraction):
    rng = np.random.default_rng(1)
    cost = flop_cost_model({"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
                            "num_hidden_layers": 12, "vocab_size": 100}, seq=39)
    head_imp, ffn_imp = rng.random((12, 12)) ** 3, rng.random((12, 3072)) ** 3
    budget = fraction * cost.dense
    res = kwon_flops_search(head_imp, ffn_imp, cost.info["head_macs"], cost.info["neuron_macs"], budget)
    assert cost.predict(res.structure()) <= budget  # C = 0.2 < the heads' ~34%: the authors' code overshoots
    dp = search_structure(head_imp, ffn_imp, cost, budget, ffn_step=1)
    assert dp.cost <= budget
    assert dp.value == pytest.approx(res.value, rel=2e-3)  # both exact up to the DP's buckets


def test_calibrate_meets_the_measured_speedup_with_the_most_importance():
    """A target that runs a structure faster than the additive model says once it is small enough
    (like weights that start to fit a cache): the first guess overshoots; calibration relaxes the
    budget and returns the most important structure whose measured speedup reaches the ask."""
    from passes.fisher.search import calibrate
    rng = np.random.default_rng(3)
    cost = flop_cost_model({"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256,
                            "num_hidden_layers": 3, "vocab_size": 100}, seq=32)
    head_imp, ffn_imp = rng.random((3, 4)), rng.random((3, 256))

    def measure(structure):
        frac = cost.predict(structure) / cost.dense
        return 1 / (frac * (0.6 if frac < 0.7 else 1.0))
    search = lambda b: search_structure(head_imp, ffn_imp, cost, b, ffn_step=8)  # noqa: E731
    floor = cost.predict([{"heads": 0, "ffn": 0}] * 3)
    res, trials = calibrate(search, measure, 2.0, cost.dense / 2.0, floor, cost.dense, checks=6)
    assert trials[0]["measured_speedup"] > 3.0  # the additive guess prunes too much
    assert measure(res.structure()) >= 2.0
    passing = [t for t in trials if t["measured_speedup"] >= 2.0]
    assert res.structure() in [t["structure"] for t in passing]
    assert len(trials) > 1 and cost.predict(res.structure()) > cost.dense / 2.0  # kept more than the first guess

    def too_slow(structure):  # a fixed cost caps the speedup at 6
        return 1 / (1 / 6 + cost.predict(structure) / cost.dense)
    res, trials = calibrate(search, too_slow, 8.0, cost.dense / 8.0, floor, cost.dense, checks=3)
    assert len(trials) == 2 and all(t["measured_speedup"] < 8.0 for t in trials)  # the guess, then the floor
    assert res.structure() == [{"heads": 0, "ffn": 0}] * 3  # the fastest measured


def test_calibrate_does_not_return_the_empty_structure_for_a_modest_ask(caplog):
    """Timings under load that fall as the budget shrinks (measured: ×1.62, ×40 for the empty
    model, ×1.78, ×1.40 for a ×2 ask) left only the empty structure passing, and it was returned.
    Now the search bisects between it and the tightest miss; failing that it keeps the fastest other
    structure measured, with a warning."""
    from passes.fisher.search import calibrate
    rng = np.random.default_rng(5)
    cost = flop_cost_model({"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256,
                            "num_hidden_layers": 3, "vocab_size": 100}, seq=32)
    head_imp, ffn_imp = rng.random((3, 4)), rng.random((3, 256))
    search = lambda b: search_structure(head_imp, ffn_imp, cost, b, ffn_step=8)  # noqa: E731
    empty = [{"heads": 0, "ffn": 0}] * 3
    floor = cost.predict(empty)

    def capped(structure):  # every non-empty structure measures below the ask
        return 40.0 if structure == empty else min(cost.dense / cost.predict(structure), 1.9)
    with caplog.at_level("WARNING"):
        res, trials = calibrate(search, capped, 2.0, cost.dense / 2.0, floor, cost.dense, checks=4)
    assert res.structure() != empty and capped(res.structure()) == max(
        t["measured_speedup"] for t in trials if t["structure"] != empty)
    assert len(trials) > 4 and "only the empty structure" in caplog.text

    calls = []

    def noisy(structure):  # the checks' three non-empty timings read below the ask (a loaded machine), then true
        if structure == empty:
            return 40.0
        calls.append(structure)
        true = cost.dense / cost.predict(structure)
        return min(true * 0.3, 1.9) if len(calls) <= 3 else true
    res, trials = calibrate(search, noisy, 2.0, cost.dense / 2.0, floor, cost.dense, checks=4)
    assert len(trials) > 4  # the bisection after the checks found a passing structure
    assert res.structure() != empty and 2.0 <= cost.dense / cost.predict(res.structure()) < 20.0

    # asking for about what the empty structure gives still returns it
    res, _ = calibrate(search, capped, 39.5, cost.dense / 39.5, floor, cost.dense, checks=4)
    assert res.structure() == empty
