"""The run report as Markdown (``report.md``, and the body of ``report.html``): the fallback
warning and the headline table first, then the latency grid, per-shape details, steps,
per-layer sparsity, data, machine and the exact command. Rendering never fails on a partial
report: a missing piece shows as "—".

The formatting helpers here are shared by :mod:`compressor.report` (building and writing the
report), :mod:`compressor.report_html` and :mod:`compressor.compare`, which all import this
module; it imports none of them.
"""

from __future__ import annotations

import math

from tabulate import tabulate

from compressor.profiling import speed_ms

DASH = "—"
BASELINE, CANDIDATE = "dense", "compressed"


def _num(x) -> float | None:
    """``x`` as a finite float, or None (bools, strings, NaN and missing values are not numbers)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def fmt_mb(n) -> str:
    return DASH if _num(n) is None else f"{n / 1e6:.1f}"


def fmt_ms(x) -> str:
    return DASH if _num(x) is None else f"{x:.2f}"


def fmt_ratio(x) -> str:
    return DASH if _num(x) is None else f"×{x:.2f}"


def fmt_pct(x, digits: int = 1) -> str:
    return DASH if _num(x) is None else f"{100 * x:.{digits}f}%"


def _pair(iv) -> tuple[float, float] | None:
    """``(low, high)`` from ``[low, high]`` or ``{"low", "high"}``, or None."""
    if isinstance(iv, dict):
        iv = (iv.get("low"), iv.get("high"))
    if not isinstance(iv, (list, tuple)) or len(iv) != 2:
        return None
    low, high = _num(iv[0]), _num(iv[1])
    return (low, high) if low is not None and high is not None else None


def fmt_points_interval(iv) -> str:
    """``" (95% -0.16..+1.66)"``: a 95% interval in accuracy points, or "" without one."""
    pair = _pair(iv)
    return "" if pair is None else f" (95% {pair[0]:+.2f}..{pair[1]:+.2f})"


def fmt_ratio_interval(iv) -> str:
    """``" (95% ×1.41..×1.63)"``: a 95% interval of a speedup, or "" without one."""
    pair = _pair(iv)
    return "" if pair is None else f" (95% {fmt_ratio(pair[0])}..{fmt_ratio(pair[1])})"


def _ratio(a, b) -> float | None:
    a, b = _num(a), _num(b)
    return a / b if a is not None and b else None


def _regression(report) -> bool:
    """Whether the report is a regression task's (``data.metric_name`` "pearson"): its
    ``accuracy`` keys hold Pearson's r, shown as r (not as a percentage)."""
    return _dict(report.get("data")).get("metric_name") == "pearson"


def _embeddings(report) -> bool:
    """Whether the report is an embedding task's (``data.metric_name`` "fidelity"): its
    ``accuracy`` keys hold the mean cosine to the dense model's embeddings, shown as a cosine."""
    return _dict(report.get("data")).get("metric_name") == "fidelity"


def _tagging(report) -> bool:
    """Whether the report is a token-classification task's (``data.metric_name`` "entity_f1"):
    its ``accuracy`` keys hold entity-level micro F1, shown as a percentage."""
    return _dict(report.get("data")).get("metric_name") == "entity_f1"


def _qa(report) -> bool:
    """Whether the report is a question-answering task's (``data.metric_name`` "squad_f1"): its
    ``accuracy`` keys hold SQuAD F1, shown as a percentage, exact match beside it."""
    return _dict(report.get("data")).get("metric_name") == "squad_f1"


def _multi_label(report) -> bool:
    """Whether the report is a multi-label task's (``data.metric_name`` "micro_f1"): its
    ``accuracy`` keys hold micro F1, shown as a percentage, macro F1 and the threshold beside it."""
    return _dict(report.get("data")).get("metric_name") == "micro_f1"


def fmt_r(x) -> str:
    """A correlation (Pearson's r, Spearman's rho) with 4 decimals."""
    return DASH if _num(x) is None else f"{x:.4f}"


def _accuracy(entry: dict):
    """The ONNX accuracy of a models entry, or its torch accuracy when ONNX was not measured."""
    return entry.get("accuracy_onnx") if _num(entry.get("accuracy_onnx")) is not None \
        else entry.get("accuracy_torch")


def fallbacks(profiles) -> list[dict]:
    """One ``{"target", "model", "providers_requested", "providers_used"}`` per model and
    target whose session ran on another provider than the one asked for."""
    out = []
    for p in _list([x.to_dict() if hasattr(x, "to_dict") else x for x in profiles or []]):
        if not p.get("fallback"):
            continue
        row = {"target": p.get("target"), "model": p.get("model"),
               "providers_requested": list(p.get("providers_requested") or []),
               "providers_used": list(p.get("providers_used") or [])}
        if row not in out:
            out.append(row)
    return out


