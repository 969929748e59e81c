"""The report's plots: accuracy vs latency (the one to read first), latency vs batch, colours."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("matplotlib")

from matplotlib.colors import to_rgba  # noqa: E402

from compressor.plots import (accuracy_vs_latency_figure, latency_vs_batch_figure,  # noqa: E402
                              model_colours, report_plots, wilson_interval)

MODELS = ("dense", "dense-int8", "compressed", "compressed-fp32")
MS = {"dense": 4.0, "dense-int8": 2.0, "compressed": 1.0, "compressed-fp32": 1.5}
ACC = {"dense": 0.84, "dense-int8": 0.835, "compressed": 0.842, "compressed-fp32": 0.85}


def profile(model, batch, kind="real", seq=40, target="cpu"):
    ms = MS[model] * batch ** 0.8 * (1 if kind == "real" else seq / 40)
    return {"model": model, "target": target, "batch": batch, "seq_len": seq, "shape_kind": kind,
            "p50_ms": ms, "typical_ms": ms * 0.98, "p90_ms": ms * 1.2, "min_ms": ms * 0.8,
            "p95_ms": ms * 1.3, "p99_ms": ms * 1.4, "providers_used": ["CPUExecutionProvider"]}


def demo_report(real=True) -> dict:
    """Rows and shapes as a `make demo` report records them (real-text and fixed shapes)."""
    profiles = [profile(m, b, "fixed", s) for m in MODELS for b in (1, 8, 32) for s in (32, 128)]
    if real:
        profiles += [profile(m, b) for m in MODELS for b in (1, 8, 32)]
    models = {m: {"accuracy_onnx": ACC[m], "size_bytes": 10_000_000} for m in MODELS}
    models["dense-int8"]["accuracy_interval"] = [0.82, 0.85]
    return {"run": {"model": "minilm", "method": "fisher"}, "models": models, "profiles": profiles,
            "data": {"task": "rotten-tomatoes", "eval_size": 2500}}


def bars(container):
    """(x span, y span) of one errorbar's bars."""
    xs, ys = (None, None), (None, None)
    for coll in container.lines[2]:
        (x0, y0), (x1, y1) = coll.get_segments()[0]
        if x0 == x1:
            ys = tuple(sorted((y0, y1)))
        else:
            xs = tuple(sorted((x0, x1)))
    return xs, ys


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0.5, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    lo, hi = wilson_interval(1.0, 50)
    assert hi == 1.0 and lo == pytest.approx(0.9287, abs=1e-4)


def test_accuracy_vs_latency_at_b1_and_b32_real_texts():
    rep = demo_report()
    fig = accuracy_vs_latency_figure(rep)
    axes = fig.axes
    assert len(axes) == 2
    assert "cpu b1xreal" in axes[0].get_title() and "cpu b32xreal" in axes[1].get_title()
    assert "lower is better" in axes[0].get_xlabel() and "accuracy" in axes[0].get_ylabel()
    for ax, batch in zip(axes, (1, 32)):
        points = {c.get_label(): c for c in ax.containers}
        assert list(points) == list(MODELS)  # every row, in report order
        colours = [to_rgba(c.lines[0].get_color()) for c in points.values()]
        assert len(set(colours)) == len(colours)  # one colour per model
        for model, c in points.items():
            (x,), (y,) = c.lines[0].get_data()
            ms = MS[model] * batch ** 0.8
            assert x == pytest.approx(ms * 0.98)  # the latency the speedups use (typical_ms)
            assert y == pytest.approx(100 * ACC[model])
            (xlo, xhi), (ylo, yhi) = bars(c)
            assert (xlo, xhi) == (pytest.approx(ms * 0.8), pytest.approx(ms * 1.2))  # fastest..p90
            if model == "dense-int8":  # the recorded interval
                assert (ylo, yhi) == (pytest.approx(82.0), pytest.approx(85.0))
            else:  # Wilson on the eval rows
                lo, hi = wilson_interval(ACC[model], 2500)
                assert (ylo, yhi) == (pytest.approx(100 * lo), pytest.approx(100 * hi))
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(100 * ACC["dense-int8"] - 1)
        texts = {t.get_text() for t in ax.texts}
        assert set(MODELS) <= texts  # every point labelled
    markers = {ax.containers[0].lines[0].get_marker() for ax in axes}
    assert len(markers) == 2  # one marker per shape


