"""The `magnitude` pass: gradual and one-shot, unstructured and structured, on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError
from compressor.evaluation import evaluate
from compressor.pipeline import parse_spec
from passes._masks import encoder_linears, sparsity_report
from passes.families import family_of
from passes.magnitude import Magnitude

FAST = dict(epochs=2, lr=3e-3, batch_size=16, max_length=32, update_every=2)


def run(tokenizer, tmp_path, task=None, **opts):
    art = TorchModel(make_tiny_model(), tokenizer, {"source": "tiny"})
    ctx = RunContext(workdir=tmp_path, data=task, progress=False)
    return art, Magnitude(**opts)(art, ctx)


def plain_state_keys():
    return list(make_tiny_model().state_dict())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_gradual_reaches_sparsity_and_reports_layers(tokenizer, toy_task, tmp_path, scope):
    art, res = run(tokenizer, tmp_path, toy_task, sparsity=0.8, scope=scope, **FAST)
    m, model = res.metrics, res.artifact.model
    assert res.modified and m["target_sparsity"] == 0.8
    assert abs(m["sparsity"] - 0.8) < 0.005
    assert set(m["layer_sparsity"]) == {"0", "1"}
    rep = sparsity_report(encoder_linears(model))
    assert m["sparsity"] == pytest.approx(rep["overall"])
    if scope == "layer":
        assert all(abs(f - 0.8) < 0.005 for f in rep["modules"].values())
    assert list(model.state_dict()) == plain_state_keys()  # baked: plain weights
    assert m["accuracy"] == pytest.approx(evaluate(model, tokenizer, toy_task.eval, 32))
    assert len(m["accuracy_per_epoch"]) == 2 and m["steps"] == 8
    assert m["mask_updates"] == 3  # steps 2, 4 (ramp, update_every=2) and 6 (target reached at 70%)
    assert res.artifact.info["sparsity"] == pytest.approx(m["sparsity"])
    saved = json.loads((tmp_path / "sparsity.json").read_text())
    assert saved["overall"] == pytest.approx(m["sparsity"])
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert sparsity_report(encoder_linears(art.model))["overall"] < 0.01  # input untouched


def test_best_epoch_only_at_final_sparsity(tokenizer, toy_task, tmp_path):
    _, res = run(tokenizer, tmp_path, toy_task, sparsity=0.7, end=1.0, **FAST)
    assert res.metrics["epoch_kept"] == 2  # epoch 1 ended below the target: not eligible
    assert abs(res.metrics["sparsity"] - 0.7) < 0.005


def test_structured_gradual(tokenizer, toy_task, tmp_path):
    _, res = run(tokenizer, tmp_path, toy_task, sparsity=0.5, granularity="structured", **FAST)
    m, model = res.metrics, res.artifact.model
    assert abs(m["sparsity"] - 0.5) < 0.005
    assert sum(m["heads_kept"]) == 4 and len(m["neurons_kept"]) == 2
    family = family_of(model)
    for layer, kept in zip(family.layers(), m["heads_kept"]):
        query, attn_out = family.linear(layer, "query"), family.linear(layer, "attn_out")
        rows_alive = (query.weight != 0).any(1).reshape(4, 8).any(1)
        assert int(rows_alive.sum()) == kept
        q_bias_zero = (query.bias.reshape(4, 8) == 0).all(1)
        assert bool(q_bias_zero[~rows_alive].all())
        cols_alive = (attn_out.weight != 0).any(0).reshape(4, 8).any(1)
        assert torch.equal(cols_alive, rows_alive)
    assert list(model.state_dict()) == plain_state_keys()


def test_oneshot_without_training_or_data(tokenizer, tmp_path):
    art, res = run(tokenizer, tmp_path, None, sparsity=0.6, schedule="oneshot", epochs=0, scope="global")
    assert abs(res.metrics["sparsity"] - 0.6) < 0.005
    assert res.metrics["accuracy"] is None and res.metrics["steps"] == 0
    assert res.metrics["mask_updates"] == 1
    model = res.artifact.model
    # one-shot global magnitude: every surviving weight is at least as large as any pruned one
    kept = torch.cat([m.weight[m.weight != 0].abs() for m in encoder_linears(model).values()])
    pruned = torch.cat([o.weight[m.weight == 0].abs() for o, m in
                        zip(encoder_linears(art.model).values(), encoder_linears(model).values())])
    assert kept.min() >= pruned.max()


def test_per_matrix_ranking_is_the_default(tokenizer, tmp_path):
    """Each Linear gets the target sparsity within 0.5% (the default scope=layer), where one
    global ranking would leave some matrices far above or below it."""
    _, res = run(tokenizer, tmp_path, None, sparsity=0.9, schedule="oneshot", epochs=0)
    for name, module in encoder_linears(res.artifact.model).items():
        zero = float((module.weight == 0).float().mean())
        assert abs(zero - 0.9) <= 0.005, (name, zero)


def test_oneshot_with_data_reports_accuracy_and_classifier(tokenizer, toy_task, tmp_path):
    _, res = run(tokenizer, tmp_path, toy_task, sparsity=0.5, schedule="oneshot", epochs=0,
                 include="encoder+classifier", max_length=32)
    assert 0.0 <= res.metrics["accuracy"] <= 1.0
    assert abs(res.metrics["pruned_sparsity"] - 0.5) < 0.005
    assert (res.artifact.model.classifier.weight == 0).any()


def test_spec_and_option_checks():
    (p,) = parse_spec("magnitude{sparsity=0.95,schedule=oneshot,epochs=0,scope=layer}")
    assert (p.sparsity, p.schedule, p.epochs, p.scope) == (0.95, "oneshot", 0, "layer")
    with pytest.raises(ConfigError, match="sparsity=1.0"):
        Magnitude(sparsity=1.0)
    with pytest.raises(ConfigError, match="epochs >= 1"):
        Magnitude(schedule="cubic", epochs=0)
    with pytest.raises(ConfigError, match="end=0.1"):
        Magnitude(start=0.5, end=0.1)
    with pytest.raises(ConfigError, match="granularity"):
        Magnitude(granularity="block")
    with pytest.raises(ConfigError, match="include"):
        Magnitude(granularity="structured", include="encoder+classifier")


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["weight", "structured"])
def test_minilm_oneshot(tokenizer, tmp_path, granularity):
    from conftest import minilm_dir
    from transformers import BertForSequenceClassification
    model = BertForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=2,
                                                          local_files_only=True)
    art = TorchModel(model, tokenizer, {})
    ctx = RunContext(workdir=tmp_path, progress=False)
    res = Magnitude(sparsity=0.9 if granularity == "weight" else 0.5, schedule="oneshot", epochs=0,
                    granularity=granularity)(art, ctx)
    m = res.metrics
    assert abs(m["sparsity"] - m["target_sparsity"]) < 0.005
    assert len(m["layer_sparsity"]) == 6
    if granularity == "structured":
        assert len(m["heads_kept"]) == 6 and sum(m["heads_kept"]) == 36  # floor(0.5 * 72)
    assert (tmp_path / "model" / "model.safetensors").exists()