def report_title(report: dict) -> str:
    """``Compression report: <model>, <method> at <sparsity> sparsity`` (``searched for ×X on
    <target>`` with ``--speedup``)."""
    run = _dict(_dict(report).get("run"))
    title = f"Compression report: {run.get('model') or DASH}, {run.get('method') or DASH}"
    if _num(run.get("speedup_asked")) is not None:
        targets = run.get("targets") if isinstance(run.get("targets"), list) else []
        title += f" searched for {fmt_ratio(run['speedup_asked'])} on {targets[0] if targets else DASH}"
    elif _num(run.get("sparsity")) is not None:
        title += f" at {fmt_pct(run['sparsity'])} sparsity"
    return title


def fallback_text(report: dict) -> str | None:
    """The warning naming every model and target that ran on another execution provider than
    the one asked for (``--allow-fallback``), or None when all ran where asked."""
    fell = fallbacks(_profiles(_dict(report)))
    if not fell:
        return None
    groups: dict = {}
    for f in fell:
        key = (f["target"], ", ".join(f["providers_requested"]) or DASH, ", ".join(f["providers_used"]) or DASH)
        groups.setdefault(key, []).append(str(f["model"]))
    which = "; ".join(f"target {t} asked for {asked} but ran on {used} ({', '.join(models)})"
                      for (t, asked, used), models in groups.items())
    return (f"**WARNING: execution-provider fallback.** {which}: the latency and accuracy "
            f"numbers of these targets are not for the requested provider.")


def render_markdown(report: dict) -> str:
    """The report as Markdown: the fallback warning (if any) and the headline table first, then
    the latency grid, per-shape details, steps, per-layer sparsity, data, machine and the exact
    command."""
    report = report if isinstance(report, dict) else {}
    warning = fallback_text(report)
    parts = [f"# {report_title(report)}"] + ([f"> {warning}"] if warning else [])
    parts += _headline(report)
    parts += _budget(report)
    parts += _hidden_search(report)
    parts += _gates(report)
    parts += _sizes(report)
    parts += _grid(report)
    parts += _latency(report)
    parts += _operators(report)
    parts += _deploy_graph(report)
    parts += _steps(report)
    parts += _per_layer(report)
    parts += _context(report)
    return "\n\n".join(parts) + "\n"


SIZE_PARTS = ("embeddings", "encoder", "head", "other")


def _budget(report) -> list[str]:
    """``--max-drop``: every candidate tried, its dev accuracy pruned and deployed, which was kept."""
    b = _dict(_dict(report.get("run")).get("max_drop"))
    if not b:
        return []
    def acc(x, drop):
        return DASH if _num(x) is None else f"{100 * x:.2f}% ({-drop:+.2f})"
    cands = _list(b.get("candidates"))
    graph = any(c.get("deploy_variant") for c in cands)  # --quantize auto: the variant each deployed
    rows = [[f"×{c['speedup_asked']:g}", fmt_ratio(c.get("speedup_measured")),
             acc(c.get("dev_accuracy_pruned"), c.get("dev_drop_pruned") or 0),
             acc(c.get("dev_accuracy_deployed"), c.get("dev_drop_deployed") or 0),
             *([c.get("deploy_variant")] if graph else []),
             "**chosen**" if c.get("chosen") else ("within" if c.get("within") else
                                                   "outside" if c.get("within") is False else "not deployed"),
             c.get("note") or ""] for c in cands]
    head = (f"Asked: lose at most {b['max_drop']:g} point(s) of dev accuracy against dense "
            f"({100 * b['dense_dev_accuracy']:.2f}% on {b['dev_size']} dev rows). Decided on dev alone; "
            "the eval split was not read by the search.")
    return ["## Accuracy budget (--max-drop)", head,
            _table(["Speedup asked", "measured (search)", "dev as pruned", "dev as deployed",
                    *(["deployed as"] if graph else []), "result", "note"], rows)]


def _deploy_graph(report) -> list[str]:
    """``--quantize auto`` (step ``choose-deploy``): every variant built, its dev metric, speed at the
    step's batch against dynamic INT8 with its 95% interval, size, and why it was or was not chosen."""
    out = []
    metric = _dict(report.get("data")).get("metric_name") or "accuracy"
    for s in _list(report.get("steps")):
        m = _dict(s.get("metrics"))
        if s.get("name") != "choose-deploy" or not _list(m.get("variants")):
            continue
        rows = []
        for v in _list(m.get("variants")):
            r = v.get("ratio_vs_dynamic")
            ratio = ("reference" if v.get("variant") == "dynamic" else fmt_ratio(r[0]) + fmt_ratio_interval(r[1:])
                     if isinstance(r, list) and len(r) == 3 else DASH)
            rows.append([f"**{v.get('variant')}**" if v.get("chosen") else v.get("variant"),
                         DASH if _num(v.get("dev_metric")) is None else f"{v['dev_metric']:.4f}",
                         fmt_ms(v.get("ms")), fmt_ms(v.get("p50_ms")), ratio, _mb1(v.get("size_mb")), v.get("why")])
        rows += [[k, DASH, DASH, DASH, DASH, DASH, f"build failed: {e}"] for k, e in _dict(m.get("failed")).items()]
        b = m.get("batch", 1)
        out += ["## Deployment graph (--quantize auto)",
                f"Chosen: **{m.get('chosen')}**. Each variant scored on dev and timed side by side on real dev "
                f"texts at b{b}; the fastest within {m.get('tolerance', 0):g} point(s) of the most accurate"
                + (f" and at least {fmt_pct(m.get('floor'), 2)}" if _num(m.get("floor")) else "") + " is deployed"
                + (" (every variant was below the floor: the most accurate)" if m.get("below_floor") else "") + ".",
                _table(["Variant", f"dev {metric}", f"ms b{b} (median per input)", "p50 ms", "× vs dynamic (95%)",
                        "MB", "chosen / why not"], rows)]
    return out


