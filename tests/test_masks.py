"""MaskSet: exact sparsity, masks surviving optimizer steps, structured units, bake, copies."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_model

from passes._masks import MaskSet, encoder_linears, lowest_k, parse_linear_name, sparsity_report

def tiny(**kw):
    """A tiny BERT with non-zero biases (BERT init sets them to 0, hiding bias bugs)."""
    model = make_tiny_model(**kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in encoder_linears(model).values():
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


X = torch.randint(1000, 2000, (3, 9), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model(input_ids=X).logits


def test_encoder_linears_selects_six_per_layer():
    model = tiny(layers=3)
    names = list(encoder_linears(model))
    assert len(names) == 18
    assert {parse_linear_name(n)[1] for n in names} == {
        "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "intermediate.dense", "output.dense"}
    assert not any("pooler" in n or "classifier" in n or "embeddings" in n for n in names)
    more = encoder_linears(model, include=("classifier", "pooler"))
    assert set(more) - set(names) == {"classifier", "bert.pooler.dense"}


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.3, 0.9])
def test_magnitude_reaches_exact_sparsity(scope, sparsity):
    model = tiny()
    masks = MaskSet.attach(model)
    masks.apply_magnitude(sparsity, scope)
    rep = masks.sparsity_report()
    assert abs(rep["overall"] - sparsity) < 0.005
    if scope == "layer":
        assert all(abs(f - sparsity) < 0.005 for f in rep["modules"].values())
    else:  # global: every kept weight is at least as large as every pruned one
        kept = torch.cat([masks.weight(n)[masks.mask(n) > 0].abs() for n in masks.modules])
        pruned = torch.cat([masks.modules[n].parametrizations.weight.original[masks.mask(n) == 0].abs()
                            for n in masks.modules])
        assert kept.min() >= pruned.max()
        assert len({round(f, 2) for f in rep["modules"].values()}) > 1  # uneven per module
    assert set(rep["layers"]) == {"0", "1"}


def test_magnitude_masks_only_shrink():
    masks = MaskSet.attach(tiny())
    masks.apply_magnitude(0.5)
    first = {n: masks.mask(n).clone() for n in masks.modules}
    masks.apply_magnitude(0.3)  # lower target: pruned weights do not come back
    assert all(torch.equal(masks.mask(n), first[n]) for n in masks.modules)
    masks.apply_magnitude(0.8)
    assert all(bool((masks.mask(n) <= first[n]).all()) for n in masks.modules)
    assert abs(masks.sparsity_report()["overall"] - 0.8) < 0.005


def test_lowest_k_exact_with_ties():
    scores = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 0.0])
    assert int(lowest_k(scores, 2).sum()) == 2
    assert lowest_k(scores, 5).tolist() == [True, True, True, True, False, True]
    assert not lowest_k(scores, 0).any() and lowest_k(scores, 6).all()


def test_apply_scores_keeps_highest():
    masks = MaskSet.attach(tiny())
    scores = {n: torch.arange(m.weight.numel(), dtype=torch.float).reshape(m.weight.shape)
              for n, m in masks.modules.items()}
    masks.apply_scores(scores, 0.75, scope="layer")
    for n in masks.modules:
        flat = masks.mask(n).reshape(-1)
        k = int(0.75 * flat.numel() + 0.5)
        assert flat[:k].sum() == 0 and bool((flat[k:] == 1).all())


def test_masks_survive_adamw_with_weight_decay():
    torch.manual_seed(0)
    model = tiny()
    model.train()
    masks = MaskSet.attach(model)
    masks.apply_magnitude(0.7)
    before = {n: masks.weight(n).clone() for n in masks.modules}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        loss = model(input_ids=X, labels=torch.tensor([0, 1, 1])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    for n in masks.modules:
        w, m = masks.weight(n), masks.mask(n)
        assert bool((w[m == 0] == 0).all())
        assert not torch.equal(w[m > 0], before[n][m > 0])  # kept weights did train
    assert abs(masks.sparsity_report()["overall"] - 0.7) < 0.005


def _structured_zero_checks(masks, head_keep, neuron_keep, head_dim):
    for l, layer in enumerate(masks._layers()):
        q = masks.modules[layer["attention.self.query"]]
        for h in range(head_keep.shape[1]):
            rows = slice(h * head_dim, (h + 1) * head_dim)
            zero = not bool(head_keep[l, h])
            for kind in ("attention.self.query", "attention.self.key", "attention.self.value"):
                mod = masks.modules[layer[kind]]
                assert bool((mod.weight[rows] == 0).all()) == zero
                assert bool((mod.bias[rows] == 0).all()) == zero
                assert bool((masks.mask(layer[kind], "bias")[rows] == 0).all()) == zero
            ao = masks.modules[layer["attention.output.dense"]]
            assert bool((ao.weight[:, rows] == 0).all()) == zero
        inter, out = masks.modules[layer["intermediate.dense"]], masks.modules[layer["output.dense"]]
        dropped = ~neuron_keep[l]
        assert bool((inter.weight[dropped] == 0).all()) and bool((inter.bias[dropped] == 0).all())
        assert bool((out.weight[:, dropped] == 0).all())
        assert bool((inter.weight[neuron_keep[l]] != 0).any(1).all())
        assert q.weight.shape[0] == head_keep.shape[1] * head_dim


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.75])
def test_structured_zero_units_and_sparsity(scope, sparsity):
    model = tiny()
    masks = MaskSet.attach(model, bias=True)
    heads, neurons = masks.structured_magnitude_scores()
    assert heads.shape == (2, 4) and neurons.shape == (2, 64)
    keep_h, keep_f = masks.apply_structured(heads, neurons, sparsity, scope=scope)
    assert abs(masks.sparsity_report()["overall"] - sparsity) < 0.005
    assert int((~keep_h).sum()) == int(sparsity * 8 + 1e-9)
    _structured_zero_checks(masks, keep_h, keep_f, head_dim=8)
    assert torch.equal(masks.structured_keep()[0], keep_h)
    assert torch.equal(masks.structured_keep()[1], keep_f)
    if scope == "layer":
        assert len(set(keep_h.sum(1).tolist())) == 1
    assert torch.isfinite(logits(model)).all()


def test_structured_layer_can_lose_every_head_and_neuron():
    model = tiny()
    masks = MaskSet.attach(model, bias=True)
    heads, neurons = masks.structured_magnitude_scores()
    heads[0] -= 100.0
    neurons[1] -= 100.0
    keep_h, keep_f = masks.apply_structured(heads, neurons, 0.5)
    assert not keep_h[0].any() and keep_h[1].all()
    assert not keep_f[1].any() and keep_f[0].all()
    assert torch.isfinite(logits(model)).all()


def test_structured_gradual_ramp_is_monotone_and_ends_exact():
    masks = MaskSet.attach(tiny(), bias=True)
    prev_h, prev_f = masks.structured_keep()
    for s in [0.1, 0.2, 0.31, 0.4, 0.45, 0.49]:
        h, f = masks.apply_structured(*masks.structured_magnitude_scores(), s, fill=False)
        assert bool((h <= prev_h).all()) and bool((f <= prev_f).all())
        prev_h, prev_f = h, f
    h, f = masks.apply_structured(*masks.structured_magnitude_scores(), 0.5, fill=True)
    assert bool((h <= prev_h).all()) and bool((f <= prev_f).all())
    assert abs(masks.sparsity_report()["overall"] - 0.5) < 0.005


@pytest.mark.parametrize("structured", [False, True])
def test_bake_keeps_zeros_plain_keys_and_logits(structured):
    model = tiny()
    plain_keys = list(model.state_dict())
    masks = MaskSet.attach(model, bias=structured)
    if structured:
        masks.apply_structured(*masks.structured_magnitude_scores(), 0.5)
    else:
        masks.apply_magnitude(0.8)
    masked_logits = logits(model)
    masks.bake()
    assert list(model.state_dict()) == plain_keys
    assert type(model.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear
    rep = sparsity_report(encoder_linears(model))
    assert abs(rep["overall"] - (0.5 if structured else 0.8)) < 0.005
    assert torch.equal(logits(model), masked_logits)


def test_deepcopy_keeps_independent_masks():
    model = tiny()
    masks = MaskSet.attach(model)
    masks.apply_magnitude(0.6)
    clone = copy.deepcopy(model)
    again = MaskSet.from_model(clone)
    assert set(again.modules) == set(masks.modules)
    assert abs(again.sparsity_report()["overall"] - 0.6) < 0.005
    again.apply_magnitude(0.9)
    assert abs(masks.sparsity_report()["overall"] - 0.6) < 0.005
    assert torch.equal(logits(model), logits(copy.deepcopy(model)))


def test_accelerate_prepare_keeps_masks():
    from accelerate import Accelerator
    model = tiny()
    masks = MaskSet.attach(model)
    masks.apply_magnitude(0.5)
    acc = Accelerator(cpu=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    pmodel, popt = acc.prepare(model, opt)
    pmodel.train()
    for _ in range(3):
        acc.backward(pmodel(input_ids=X, labels=torch.tensor([0, 1, 0])).loss)
        popt.step()
        popt.zero_grad()
    assert abs(masks.sparsity_report()["overall"] - 0.5) < 0.005
    acc.free_memory()


def test_straight_through_scores_get_movement_gradient():
    model = tiny()
    masks = MaskSet.attach(model)
    masks.apply_magnitude(0.5)
    before = logits(model)
    scores = masks.add_scores()
    assert torch.equal(logits(model), before)  # scores do not change the forward value
    model(input_ids=X, labels=torch.tensor([0, 1, 0])).loss.backward()
    name = "bert.encoder.layer.0.intermediate.dense"
    grad = scores[name].grad
    assert grad is not None and bool((grad[masks.mask(name) == 0] != 0).any())
    assert any("scores" in n for n, _ in model.named_parameters())


def test_target_structure_ramp_reaches_the_exact_per_layer_counts():
    masks = MaskSet.attach(tiny(), bias=True)
    final = masks.set_target([3, 0], [10, 64])  # layer 0: 3 heads, 10 neurons; layer 1: no heads, all neurons
    head_w, neuron_w = 8 * 4 * 32, 2 * 32
    expected = 1 - (3 * head_w + 10 * neuron_w + 64 * neuron_w) / (2 * (4 * head_w + 64 * neuron_w))
    assert abs(final - expected) < 1e-9
    prev_h, prev_f = masks.structured_keep()
    for s in (0.25 * final, 0.5 * final, 0.9 * final):  # a ramp: monotone, every layer a share of its loss
        h, f = masks.apply_structured(*masks.structured_magnitude_scores(), s)
        assert bool((h <= prev_h).all()) and bool((f <= prev_f).all())
        assert h.sum(1).tolist()[1] >= 0 and f[1].all()  # layer 1 keeps every neuron throughout
        prev_h, prev_f = h, f
    h, f = masks.apply_structured(*masks.structured_magnitude_scores(), final)
    assert h.sum(1).tolist() == [3, 0] and f.sum(1).tolist() == [10, 64]
    assert abs(masks.sparsity_report()["overall"] - final) < 0.005
    _structured_zero_checks(masks, h, f, head_dim=8)


def test_target_structure_keeps_the_highest_scoring_units_and_rejects_bad_counts():
    masks = MaskSet.attach(tiny(), bias=True)
    masks.set_target([2, 4], [64, 32])
    heads, neurons = masks.structured_magnitude_scores()
    heads[0] = torch.tensor([4.0, 1.0, 3.0, 2.0])
    h, f = masks.apply_structured(heads, neurons, 1.0)
    assert h[0].tolist() == [True, False, True, False]
    assert torch.equal(f[1], ~lowest_k(neurons[1], 32))
    with pytest.raises(ValueError, match="3 layers, the model 2"):
        masks.set_target([1, 1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="do not fit"):
        masks.set_target([5, 1], [1, 1])
