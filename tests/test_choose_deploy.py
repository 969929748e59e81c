"""choose-deploy: the choice rule on stand-in numbers, the pass end to end on a tiny export (every
variant built, the chosen one equal to the same variant built directly, dev only), --quantize auto
through the CLI and with --max-drop."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_tiny_model, make_toy_task

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.data import TaskData
from compressor.errors import ConfigError
from compressor.onnx_utils import make_session, random_feeds
from passes.choose_deploy import ChooseDeploy, choose
from passes.export_onnx import Export
from passes.ort_fusion import OrtFuse
from passes.quantize import Quantize

ALL = "fp32+dynamic+per-channel+fused-dynamic+static"


def _rows(**kw):
    return {v: {"dev_metric": acc, "ms": ms} for v, (acc, ms) in kw.items()}


def test_choose_fastest_within_tolerance():
    rows = _rows(dynamic=(0.820, 1.7), per_channel=(0.824, 1.9), fused=(0.819, 1.4), static=(0.79, 5.6))
    chosen, why, below = choose(rows, tolerance=0.5)
    assert chosen == "fused" and not below
    assert why["per_channel"].startswith("slower") and "more than 0.5 point" in why["static"]


def test_choose_slower_more_accurate_when_the_fast_one_is_outside():
    rows = _rows(dynamic=(0.820, 1.7), fused=(0.810, 1.4))
    assert choose(rows, tolerance=0.5)[0] == "dynamic"
    assert choose(rows, tolerance=1.0)[0] == "fused"  # exactly 1 point below: still within


def test_choose_respects_the_floor_and_flags_all_below():
    rows = _rows(fp32=(0.85, 3.0), dynamic=(0.84, 1.7), fused=(0.83, 1.4))
    assert choose(rows, tolerance=5.0)[0] == "fused"
    chosen, why, below = choose(rows, tolerance=5.0, floor=0.845)
    assert chosen == "fp32" and not below and "below the floor" in why["fused"]
    chosen, why, below = choose(rows, tolerance=5.0, floor=0.9)
    assert chosen == "fp32" and below and "most accurate" in why["fp32"]


def test_bad_variants_name_the_allowed_set():
    allowed = "fp32, dynamic, per-channel, fused-dynamic, static"
    with pytest.raises(ConfigError, match=r"variants='dynamic\+int4'.*" + allowed):
        ChooseDeploy(variants="dynamic+int4")
    with pytest.raises(ConfigError, match="variants='dynamic,static'"):
        ChooseDeploy(variants="dynamic,static")
    with pytest.raises(ConfigError, match="tolerance=-1"):
        ChooseDeploy(tolerance=-1)
    from compressor.pipeline import parse_spec
    spec = ChooseDeploy(variants="dynamic+fp32", floor=0.8).to_spec()
    assert parse_spec(spec) == [ChooseDeploy(variants="dynamic+fp32", floor=0.8)]


def test_with_floor_adds_fp32_once():
    p = ChooseDeploy().with_floor(0.81234567)
    assert p.variants.split("+")[-1] == "fp32" and p.floor == 0.812346
    assert p.with_floor(-0.2).variants == p.variants and p.with_floor(-0.2).floor == 0.0


class _NoEval(list):
    """An eval split that fails the test when anything reads it."""

    def _fail(self, *a, **k):
        raise AssertionError("choose-deploy read the eval split")

    __iter__ = __len__ = __getitem__ = __bool__ = _fail


@pytest.fixture(scope="module")
def export(tokenizer, tmp_path_factory):
    model = make_tiny_model(layers=2, hidden=32, heads=4, ffn=64, seed=3)
    return Export(verify=False)(TorchModel(model, tokenizer), RunContext(tmp_path_factory.mktemp("fp32"))).artifact


def _direct(variant, fp32, tmp_path, data):
    ctx = RunContext(tmp_path / f"direct-{variant}", data=data)
    if variant == "fp32":
        return fp32
    if variant == "fused-dynamic":
        fp32 = OrtFuse(strict=False)(fp32, RunContext(tmp_path / "direct-fuse")).artifact
    opts = {"per-channel": {"per_channel": True}, "static": {"mode": "static"}}.get(variant, {})
    return Quantize(max_length=32, **opts)(fp32, ctx).artifact


def _logits(path, feeds):
    return make_session(path).run(["logits"], feeds)[0]


def test_pass_builds_scores_times_and_deploys_one_variant(export, tmp_path):
    toy = make_toy_task(n_train=48, n_eval=8, seed=1)
    data = TaskData("toy", toy.train[:32], _NoEval(), toy.label_names, dev=toy.train[32:])
    ctx = RunContext(tmp_path / "run", data=data)
    ctx.step_dir = tmp_path / "run" / "05-choose-deploy"
    res = ChooseDeploy(variants=ALL, runs=2, min_seconds=0.0, max_length=32, tolerance=100.0)(export, ctx)
    m, out = res.metrics, res.artifact
    assert [r["variant"] for r in m["variants"]] == ALL.split("+") and m["failed"] == {}
    assert sum(r["chosen"] for r in m["variants"]) == 1 and m["chosen"] == out.info["deploy_variant"]
    for r in m["variants"]:
        assert 0 <= r["dev_metric"] <= 1 and r["ms"] > 0 and r["p50_ms"] > 0 and r["size_mb"] > 0 and r["why"]
        assert r["ratio_vs_dynamic"] is not None and len(r["ratio_vs_dynamic"]) == 3
    fastest = min(m["variants"], key=lambda r: r["ms"])  # tolerance 100: every variant within
    assert m["chosen"] == fastest["variant"]
    assert out.folder == ctx.step_dir and (out.folder / "tokenizer.json").is_file()
    assert (out.folder / "config.json").is_file() and (out.folder / "variants" / "static").is_dir()
    assert bool(out.info.get("quantized")) == (m["chosen"] != "fp32")
    feeds = random_feeds(["input_ids", "attention_mask", "token_type_ids"], 2, 17, vocab_size=30522, seed=5)
    plain = TaskData("toy", data.train, [], data.label_names, dev=data.dev)
    built = {"fp32": export.path, **{v: sorted((out.folder / "variants" / v).iterdir())[-1] / "model.onnx"
                                    for v in ALL.split("+")[1:]}}
    for v, path in built.items():  # each variant as the existing passes build it, the deployed one too
        direct = _logits(_direct(v, export, tmp_path, plain).path, feeds)
        np.testing.assert_allclose(_logits(path, feeds), direct, atol=1e-6)
        if v == m["chosen"]:
            np.testing.assert_allclose(_logits(out.path, feeds), direct, atol=1e-6)


def test_run_step_and_default_spec_unchanged():
    from compressor.config import RunConfig
    from compressor.run import method_spec
    plain = method_spec(RunConfig(model="minilm", method="magnitude", task="rotten-tomatoes"))
    assert "quantize{mode=dynamic,max_length=64}" in plain and "choose-deploy" not in plain
    auto = method_spec(RunConfig(model="minilm", method="magnitude", task="rotten-tomatoes", quantize="auto"))
    assert "choose-deploy{max_length=64}" in auto and "quantize" not in auto


def test_budget_floors_each_candidate_and_records_its_variant(tmp_path, tokenizer, monkeypatch):
    import compressor.evaluation
    from compressor.budget import search
    from compressor.pass_base import StepRecord
    from compressor.pipeline import Pipeline
    from compressor.report_md import render_markdown
    from types import SimpleNamespace
    monkeypatch.setattr(compressor.evaluation, "evaluate", lambda *a, **k: 0.9)
    seen = {}

    class Stand:
        def __init__(self, ctx, dev_only, teacher, first_index):
            pass

        def screen(self, c):
            c.dev_pruned = 0.9

        def deploy(self, c, dense_dev, max_drop):
            seen[c.speedup] = c.parts[2].passes[0]
            c.records = [StepRecord(9, "choose-deploy", "choose-deploy", "x", 0.0, True, {"chosen": "fp32"})]
            c.dev_deployed, c.artifacts = 0.895, ("torch", "onnx", "fp32")
            return True

    dev = make_toy_task(n_train=20, n_eval=2).train
    data = TaskData("toy", dev, _NoEval(), ["a", "b"], dev=dev)
    ctx = RunContext(tmp_path, data=data)
    parts = lambda x: [Pipeline([]), Pipeline([]), Pipeline("choose-deploy")]  # noqa: E731
    teacher = SimpleNamespace(model=None, tokenizer=None)
    _, _, summary = search(SimpleNamespace(max_drop=2.0, max_length=16), ctx, teacher, parts, 2,
                           ladder=(1.5, 2.0), runner=Stand)
    p = seen[summary["chosen_speedup"]]
    assert p.floor == pytest.approx(0.88) and p.variants.endswith("+fp32")
    assert all(r["deploy_variant"] == "fp32" for r in summary["candidates"] if r["speedup_asked"] in seen)
    md = render_markdown({"run": {"max_drop": summary}})
    assert "deployed as" in md and "| fp32 " in md


def test_quantize_auto_through_the_cli(tmp_path, tokenizer):
    from conftest import run_method_cli
    code, out = run_method_cli(tmp_path, tokenizer, "magnitude", "--quantize", "auto")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    step = next(s for s in report["steps"] if s["name"] == "choose-deploy")
    assert {r["variant"] for r in step["metrics"]["variants"]} == {"dynamic", "per-channel", "fused-dynamic"}
    assert not any(s["name"] == "quantize" for s in report["steps"])
    assert report["models"]["compressed"]["int8"] and report["models"]["dense-int8"]["int8"]
    md = (out / "report.md").read_text()
    assert "## Deployment graph (--quantize auto)" in md and f"Chosen: **{step['metrics']['chosen']}**" in md