def _hidden_search(report) -> list[str]:
    """``--hidden-width auto``: the widths the search tried (``fisher``'s ``hidden_search``)."""
    for s in _list(report.get("steps")):
        m = _dict(s.get("metrics"))
        if _list(m.get("hidden_search")):
            rows = [[r.get("width"), fmt_ratio(r.get("predicted_speedup")), fmt_ratio(r.get("measured_speedup")),
                     fmt_pct(r.get("dev_accuracy"), 2), "**chosen**" if r.get("width") == m.get("hidden_chosen") else ""]
                    for r in _list(m.get("hidden_search"))]
            return ["## Hidden width (--hidden-width auto)",
                    "Each width searched, narrowed and scored before recovery on dev (eval not read).",
                    _table(["Hidden width", "predicted", "measured (search)", "dev", "result"], rows)]
    return []


def _sizes(report) -> list[str]:
    """Where each model's file bytes go: embeddings (the vocabulary table), encoder, head."""
    models = _dict(report.get("models"))
    rows = []
    for label in _labels(report):
        split = _dict(_dict(models.get(label)).get("size_split"))
        if not split:
            continue
        total = _num(split.get("total_bytes"))
        rows.append([label, *(f"{fmt_mb(split.get(f'{p}_bytes'))} ({fmt_pct(_ratio(split.get(f'{p}_bytes'), total))})"
                              for p in SIZE_PARTS), fmt_mb(total)])
    if not rows:
        return []
    return ["## Size on disk", _table(["Model", *(f"{p} MB (share)" for p in SIZE_PARTS), "file MB"], rows)]


def _gates(report) -> list[str]:
    from compressor.gates import render_markdown as gates_markdown
    return gates_markdown(_list(report.get("gates")))


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _list(x) -> list:
    return [r for r in x if isinstance(r, dict)] if isinstance(x, list) else []


def _cell(x) -> str:
    text = DASH if x is None or x == "" else str(x)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(headers, rows) -> str:
    return tabulate([[_cell(c) for c in r] for r in rows], headers=[_cell(h) for h in headers],
                    tablefmt="pipe", disable_numparse=True)


def _profiles(report) -> list[dict]:
    need = ("model", "target", "batch", "seq_len")
    return [p for p in _list(report.get("profiles")) if all(k in p for k in need)]


def _shape(p) -> str:
    return f"b{p['batch']}xreal" if p.get("shape_kind") == "real" else f"b{p['batch']}xs{p['seq_len']}"


def headline_shapes(profiles: list[dict]) -> list[tuple[str, str]]:
    """The (target, shape) pairs of the headline table: per target the smallest and largest
    batch, at real eval-text lengths when measured, else at the longest fixed length."""
    out = []
    for target in dict.fromkeys(p["target"] for p in profiles):
        rows = [p for p in profiles if p["target"] == target]
        pool = [p for p in rows if p.get("shape_kind") == "real"]
        if not pool:
            longest = max((p["seq_len"] for p in rows if _num(p["seq_len"]) is not None), default=None)
            pool = [p for p in rows if p["seq_len"] == longest] or rows
        batches = sorted({p["batch"] for p in pool if _num(p["batch"]) is not None})
        for b in dict.fromkeys(batches[:1] + batches[-1:]):
            out.append((target, _shape(next(p for p in pool if p["batch"] == b))))
    return out


ROW_ORDER = (BASELINE, "dense-int8", CANDIDATE)


def _labels(report) -> list[str]:
    models, profiles = _dict(report.get("models")), _profiles(report)
    labels = list(dict.fromkeys([*models, *(p["model"] for p in profiles)]))
    return sorted(labels, key=lambda m: ROW_ORDER.index(m) if m in ROW_ORDER else len(ROW_ORDER))


