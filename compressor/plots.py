"""Report plots as PNG bytes: accuracy vs latency (the one to read first), accuracy vs size,
latency vs batch, speedup per target.

matplotlib is imported inside the functions and drives the Agg canvas directly (no pyplot, no
global backend switch), so plotting works headless and from any thread. Every function returns
None when the data it needs is missing, and :func:`report_plots` leaves such plots out.
"""

from __future__ import annotations

import io
import math

DENSE = "dense"


def _num(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


# Fixed colours for the rows every run report has, so a model looks the same in every plot and
# every report; other rows (layer-dropped models, ...) take the rest in order.
MODEL_COLOURS = {DENSE: "#4d4d4d", "dense-int8": "#1f77b4", "compressed": "#d62728",
                 "compressed-fp32": "#ff7f0e", "compressed-int8": "#9467bd"}
SPARE_COLOURS = ("#2ca02c", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#aec7e8", "#98df8a",
                 "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d", "#7f7f7f")
ROW_ORDER = tuple(MODEL_COLOURS)


def model_colours(labels) -> dict:
    """``{label: colour}`` for the distinct ``labels``, in report row order (dense, dense-int8,
    compressed, ... then the rest as given): the fixed :data:`MODEL_COLOURS` for known rows, the
    :data:`SPARE_COLOURS` in turn for others; no two labels share a colour (past the palette,
    evenly spaced hues fill in)."""
    labels = list(dict.fromkeys(labels))
    labels.sort(key=lambda m: ROW_ORDER.index(m) if m in ROW_ORDER else len(ROW_ORDER))
    out = {m: MODEL_COLOURS[m] for m in labels if m in MODEL_COLOURS}
    spare = [c for c in SPARE_COLOURS if c not in out.values()]
    rest = [m for m in labels if m not in out]
    if len(rest) > len(spare):
        from matplotlib import colormaps
        from matplotlib.colors import to_hex
        extra = len(rest) - len(spare)
        spare += [to_hex(colormaps["hsv"](k / extra)) for k in range(extra)]
    out.update(zip(rest, spare))
    return {m: out[m] for m in labels}


WITHIN_POINTS = 1.0  # as compressor.report.WITHIN_POINTS: "as accurate" = within this many points
Z95 = 1.959963984540054


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a proportion ``p`` measured on ``n`` rows."""
    if n <= 0:
        return p, p
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(entry: dict, accuracy: float, eval_size) -> tuple[tuple[float, float] | None, str]:
    """``((lo, hi), how)`` around ``accuracy`` (in [0, 1]): the models entry's own
    ``accuracy_interval`` when it holds that accuracy, else a Wilson 95% interval on
    ``eval_size`` rows; ``(None, "")`` with neither."""
    given = entry.get("accuracy_interval")
    if isinstance(given, (list, tuple)) and len(given) == 2 and all(_num(x) is not None for x in given):
        lo, hi = sorted(float(x) for x in given)
        if hi > 1.0 + 1e-9:  # given in points
            lo, hi = lo / 100, hi / 100
        if lo - 1e-9 <= accuracy <= hi + 1e-9:
            return (lo, hi), "recorded"
    n = _num(eval_size)
    if n is not None and n >= 1:
        return wilson_interval(accuracy, int(n)), "wilson"
    return None, ""


SHAPE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def accuracy_vs_latency(report: dict) -> bytes | None:
    """PNG of :func:`accuracy_vs_latency_figure`, or None when the report lacks the data."""
    fig = accuracy_vs_latency_figure(report)
    return _png(fig) if fig is not None else None


def accuracy_vs_latency_figure(report: dict):
    """The picture to read first: each model's eval accuracy against its measured latency, one
    panel per headline shape (:func:`compressor.report_md.headline_shapes`: per target the
    smallest and largest batch, of real eval texts when measured, else at the longest fixed
    length), side by side, a row per target. One colour per model (:func:`model_colours`), one
    marker per shape, each point labelled. Accuracy bars: the 95% interval
    (:func:`accuracy_interval`); latency bars: fastest run to p90, around the latency the
    speedups use (:func:`compressor.profiling.speed_ms`). A dashed line at dense-int8's accuracy
    minus ``run.max_drop`` points (else :data:`WITHIN_POINTS`). None without a model that has
    both an accuracy and a profile at a headline shape."""
    from compressor.profiling import speed_ms
    from compressor.report_md import _accuracy, _shape, headline_shapes
    models = report.get("models") if isinstance(report.get("models"), dict) else {}
    need = ("model", "target", "batch", "seq_len")
    profiles = [p for p in report.get("profiles") or []
                if isinstance(p, dict) and all(k in p for k in need) and _num(speed_ms(p))]
    data = report.get("data") if isinstance(report.get("data"), dict) else {}
    run = report.get("run") if isinstance(report.get("run"), dict) else {}
    eval_size = data.get("eval_size")

    def acc_of(label, target):
        m = models.get(label) if isinstance(models.get(label), dict) else {}
        by_target = m.get("accuracy_by_target") if isinstance(m.get("accuracy_by_target"), dict) else {}
        acc = by_target.get(target) if _num(by_target.get(target)) is not None else _accuracy(m)
        return (_num(acc), m) if _num(acc) is not None else (None, m)

    panels = []
    for target, shape in headline_shapes(profiles):
        pts = []
        for p in profiles:
            if p["target"] != target or _shape(p) != shape or p["model"] not in models:
                continue
            acc, entry = acc_of(p["model"], target)
            if acc is None:
                continue
            ms = speed_ms(p)
            lo = min(ms, _num(p.get("min_ms")) or ms)
            hi = max(ms, _num(p.get("p90_ms")) or ms)
            interval, how = accuracy_interval(entry, acc, eval_size)
            pts.append({"model": p["model"], "ms": ms, "ms_lo": lo, "ms_hi": hi, "acc": acc,
                        "interval": interval, "how": how})
        if pts:
            panels.append((target, shape, pts))
    if not panels:
        return None
    targets = list(dict.fromkeys(t for t, _, _ in panels))
    ncols = max(sum(1 for t, _, _ in panels if t == target) for target in targets)
    colours = model_colours([pt["model"] for _, _, pts in panels for pt in pts])
    shapes = list(dict.fromkeys(s for _, s, _ in panels))
    markers = {s: SHAPE_MARKERS[i % len(SHAPE_MARKERS)] for i, s in enumerate(shapes)}
    drop = _num(run.get("max_drop"))
    drop = WITHIN_POINTS if drop is None else drop
    metric = data.get("metric") if isinstance(data.get("metric"), str) and data.get("metric") else "accuracy"
    fig = _figure(width=max(7.0, 5.4 * ncols), height=4.6 * len(targets) + 0.5)
    labels: list = []
    for k, (target, shape, pts) in enumerate(panels):
        row, col = targets.index(target), sum(1 for t, _, _ in panels[:k] if t == target)
        ax = fig.add_subplot(len(targets), ncols, row * ncols + col + 1)
        for pt in sorted(pts, key=lambda q: list(colours).index(q["model"])):
            y = 100 * pt["acc"]
            yerr = None
            if pt["interval"] is not None:
                yerr = [[y - 100 * pt["interval"][0]], [100 * pt["interval"][1] - y]]
            ax.errorbar([pt["ms"]], [y], yerr=yerr,
                        xerr=[[pt["ms"] - pt["ms_lo"]], [pt["ms_hi"] - pt["ms"]]],
                        fmt=markers[shape], color=colours[pt["model"]], markersize=8, capsize=3,
                        elinewidth=1.2, markeredgecolor="white", markeredgewidth=0.8, zorder=3,
                        label=pt["model"])
            labels.append(ax.annotate(
                pt["model"], (pt["ms"], y), textcoords="offset points", xytext=LABEL_OFFSETS[0],
                fontsize=8, color=colours[pt["model"]], zorder=4,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none",
                      "alpha": 0.8},
                arrowprops={"arrowstyle": "-", "color": colours[pt["model"]], "linewidth": 0.6,
                            "shrinkA": 0, "shrinkB": 5}))
            labels[-1].arrow_patch.set_visible(False)  # shown by _place_labels for far labels
        ref = next((pt for pt in pts if pt["model"] == "dense-int8"), None)
        if ref is not None:
            line = 100 * ref["acc"] - drop
            ax.axhline(line, color=colours["dense-int8"], linestyle="--", linewidth=1, zorder=1,
                       label=f"dense-int8 − {drop:g} point{'s' if drop != 1 else ''}")
            pts_word = f"point{'s' if drop != 1 else ''}"
            ax.annotate(f"dense-int8 − {drop:g} {pts_word}: within {drop:g} {pts_word} above the line",
                        (1.0, line),
                        xycoords=("axes fraction", "data"), xytext=(-4, 3), textcoords="offset points",
                        ha="right", va="bottom", fontsize=7, color=colours["dense-int8"])
        ax.set_xlim(left=0, right=max(pt["ms_hi"] for pt in pts) * 1.25)
        ax.margins(y=0.25)
        ax.set_xlabel(f"latency on {target} at {shape} (ms)  ← lower is better")
        ax.set_ylabel(f"eval {metric} (%)  ↑ higher is better")
        ax.set_title(f"{metric.capitalize()} vs latency: {target} {shape} ({_shape_words(shape)})",
                     fontsize=11)
        ax.grid(True, alpha=0.3)
    how: dict = {}
    for _, _, pts in panels:
        for pt in pts:
            how.setdefault(pt["how"], []).append(pt["model"])
    how = {h: list(dict.fromkeys(ms)) for h, ms in how.items()}
    acc_note = {"recorded": "95% interval as recorded",
                "wilson": f"95% Wilson interval on {eval_size} eval rows",
                "": "none (eval size not recorded)"}
    parts = [acc_note[h] + (f" ({', '.join(ms)})" if len(how) > 1 else "") for h, ms in how.items()]
    note = ("Vertical bars: " + "; ".join(parts) + " — each model alone; a difference between two "
            "models on the same rows is tighter.")
    note += "\nHorizontal bars: fastest timed run to p90; point: the latency the speedups use."
    fig.supxlabel(note, fontsize=8, color="0.3")
    _place_labels(fig, labels)
    return fig


LABEL_OFFSETS = ((7, 6), (7, -14), (-9, 6), (-9, -14), (14, 18), (14, -26), (-16, 18), (-16, -26),
                 (22, 30), (22, -38), (-24, 30), (-24, -38))
NEAR = 4  # offsets past this one are far from the point: they get a leader line


def _place_labels(fig, labels: list) -> None:
    """Move each point label to the first of :data:`LABEL_OFFSETS` (right-above, right-below,
    left-above, ...) where it overlaps no label placed before it and no other point of its panel;
    labels that fit nowhere keep the first offset."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # the final layout, so the extents below are where they are drawn
    placed: list = []
    for ann in labels:
        points = [other.axes.transData.transform(other.xy) for other in labels
                  if other is not ann and other.axes is ann.axes]
        for offset in LABEL_OFFSETS:
            ann.xyann = offset
            ann.set_horizontalalignment("left" if offset[0] > 0 else "right")
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(b) for b in placed) and not any(
                    box.x0 - 8 <= x <= box.x1 + 8 and box.y0 - 8 <= y <= box.y1 + 8 for x, y in points):
                break
        else:
            offset = LABEL_OFFSETS[0]
            ann.xyann = offset
            ann.set_horizontalalignment("left")
        if ann.arrow_patch is not None:
            ann.arrow_patch.set_visible(LABEL_OFFSETS.index(offset) >= NEAR)
        placed.append(ann.get_window_extent(renderer))


