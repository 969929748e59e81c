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
    from compressor.run import method_spec

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
    cfg.validate()  # --method accepts it
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