def _headline(report) -> list[str]:
    run, models, profiles = _dict(report.get("run")), _dict(report.get("models")), _profiles(report)
    dense = _dict(models.get(BASELINE))
    shapes = headline_shapes(profiles)
    ms = {(p["model"], p["target"], _shape(p)): speed_ms(p) for p in profiles}
    acc_targets = [t for t in dict.fromkeys(t for m in models.values()
                                            for t in _dict(_dict(m).get("accuracy_by_target")))
                   if t != "cpu"]
    regression, tagging, multi = _regression(report), _tagging(report), _multi_label(report)
    score, what = ((fmt_r, "Pearson r") if regression else (fmt_r, "Fidelity") if _embeddings(report)
                   else ((lambda x: fmt_pct(x, 2)), "Entity F1" if tagging else "Micro F1" if multi
                         else "SQuAD F1" if _qa(report) else "Accuracy"))
    headers = ["Model", "Method", "Sparsity", f"{what} (torch)", f"{what} (ONNX)",
               *(["Spearman (ONNX)"] if regression else []),
               *(["Macro F1 (ONNX)", "Threshold (dev)"] if multi else []),
               *(["Precision (ONNX)", "Recall (ONNX)"] if tagging or multi else []),
               *(["Exact match (ONNX)"] if _qa(report) else []), "% of dense", "Gap closed",
               *(f"{what} on {t} (% of dense)" for t in acc_targets), "Size (MB)", "× smaller"]
    headers += [f"latency {target} {shape} ms (× faster)" for target, shape in shapes]
    rows = []
    for label in _labels(report):
        m = _dict(models.get(label))
        baseline = label.startswith(BASELINE)
        method = "baseline" if baseline else m.get("method") or run.get("method")
        if m.get("int8"):
            method = f"{method or DASH} + INT8"
        sparsity = m.get("sparsity", None if baseline else run.get("sparsity"))
        gap = fmt_pct(m.get("gap_closed")) + (" (collapse)" if m.get("collapse") else "")
        row = [label, method, fmt_pct(sparsity), score(m.get("accuracy_torch")), score(m.get("accuracy_onnx")),
               *([fmt_r(m.get("spearman_onnx"))] if regression else []),
               *([fmt_pct(m.get("macro_f1_onnx"), 2), _fmt_threshold(m.get("threshold"))] if multi else []),
               *([fmt_pct(m.get("precision_onnx"), 2), fmt_pct(m.get("recall_onnx"), 2)] if tagging or multi else []),
               *([fmt_pct(m.get("exact_match_onnx"), 2)] if _qa(report) else []),
               fmt_pct(_ratio(_accuracy(m), _accuracy(dense))), gap]
        for t in acc_targets:
            acc = _dict(m.get("accuracy_by_target")).get(t)
            ratio = _ratio(acc, _dict(dense.get("accuracy_by_target")).get(t))
            row.append(score(acc) + (f" ({fmt_pct(ratio)})" if ratio is not None else ""))
        row += [fmt_mb(m.get("size_bytes")), fmt_ratio(_ratio(dense.get("size_bytes"), m.get("size_bytes")))]
        for target, shape in shapes:
            mine, base = ms.get((label, target, shape)), ms.get((BASELINE, target, shape))
            row.append(latency_cell(mine, base))
        rows.append(row)
    out = ["## Summary", _table(headers, rows) if rows else "No models were recorded."]
    summary = _dict(report.get("summary"))
    speed = "; ".join(f"{fmt_ratio(x)} faster on {t} {s}"
                      for t, by_shape in _dict(summary.get("speedup")).items()
                      for s, x in _dict(by_shape).items() if (t, s) in shapes)
    out.append(f"{what} retained: {fmt_pct(summary.get('accuracy_retention'))}; "
               f"size: {fmt_ratio(summary.get('size_ratio'))} smaller; "
               f"latency: {speed or DASH}.")
    if _num(run.get("speedup_asked")) is not None:
        gate = next((g for g in _list(report.get("gates")) if g.get("name") == "speedup_asked"), {})
        iv = asked_interval(report)
        out.append(f"Speedup asked {fmt_ratio(run['speedup_asked'])}, predicted by the latency table "
                   f"{fmt_ratio(run.get('speedup_predicted'))}, measured {fmt_ratio(gate.get('measured'))}"
                   f"{fmt_ratio_interval(iv)} over {run.get('speedup_reference')} at {run.get('speedup_shape')}"
                   + ("." if gate.get("passed") else " — **missed by more than 10%**.")
                   + (" The gate judges the point estimate." if iv else ""))
    verdict = _dict(summary.get("versus_dense_int8")).get("verdict")
    if verdict:
        out.append(f"**{verdict}**")
    out += _accuracy_intervals(report)
    data = _dict(report.get("data"))
    collapsed = ", ".join(label for label in _labels(report) if _dict(models.get(label)).get("collapse"))
    if _embeddings(report):
        out += _embedding_quality(report)
    elif regression or tagging or multi or _num(data.get("majority_accuracy")) is not None:
        what, level = (TRIVIAL_TEXT["regression"] if regression else TRIVIAL_TEXT["tagging"] if tagging else
                       TRIVIAL_TEXT["multi-label"] if multi else (
            TRIVIAL_TEXT["question-answering"][0].format(fmt_pct(data.get("majority_accuracy"), 2)),
            TRIVIAL_TEXT["question-answering"][1]) if _qa(report) else (
            f"Gap closed = (accuracy - majority) / (dense - majority), with the majority-class accuracy of "
            f"the eval split {fmt_pct(data['majority_accuracy'], 2)}.", "the majority-class level"))
        out.append(what + (f" **Collapse: {collapsed} score at {level}: not a result.**" if collapsed else ""))
    real = [p for p in profiles if p.get("shape_kind") == "real"]
    if real:
        lens = sorted({n for p in real for n in (p.get("padded_lens") or []) if _num(n) is not None})
        span = f" ({lens[0]}-{lens[-1]} tokens here)" if lens else ""
        out.append(f"Shapes: `bNxsL` = N sequences of L tokens; `bNxreal` = batches of N real eval "
                   f"texts, each batch padded to its longest text{span}. Latency (ms) and × faster: the "
                   f"p50 at a fixed shape; at a real shape each batch's median, averaged over the "
                   f"batches (every text counts once).")
    return out


