"""RPP: structured groups on a model, the hard cut, the masked fine-tune phase, and end-to-end
runs through the pass API and the CLI (the proximal operators: ``test_rpp_proximal.py``)."""

from __future__ import annotations

import json

import pytest
import torch

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError
from passes.families import family_of
from passes.families.base import ROLES
from passes.rpp import proximal as P
from passes.rpp.rpp import Rpp
from tests.conftest import make_tiny_model, make_toy_task, run_method_cli

FAST = dict(epochs=2, batch_size=8, lr=1e-3, reweight_every=2)


def make_ctx(tmp_path, n_train=32):
    return RunContext(workdir=tmp_path, data=make_toy_task(n_train=n_train, n_eval=16), progress=False)


def heads_neurons_zero(model, num_heads):
    """Per layer: (#heads whose Q/K/V rows+biases and AO columns are all zero, same for neurons,
    #heads with zero Q rows, #neurons with zero FFN-input rows)."""
    out, family = [], family_of(model)
    for layer in family.layers():
        q, k, v, ao, f_in, f_out = (family.linear(layer, r) for r in ROLES)
        rows = sum(p.weight.reshape(num_heads, -1).abs().sum(1) for p in (q, k, v))
        rows = rows + sum(p.bias.reshape(num_heads, -1).abs().sum(1) for p in (q, k, v))
        cols = ao.weight.t().reshape(num_heads, -1).abs().sum(1)
        q_zero = q.weight.reshape(num_heads, -1).abs().sum(1) == 0
        n = f_in.weight.abs().sum(1) + f_in.bias.abs() + f_out.weight.abs().sum(0)
        out.append((int(((rows + cols) == 0).sum()), int((n == 0).sum()), int(q_zero.sum()),
                    int((f_in.weight.abs().sum(1) == 0).sum())))
    return out


# -- structured groups -------------------------------------------------------------------------
def test_group_prox_zeroes_whole_heads_and_neurons():
    from passes._masks import MaskSet
    model = make_tiny_model()
    masks = MaskSet.attach(model, bias=True)
    prox = Rpp(granularity="structured").make_prox(masks)
    rms, sizes = prox.values()
    assert rms.numel() == 2 * (4 + 64) and set(sizes.tolist()) == {4 * 8 * 32 + 3 * 8, 2 * 32 + 1}
    cut = P.weighted_quantile(rms, sizes, 0.5)
    prox.step(lr=1.0, gamma=float(cut + 1e-3) * (cut + 1e-3))  # kills groups with rms < ~cut
    zero = (prox.values()[0] == 0)
    assert 0 < int(zero.sum()) < rms.numel()
    model.eval()
    for l, (z_heads, z_neurons, q_heads, q_neurons) in enumerate(heads_neurons_zero(model, 4)):
        assert z_heads == q_heads and z_neurons == q_neurons  # groups die whole
    assert sum(h + n for h, n, _, _ in heads_neurons_zero(model, 4)) == int(zero.sum())


# -- hard cut ----------------------------------------------------------------------------------
def test_hard_cut_keeps_existing_zeros_when_already_sparser():
    from passes._masks import MaskSet
    model = make_tiny_model()
    masks = MaskSet.attach(model)
    with torch.no_grad():
        for m in masks.modules.values():  # 70% exact zeros from a "prox"
            w = P.raw(m)
            w.mul_((torch.rand_like(w) > 0.7).float())
    Rpp(sparsity=0.5).hard_cut(masks)
    s = masks.sparsity_report()["overall"]
    assert s > 0.69  # fewer than 1 - s kept: zeros stay pruned
    masks2 = MaskSet.attach(make_tiny_model(seed=3))
    Rpp(sparsity=0.5).hard_cut(masks2)
    assert abs(masks2.sparsity_report()["overall"] - 0.5) < 1e-3


def test_cut_counts_follow_shared_rule_and_keep_dead_units():
    from passes.rpp.cut import cut_counts
    # nothing dead: floor(s * heads) heads, neurons fill the rest of the weight target
    assert cut_counts(8, 128, 0, 0, 1024, 64, 0.5) == (4, 64)
    # more dead neurons than their quota: fewer heads go so the target still holds
    k_h, k_f = cut_counts(8, 128, 0, 100, 1024, 64, 0.5)
    assert (k_h, k_f) == (1, 112) and k_h * 1024 + k_f * 64 == 0.5 * 16384
    # dead heads beyond the quota: fewer neurons
    assert cut_counts(8, 128, 6, 0, 1024, 64, 0.5) == (6, 32)
    # dead units alone exceed the target: only they go
    assert cut_counts(8, 128, 6, 100, 1024, 64, 0.5) == (6, 100)