def _shape_words(shape: str) -> str:
    """``b1xreal`` -> ``batches of 1 real eval text``, ``b8xs128`` -> ``8 x 128 tokens``."""
    batch, _, rest = shape[1:].partition("x")
    if rest == "real":
        return f"batches of {batch} real eval text{'s' if batch != '1' else ''}"
    return f"{batch} × {rest[1:]} tokens" if rest.startswith("s") else shape


def accuracy_vs_size(points: list[dict], colours: dict | None = None) -> bytes | None:
    """Scatter of ``{"label", "size_mb", "accuracy"}`` points (accuracy in [0, 1]), each
    labelled, coloured by ``colours[label]`` when given (else dense grey, the rest blue); None
    with fewer than one complete point."""
    pts = [p for p in points if _num(p.get("size_mb")) is not None and _num(p.get("accuracy")) is not None]
    if not pts:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for p in pts:
        dense = str(p["label"]).split(" ")[-1] == DENSE
        colour = (colours or {}).get(p["label"]) or ("0.4" if dense else "C0")
        ax.scatter(p["size_mb"], 100 * p["accuracy"], marker="s" if dense else "o",
                   color=colour, s=40, zorder=3)
        ax.annotate(str(p["label"]), (p["size_mb"], 100 * p["accuracy"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("ONNX size (MB)")
    ax.set_ylabel("eval accuracy (%)")
    ax.set_title("Accuracy vs size")
    ax.grid(True, alpha=0.3)
    ax.margins(0.2)
    ax.set_xlim(left=0)
    return _png(fig)


def latency_vs_batch(profiles: list[dict]) -> bytes | None:
    """PNG of :func:`latency_vs_batch_figure`, or None without a timed profile."""
    fig = latency_vs_batch_figure(profiles)
    return _png(fig) if fig is not None else None


def latency_vs_batch_figure(profiles: list[dict]):
    """Latency (:func:`compressor.profiling.speed_ms`) against batch size, one panel per target:
    one colour per model (:func:`model_colours`), one line style per shape (solid = batches of
    real eval texts, dashed / dotted = fixed sequence lengths), and two legends (model, shape).
    Log-log axes. None without a timed profile."""
    from compressor.profiling import speed_ms
    rows = [p for p in profiles if _num(speed_ms(p)) and _num(p.get("batch"))]
    if not rows:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter
    targets = list(dict.fromkeys(p.get("target") for p in rows))
    colours = model_colours([p.get("model") for p in rows])
    seqs = sorted({_seq(p) for p in rows}, key=_seq_order)
    styles = {s: LINE_STYLES[i % len(LINE_STYLES)] for i, s in enumerate(seqs)}
    fig = _figure(width=max(7.2, 4.6 * len(targets) + 1.8), height=4.2)
    for i, target in enumerate(targets, start=1):
        ax = fig.add_subplot(1, len(targets), i)
        lines: dict = {}
        for p in rows:
            if p.get("target") == target:
                lines.setdefault((p.get("model"), _seq(p)), []).append((p["batch"], speed_ms(p)))
        for (model, seq), pts in sorted(lines.items(), key=lambda kv: (list(colours).index(kv[0][0]),
                                                                        seqs.index(kv[0][1]))):
            pts.sort()
            ax.plot([b for b, _ in pts], [ms for _, ms in pts], marker="o", markersize=4,
                    linestyle=styles[seq], linewidth=1.6, color=colours[model], label=f"{model} {seq}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({p["batch"] for p in rows if p.get("target") == target}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        for fmt in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            fmt(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("batch size")
        ax.set_ylabel("latency (ms, lower is better)")
        ax.set_title(f"Latency vs batch: {target}")
        ax.grid(True, which="both", alpha=0.3)
    model_handles = [Line2D([], [], color=c, marker="o", markersize=5, linewidth=2, label=str(m))
                     for m, c in colours.items()]
    shape_handles = [Line2D([], [], color="0.25", linestyle=styles[s], linewidth=1.6,
                            label=SEQ_NAMES.get(s, f"fixed length {s[1:]}")) for s in seqs]
    first = fig.legend(handles=model_handles, title="model", loc="outside right upper", fontsize=8,
                       title_fontsize=8)
    first.set_label("models")
    shape = fig.legend(handles=shape_handles, title="input shape", loc="outside right lower",
                       fontsize=8, title_fontsize=8, handlelength=3)
    shape.set_label("shapes")
    return fig


LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
SEQ_NAMES = {"real": "real eval texts"}


def _seq_order(seq: str):
    """Real texts first, then fixed lengths longest first."""
    if seq == "real":
        return (0, 0)
    try:
        return (1, -int(seq[1:]))
    except ValueError:
        return (2, 0)


def _seq(p: dict) -> str:
    return "real" if p.get("shape_kind") == "real" else f"s{p.get('seq_len')}"


def grouped_bars(groups: dict, title: str, ylabel: str = "× faster than dense",
                 reference: float | None = 1.0) -> bytes | None:
    """Grouped bar chart of ``{group: {series: value}}`` (e.g. shape -> target -> speedup),
    with a horizontal reference line; None when there is no value."""
    groups = {g: {s: v for s, v in (series or {}).items() if _num(v) is not None}
              for g, series in groups.items()}
    groups = {g: s for g, s in groups.items() if s}
    if not groups:
        return None
    series = list(dict.fromkeys(s for by in groups.values() for s in by))
    width = 0.8 / len(series)
    fig = _figure(width=max(6.4, 0.6 * len(groups) * max(1, len(series)) + 2), height=4.0)
    ax = fig.add_subplot()
    for k, name in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, g in enumerate(groups) if name in groups[g]]
        ys = [groups[g][name] for g in groups if name in groups[g]]
        bars = ax.bar(xs, ys, width=width, label=str(name), color=f"C{k % 10}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    if reference is not None:
        ax.axhline(reference, color="0.3", linewidth=1, linestyle=":")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([str(g) for g in groups], rotation=30 if len(groups) > 4 else 0, ha="right"
                       if len(groups) > 4 else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def report_plots(report: dict) -> dict[str, bytes]:
    """The plots of one run report, first the one to read first: ``{"accuracy_vs_latency",
    "accuracy_vs_size", "latency_vs_batch", "speedup_per_target"}`` (those the report has data
    for), as PNG bytes."""
    models = report.get("models") if isinstance(report.get("models"), dict) else {}
    points = []
    for label, m in models.items():
        m = m if isinstance(m, dict) else {}
        acc = m.get("accuracy_onnx") if _num(m.get("accuracy_onnx")) is not None else m.get("accuracy_torch")
        size = m.get("size_bytes")
        points.append({"label": label, "accuracy": acc,
                       "size_mb": size / 1e6 if _num(size) is not None else None})
    profiles = [p for p in report.get("profiles") or [] if isinstance(p, dict)]
    speedup = (report.get("summary") or {}).get("speedup") or {}
    by_shape: dict = {}
    for target, shapes in speedup.items():
        for shape, x in (shapes or {}).items():
            by_shape.setdefault(shape, {})[target] = x
    out = {"accuracy_vs_latency": accuracy_vs_latency(report),
           "accuracy_vs_size": accuracy_vs_size(points, model_colours(models)),
           "latency_vs_batch": latency_vs_batch(profiles),
           "speedup_per_target": grouped_bars(by_shape, "Speedup of the compressed model per target")}
    return {k: v for k, v in out.items() if v}
