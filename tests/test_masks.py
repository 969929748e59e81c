"""MaskSet: exact sparsity, masks surviving optimizer steps, bake, copies (structured units:
``test_masks_structured.py``)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_model

from passes._masks import MaskSet, encoder_linears, lowest_k, sparsity_report
from passes.families import family_of
from passes.families.base import ROLES


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
    roles = family_of(model).linear_roles()
    assert [roles[n] for n in names] == [(layer, role) for layer in range(3) for role in ROLES]
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
    family = family_of(model)
    assert type(family.linear(family.layers()[0], "query")) is torch.nn.Linear
    rep = sparsity_report(encoder_linears(model), family.linear_roles())
    assert set(rep["layers"]) == {"0", "1"} and sparsity_report(encoder_linears(model))["layers"] == {}
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
    name = next(n for n, r in masks.roles.items() if r == (0, "ffn_in"))
    grad = scores[name].grad
    assert grad is not None and bool((grad[masks.mask(name) == 0] != 0).any())
    assert any("scores" in n for n, _ in model.named_parameters())