EMBEDDING_QUALITY = {"fidelity": "Fidelity (cosine to dense)", "neighbours": "Top-10 neighbours shared",
                     "probe": "Linear probe accuracy", "sts": "STS Spearman", "ndcg": "Retrieval nDCG@10",
                     "recall": "Retrieval recall@10"}


TRIVIAL_TEXT = {
    "regression": ("Regression task: every score is Pearson's r of the single output on the eval split "
                   "(Spearman's rho beside it). Gap closed = r / r(dense): the trivial baseline, predicting "
                   "the train mean, scores 0.", "the level of a constant prediction"),
    "tagging": ("Token classification: every score is entity-level micro F1 on the eval sentences (exact "
                "spans under strict IOB2, each word tagged at its first sub-word). Gap closed = F1 / F1(dense): "
                "the trivial baseline, tagging every word O, scores 0.", "the level of tagging every word O"),
    "multi-label": ("Multi-label: every score is micro F1 over the (text, label) decisions on the eval split, "
                    "each label predicted where its sigmoid output reaches the model's one threshold, chosen on "
                    "dev (0.05..0.95) and applied on eval; macro F1 beside it. Gap closed = F1 / F1(dense): the "
                    "trivial baseline, predicting no label, scores 0.", "the level of predicting no label"),
    "question-answering": ("Question answering: every score is SQuAD F1 over the eval questions (official "
                           "normalization, best over the gold answers, the answer read from every window of the "
                           "context), exact match beside it. Gap closed = (F1 - trivial) / (F1(dense) - trivial): "
                           "the trivial baseline, the empty answer (always answering \"\"), scores the fraction of "
                           "questions without an answer, {} here.", "the level of always answering \"\"")}
"""What the headline's scores are and where a collapse sits, per task type (classification's
sentence names the eval split's majority-class accuracy)."""


def _embedding_quality(report) -> list[str]:
    """An embedding task's quality table: per row each measure (:data:`EMBEDDING_QUALITY`) with
    its 95% interval and % of dense, then the compressed model's paired differences."""
    models = _dict(report.get("models"))
    keys = [k for k in EMBEDDING_QUALITY if any(k in _dict(_dict(m).get("embedding")) for m in models.values())]
    if not keys:
        return []
    rows = []
    for label in _labels(report):
        q = _dict(_dict(models.get(label)).get("embedding"))
        cells = []
        for k in keys:
            e = _dict(q.get(k))
            if not e:  # a measure that does not apply to this row (a static model's fidelity)
                cells.append(DASH)
                continue
            pair = _pair(e.get("interval"))
            iv = f" ({fmt_r(pair[0])}..{fmt_r(pair[1])})" if pair else ""
            cells.append(f"{fmt_r(e.get('value'))}{iv}, {fmt_pct(_num(e.get('percent_of_dense')) and e['percent_of_dense'] / 100)}")
        rows.append([label, *cells])
    out = ["### Embedding quality (eval texts; 95% interval, % of dense)",
           _table(["Model", *(EMBEDDING_QUALITY[k] for k in keys)], rows)]
    pairs = _dict(_dict(models.get(CANDIDATE)).get("versus_paired_embedding"))
    lines = [f"compressed - {ref}: " + "; ".join(
        f"{EMBEDDING_QUALITY[k].split(' (')[0].lower()} {d['points']:+.2f} points{fmt_points_interval(d)}"
        for k, d in _dict(by).items() if k in EMBEDDING_QUALITY and _num(_dict(d).get("points")) is not None)
        for ref, by in pairs.items()]
    out.append("Embedding task: fidelity is the mean cosine of each eval text's sentence embedding to the "
               "dense PyTorch model's; top-10 neighbours, the share of each eval text's 10 nearest eval "
               "texts (cosine) that the dense model also puts there; the linear probe, a logistic "
               "regression on frozen embeddings of training texts scored on the eval texts' class labels. "
               "Gap closed = (fidelity - trivial) / (dense - trivial), trivial = one vector for every "
               f"text ({fmt_r(_dict(report.get('data')).get('majority_accuracy'))}). "
               + ("Paired bootstrap over the same texts: " + " | ".join(lines) + "." if lines else ""))
    static = next((label for label, m in models.items() if _dict(m).get("static_baseline")), None)
    if static:
        s = _dict(models[static]["static_baseline"])
        out.append(f"{static}: a static-embedding model (`{s.get('source')}`, {s.get('dimensions', DASH)} dimensions), "
                   "run as an ONNX graph (token lookup and mean) that matches model2vec's encode within "
                   f"{DASH if _num(s.get('max_abs_diff')) is None else format(s['max_abs_diff'], '.1e')} on "
                   f"{s.get('checked_texts', DASH)} eval texts, profiled on the "
                   "same texts; fidelity does not apply (its vectors live in another space), its top-10 "
                   "neighbours are its own, compared with the dense model's.")
    return out