def test_structured_cut_drops_zeroed_units_first():
    from passes.rpp.cut import structured_cut
    heads = torch.tensor([[0.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    neurons = torch.arange(1.0, 129.0).reshape(2, 64)
    neurons[1, 60:] = 0.0  # four neurons zeroed by the prox
    keep_h, keep_f = structured_cut(heads, neurons, 1024, 64, 0.5, "global")
    assert not keep_h[0, 0] and int((~keep_h).sum()) == 4 and bool(keep_h[1].all())
    assert not bool(keep_f[1, 60:].any()) and int((~keep_f).sum()) == 64
    keep_h, keep_f = structured_cut(heads, neurons, 1024, 64, 0.5, "layer")
    assert int((~keep_h[0]).sum()) == int((~keep_h[1]).sum()) == 2


def test_options_are_validated():
    for kw, msg in [(dict(sparsity=1.0), "rpp.sparsity=1.0"), (dict(eps=0.0), "rpp.eps=0.0"),
                    (dict(prox_fraction=1.5), "rpp.prox_fraction=1.5"),
                    (dict(reweight_every=0), "rpp.reweight_every=0"),
                    (dict(granularity="head"), "rpp.granularity='head'"), (dict(gamma=-1.0), "rpp.gamma")]:
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(")):
            Rpp(**kw)


# -- end to end --------------------------------------------------------------------------------
def test_weight_run_prox_zeros_cut_and_masks_survive(tokenizer, tmp_path, monkeypatch):
    cut_masks = {}
    real_cut = Rpp.hard_cut

    def spy(self, masks):
        real_cut(self, masks)
        cut_masks.update({n: masks.mask(n).clone() for n in masks.modules})

    monkeypatch.setattr(Rpp, "hard_cut", spy)
    model = make_tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    art = TorchModel(model, tokenizer, {"source": "tiny"})
    res = Rpp(sparsity=0.6, **FAST)(art, make_ctx(tmp_path))
    m = res.metrics
    assert abs(m["sparsity"] - 0.6) <= 0.005 and m["target_sparsity"] == 0.6
    assert m["prox_steps"] == 5 and m["cut_step"] == 5 and m["steps"] == 8  # fine-tune after the cut
    assert m["gamma_auto"] and m["gamma"] > 0
    assert m["reweightings"] == 1 + 5 // 2  # initial + every 2nd prox step
    assert 0.2 < m["prox_zero_fraction"] <= 0.6 and m["prox_zero_history"][-1][1] == m["prox_zero_fraction"]
    assert set(m["per_layer"]) == {"0", "1"} and 0.0 <= m["accuracy"] <= 1.0
    assert m["train_seconds"] > 0
    out = res.artifact.model
    for name, mask in cut_masks.items():  # every weight masked at the cut is still 0 after fine-tuning
        w = out.get_submodule(name).weight
        assert bool((w[mask == 0] == 0).all()) and bool((w[mask != 0] != 0).any())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input untouched
    # the saved model is the returned one
    from transformers import AutoModelForSequenceClassification
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    ids = tokenizer(["a great film", "dull plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(saved(**ids).logits, out(**ids).logits, atol=1e-6)
    assert json.loads((tmp_path / "sparsity.json").read_text())["overall"] == m["sparsity"]


def test_large_gamma_stops_prox_early(tokenizer, tmp_path):
    art = TorchModel(make_tiny_model(), tokenizer)
    res = Rpp(sparsity=0.5, gamma=50.0, **FAST)(art, make_ctx(tmp_path))
    m = res.metrics
    assert not m["gamma_auto"] and m["cut_step"] < m["prox_steps"]  # target reached early
    assert m["prox_zero_fraction"] >= 0.5 and m["sparsity"] == pytest.approx(m["cut_sparsity"])


def test_structured_run_gives_whole_heads_and_neurons(tokenizer, tmp_path):
    art = TorchModel(make_tiny_model(), tokenizer)
    res = Rpp(sparsity=0.5, granularity="structured", **FAST)(art, make_ctx(tmp_path))
    m = res.metrics
    assert abs(m["sparsity"] - 0.5) <= 0.005
    assert "prox_zero_heads" in m and "prox_zero_neurons" in m
    assert m["gamma_auto"] and m["gamma_heads"] > 0 and m["gamma"] > 0  # calibrated per kind
    zero = heads_neurons_zero(res.artifact.model, 4)
    for l, (z_heads, z_neurons, q_heads, q_neurons) in enumerate(zero):
        assert z_heads == q_heads == 4 - m["heads_kept"][l]
        assert z_neurons == q_neurons == 64 - m["neurons_kept"][l]
    assert sum(z[0] for z in zero) > 0 and sum(z[1] for z in zero) > 0


def test_cli_run(tmp_path, tokenizer, capsys):
    code, out = run_method_cli(tmp_path, tokenizer, "rpp")
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert "finetune" in steps and "rpp" in steps and "export" in steps
    assert abs(steps["rpp"]["metrics"]["sparsity"] - 0.5) <= 0.005
    assert abs(report["models"]["compressed"]["sparsity"] - 0.5) <= 0.005
