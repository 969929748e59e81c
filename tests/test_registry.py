"""Method facts live on the pass classes and the plugin tables; the core derives --method, the
student's start and the method's options from them; model folders a plugin wrote load through
its registered loader."""

from __future__ import annotations

import dataclasses

import pytest

from compressor import registry
from compressor.config import RunConfig
from compressor.pass_base import STARTS, Pass


def test_plugin_method_list_matches_the_classes():
    marked = {name for name in registry.PASSES if getattr(registry.get_pass(name), "is_method", False)}
    assert marked == set(registry.METHODS)
    for name in registry.METHODS:
        assert registry.get_method(name).starts_from in STARTS


def test_distilling_methods_start_from_the_pretrained_model():
    starts = {name: registry.get_method(name).starts_from for name in registry.METHODS}
    assert starts["cap"] == starts["sparsebert"] == "pretrained"
    assert starts["magnitude"] == starts["nip"] == starts["rpp"] == "finetuned"


def test_a_registered_method_needs_no_core_edit(monkeypatch):
    from compressor.run import check_config, method_spec

    @dataclasses.dataclass(frozen=True)
    class Shrink(Pass):
        name = "shrink-test"
        is_method = True
        sparsity: float = 0.5   # takes --sparsity and --max-length, not --granularity/--epochs
        max_length: int = 64

    monkeypatch.setattr(registry, "PASSES", dict(registry.PASSES))
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    registry.register_pass(Shrink)
    cfg = RunConfig(method="shrink-test", sparsity=0.7, epochs=3, sparse_init=False, quantize="none")
    check_config(cfg)  # --method accepts it
    assert method_spec(cfg) == "shrink-test{sparsity=0.7,max_length=64},export"


def test_unknown_method_names_the_registry():
    with pytest.raises(Exception, match="unknown method 'nope': available cap, fisher, magnitude"):
        registry.get_method("nope")


def test_model_loader_hook(monkeypatch):
    class Cfg:
        compressor_layers = [{"heads": 1, "ffn": 2}]
    seen = []
    monkeypatch.setattr(registry, "MODEL_LOADERS", {"compressor_layers": lambda folder: seen.append(folder)})
    loader = registry.model_loader(Cfg())
    loader("x")
    assert seen == ["x"]
    assert registry.model_loader(object()) is None


def test_run_help_lists_the_registry_methods():
    from click.testing import CliRunner

    from compressor.cli import cli
    out = CliRunner().invoke(cli, ["run", "--help"]).output
    assert "arrive later" not in out
    assert "[" + "|".join(sorted(registry.METHODS)) + "]" in out


def test_a_registered_stage_joins_compress_run_without_a_core_edit(monkeypatch):
    """A pass that declares ``run_order`` and ``run_step`` is placed by them; the deployment part
    starts at the pass that declares ``starts_deployment``, whatever its name."""
    from compressor.run import _split, method_spec
    from compressor.pipeline import Pipeline

    @dataclasses.dataclass(frozen=True)
    class Stamp(Pass):
        name = "stamp-test"
        consumes = produces = "onnx"
        run_order = 75  # after export (60) and embed-int8 (70), before quantize (80)

        @classmethod
        def run_step(cls, cfg, method):
            return "stamp-test" if cfg.max_positions == 96 else None

    monkeypatch.setattr(registry, "PASSES", dict(registry.PASSES))
    registry.register_pass(Stamp)
    plain = RunConfig(model="minilm", method="magnitude", task="rotten-tomatoes")
    asked = RunConfig(model="minilm", method="magnitude", task="rotten-tomatoes", max_positions=96)
    assert "stamp-test" not in method_spec(plain)
    names = [p.name for p in Pipeline(method_spec(asked)).passes]
    assert names[names.index("stamp-test") - 1:names.index("stamp-test") + 2] == ["export", "stamp-test", "quantize"]
    _, onnx_part, deploy_part = _split(Pipeline(method_spec(asked)))
    assert [p.name for p in onnx_part.passes] == ["export", "stamp-test"]
    assert deploy_part.passes[0].name == "quantize" and deploy_part.passes[0].starts_deployment
