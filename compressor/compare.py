"""``compress compare out1/ out2/ ...``: finished runs side by side, one row per run's compressed
model: accuracy (and % of its own dense baseline), size, and latency
(:func:`compressor.profiling.speed_ms`) with the speedup over that run's dense model at the headline shapes of every target. Markdown (a table for the
terminal) or a self-contained HTML page with accuracy-vs-size and speedup plots.
"""

from __future__ import annotations

from pathlib import Path

from compressor.errors import ConfigError
from compressor.profiling import speed_ms
from compressor.report import load_report
from compressor.report_md import (BASELINE, CANDIDATE, DASH, _dict, _num, _profiles, _ratio, _shape,
                                  _table, fallback_text, fmt_mb, fmt_pct, fmt_ratio, headline_shapes,
                                  latency_cell)


def load_runs(folders) -> list[tuple[str, dict]]:
    """``[(name, report)]`` for run folders (or report.json files); names are the folder names,
    made unique. ConfigError for fewer than one folder, ArtifactError for a missing report."""
    folders = [Path(f) for f in folders]
    if not folders:
        raise ConfigError("compare needs at least one run folder: got none")
    out, seen = [], {}
    for folder in folders:
        name = (folder.parent if folder.is_file() else folder).name or str(folder)
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name} ({seen[name]})", load_report(folder)))
    return out


def _accuracy(m: dict):
    return m.get("accuracy_onnx") if _num(m.get("accuracy_onnx")) is not None else m.get("accuracy_torch")


def compare_table(runs: list[tuple[str, dict]]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the side-by-side table (see the module doc)."""
    shapes = list(dict.fromkeys(s for _, rep in runs for s in headline_shapes(_profiles(rep))))
    acc_targets = list(dict.fromkeys(
        t for _, rep in runs for t in _dict(_dict(_dict(rep.get("models")).get(CANDIDATE)).get(
            "accuracy_by_target")) if t != "cpu"))
    headers = ["Run", "Model", "Method", "Sparsity", "Dense accuracy", "Accuracy", "% of dense",
               *(f"Accuracy on {t}" for t in acc_targets), "Size (MB)", "× smaller"]
    headers += [f"latency {target} {shape} ms (× faster)" for target, shape in shapes]
    rows = []
    for name, rep in runs:
        run, models = _dict(rep.get("run")), _dict(rep.get("models"))
        dense, comp = _dict(models.get(BASELINE)), _dict(models.get(CANDIDATE))
        ms = {(p["model"], p["target"], _shape(p)): speed_ms(p) for p in _profiles(rep)}
        row = [name + (" (FALLBACK)" if fallback_text(rep) else ""), run.get("model"),
               run.get("method"), fmt_pct(comp.get("sparsity", run.get("sparsity"))),
               fmt_pct(_accuracy(dense), 2), fmt_pct(_accuracy(comp), 2),
               fmt_pct(_ratio(_accuracy(comp), _accuracy(dense))),
               *(fmt_pct(_dict(comp.get("accuracy_by_target")).get(t), 2) for t in acc_targets),
               fmt_mb(comp.get("size_bytes")), fmt_ratio(_ratio(dense.get("size_bytes"), comp.get("size_bytes")))]
        for target, shape in shapes:
            mine, base = ms.get((CANDIDATE, target, shape)), ms.get((BASELINE, target, shape))
            row.append(latency_cell(mine, base))
        rows.append([DASH if c is None else c for c in row])
    return headers, rows


def render_compare_markdown(runs: list[tuple[str, dict]]) -> str:
    """The comparison as Markdown: fallback warnings, the table, and each run's command."""
    headers, rows = compare_table(runs)
    parts = [f"# Comparison of {len(runs)} run{'s' if len(runs) != 1 else ''}"]
    parts += [f"> {name}: {fallback_text(rep)}" for name, rep in runs if fallback_text(rep)]
    parts += [_table(headers, rows),
              "Ratios are against each run's own dense model, measured side by side in that run."]
    parts += ["## Commands", _table(["Run", "Command"], [
        [name, f"`{_dict(rep.get('run')).get('command')}`" if _dict(rep.get("run")).get("command")
         else DASH] for name, rep in runs])]
    return "\n\n".join(parts) + "\n"


def compare_plots(runs: list[tuple[str, dict]]) -> dict[str, bytes]:
    """Accuracy vs size of every run's dense and compressed model, and each run's speedup at
    the headline shapes."""
    from compressor.plots import accuracy_vs_size, grouped_bars
    points = []
    for name, rep in runs:
        for label, m in _dict(rep.get("models")).items():
            m = _dict(m)
            size = m.get("size_bytes")
            points.append({"label": f"{name} {label}", "accuracy": _accuracy(m),
                           "size_mb": size / 1e6 if _num(size) is not None else None})
    groups = {}
    for name, rep in runs:
        speed = _dict(_dict(rep.get("summary")).get("speedup"))
        groups[name] = {f"{t} {s}": _dict(speed.get(t)).get(s)
                        for t, s in headline_shapes(_profiles(rep))}
    out = {"accuracy_vs_size": accuracy_vs_size(points),
           "speedup_per_run": grouped_bars(groups, "Speedup of each run's compressed model")}
    return {k: v for k, v in out.items() if v}


def render_compare_html(runs: list[tuple[str, dict]]) -> str:
    """The comparison as one self-contained HTML page with plots."""
    from compressor.report_html import page, safe_plots, with_plots
    md = render_compare_markdown(runs)
    return page(f"Comparison of {len(runs)} runs",
                with_plots(md, safe_plots(compare_plots, runs), after="# Comparison"))
