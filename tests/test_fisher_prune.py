"""The ``fisher`` pass (Kwon et al. 2022) end to end: budgets, options, speedup search, recovery,
search only (its pieces: ``tests/test_fisher_masks.py``)."""

from __future__ import annotations

import pytest
import torch

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError, ModelError
from compressor.evaluation import predict_logits
from passes.fisher import masks as fm
from passes.fisher.prune import Fisher
from passes.strip import load_stripped
from tests.conftest import make_tiny_model, make_toy_task


def test_pass_meets_the_flops_budget_and_reloads(tokenizer, tmp_path):
    task = make_toy_task(n_train=64, n_eval=16)
    model = make_tiny_model(layers=3, seed=2)
    ctx = RunContext(tmp_path, data=task)
    res = Fisher(flops=0.4, samples=64, batch_size=16)(TorchModel(model, tokenizer, {"source": "tiny"}), ctx)
    m = res.metrics
    assert m["kept_mac_fraction"] <= 0.4 and m["encoder_flops_reduction"] >= 0.6 - 1e-9
    assert m["max_abs_diff_masked_vs_stripped"] <= 1e-5
    assert m["rearrange_objective"]["after"] <= m["rearrange_objective"]["before"] + 1e-15
    tuned = [r for r in m["mask_tuning"] if r["status"] == "tuned"]
    assert tuned and all(r["error_after"] <= r["error_before"] for r in tuned)
    assert set(m["seconds"]) == {"fisher", "cost_model", "search", "rearrange", "tune", "strip"}
    assert model.config.num_attention_heads == 4 and not hasattr(model.config, "compressor_layers")
    reloaded = load_stripped(tmp_path)
    assert reloaded.model.config.compressor_layers == [{"heads": h, "ffn": f} for h, f in zip(m["heads_kept"], m["ffn_kept"])]
    a = predict_logits(res.artifact.model, tokenizer, task.eval, 32)
    torch.testing.assert_close(predict_logits(reloaded.model, tokenizer, task.eval, 32), a, rtol=0, atol=1e-5)


def test_options_are_checked(tokenizer):
    with pytest.raises(ConfigError, match="set one constraint"):
        Fisher(flops=0.5, speedup=2.0)
    with pytest.raises(ConfigError, match="fisher.speedup"):
        Fisher(speedup=0.5)
    with pytest.raises(ConfigError, match="fisher.target"):
        Fisher(target="tpu")
    assert Fisher().constraint() == ("flops", 0.5) and Fisher(speedup=3).constraint() == ("speedup", 3)
    stripped = make_tiny_model()
    stripped.config.compressor_layers = [{"heads": 4, "ffn": 64}] * 2
    with pytest.raises(ModelError, match="unstripped"):
        fm.UnitMasks(stripped)


def test_pass_speedup_mode_searches_the_table_and_checks_measured_speedups(tokenizer, tmp_path, monkeypatch):
    """speedup=X: the latency table drives the search and measured checks set the budget (here a
    stand-in table and a stand-in target that runs every structure 20% slower than predicted)."""
    import passes.fisher.latency_table as lt
    from passes.fisher.cost import LatencyTable, ModelShape
    model = make_tiny_model(layers=3, seed=3)
    shape = ModelShape.from_config(model.config)
    table = LatencyTable(shape, "ms", 1.0, [0.05 + 0.2 * h for h in range(5)], [0, 16, 32, 48, 64],
                            [0.05, 0.3, 0.6, 0.9, 1.2], {})
    asked = []

    class Timer:
        def __init__(self, config, target, batch, seq, runs=10, precision="fp32", min_seconds=0.0, hidden=0):
            asked.append((target.threads, batch))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __call__(self, structure):
            return table.dense / (1.2 * table.predict(structure))
    monkeypatch.setattr(lt, "measure_latency_table", lambda *a, **k: table)
    monkeypatch.setattr(lt, "StructureTimer", Timer)
    ctx = RunContext(tmp_path, data=make_toy_task(n_train=64, n_eval=8))
    res = Fisher(speedup=1.6, threads=1, samples=64, batch_size=16)(TorchModel(model, tokenizer, {}), ctx)
    m = res.metrics
    assert asked == [(1, 1)] and m["constraint"] == "speedup" and m["structure_checks"]
    assert m["measured_check_speedup"] >= 1.6
    assert m["predicted_speedup"] >= 1.6 * 1.2 - 1e-9
    structure = [{"heads": h, "ffn": f} for h, f in zip(m["heads_kept"], m["ffn_kept"])]
    assert table.speedup(structure) == pytest.approx(m["predicted_speedup"], abs=1e-4)
    assert m["max_abs_diff_masked_vs_stripped"] <= 1e-5