def test_accuracy_vs_latency_falls_back_to_fixed_shapes_and_max_drop():
    rep = demo_report(real=False)
    rep["run"]["max_drop"] = 2.0
    fig = accuracy_vs_latency_figure(rep)
    assert ["b1xs128" in fig.axes[0].get_title(), "b32xs128" in fig.axes[1].get_title()] == [True, True]
    dashed = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert dashed[0].get_ydata()[0] == pytest.approx(100 * ACC["dense-int8"] - 2)


def test_accuracy_vs_latency_is_skipped_without_its_data():
    rep = demo_report()
    assert accuracy_vs_latency_figure({**rep, "profiles": []}) is None
    assert accuracy_vs_latency_figure({**rep, "models": {}}) is None
    no_acc = copy.deepcopy(rep)
    for m in no_acc["models"].values():
        m["accuracy_onnx"] = None
    assert accuracy_vs_latency_figure(no_acc) is None
    assert "accuracy_vs_latency" not in report_plots(no_acc)
    assert list(report_plots(rep))[0] == "accuracy_vs_latency"
    # no eval size, no dense-int8: points without accuracy bars and no dashed line, still a plot
    bare = copy.deepcopy(rep)
    del bare["data"], bare["models"]["dense-int8"]
    fig = accuracy_vs_latency_figure(bare)
    assert [c.get_label() for c in fig.axes[0].containers] == ["dense", "compressed", "compressed-fp32"]
    assert not [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]


def test_latency_vs_batch_one_colour_per_model_one_style_per_shape():
    fig = latency_vs_batch_figure(demo_report()["profiles"])
    (ax,) = fig.axes
    lines = [ln for ln in ax.get_lines() if ln.get_label().split(" ")[0] in MODELS]
    assert len(lines) == 12  # 4 models x (real, s128, s32)
    by_model: dict = {}
    by_shape: dict = {}
    for ln in lines:
        model, shape = ln.get_label().split(" ")
        by_model.setdefault(model, set()).add(to_rgba(ln.get_color()))
        by_shape.setdefault(shape, set()).add(str(ln.get_linestyle()))
    assert all(len(c) == 1 for c in by_model.values())  # a model keeps its colour
    assert len({c for cs in by_model.values() for c in cs}) == len(MODELS)  # no two models share one
    assert all(len(s) == 1 for s in by_shape.values())
    assert len({s for ss in by_shape.values() for s in ss}) == 3  # real, s128, s32 each their own
    legends = {lg.get_title().get_text(): [t.get_text() for t in lg.get_texts()] for lg in fig.legends}
    assert legends["model"] == list(MODELS)
    assert legends["input shape"] == ["real eval texts", "fixed length 128", "fixed length 32"]
    assert latency_vs_batch_figure([]) is None


def test_model_colours_are_distinct_and_stable():
    many = [f"drop-{i}" for i in range(30)] + ["compressed", "dense"]
    colours = model_colours(many)
    assert list(colours)[:2] == ["dense", "compressed"]
    assert len({to_rgba(c) for c in colours.values()}) == len(many)
    assert model_colours(["compressed", "dense"])["dense"] == colours["dense"]


def test_html_puts_the_accuracy_latency_plot_first_and_tables_fit():
    from compressor.report_html import render_html
    rep = demo_report()
    rep["steps"] = [{"index": 1, "name": "finetune", "spec": "finetune", "seconds": 1.0,
                     "metrics": {f"metric_{i}": 0.123456 for i in range(8)}}]
    html = render_html(rep)
    plots = html.split("<h2>Plots</h2>")[1]
    assert plots.lstrip().startswith('<figure class="lead"><img alt="Accuracy vs measured latency')
    assert html.count("<figure") == 3  # accuracy vs latency, accuracy vs size, latency vs batch
    assert html.count('<div class="table-wrap"><table>') == html.count("<table>") > 0
    assert ".table-wrap{max-width:100%;overflow-x:auto" in html
    assert '<td class="long">metric_0=0.1235' in html  # long cells wrap
