"""CAP's pruning criteria (passes.cap.prune): movement top-k, soft movement, first-order head
importance and the one-head-per-layer rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_tiny_model, make_toy_task


def test_movement_mask_keeps_exactly_top_k():
    from passes.cap.prune import WeightPruner
    from passes._masks import MaskSet
    model = make_tiny_model()
    masks = MaskSet.attach(model)
    pruner = WeightPruner(masks, "movement", 0.7, start=0.0, end=0.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for s in pruner.scores.values():
            s.copy_(torch.randn(s.shape, generator=g))
    pruner.after_step(1, 10)
    for name, s in pruner.scores.items():
        keep = masks.mask(name).bool().reshape(-1)
        k = s.numel() - round(0.7 * s.numel())
        assert int(keep.sum()) == k
        assert set(torch.topk(s.reshape(-1), k).indices.tolist()) == set(torch.nonzero(keep).reshape(-1).tolist())
    # straight-through: the scores get dL/dW' * W although the forward uses the 0/1 mask
    name = next(iter(pruner.scores))
    model(input_ids=torch.tensor([[101, 2204, 102]])).logits.sum().backward()
    assert pruner.scores[name].grad is not None and pruner.scores[name].grad.abs().sum() > 0


def test_soft_movement_threshold_mask_and_l1_schedule():
    from passes.cap.prune import WeightPruner
    from passes._masks import MaskSet
    model = make_tiny_model()
    masks = MaskSet.attach(model)
    pruner = WeightPruner(masks, "soft-movement", 0.5, start=0.0, end=0.5, soft_threshold=0.1, l1_lambda=10.0)
    names = list(pruner.scores)
    with torch.no_grad():
        pruner.scores[names[0]].normal_(-2.2, 1.0)      # about half below logit(0.1) = -2.197
        pruner.scores[names[1]].fill_(-9.0)             # everything below: 0.5% must stay
    assert pruner.penalty(0, 10) == 0.0                 # threshold 0 at the start: no L1 yet
    pruner.after_step(5, 10)                            # end of the ramp: threshold 0.1
    s0 = pruner.scores[names[0]]
    assert torch.equal(masks.mask(names[0]).bool(), torch.sigmoid(s0) > 0.1)
    kept = int(masks.mask(names[1]).sum())
    assert kept == max(1, -(-pruner.scores[names[1]].numel() * 5 // 1000))
    reg = sum(torch.sigmoid(s).mean() for s in pruner.scores.values()) / len(names)
    assert float(pruner.penalty(5, 10).detach()) == pytest.approx(10.0 * float(reg.detach()), rel=1e-6)
    pruner.finish()                                     # hard global top-k to the exact target
    assert abs(masks.sparsity_report()["overall"] - 0.5) < 1e-3


def test_first_order_importance_ranks_a_scaled_up_head_first(tokenizer):
    from compressor.evaluation import make_loader, model_inputs
    from passes.cap.prune import first_order_importance
    loader = make_loader(tokenizer, make_toy_task().train, 32, 16)

    def loss(m, b):
        return F.cross_entropy(m(**model_inputs(b)).logits, b["labels"])

    base, _ = first_order_importance(make_tiny_model(), loader, loss)
    assert int(base[0].argmax()) != 1
    model = make_tiny_model()
    sa = model.bert.encoder.layer[0].attention.self
    d = sa.attention_head_size
    with torch.no_grad():  # head 1 of layer 0: its context (P V) is 10x larger
        sa.value.weight[d:2 * d] *= 10
        sa.value.bias[d:2 * d] *= 10
    heads, neurons = first_order_importance(model, loader, loss)
    assert int(heads[0].argmax()) == 1
    assert heads.shape == (2, 4) and neurons.shape == (2, 64)
    assert torch.allclose(heads.norm(dim=1), torch.ones(2)) and torch.allclose(neurons.norm(dim=1), torch.ones(2))
    assert all(p.requires_grad for p in model.parameters()) and model.training is False


def test_protect_top_head_keeps_one_head_per_layer():
    from passes.cap.prune import protect_top_head
    from passes._masks import MaskSet
    masks = MaskSet.attach(make_tiny_model(), bias=True)
    heads = torch.tensor([[0.1, 0.2, 0.3, 0.4], [5.0, 6.0, 7.0, 8.0]])   # layer 0 is worst everywhere
    neurons = torch.rand(2, 64)
    keep_h, _ = masks.apply_structured(protect_top_head(heads, masks.structured_keep()[0]), neurons, 0.5)
    assert keep_h[0].tolist() == [False, False, False, True]
    plain = MaskSet.attach(make_tiny_model(), bias=True)
    keep_h, _ = plain.apply_structured(heads, neurons, 0.5)
    assert not keep_h[0].any()   # without protection the whole layer goes (the strip pass copes)