def asked_interval(report: dict) -> dict | None:
    """The 95% interval of the speedup the ``--speedup`` gate measures: the compressed model's
    ``speedup_interval`` over ``run.speedup_reference`` at ``run.speedup_shape`` (``cpu b1xreal``),
    or None (no ``--speedup``, a fixed shape, or a report from before intervals)."""
    run = _dict(_dict(report).get("run"))
    where, reference = run.get("speedup_shape"), run.get("speedup_reference") or BASELINE
    for p in _profiles(_dict(report)):
        if p["model"] == CANDIDATE and f"{p['target']} {_shape(p)}" == where:
            iv = _dict(_dict(p.get("speedup_interval")).get(reference))
            if _pair(iv) is not None:
                return iv
    return None


def _accuracy_intervals(report) -> list[str]:
    """One line: each row's eval metric with its 95% interval (accuracy: Wilson; regression:
    bootstrap of Pearson's r over rows; token classification: of entity F1 over sentences), and
    the compressed model's paired bootstrap differences
    (points, with the discordant counts for accuracy); nothing for a report without intervals."""
    models, regression = _dict(report.get("models")), _regression(report) or _embeddings(report)
    fmt = fmt_r if regression else (lambda x: fmt_pct(x, 2))
    values = [f"{label} {fmt(pair[0])}..{fmt(pair[1])}" for label in _labels(report)
              if (pair := _pair(_dict(models.get(label)).get("accuracy_interval"))) is not None]

    def detail(ref, d):
        rows = "" if regression or _tagging(report) or _multi_label(report) or _qa(report) else (
            f"only compressed right on {d.get('compressed_only', DASH)} rows, "
            f"only {ref} on {d.get('reference_only', DASH)}, ")
        return f"({rows}n = {d.get('n', DASH)})"
    unit = (" points of fidelity" if _embeddings(report)
            else " points of F1" if _tagging(report) or _multi_label(report) or _qa(report)
            else " points of r" if regression else " points")
    diffs = [f"compressed - {ref}: {d['points']:+.2f}{unit}{fmt_points_interval(d)} {detail(ref, d)}"
             for ref, d in _dict(_dict(models.get(CANDIDATE)).get("versus_paired")).items()
             if isinstance(d, dict) and _num(d.get("points")) is not None]
    if not values and not diffs:
        return []
    what, paired = ((" (bootstrap over rows): fidelity ", "; paired over the same rows: ") if _embeddings(report)
                    else (" (bootstrap over sentences): entity F1 ", "; paired over the same sentences: ")
                    if _tagging(report)
                    else (" (bootstrap over rows): micro F1 ", "; paired over the same rows: ") if _multi_label(report)
                    else (" (bootstrap over questions): SQuAD F1 ", "; paired over the same questions: ")
                    if _qa(report)
                    else (" (bootstrap over rows): Pearson r ", "; paired over the same rows: ") if regression
                    else (": accuracy (Wilson) ", "; paired bootstrap over the same rows: "))
    return ["95% intervals on the eval split" + what + (", ".join(values) or DASH)
            + (paired + "; ".join(diffs) if diffs else "") + "."]


def _fmt_threshold(t) -> str:
    return DASH if _num(t) is None else f"{t:.2f}"


def latency_cell(ms, baseline_ms) -> str:
    """``"12.30 (×2.05)"``: latency in ms and the speedup over the baseline's at that shape."""
    ratio = _ratio(baseline_ms, ms)
    return fmt_ms(ms) + (f" ({fmt_ratio(ratio)})" if ratio is not None else "")


def _grid(report) -> list[str]:
    profiles = _profiles(report)
    if not profiles:
        return []
    labels = [m for m in _labels(report) if any(p["model"] == m for p in profiles)]
    ms = {(p["model"], p["target"], _shape(p)): speed_ms(p) for p in profiles}
    headers = ["Target", "Shape", *(f"{m} (ms)" for m in labels),
               *(f"× faster {m}" for m in labels if m != BASELINE)]
    rows = []
    for target, shape in dict.fromkeys((p["target"], _shape(p)) for p in profiles):
        base = ms.get((BASELINE, target, shape))
        rows.append([target, shape, *(fmt_ms(ms.get((m, target, shape))) for m in labels),
                     *(fmt_ratio(_ratio(base, ms.get((m, target, shape)))) for m in labels
                       if m != BASELINE)])
    return ["## Latency grid", _table(headers, rows)]