def test_recovery_can_train_the_pruned_model(tokenizer, tmp_path):
    """fisher freezes its working copy to take mask gradients; the model it hands on must train
    (``--recover`` runs distill right after it)."""
    from compressor.pipeline import Pipeline
    task = make_toy_task(n_train=64, n_eval=16)
    teacher = TorchModel(make_tiny_model(layers=2, seed=3), tokenizer, {"source": "tiny"})
    ctx = RunContext(tmp_path, data=task, teacher=teacher)
    res = Pipeline("fisher{flops=0.5,samples=32,batch_size=16},distill{epochs=1,min_steps=0}").run(teacher, ctx)
    model = res.artifact.model
    assert all(p.requires_grad for p in model.parameters())
    assert [r.name for r in res.records] == ["fisher", "distill"]
    assert res.records[1].metrics["steps"] > 0


def test_search_only_hands_the_structure_to_a_structured_training_method(tokenizer, tmp_path):
    """fisher{search_only=true} leaves the weights alone and records the structure it found (importance
    from the fine-tuned teacher, even when the input is another model); magnitude{structure=searched}
    then trains to exactly that structure, and strip makes it physical."""
    from compressor.pipeline import Pipeline
    task = make_toy_task(n_train=64, n_eval=16)
    teacher = TorchModel(make_tiny_model(layers=2, seed=3), tokenizer, {"source": "tiny"})
    ctx = RunContext(tmp_path, data=task, teacher=teacher, progress=False)
    res = Pipeline("fisher{flops=0.5,search_only=true,samples=64,batch_size=16},"
                   "magnitude{granularity=structured,structure=searched,epochs=1,lr=0.003,batch_size=16,"
                   "max_length=32},strip").run(teacher, ctx)
    search, magnitude, strip = res.records
    found = res.records[0].metrics
    assert not search.modified and found["kept_mac_fraction"] <= 0.5 + 1e-6
    assert magnitude.metrics["heads_kept"] == found["heads_kept"]
    assert magnitude.metrics["neurons_kept"] == found["ffn_kept"]
    layers = res.artifact.model.bert.encoder.layer
    assert [layer.intermediate.dense.out_features for layer in layers] == found["ffn_kept"]
    for name, param in teacher.model.state_dict().items():  # the search never touched the teacher
        assert torch.equal(param, make_tiny_model(layers=2, seed=3).state_dict()[name])


def test_structure_option_needs_structured_granularity_and_a_search(tokenizer, tmp_path):
    from compressor.errors import ConfigError
    from passes.magnitude import Magnitude
    with pytest.raises(ConfigError, match="needs granularity=structured"):
        Magnitude(structure="2:32/2:32")
    with pytest.raises(ConfigError, match="kept heads:neurons per layer"):
        Magnitude(granularity="structured", structure="2-32")
    art = TorchModel(make_tiny_model(layers=2), tokenizer, {})
    with pytest.raises(ConfigError, match="needs a fisher{search_only=true} step"):
        Magnitude(granularity="structured", structure="searched", epochs=0, schedule="oneshot")(
            art, RunContext(tmp_path))
    with pytest.raises(ConfigError, match="structure has 3 layers, the model 2"):
        Magnitude(granularity="structured", structure="1:8/1:8/1:8", epochs=0, schedule="oneshot")(
            art, RunContext(tmp_path))
    res = Magnitude(granularity="structured", structure="1:8/4:64", epochs=0, schedule="oneshot")(
        art, RunContext(tmp_path / "ok"))
    assert res.metrics["heads_kept"] == [1, 4] and res.metrics["neurons_kept"] == [8, 64]


def test_a_collapse_on_the_dev_split_is_reported(tokenizer, tmp_path, caplog):
    task = make_toy_task(n_train=64, n_eval=16)
    # a dev split of one class: its majority accuracy is 100%, so any pruned model is "at the
    # majority class"; the pass must measure dev accuracy and say so (it never reads eval for this)
    task.dev = [e for e in task.train if e.label == 1][:8]
    res = Fisher(flops=0.3, samples=64, batch_size=16)(
        TorchModel(make_tiny_model(layers=2, seed=3), tokenizer, {"source": "tiny"}), RunContext(tmp_path, data=task))
    m = res.metrics
    assert 0.0 <= m["dev_accuracy"] <= 1.0 and "majority" in m["dev_collapse"]
    assert any("collapsed on the dev split" in r.getMessage() for r in caplog.records)
    task.dev = []
    res = Fisher(flops=0.3, samples=64, batch_size=16)(
        TorchModel(make_tiny_model(layers=2, seed=3), tokenizer, {"source": "tiny"}), RunContext(tmp_path / "b", data=task))
    assert "dev_accuracy" not in res.metrics and "dev_collapse" not in res.metrics
