"""The run report: ``report.json`` (the record) and ``report.md`` (what a person reads).

The orchestrator builds one dict (see :data:`SCHEMA_VERSION` and the keys below), calls
:func:`build_summary` for its ``summary`` and :func:`write_report` to save both files.
Rendering never fails on a partial report: a missing piece shows as "—".

Keys: ``schema_version``, ``tool``, ``created``, ``machine``, ``run`` (model, method,
sparsity, task, pipeline, seed, command, targets), ``data``, ``steps`` (StepRecord dicts),
``models`` (label -> accuracy_torch, accuracy_onnx, onnx_path, size_bytes, sparsity, params),
``profiles`` (Profile dicts), ``summary`` (accuracy_retention, size_ratio, speedup,
accuracy_retention_by_target, fallback), ``profile_grid`` (batch sizes, sequence lengths, runs,
real shapes, eval token lengths). A models entry may hold ``accuracy_by_target``
({target: accuracy of that ONNX model run there}) and ``accuracy_interval`` (Wilson 95%
[low, high]); the compressed entry ``versus_paired`` ({reference: paired bootstrap of the accuracy
difference in points, :mod:`compressor.stats`}); a real-shape profile ``speedup_interval``
({reference: speedup with its 95% interval}); ``summary.versus_dense_int8`` the dominance
verdict (:func:`versus`). ``gates`` (quality-gate results, see
:mod:`compressor.gates`) and ``mlflow`` (tracking URI, experiment and run id, when logged).
The JSON Schema is ``compressor/schema/report.schema.json``; bump :data:`SCHEMA_VERSION` (and
the schema) when a change breaks readers.

A regression task's report keeps every key name and puts its metric where accuracy goes: ``data``
gains ``task_type`` ("regression") and ``metric_name`` ("pearson"); every ``accuracy*`` value
(``accuracy_torch``, ``accuracy_onnx``, ``accuracy_by_target``, the summary's retention, the
verdict's and ``versus_paired``'s points) is Pearson's r of the single output (in [-1, 1]; a point
is 0.01 of r), and each models entry also holds ``metric_name`` and ``spearman_onnx``.
``accuracy_interval`` is a percentile bootstrap interval of r over the eval rows (not Wilson) and
``versus_paired`` the paired bootstrap of the difference in r over rows (no ``compressed_only`` /
``reference_only``: there are no right or wrong rows). ``data.majority_accuracy`` is the trivial
baseline, predicting the train mean: 0. A token-classification report does the same with
``task_type`` "token-classification", ``metric_name`` "entity_f1" (entity-level micro F1, a
fraction; a point is 0.01 of F1), ``data.tag_scheme``, ``precision_onnx`` and ``recall_onnx`` in
each models entry, intervals bootstrapped over the eval sentences and a trivial baseline (all O) of
0. A multi-label report does the same with ``task_type`` "multi-label", ``metric_name`` "micro_f1"
(micro F1 over the (row, label) decisions, a fraction), and in each models entry ``threshold`` (the
one sigmoid threshold, chosen on dev and applied on eval), ``macro_f1_onnx``, ``precision_onnx``
and ``recall_onnx``; intervals are bootstrapped over the eval rows and the trivial baseline
(predicting no label) is 0. A question-answering report does the same with ``task_type``
"question-answering", ``metric_name`` "squad_f1" (SQuAD F1 over the questions, a fraction),
``data.squad_version`` and ``data.doc_stride``, ``exact_match_onnx`` in each models entry,
intervals bootstrapped over the eval questions and a trivial baseline, the empty answer, of the
fraction of questions without an answer. A classification report has none of these keys
(``metric_name`` missing means "accuracy").

:func:`write_report` also writes ``report.md`` (:mod:`compressor.report_md`) and ``report.html``
(:mod:`compressor.report_html`: the same content, self-contained, with plots from
:mod:`compressor.plots`).
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

from compressor.artifact import atomic_write_text
from compressor.errors import ArtifactError
from compressor.report_md import (BASELINE, CANDIDATE, _accuracy, _dict, _num, _ratio, fallbacks,
                                  render_markdown)

SCHEMA_VERSION = 1
JSON_NAME, MD_NAME, HTML_NAME = "report.json", "report.md", "report.html"


def build_summary(models: dict, profiles: list, baseline: str = BASELINE,
                  candidate: str = CANDIDATE) -> dict:
    """``{"accuracy_retention", "size_ratio", "speedup": {target: {"b1xs128": x}},
    "accuracy_retention_by_target": {target: x}, "fallback": [...]}`` of ``candidate`` against
    ``baseline``: accuracy (ONNX, else torch) ratio, dense size / compressed size, dense /
    compressed latency (:func:`compressor.profiling.speed_ms`) per target and shape, the accuracy
    ratio measured on each target, and every profile that ran on another provider than asked (:func:`fallbacks`). Missing values are
    None."""
    from compressor.profiling import speedups
    dense, comp = _dict((models or {}).get(baseline)), _dict((models or {}).get(candidate))
    both_onnx = all(_num(m.get("accuracy_onnx")) is not None for m in (dense, comp))
    key = "accuracy_onnx" if both_onnx else "accuracy_torch"
    per_target = speedups(profiles or [], baseline=baseline)
    by_dense, by_comp = _dict(dense.get("accuracy_by_target")), _dict(comp.get("accuracy_by_target"))
    return {"accuracy_retention": _ratio(comp.get(key), dense.get(key)),
            "size_ratio": _ratio(dense.get("size_bytes"), comp.get("size_bytes")),
            "speedup": {t: by_model[candidate] for t, by_model in per_target.items()
                        if candidate in by_model},
            "accuracy_retention_by_target": {t: _ratio(by_comp.get(t), by_dense.get(t))
                                             for t in by_comp},
            "versus_dense_int8": versus(models, profiles, INT8_BASELINE, candidate),
            "fallback": fallbacks(profiles or [])}


INT8_BASELINE = "dense-int8"
WITHIN_POINTS = 1.0  # "as accurate": within this many accuracy points of the reference


def versus(models: dict, profiles: list, reference: str, candidate: str = CANDIDATE) -> dict | None:
    """Does ``candidate`` dominate ``reference`` (accuracy within :data:`WITHIN_POINTS` points,
    smaller file, faster at every headline shape on every target), and how sure is that?

    With 95% intervals (the paired bootstrap of the accuracy difference, ``models[candidate]
    ["versus_paired"][reference]``, and the speed interval of each headline shape, the
    ``speedup_interval`` of the candidate's real-text profiles) there are three verdicts:
    ``"dominates"`` when the accuracy interval's lower end is >= -WITHIN_POINTS, every speed
    interval's lower end is > 1 and the file is smaller; ``"does not dominate"`` when an interval
    excludes it (accuracy interval's upper end < -WITHIN_POINTS, a speed interval's upper end
    <= 1) or the file is not smaller (or a number is missing); ``"cannot tell"`` otherwise. Where
    an interval is absent (an older report, a fixed-shape profile) the point estimate stands in
    for both ends, which is the point rule, and the sentence says so (``point_rule`` lists where).

    Returns ``{"reference", "accuracy_points", "accuracy_interval": [lo, hi] | None, "size_ratio",
    "speedup": {target: {shape: x}}, "speedup_interval": {target: {shape: [lo, hi]}}, "dominates"
    (True for "dominates" only), "verdict_kind", "checks", "point_rule", "verdict"}`` (the
    verdict a sentence for the report), or None when ``reference`` was not measured."""
    from compressor.profiling import speedups
    from compressor.report_md import headline_shapes
    ref, comp = _dict((models or {}).get(reference)), _dict((models or {}).get(candidate))
    if not ref or not comp:
        return None
    a_ref, a_comp = _num(_accuracy(ref)), _num(_accuracy(comp))
    points = (a_comp - a_ref) * 100 if a_ref is not None and a_comp is not None else None
    size = _ratio(ref.get("size_bytes"), comp.get("size_bytes"))
    rows = [p.to_dict() if hasattr(p, "to_dict") else dict(p) for p in profiles or []]
    shapes = headline_shapes([r for r in rows if r.get("model") in (reference, candidate)])
    ratios = speedups(rows, baseline=reference)
    speed = {t: {sh: x for sh, x in _dict(_dict(ratios.get(t)).get(candidate)).items() if (t, sh) in shapes}
             for t in dict.fromkeys(t for t, _ in shapes)}
    acc_iv = _points_interval(comp, reference) if points is not None else None
    speed_iv = _speed_intervals(rows, candidate, reference, shapes)
    point_rule = (["accuracy"] if points is not None and acc_iv is None else []) + [
        f"speed on {t} {sh}" for t, by in speed.items() for sh, x in by.items()
        if _num(x) is not None and sh not in _dict(speed_iv.get(t))]
    acc_state = "no" if points is None else _state(*(acc_iv or (points, points)), -WITHIN_POINTS, strict=False)
    shape_states = {(t, sh): "no" if _num(x) is None else _state(*_dict(speed_iv.get(t)).get(sh, (x, x)), 1.0)
                    for t, by in speed.items() for sh, x in by.items()}
    faster = ("no" if not shapes or len(shape_states) != len(shapes) or "no" in shape_states.values()
              else "open" if "open" in shape_states.values() else "yes")
    states = {"accurate": acc_state, "smaller": "yes" if size is not None and size > 1 else "no",
              "faster": faster}
    kind = ("does not dominate" if "no" in states.values() else
            "cannot tell" if "open" in states.values() else "dominates")
    what = {"pearson": "Pearson r", "fidelity": "fidelity", "entity_f1": "entity F1", "micro_f1": "micro F1",
            "squad_f1": "SQuAD F1"}.get(
        comp.get("metric_name"), "accuracy")  # the task's metric
    verdict = _verdict_sentence(kind, reference, states, shape_states, points, acc_iv, size, speed,
                                speed_iv, point_rule, what)
    return {"reference": reference, "accuracy_points": points,
            "accuracy_interval": list(acc_iv) if acc_iv else None, "size_ratio": size, "speedup": speed,
            "speedup_interval": {t: {sh: list(iv) for sh, iv in by.items()} for t, by in speed_iv.items()},
            "dominates": kind == "dominates", "verdict_kind": kind,
            "checks": {k: v == "yes" for k, v in states.items()}, "point_rule": point_rule,
            "verdict": verdict}


def _state(low: float, high: float, line: float, strict: bool = True) -> str:
    """Where an interval ``[low, high]`` lies against ``line``: ``"yes"`` when it is all above
    (``> line``, or ``>= line`` when not ``strict``), ``"no"`` when it is all below (``<= line``,
    or ``< line``), ``"open"`` when it reaches across."""
    if low > line or (not strict and low >= line):
        return "yes"
    if high < line or (strict and high <= line):
        return "no"
    return "open"


def _points_interval(comp: dict, reference: str) -> tuple[float, float] | None:
    """The paired bootstrap interval (points) of the candidate's accuracy minus ``reference``'s,
    or None when the report has none."""
    paired = _dict(_dict(comp.get("versus_paired")).get(reference))
    low, high = _num(paired.get("low")), _num(paired.get("high"))
    return (low, high) if low is not None and high is not None else None


def _speed_intervals(rows: list[dict], candidate: str, reference: str, shapes) -> dict:
    """``{target: {shape: (low, high)}}``: the speedup interval over ``reference`` recorded on the
    candidate's profile at each headline shape (real-text shapes only)."""
    from compressor.report_md import _shape
    out: dict = {}
    for r in rows:
        if r.get("model") != candidate or "batch" not in r or (r.get("target"), _shape(r)) not in shapes:
            continue
        iv = _dict(_dict(r.get("speedup_interval")).get(reference))
        low, high = _num(iv.get("low")), _num(iv.get("high"))
        if low is not None and high is not None:
            out.setdefault(r["target"], {})[_shape(r)] = (low, high)
    return out


def _verdict_sentence(kind, reference, states, shape_states, points, acc_iv, size, speed, speed_iv,
                      point_rule, what: str = "accuracy") -> str:
    """The dominance sentence with its numbers and 95% intervals, e.g. ``+0.75 accuracy points
    (95% -0.16..+1.66)`` and ``×1.52 (95% ×1.41..×1.63) on cpu b1xreal`` (``what``: the metric's
    name, "Pearson r" for a regression task)."""
    from compressor.report_md import fmt_points_interval, fmt_ratio, fmt_ratio_interval
    fast = ", ".join(f"{fmt_ratio(x)}{fmt_ratio_interval(_dict(speed_iv.get(t)).get(sh))} on {t} {sh}"
                     for t, by in speed.items() for sh, x in by.items())
    facts = (f"{what} not measured" if points is None else
             f"{points:+.2f} {what} points{fmt_points_interval(acc_iv)}, {fmt_ratio(size)} smaller, "
             f"{fast or 'latency not measured'}")
    if kind == "dominates":
        sentence = f"The compressed model dominates {reference} ({facts})."
    elif kind == "does not dominate":
        names = {"accurate": f"within {WITHIN_POINTS:g} point", "smaller": "smaller",
                 "faster": "faster at every headline shape"}
        sentence = (f"The compressed model does not dominate {reference}: not "
                    f"{', not '.join(names[k] for k, v in states.items() if v == 'no')} ({facts}).")
    else:
        crossing = ([f"{what} (-{WITHIN_POINTS:g} point)"] if states["accurate"] == "open" else []) + [
            f"speed on {t} {sh} (×1)" for (t, sh), v in shape_states.items() if v == "open"]
        sentence = (f"Cannot tell at this eval size whether the compressed model dominates {reference}: "
                    f"the 95% interval of {' and '.join(crossing)} reaches across the line ({facts}).")
    if point_rule:
        sentence += (f" Point estimates only for {', '.join(point_rule)} (no 95% interval recorded): "
                     f"the point rule decides there.")
    return sentence


def _jsonable(obj):
    """Plain JSON values: Profiles/records via to_dict, Paths as str, numpy scalars as Python
    numbers, non-finite floats as None."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in (sorted(obj, key=str) if isinstance(obj, set) else obj)]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def write_report(folder: str | Path, report: dict) -> list[Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``folder`` atomically;
    return the three paths."""
    from compressor.report_html import render_html
    folder = Path(folder)
    data = _jsonable(report)
    data.setdefault("schema_version", SCHEMA_VERSION)
    json_path = atomic_write_text(folder / JSON_NAME, json.dumps(data, indent=2) + "\n")
    md_path = atomic_write_text(folder / MD_NAME, render_markdown(data))
    html_path = atomic_write_text(folder / HTML_NAME, render_html(data))
    return [json_path, md_path, html_path]


def load_report(folder: str | Path) -> dict:
    """Read ``report.json`` from ``folder`` (or the file itself); ArtifactError when it is
    missing, not a JSON object, or written by a newer schema."""
    path = Path(folder)
    path = path if path.is_file() else path / JSON_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"no run report at {str(path)!r}: run 'compress run' first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"run report {str(path)!r} is corrupt: {exc}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"run report {str(path)!r} is corrupt: expected a JSON object, "
                            f"got {type(data).__name__}")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise ArtifactError(f"run report {str(path)!r} has schema_version={version!r}: this "
                            f"compressor reads versions up to {SCHEMA_VERSION}")
    return data


def machine_info() -> dict:
    """Platform, CPU count and package versions, read from package metadata (no imports)."""
    from importlib import metadata

    def version(*names):
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": version("torch"),
            "transformers": version("transformers"), "onnx": version("onnx"),
            "onnxruntime": version("onnxruntime", "onnxruntime-gpu"),
            "optimum": version("optimum")}