def _latency(report) -> list[str]:
    profiles = _profiles(report)
    out = ["## Latency"]
    if not profiles:
        return out + ["No latency profiles were recorded."]
    if fallback_text(report):
        out.append("> **WARNING:** rows marked **YES** under Fallback ran on another execution "
                   "provider than the one asked for (see the top of this report).")
    gpu = any(_num(p.get("device_memory_mb")) is not None for p in profiles)
    headers = ["Target", "Model", "Shape", "p50 (ms)", "p90 (ms)", "p99 (ms)", "Throughput (samples/s)",
               "First run (ms)", "Peak RSS (MB)", *(["Device memory (MB)"] if gpu else []),
               "Providers used", "Fallback"]
    rows = [[p["target"], p["model"], _shape(p), fmt_ms(p.get("p50_ms")), fmt_ms(p.get("p90_ms")),
             fmt_ms(p.get("p99_ms")), DASH if _num(p.get("throughput")) is None else f"{p['throughput']:.1f}",
             fmt_ms(p.get("first_run_ms")), _mb1(p.get("peak_rss_mb")),
             *([_mb1(p.get("device_memory_mb"))] if gpu else []),
             ", ".join(p.get("providers_used") or []) or DASH,
             "**YES**" if p.get("fallback") else "no"] for p in profiles]
    first = profiles[0]
    note = (f"Timed {first.get('runs', DASH)} interleaved rounds (every model once per round, order "
            f"rotated) after {first.get('warmup', DASH)} warm-up runs; first run = session creation "
            f"+ first inference. Peak RSS is process-wide.")
    if any(p["target"] == "tensorrt" for p in profiles):
        note += " On tensorrt the first run includes the engine build (cached for later runs)."
    if gpu:
        note += (" Device memory is read from nvidia-smi after the runs ("
                 f"{first.get('device_memory_source') or 'source unknown'}).")
    return out + [_table(headers, rows), note]


def _mb1(x) -> str:
    return DASH if _num(x) is None else f"{x:.1f}"


def _metrics_text(metrics, limit: int = 8) -> str:
    items = []
    for k, v in _dict(metrics).items():
        if isinstance(v, float):
            items.append(f"{k}={v:.4g}")
        elif isinstance(v, (int, bool)) or (isinstance(v, str) and len(v) <= 40):
            items.append(f"{k}={v}")
    return "; ".join(items[:limit]) + ("; …" if len(items) > limit else "")


def _steps(report) -> list[str]:
    steps = _list(report.get("steps"))
    if not steps:
        return ["## Steps", "No steps were recorded."]
    rows = [[s.get("index"), s.get("name"), s.get("spec"),
             DASH if _num(s.get("seconds")) is None else f"{s['seconds']:.1f}",
             "yes" if s.get("modified") else "no", _metrics_text(s.get("metrics"))] for s in steps]
    return ["## Steps", _table(["#", "Step", "Spec", "Seconds", "Modified", "Key metrics"], rows)]


def _per_layer(report) -> list[str]:
    out = []
    for s in _list(report.get("steps")):
        layers = _dict(_dict(s.get("metrics")).get("per_layer"))
        if not layers:
            continue
        cols = list(dict.fromkeys(k for v in layers.values() if isinstance(v, dict) for k in v))
        if cols:
            rows = [[name, *(_fmt_value(_dict(v).get(c)) for c in cols)] for name, v in layers.items()]
            table = _table(["Layer", *cols], rows)
        else:
            table = _table(["Layer", "Sparsity"], [[n, fmt_pct(v)] for n, v in layers.items()])
        out += [f"## Per-layer sparsity ({s.get('name') or DASH})", table]
    return out


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return DASH if v is None else str(v)


