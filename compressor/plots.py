"""Report plots as PNG bytes: accuracy vs size, latency vs batch, speedup per target.

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


def accuracy_vs_size(points: list[dict]) -> bytes | None:
    """Scatter of ``{"label", "size_mb", "accuracy"}`` points (accuracy in [0, 1]), each
    labelled; None with fewer than one complete point."""
    pts = [p for p in points if _num(p.get("size_mb")) is not None and _num(p.get("accuracy")) is not None]
    if not pts:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for p in pts:
        dense = str(p["label"]).split(" ")[-1] == DENSE
        ax.scatter(p["size_mb"], 100 * p["accuracy"], marker="s" if dense else "o",
                   color="0.4" if dense else "C0", s=40, zorder=3)
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
    """p50 latency against batch size, one panel per target, one line per model and sequence
    length (``real`` = batches of real eval texts); dense dashed. Log-log axes."""
    rows = [p for p in profiles if _num(p.get("p50_ms")) and _num(p.get("batch"))]
    targets = list(dict.fromkeys(p.get("target") for p in rows))
    if not rows:
        return None
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter
    fig = _figure(width=max(6.4, 4.2 * len(targets)), height=4.0)
    seqs = sorted({_seq(p) for p in rows}, key=lambda x: (x == "real", len(x), x))
    for i, target in enumerate(targets, start=1):
        ax = fig.add_subplot(1, len(targets), i)
        lines: dict = {}
        for p in rows:
            if p.get("target") == target:
                lines.setdefault((p.get("model"), _seq(p)), []).append((p["batch"], p["p50_ms"]))
        for (model, seq), pts in sorted(lines.items(), key=lambda kv: (kv[0][0] != DENSE, str(kv[0]))):
            pts.sort()
            ax.plot([b for b, _ in pts], [ms for _, ms in pts], marker="o",
                    linestyle="--" if model == DENSE else "-", label=f"{model} {seq}",
                    color=f"C{seqs.index(seq) % 10}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({p["batch"] for p in rows if p.get("target") == target}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        for fmt in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            fmt(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("batch size")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(f"Latency vs batch: {target}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


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
    """The plots of one run report: ``{"accuracy_vs_size", "latency_vs_batch",
    "speedup_per_target"}`` (those the report has data for), as PNG bytes."""
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
    out = {"accuracy_vs_size": accuracy_vs_size(points),
           "latency_vs_batch": latency_vs_batch(profiles),
           "speedup_per_target": grouped_bars(by_shape, "Speedup of the compressed model per target")}
    return {k: v for k, v in out.items() if v}
