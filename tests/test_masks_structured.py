"""MaskSet's structured masks: whole heads and FFN neurons found by role, exact sparsity, the
gradual ramp, and pruning towards a given per-layer structure."""

from __future__ import annotations

import pytest
import torch
from test_masks import logits, tiny

from passes._masks import MaskSet, lowest_k


def _structured_zero_checks(masks, head_keep, neuron_keep, head_dim):
    for l, layer in enumerate(masks.by_layer()):
        q = masks.modules[layer["query"]]
        for h in range(head_keep.shape[1]):
            rows = slice(h * head_dim, (h + 1) * head_dim)
            zero = not bool(head_keep[l, h])
            for role in ("query", "key", "value"):
                mod = masks.modules[layer[role]]
                assert bool((mod.weight[rows] == 0).all()) == zero
                assert bool((mod.bias[rows] == 0).all()) == zero
                assert bool((masks.mask(layer[role], "bias")[rows] == 0).all()) == zero
            ao = masks.modules[layer["attn_out"]]
            assert bool((ao.weight[:, rows] == 0).all()) == zero
        inter, out = masks.modules[layer["ffn_in"]], masks.modules[layer["ffn_out"]]
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