def _context(report) -> list[str]:
    run, data, machine = (_dict(report.get(k)) for k in ("run", "data", "machine"))
    tool = _dict(report.get("tool"))
    out = []
    if data:
        labels = data.get("label_names")
        regression, embeddings, tagging = _regression(report), _embeddings(report), _tagging(report)
        multi = _multi_label(report)
        out += ["## Data", _table(["Task", "Train", "Dev (selection)", "Eval (reported)", "Labels",
                                   "Trivial baseline" if regression or embeddings or tagging or multi
                                   or _qa(report) else "Majority class"], [[
            data.get("task"), _train_cell(data), data.get("dev_size"), data.get("eval_size"),
            "a float score (regression)" if regression else
            f"answer spans (SQuAD v{data.get('squad_version')}, doc stride {data.get('doc_stride')})" if _qa(report) else
            f"the dense model's embeddings ({data.get('embedding_dimension')} dimensions)" if embeddings else
            ", ".join(map(str, labels)) if isinstance(labels, list) else data.get("num_labels"),
            "train mean: Pearson r 0" if regression else "all O: entity F1 0%" if tagging else
            "no label: micro F1 0%" if multi else
            f"the empty answer: SQuAD F1 {fmt_pct(data.get('majority_accuracy'), 2)}" if _qa(report) else
            f"one vector for all: fidelity {fmt_r(data.get('majority_accuracy'))}" if embeddings else
            fmt_pct(data.get("majority_accuracy"), 2)]]),
                "Epochs and settings are chosen on the dev split, carved from the training data; "
                "the eval split is only measured."]
        unlabeled = _dict(data.get("unlabeled"))
        if unlabeled:
            out.append(f"Unlabeled texts (--unlabeled): {unlabeled.get('texts', DASH)} from `{unlabeled.get('file')}`, "
                       "labelled with the teacher's embeddings and trained on beside the task's texts; "
                       f"{unlabeled.get('in_dev_or_eval', DASH)} also in dev/eval left out (no leak), "
                       f"{unlabeled.get('in_train', DASH)} already training texts.")
        budget = [f"{st.get('name')} {_dict(st.get('metrics')).get('epochs') or DASH} epoch(s), "
                  f"{_dict(st.get('metrics'))['steps']} optimizer steps"
                  for st in _list(report.get("steps")) if _num(_dict(st.get("metrics")).get("steps"))]
        if budget:
            out.append("Training budget: " + "; ".join(budget) + ".")
    rows = [["tool", f"{tool.get('name', 'compressor')} {tool.get('version', '')}".strip()],
            ["created", report.get("created")], *([k, v] for k, v in machine.items())]
    out += ["## Machine", _table(["Item", "Value"], rows)]
    out += ["## Run", _table(["Item", "Value"], [["pipeline", f"`{run['pipeline']}`" if run.get("pipeline")
                                         else None], ["seed", run.get("seed")],
                                        ["model path", run.get("model_path")],
                                        ["targets", ", ".join(map(str, run.get("targets") or []))],
                                        *_grid_rows(_dict(report.get("profile_grid")))])]
    out += ["Command:", f"```\n{run.get('command') or DASH}\n```"]
    return out


def _train_cell(data: dict):
    """The Train cell: the task's training texts, ``+ N unlabeled`` with ``--unlabeled``."""
    extra = _dict(data.get("unlabeled")).get("texts")
    return f"{data.get('train_size')} + {extra} unlabeled" if extra else data.get("train_size")


def _operators(report) -> list[str]:
    """Where the time goes: ONNX Runtime's profiler per operator type at b1 real texts, each
    model's milliseconds per text and share of its kernel time (:mod:`compressor.op_profile`)."""
    from compressor.op_profile import top_rows
    out = []
    for target, by_model in _dict(_dict(report.get("profile_grid")).get("op_breakdown")).items():
        labels = [m for m in _labels(report) if m in by_model] or list(by_model)
        order = sorted(labels, key=lambda m: m != "compressed")  # the deployment's operators first, by time
        ops = list(dict.fromkeys(r["op"] for m in order for r in top_rows(by_model[m])))
        cells = {m: {r["op"]: r for r in top_rows(by_model[m])} for m in labels}
        rows = [[op, *(f"{fmt_ms(cells[m][op]['ms_per_run'])} ({fmt_pct(cells[m][op]['share'])})"
                       if op in cells[m] else DASH for m in labels)] for op in ops]
        rows.append(["kernel total", *(fmt_ms(_dict(by_model[m]).get("kernel_ms_per_run")) for m in labels)])
        out += [f"## Where the time goes ({target}, b1 real texts)", _table(["Operator", *labels], rows),
                "ONNX Runtime's own profiler: kernel milliseconds per text (share of that model's kernel "
                "time), summed by operator type after ORT's graph optimizations; warm-up runs left out. "
                "Kernel time excludes the session's own overhead, so the totals are below the latencies above."]
    return out


def _real_batches_text(grid: dict) -> str:
    """``64 at b1, 8 at b8, 8 at b32``, or ``8 per batch size`` in reports from before the count
    depended on the batch size."""
    by_size = _dict(grid.get("real_batches_by_size"))
    if by_size:
        return ", ".join(f"{n} at b{b}" for b, n in by_size.items())
    return f"{grid.get('real_batches_per_size')} per batch size"


def _grid_rows(grid: dict) -> list[list]:
    """Run-table rows describing the profile grid and the eval set's token lengths."""
    if not grid:
        return []
    def ints(key):
        return ", ".join(map(str, grid.get(key) or [])) or DASH
    rows = [["batch sizes", ints("batch_sizes")], ["sequence lengths", ints("seq_lens")],
            ["timed runs / warm-up", f"{grid.get('runs', DASH)} / {grid.get('warmup', DASH)}"],
            ["real-length batches", _real_batches_text(grid) if grid.get("real_shapes") else "no"]]
    lens = _dict(grid.get("eval_token_lengths"))
    if lens.get("count"):
        rows.append(["eval token lengths", f"median {_fmt_value(lens.get('median'))}, p95 "
                     f"{_fmt_value(lens.get('p95'))}, max {_fmt_value(lens.get('max'))} "
                     f"({fmt_pct(lens.get('truncated'))} cut at {grid.get('max_length', DASH)})"])
    return rows
