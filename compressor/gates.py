"""Quality gates: thresholds checked against the numbers a run measured, so a CI job can stop a
deployment (``compress run ... --min-retention 0.98`` or ``compress gate out/ ...`` exit 3).

What each gate measures, read from the run report (``report.json``):

- ``min_retention``: compressed ONNX accuracy / dense ONNX accuracy on the eval split
  (``models.compressed.accuracy_onnx / models.dense.accuracy_onnx``); passes when >= threshold.
- ``min_speedup``: dense / compressed latency, measured side by side on the same target and input
  shape (:func:`compressor.profiling.speed_ms`: the p50 at a fixed shape; at a real-text shape each
  text's median latency, averaged over the texts, so both models are compared on the same texts).
  **Every** profiled shape (fixed ``b8xs128`` and real-text ``b8xreal``) on every target must reach
  the threshold: the measured value is the smallest speedup, and ``where`` names its target and
  shape. Choose the shapes with ``--batch-sizes``/``--seq-lens``.
- ``max_latency_ms``: the compressed model's p50 latency in milliseconds at batch size 1, at every
  profiled batch-1 shape (each sequence length, and real texts) on every target; measured is the
  largest; passes when <= threshold.
- ``speedup_asked`` (set by ``--speedup X``): the speedup over the dense model in the deployment's
  precision (``run.speedup_reference``: dense INT8 for an INT8 deployment, dense fp32 otherwise),
  measured side by side at the shape the structure was searched for (``run.speedup_shape``, e.g.
  ``cpu b1xreal``), must reach the asked X within :data:`SPEEDUP_TOLERANCE` (10%): a measured
  1.85x passes an asked 2x, 1.75x fails. The message also states the 95% interval of the measured
  speedup when the profile holds one (at a real-text shape: a bootstrap over the per-text, or
  per-batch, latency ratios, see :func:`compressor.profiling.speed_intervals`); pass or fail is
  decided on the point estimate.
- ``max_size_mb``: the compressed ONNX model's file size (with external data) in MB of 10**6 bytes
  (``models.compressed.size_bytes / 1e6``); passes when <= threshold.

A gate that cannot be evaluated fails with the reason: a missing accuracy, no profile for a
target the run asked for, no batch-1 profile, or a profile that fell back to another execution
provider (its numbers are not for the requested one). Never passes silently.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from compressor.errors import ConfigError, check_range
from compressor.profiling import speed_ms

EXIT_GATES_FAILED = 3

# name -> (direction, allowed threshold range (lo, hi, lo_open), unit, description)
GATES: dict[str, tuple[str, tuple[float, float, bool], str, str]] = {
    "min_retention": (">=", (0.0, 100.0, False), "",
                      "compressed ONNX accuracy / dense ONNX accuracy"),
    "min_speedup": (">=", (0.0, 1e6, False), "x",
                    "dense p50 / compressed p50 at every profiled shape and target (smallest)"),
    "max_latency_ms": ("<=", (0.0, 1e9, True), " ms",
                       "compressed p50 latency at batch 1, every sequence length and target (largest)"),
    "max_size_mb": ("<=", (0.0, 1e9, True), " MB", "compressed ONNX file size in MB (1e6 bytes)"),
    "speedup_asked": (">=", (1.0, 1e6, False), "x",
                      "dense p50 / compressed p50 at the searched shape, within 10% of --speedup"),
}
SPEEDUP_TOLERANCE = 0.10


class GatesFailed(Exception):
    """One or more quality gates failed (or could not be evaluated); the CLI exits with 3.

    ``results`` holds every gate's :class:`GateResult` dict, passed or not.
    """

    exit_code = EXIT_GATES_FAILED

    def __init__(self, results: list[dict]):
        self.results = results
        failed = [r for r in results if not r["passed"]]
        super().__init__("quality gates failed: " + "; ".join(
            f"{r['name']} {r['reason']}" for r in failed))


@dataclass
class GateResult:
    """The outcome of one gate: its threshold, the measured value (None when it could not be
    measured), whether it passed, why, and where the deciding value was measured."""

    name: str
    threshold: float
    measured: float | None
    passed: bool
    reason: str
    where: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_gates(gates) -> dict[str, float]:
    """Validate ``{"min_retention": 0.98, ...}`` (None values are dropped) and return it with
    float thresholds; ConfigError for an unknown gate or a threshold out of range."""
    if gates is None:
        return {}
    if not isinstance(gates, dict):
        raise ConfigError(f"gates={gates!r} must be a dict of gate name -> threshold: known gates "
                          f"{', '.join(GATES)}")
    out = {}
    for name, value in gates.items():
        if value is None:
            continue
        if name not in GATES:
            raise ConfigError(f"unknown gate '{name}': available {', '.join(GATES)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"gate {name}={value!r} is not a finite number")
        lo, hi, lo_open = GATES[name][1]
        check_range(name, float(value), lo, hi, lo_open=lo_open)
        out[name] = float(value)
    return out


def _num(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _profiles(report: dict) -> list[dict]:
    rows = report.get("profiles")
    return [p for p in rows if isinstance(p, dict)] if isinstance(rows, list) else []


def _shape(p: dict) -> str:
    """``cpu b1xs128``, or ``cpu b8xreal`` for batches of real eval texts."""
    size = "real" if p.get("shape_kind") == "real" else f"s{p.get('seq_len')}"
    return f"{p.get('target')} b{p.get('batch')}x{size}"


def _compare(name: str, threshold: float, measured: float | None, where=None,
             missing: str = "") -> GateResult:
    direction, _, unit, _ = GATES[name]
    if measured is None:
        return GateResult(name, threshold, None, False, f"cannot be evaluated: {missing}", where)
    ok = measured >= threshold if direction == ">=" else measured <= threshold
    at = f" at {where}" if where else ""
    verdict = "meets" if ok else "misses"
    return GateResult(name, threshold, measured, ok,
                      f"measured {measured:.4g}{unit}{at} {verdict} {direction} {threshold:g}{unit}", where)


def _retention(report: dict, threshold: float) -> GateResult:
    models = _dict(report.get("models"))
    dense, comp = _dict(models.get("dense")), _dict(models.get("compressed"))
    d, c = _num(dense.get("accuracy_onnx")), _num(comp.get("accuracy_onnx"))
    if d is None or c is None:
        which = "dense" if d is None else "compressed"
        return _compare("min_retention", threshold, None, missing=f"no ONNX accuracy of the {which} model")
    if d == 0:
        return _compare("min_retention", threshold, None, missing="the dense ONNX accuracy is 0")
    return _compare("min_retention", threshold, c / d)


def _profile_problem(report: dict, profiles: list[dict]) -> str | None:
    """Why the profiles cannot back a latency gate: a requested target without profiles, or a
    provider fallback; None when they can."""
    asked = _dict(report.get("run")).get("targets")
    ran = {p.get("target") for p in profiles}
    for target in asked if isinstance(asked, list) else []:
        if target not in ran:
            return f"target '{target}' did not produce a latency profile"
    fell = [p for p in profiles if p.get("fallback")]
    if fell:
        p = fell[0]
        return (f"{p.get('model')} on {_shape(p)} fell back to "
                f"{', '.join(p.get('providers_used') or []) or 'another provider'}: its latency is "
                f"not for the requested provider")
    return None


def _speedup(report: dict, threshold: float) -> GateResult:
    profiles = _profiles(report)
    problem = _profile_problem(report, profiles)
    if problem:
        return _compare("min_speedup", threshold, None, missing=problem)
    base = {_shape(p): _num(speed_ms(p)) for p in profiles if p.get("model") == "dense"}
    worst, where = None, None
    comp = [p for p in profiles if p.get("model") == "compressed"]
    for p in comp:
        ref, mine = base.get(_shape(p)), _num(speed_ms(p))
        if ref is None or not mine:
            return _compare("min_speedup", threshold, None,
                            missing=f"no dense and compressed latency side by side at {_shape(p)}")
        if worst is None or ref / mine < worst:
            worst, where = ref / mine, _shape(p)
    return _compare("min_speedup", threshold, worst, where,
                    missing="no latency profile of the compressed model")


def _latency(report: dict, threshold: float) -> GateResult:
    profiles = _profiles(report)
    problem = _profile_problem(report, profiles)
    if problem:
        return _compare("max_latency_ms", threshold, None, missing=problem)
    worst, where = None, None
    for p in profiles:
        if p.get("model") != "compressed" or p.get("batch") != 1:
            continue
        mine = _num(p.get("p50_ms"))
        if mine is None:
            return _compare("max_latency_ms", threshold, None, missing=f"no p50 at {_shape(p)}")
        if worst is None or mine > worst:
            worst, where = mine, _shape(p)
    return _compare("max_latency_ms", threshold, worst, where,
                    missing="no batch-1 latency profile of the compressed model "
                            "(profile with batch size 1)")


def _size(report: dict, threshold: float) -> GateResult:
    comp = _dict(_dict(report.get("models")).get("compressed"))
    size = _num(comp.get("size_bytes"))
    return _compare("max_size_mb", threshold, None if size is None else size / 1e6,
                    missing="no size of the compressed ONNX model")


def _asked(report: dict, threshold: float) -> GateResult:
    profiles = _profiles(report)
    problem = _profile_problem(report, profiles)
    run = _dict(report.get("run"))
    where, reference = run.get("speedup_shape"), run.get("speedup_reference") or "dense"
    if problem or not where:
        return _compare("speedup_asked", threshold, None, missing=problem or "no searched shape in the report")
    ms = {(p.get("model"), _shape(p)): _num(speed_ms(p)) for p in profiles}
    ref, mine = ms.get((reference, where)), ms.get(("compressed", where))
    if ref is None or not mine:
        return _compare("speedup_asked", threshold, None, where, f"no {reference} and compressed latency at {where}")
    measured, need = ref / mine, threshold * (1 - SPEEDUP_TOLERANCE)
    ok = measured >= need
    return GateResult("speedup_asked", threshold, measured, ok,
                      f"measured {measured:.3g}x{_interval_text(profiles, reference, where)} over {reference} "
                      f"at {where} {'meets' if ok else 'misses'} the asked {threshold:g}x (>= {need:.3g}x, "
                      f"10% tolerance, judged on the point estimate)", where)


def _interval_text(profiles: list[dict], reference: str, where: str) -> str:
    """`` (95% 1.41x..1.63x over 64 texts)``: the speed interval the compressed model's profile at
    ``where`` records over ``reference``, or "" when it has none (a fixed shape, an older report)."""
    for p in profiles:
        if p.get("model") != "compressed" or _shape(p) != where:
            continue
        iv = _dict(_dict(p.get("speedup_interval")).get(reference))
        low, high = _num(iv.get("low")), _num(iv.get("high"))
        if low is not None and high is not None:
            items = f" over {iv['n']} {iv.get('items') or 'inputs'}" if isinstance(iv.get("n"), int) else ""
            return f" (95% {low:.3g}x..{high:.3g}x{items})"
    return ""


_CHECKS = {"min_retention": _retention, "min_speedup": _speedup, "max_latency_ms": _latency,
           "max_size_mb": _size, "speedup_asked": _asked}


def check_gates(report: dict, gates) -> list[dict]:
    """Check each gate of ``gates`` (name -> threshold) against ``report``; one
    :class:`GateResult` dict per gate, in the order of :data:`GATES`."""
    gates = parse_gates(gates)
    report = report if isinstance(report, dict) else {}
    return [_CHECKS[name](report, gates[name]).to_dict() for name in GATES if name in gates]


def failed(results) -> list[dict]:
    """The gate results that did not pass."""
    return [r for r in results or [] if not r.get("passed")]


def raise_if_failed(results) -> None:
    """Raise :class:`GatesFailed` when any gate in ``results`` failed."""
    if failed(results):
        raise GatesFailed(list(results))


def render_markdown(results) -> list[str]:
    """The ``## Quality gates`` section of report.md (nothing when no gate was set)."""
    if not results:
        return []
    rows = ["| Gate | Threshold | Measured | Where | Result |", "|---|---|---|---|---|"]
    for r in results:
        measured = "—" if r.get("measured") is None else f"{r['measured']:.4g}"
        rows.append(f"| {r.get('name')} | {r.get('threshold')} | {measured} | {r.get('where') or '—'} "
                    f"| {'pass' if r.get('passed') else '**FAIL**: ' + str(r.get('reason'))} |")
    bad = failed(results)
    head = (f"**{len(bad)} of {len(results)} gates FAILED.**" if bad
            else f"All {len(results)} gates passed.")
    return ["## Quality gates", head, "\n".join(rows)]


__all__ = ["GATES", "GateResult", "GatesFailed", "EXIT_GATES_FAILED", "check_gates", "parse_gates",
           "failed", "raise_if_failed", "render_markdown"]
