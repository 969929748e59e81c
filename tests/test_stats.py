"""Uncertainty where a decision is printed: the intervals of compressor.stats against known cases,
the speed intervals the profiler attaches, the three dominance verdicts of report.versus() on
hand-made numbers, and the --speedup gate's message."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from compressor.stats import paired_bootstrap, ratio_interval, wilson


def binom_quantile(q: float, n: int, p: float) -> int:
    """The smallest k with P(X <= k) >= q for X ~ Binomial(n, p) (exact, by summing the pmf)."""
    total = 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * p ** k * (1 - p) ** (n - k)
        if total >= q:
            return k
    return n


def flips(n: int, a_only: int, b_only: int):
    """0/1 scores of two models on ``n`` rows: both right on half the rest, ``a_only`` rows only
    a right, ``b_only`` only b right."""
    a, b = np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int8)
    a[:a_only] = 1
    b[a_only:a_only + b_only] = 1
    both = a_only + b_only + (n - a_only - b_only) // 2
    a[a_only + b_only:both] = b[a_only + b_only:both] = 1
    return a, b


# ---- Wilson ------------------------------------------------------------------------------------

def test_wilson_known_values_and_edges():
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson(0, 20)
    assert low == 0.0 and 0.1 < high < 0.2  # not empty at k = 0
    assert wilson(20, 20)[1] == pytest.approx(1.0) and wilson(20, 20)[1] <= 1.0
    with pytest.raises(ValueError):
        wilson(3, 0)
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_the_benchmark_uses_the_library_wilson():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_interval.py"
    spec = importlib.util.spec_from_file_location("paired_interval", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.wilson is wilson and mod.paired_bootstrap is paired_bootstrap


# ---- paired bootstrap --------------------------------------------------------------------------

def test_identical_predictions_give_exactly_zero():
    a, _ = flips(2532, 0, 0)
    res = paired_bootstrap(a, a.copy())
    assert res["diff"] == 0.0 and res["low"] == 0.0 and res["high"] == 0.0
    assert res["a_only"] == 0 and res["b_only"] == 0 and res["n"] == 2532


def test_one_way_flips_match_the_exact_binomial_range():
    # 30 rows where only a is right: the bootstrap difference is Binomial(1000, 0.03) / 1000
    n, k = 1000, 30
    a, b = flips(n, k, 0)
    res = paired_bootstrap(a, b, resamples=20_000, seed=1)
    assert res["diff"] == pytest.approx(k / n) and res["a_only"] == k and res["b_only"] == 0
    exact_low, exact_high = binom_quantile(0.025, n, k / n) / n, binom_quantile(0.975, n, k / n) / n
    assert res["low"] == pytest.approx(exact_low, abs=1.5 / n)
    assert res["high"] == pytest.approx(exact_high, abs=1.5 / n)
    assert res["low"] > 0  # 30 flips one way: the interval excludes 0


def test_two_way_flips_match_the_normal_range():
    # 40 rows only a right, 10 only b right out of 1000: mean 0.03, sd sqrt((0.05 - 0.03^2) / n)
    n = 1000
    a, b = flips(n, 40, 10)
    res = paired_bootstrap(a, b, resamples=20_000, seed=2)
    sd = math.sqrt((0.05 - 0.03 ** 2) / n)
    assert res["diff"] == pytest.approx(0.03)
    assert res["low"] == pytest.approx(0.03 - 1.96 * sd, abs=1.5 / n)
    assert res["high"] == pytest.approx(0.03 + 1.96 * sd, abs=1.5 / n)
    assert (res["a_only"], res["b_only"]) == (40, 10)
    # fewer discordant rows, same difference: narrower; a wider level: wider
    narrow = paired_bootstrap(*flips(n, 30, 0), seed=2)
    assert narrow["high"] - narrow["low"] < res["high"] - res["low"]
    wide = paired_bootstrap(a, b, resamples=20_000, seed=2, level=0.99)
    assert wide["low"] < res["low"] and wide["high"] > res["high"]


def test_continuous_scores_match_the_normal_range_and_are_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 1.0, 800), rng.normal(0.4, 1.0, 800)
    res = paired_bootstrap(a, b, resamples=5000, seed=3)
    sd = (a - b).std() / math.sqrt(800)
    assert res["low"] == pytest.approx(res["diff"] - 1.96 * sd, abs=0.3 * sd)
    assert res["high"] == pytest.approx(res["diff"] + 1.96 * sd, abs=0.3 * sd)
    assert "a_only" not in res  # not 0/1 scores: no discordant counts
    assert paired_bootstrap(a, b, resamples=5000, seed=3) == res
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(a, b[:-1])
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([], [])


# ---- speed ratio -------------------------------------------------------------------------------

def test_ratio_interval_known_cases():
    base = np.array([3.0, 5.0, 4.0, 8.0, 2.5, 6.0])
    same = ratio_interval(base, base.copy())
    assert same["ratio"] == same["low"] == same["high"] == 1.0
    twice = ratio_interval(base, base / 2)  # every item exactly twice as fast
    assert twice["ratio"] == twice["low"] == twice["high"] == 2.0
    with pytest.raises(ValueError, match="positive"):
        ratio_interval(base, np.zeros_like(base))
    with pytest.raises(ValueError, match="same length"):
        ratio_interval(base, base[:3])


def test_ratio_interval_is_the_ratio_of_means_with_a_delta_method_width():
    rng = np.random.default_rng(0)
    base = rng.uniform(2.0, 12.0, 64)  # texts of different lengths
    cand = base / rng.normal(1.5, 0.15, 64)  # ~1.5x faster, text by text
    res = ratio_interval(base, cand, seed=4)
    assert res["ratio"] == pytest.approx(base.mean() / cand.mean()) and res["n"] == 64
    # delta method for a ratio of means: var(base - r * cand) / (n * mean(cand)^2)
    r = res["ratio"]
    se = (base - r * cand).std() / (math.sqrt(64) * cand.mean())
    assert res["low"] == pytest.approx(r - 1.96 * se, abs=0.3 * se)
    assert res["high"] == pytest.approx(r + 1.96 * se, abs=0.3 * se)
    assert res["low"] < r < res["high"]
    eight = ratio_interval(base[:8], cand[:8], seed=4)  # 8 items: a wider interval
    assert eight["high"] - eight["low"] > res["high"] - res["low"]
    assert ratio_interval(base, cand, seed=4) == res


# ---- the profiler's speed intervals ------------------------------------------------------------

def test_real_text_counts():
    from compressor.profiling import REAL_TEXTS, real_batch_count
    assert real_batch_count(1) == 64 >= REAL_TEXTS
    assert real_batch_count(2) == 32 and real_batch_count(3) == 24
    assert real_batch_count(8) == real_batch_count(32) == 8
    assert all(real_batch_count(b) % 8 == 0 and real_batch_count(b) * b >= REAL_TEXTS for b in range(1, 70))


def _prof(model, batch, per_input, target="cpu", kind="real"):
    typical = float(np.mean(per_input))
    return {"model": model, "target": target, "batch": batch, "seq_len": 30, "shape_kind": kind,
            "p50_ms": typical, "typical_ms": typical, "fallback": False,
            "providers_used": ["CPUExecutionProvider"],
            "input_p50_ms": list(map(float, per_input)) if kind == "real" else None}


def test_speed_intervals_are_attached_to_real_shapes():
    from compressor.profiling import speed_intervals, speedups
    rng = np.random.default_rng(0)
    texts = rng.uniform(2.0, 8.0, 64)
    batches = rng.uniform(40.0, 80.0, 8)
    rows = [_prof("dense", 1, texts * 1.8), _prof("dense-int8", 1, texts),
            _prof("compressed", 1, texts / rng.normal(1.6, 0.1, 64)),
            _prof("dense-int8", 32, batches), _prof("compressed", 32, batches / 1.5),
            _prof("dense-int8", 1, [4.0], kind="fixed"), _prof("compressed", 1, [2.0], kind="fixed")]
    out = speed_intervals(rows, seed=0)
    comp_b1, comp_b32 = out[2]["speedup_interval"], out[4]["speedup_interval"]
    assert set(comp_b1) == {"dense-int8", "dense"} and set(comp_b32) == {"dense-int8"}
    iv = comp_b1["dense-int8"]
    assert iv["n"] == 64 and iv["items"] == "texts" and iv["low"] < iv["ratio"] < iv["high"]
    assert iv["ratio"] == pytest.approx(speedups(out, baseline="dense-int8")["cpu"]["compressed"]["b1xreal"])
    assert comp_b32["dense-int8"]["items"] == "batches" and comp_b32["dense-int8"]["n"] == 8
    assert comp_b32["dense-int8"]["low"] == pytest.approx(1.5)  # every batch exactly 1.5x
    assert "speedup_interval" not in out[5] and "speedup_interval" not in out[6]  # fixed shapes
    assert set(out[1]["speedup_interval"]) == {"dense"}  # dense-int8 against dense only
    assert "speedup_interval" not in rows[2]  # the input list is left as it was


# ---- three verdicts ----------------------------------------------------------------------------

def _models(points=0.75, low=-0.16, high=1.66, comp_size=20e6):
    return {"dense-int8": {"accuracy_onnx": 0.80, "size_bytes": 30e6},
            "compressed": {"accuracy_onnx": 0.80 + points / 100, "size_bytes": comp_size,
                           "versus_paired": {"dense-int8": {"points": points, "low": low, "high": high,
                                                            "n": 2532}}}}


def _profiles(b1=(1.45, 1.75), b32=(1.5, 1.8)):
    rows = []
    for batch, ref_ms, comp_ms, iv in ((1, 4.0, 2.5, b1), (32, 96.0, 60.0, b32)):
        rows.append(_prof("dense-int8", batch, [ref_ms]))
        comp = _prof("compressed", batch, [comp_ms])
        if iv is not None:
            comp["speedup_interval"] = {"dense-int8": {"ratio": ref_ms / comp_ms, "low": iv[0],
                                                       "high": iv[1], "n": 64 if batch == 1 else 8,
                                                       "items": "texts" if batch == 1 else "batches"}}
        rows.append(comp)
    return rows


def test_dominates_when_every_interval_clears_the_line():
    from compressor.report import versus
    v = versus(_models(), _profiles(), "dense-int8")
    assert v["dominates"] is True and v["verdict_kind"] == "dominates" and v["point_rule"] == []
    assert v["accuracy_interval"] == [-0.16, 1.66]
    assert v["speedup_interval"] == {"cpu": {"b1xreal": [1.45, 1.75], "b32xreal": [1.5, 1.8]}}
    text = v["verdict"]
    assert text.startswith("The compressed model dominates dense-int8")
    assert "+0.75 accuracy points (95% -0.16..+1.66)" in text
    assert "×1.60 (95% ×1.45..×1.75) on cpu b1xreal" in text and "×1.60 (95% ×1.50..×1.80) on cpu b32xreal" in text
    # the accuracy interval's lower end exactly at -1 point still counts as within
    assert versus(_models(low=-1.0), _profiles(), "dense-int8")["verdict_kind"] == "dominates"


@pytest.mark.parametrize("models, profiles, crossing", [
    (_models(points=-0.4, low=-1.4, high=0.5), _profiles(), "accuracy (-1 point)"),
    (_models(), _profiles(b1=(0.97, 1.3)), "speed on cpu b1xreal (×1)"),
])
def test_cannot_tell_when_an_interval_reaches_across(models, profiles, crossing):
    from compressor.report import versus
    v = versus(models, profiles, "dense-int8")
    assert v["verdict_kind"] == "cannot tell" and v["dominates"] is False
    assert v["verdict"].startswith("Cannot tell at this eval size whether the compressed model dominates "
                                   "dense-int8: the 95% interval of " + crossing)


@pytest.mark.parametrize("models, profiles, missed", [
    (_models(points=-1.8, low=-2.7, high=-1.1), _profiles(), "not within 1 point"),
    (_models(), _profiles(b32=(0.8, 1.0)), "not faster at every headline shape"),
    (_models(comp_size=40e6), _profiles(), "not smaller"),
])
def test_does_not_dominate_when_an_interval_excludes_it(models, profiles, missed):
    from compressor.report import versus
    v = versus(models, profiles, "dense-int8")
    assert v["verdict_kind"] == "does not dominate" and v["dominates"] is False
    assert v["verdict"].startswith("The compressed model does not dominate dense-int8: " + missed)


def test_without_intervals_the_point_rule_decides_and_says_so():
    from compressor.report import versus
    models = _models(points=-0.4, low=-1.4, high=0.5)  # with its interval: cannot tell
    del models["compressed"]["versus_paired"]
    v = versus(models, _profiles(b1=None, b32=None), "dense-int8")
    assert v["verdict_kind"] == "dominates" and v["dominates"] is True
    assert v["accuracy_interval"] is None and v["speedup_interval"] == {}
    assert v["point_rule"] == ["accuracy", "speed on cpu b1xreal", "speed on cpu b32xreal"]
    assert ("Point estimates only for accuracy, speed on cpu b1xreal, speed on cpu b32xreal (no 95% "
            "interval recorded): the point rule decides there.") in v["verdict"]
    assert "-0.40 accuracy points, " in v["verdict"]  # no interval printed
    # the point rule says no where the point misses
    models["compressed"]["accuracy_onnx"] = 0.785
    assert versus(models, _profiles(b1=None, b32=None), "dense-int8")["verdict_kind"] == "does not dominate"
    # one interval present, one absent: each decides its own check
    v = versus(_models(), _profiles(b32=None), "dense-int8")
    assert v["verdict_kind"] == "dominates" and v["point_rule"] == ["speed on cpu b32xreal"]


def test_the_report_prints_the_verdict_and_the_intervals():
    from compressor.report import build_summary
    from compressor.report_md import render_markdown
    models = copy.deepcopy(_models())
    models["dense"] = {"accuracy_onnx": 0.81, "size_bytes": 90e6, "accuracy_interval": [0.795, 0.825]}
    models["dense-int8"]["accuracy_interval"] = [0.784, 0.815]
    models["compressed"]["accuracy_interval"] = [0.792, 0.823]
    models["compressed"]["versus_paired"]["dense-int8"].update(compressed_only=61, reference_only=42)
    report = {"models": models, "profiles": _profiles(),
              "run": {"speedup_asked": 1.5, "speedup_reference": "dense-int8", "speedup_shape": "cpu b1xreal",
                      "targets": ["cpu"]},
              "gates": [{"name": "speedup_asked", "threshold": 1.5, "measured": 1.6, "passed": True,
                         "reason": "x", "where": "cpu b1xreal"}]}
    report["summary"] = build_summary(models, report["profiles"])
    md = render_markdown(report)
    assert report["summary"]["versus_dense_int8"]["verdict"] in md
    assert "measured ×1.60 (95% ×1.45..×1.75) over dense-int8 at cpu b1xreal." in md
    assert "The gate judges the point estimate." in md
    assert "accuracy (Wilson) dense 79.50%..82.50%, dense-int8 78.40%..81.50%, compressed 79.20%..82.30%" in md
    assert ("compressed - dense-int8: +0.75 points (95% -0.16..+1.66) (only compressed right on 61 rows, "
            "only dense-int8 on 42, n = 2532)") in md


# ---- the --speedup gate ------------------------------------------------------------------------

def _gate_report(point_comp_ms=2.5, iv=(1.45, 1.75)):
    rows = _profiles(b1=iv)
    rows[1]["typical_ms"] = point_comp_ms
    return {"schema_version": 1, "profiles": rows,
            "run": {"targets": ["cpu"], "speedup_shape": "cpu b1xreal", "speedup_reference": "dense-int8"}}


def test_the_speedup_gate_states_its_interval_and_judges_the_point():
    from compressor.gates import check_gates
    (res,) = check_gates(_gate_report(), {"speedup_asked": 1.7})  # 1.6 >= 1.53 passes, the interval reaches 1.45
    assert res["passed"] and res["measured"] == pytest.approx(1.6)
    assert "measured 1.6x (95% 1.45x..1.75x over 64 texts) over dense-int8 at cpu b1xreal meets" in res["reason"]
    assert "judged on the point estimate" in res["reason"]
    (res,) = check_gates(_gate_report(), {"speedup_asked": 2.0})  # 1.6 < 1.8 fails, though the interval is above 1
    assert not res["passed"] and "(95% 1.45x..1.75x over 64 texts)" in res["reason"] and "misses" in res["reason"]
    (res,) = check_gates(_gate_report(iv=None), {"speedup_asked": 1.5})  # no interval recorded: none stated
    assert res["passed"] and "95%" not in res["reason"]
