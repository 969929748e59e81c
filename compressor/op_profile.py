"""Where the time goes: ONNX Runtime's own profiler, summed per operator type.

:func:`op_breakdown` runs one model on real inputs with ``SessionOptions.enable_profiling`` and
adds up the kernel time of every node by its operator type (``MatMulIntegerToFloat``,
``SkipLayerNormalization``, ``Transpose`` ...): milliseconds per run, share of the kernel time, and
how many nodes of that type ran. The warm-up runs are left out (only the last ``runs`` runs of
the trace count). The session uses the target's own options (threads, optimization level), so
the operators are the ones the timed deployment runs after ORT's graph fusions.

:func:`op_breakdowns` does it for several models on one target (the report's details show the
deployment beside dense INT8: what a pruning step removed and what it left).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

TOP_OPS = 12  # rows the report shows; the rest are summed as "other"


def _kernel_events(trace: list[dict], runs: int) -> list[dict]:
    """The node kernel events of the last ``runs`` ``model_run`` spans of a profiler trace."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace
                   if e.get("cat") == "Session" and e.get("name") == "model_run")[-runs:]
    if not spans:
        return []
    start = spans[0][0]
    return [e for e in trace if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
            and e["ts"] >= start]


def summarize(trace: list[dict], runs: int) -> dict:
    """``{"runs", "kernel_ms_per_run", "ops": [{"op", "ms_per_run", "share", "nodes"}]}`` of a
    trace, ops by time (largest first); ``nodes`` counts the distinct nodes of the type."""
    totals: dict[str, float] = {}
    nodes: dict[str, set] = {}
    for e in _kernel_events(trace, runs):
        op = e.get("args", {}).get("op_name", "?")
        totals[op] = totals.get(op, 0.0) + float(e["dur"])
        nodes.setdefault(op, set()).add(e["name"])
    total = sum(totals.values())
    ops = [{"op": op, "ms_per_run": us / 1000 / runs, "share": us / total if total else 0.0, "nodes": len(nodes[op])}
           for op, us in sorted(totals.items(), key=lambda kv: -kv[1])]
    return {"runs": runs, "kernel_ms_per_run": total / 1000 / runs, "ops": ops}


def op_breakdown(target, path: str | Path, inputs: list[dict], warmup: int = 5) -> dict:
    """Per-operator kernel time of the ONNX model at ``path`` on ``target`` (a
    :class:`targets.base.Target`), over one run of each of ``inputs`` (dicts of token arrays,
    e.g. the real b1 texts the profile times) after ``warmup`` runs."""
    import onnxruntime as ort
    if not inputs:
        raise ValueError("op_breakdown needs at least one input")
    with tempfile.TemporaryDirectory(prefix="op-profile-") as tmp:
        so = target.session_options()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "trace")
        providers, options = target._requested(path)
        sess = ort.InferenceSession(str(path), sess_options=so, providers=providers, provider_options=options)
        run, _ = target.runner(sess, inputs)  # the target's own way of feeding a session
        for i in range(warmup + len(inputs)):
            run(i)  # input i % len(inputs): the warm-up, then each input once
        trace = json.loads(Path(sess.end_profiling()).read_text())
    out = summarize(trace, len(inputs))
    out["providers_used"] = sess.get_providers()
    return out


def op_breakdowns(target, models: dict, inputs_by_model: dict) -> dict:
    """``{label: op_breakdown}`` for ``models`` (label -> ONNX path) on ``target``, each on its
    own token ids (``inputs_by_model[label]``: a vocab-pruned model has its own)."""
    out = {}
    for label, path in models.items():
        log.info("operator profile of %s on %s (%d inputs)", label, target.name, len(inputs_by_model[label]))
        out[label] = op_breakdown(target, path, inputs_by_model[label])
    return out


def top_rows(breakdown: dict, top: int = TOP_OPS) -> list[dict]:
    """The ``top`` largest operator rows of a breakdown plus one ``other`` row for the rest."""
    ops = breakdown.get("ops", [])
    rest = ops[top:]
    if not rest:
        return list(ops)
    return [*ops[:top], {"op": "other", "ms_per_run": sum(r["ms_per_run"] for r in rest),
                         "share": sum(r["share"] for r in rest), "nodes": sum(r["nodes"] for r in rest)}]


__all__ = ["op_breakdown", "op_breakdowns", "summarize", "top_rows", "TOP_OPS"]
