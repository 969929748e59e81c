"""The ``fisher`` pass's pieces (Kwon et al. 2022): unit masks as hooks, their Fisher,
rearrangement, folding and stripping, and mask tuning."""

from __future__ import annotations

import pytest
import torch
import transformers

from compressor.artifact import TorchModel
from compressor.evaluation import make_loader, model_inputs
from passes.fisher import masks as fm
from passes.fisher.tune import tune_masks
from passes.strip import load_stripped
from tests.conftest import make_tiny_model, make_toy_task


def batches(tokenizer, n=32, batch_size=8, seed=0):
    return make_loader(tokenizer, make_toy_task(n_train=n, seed=seed).train, 32, batch_size)


def logits(model, loader):
    with torch.no_grad():
        return torch.cat([model(**model_inputs(b)).logits for b in loader])


def frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) >= 5, reason="head_mask is a 4.x argument")
def test_attention_output_hook_equals_head_mask(tokenizer):
    model = frozen(make_tiny_model(layers=2, heads=4).double())
    masks = fm.UnitMasks(model)
    batch = next(iter(batches(tokenizer)))
    m = torch.rand(2, 4, dtype=torch.float64, requires_grad=True)
    masks.set(m, torch.ones(2, 64, dtype=torch.float64))
    out = model(**model_inputs(batch), labels=batch["labels"])
    g_hook, = torch.autograd.grad(out.loss, m)
    masks.remove()
    m2 = m.detach().clone().requires_grad_(True)
    ref = model(**model_inputs(batch), labels=batch["labels"], head_mask=m2)
    g_ref, = torch.autograd.grad(ref.loss, m2)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_hook, g_ref, rtol=1e-9, atol=1e-12)


def test_all_ones_masks_change_nothing(tokenizer):
    model = make_tiny_model()
    loader = batches(tokenizer)
    before = logits(model, loader)
    masks = fm.UnitMasks(model)
    torch.testing.assert_close(logits(model, loader), before, rtol=0, atol=0)
    masks.remove()


def test_fisher_is_the_sum_of_squared_batch_gradients(tokenizer):
    """Mask gradient of a unit == <dL/dW, W> over that unit's output-projection columns (scaling
    the unit's input slice is scaling those columns); I = sum over batches of its square; a unit
    whose columns are zero has I = 0."""
    model = frozen(make_tiny_model(layers=2, heads=4).double())
    layer0 = model.bert.encoder.layer[0]
    with torch.no_grad():
        layer0.attention.output.dense.weight[:, 8:16] = 0  # head 1 of layer 0 (d_h = 8)
        layer0.output.dense.weight[:, 5] = 0
    loader = batches(tokenizer, n=24)
    masks = fm.UnitMasks(model)
    g_head, g_ffn = fm.mask_gradients(model, masks, loader)
    masks.remove()
    assert g_head.shape == (3, 2, 4) and g_ffn.shape == (3, 2, 64)
    for b, batch in enumerate(loader):
        weights = [p for n, p in model.named_parameters() if n.endswith("output.dense.weight")]
        for w in weights:
            w.requires_grad_(True)
        loss = model(**model_inputs(batch), labels=batch["labels"]).loss
        grads = torch.autograd.grad(loss, weights)
        for w in weights:
            w.requires_grad_(False)
        for layer in range(2):
            ao, fc2 = weights[2 * layer], weights[2 * layer + 1]
            gao, gfc2 = grads[2 * layer], grads[2 * layer + 1]
            per_head = (gao * ao).unflatten(1, (4, 8)).sum((0, 2))
            torch.testing.assert_close(g_head[b, layer].double(), per_head, rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(g_ffn[b, layer].double(), (gfc2 * fc2).sum(0), rtol=1e-4, atol=1e-7)
    fisher = fm.fisher(g_head)
    torch.testing.assert_close(fisher, (g_head.double() ** 2).sum(0))
    assert float(fisher[0, 1]) == 0.0 and float(fm.fisher(g_ffn)[0, 5]) == 0.0


def test_rearrangement_keeps_counts_and_lowers_the_objective():
    v, w = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 0.0])
    grads = torch.stack([-1.1 * v, w, v, v], dim=1)  # units a, b, c, d
    importance = torch.tensor([4.0, 3.0, 1.0, 2.0])  # c, d least important
    keep = torch.tensor([True, True, False, False])
    out = fm.rearrange(keep, grads, importance)
    assert int((~out).sum()) == 2
    assert fm.pruned_objective(out, grads) < fm.pruned_objective(keep, grads)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        grads = torch.randn(6, 10, generator=gen)
        importance = (grads ** 2).sum(0)
        keep = torch.ones(10, dtype=torch.bool)
        keep[torch.argsort(importance)[:int(torch.randint(1, 10, (1,), generator=gen))]] = False
        out = fm.rearrange(keep, grads, importance)
        assert int(out.sum()) == int(keep.sum())
        assert fm.pruned_objective(out, grads) <= fm.pruned_objective(keep, grads) + 1e-12


def test_masked_equals_stripped_with_empty_sublayers(tokenizer, tmp_path):
    model = make_tiny_model(layers=3, heads=4, ffn=64).double()
    loader = batches(tokenizer)
    gen = torch.Generator().manual_seed(0)
    head = torch.rand(3, 4, generator=gen, dtype=torch.float64) * 2 - 0.5
    ffn = torch.rand(3, 64, generator=gen, dtype=torch.float64) * 2 - 0.5
    head[0] = 0  # layer 0: no heads left
    ffn[1] = 0  # layer 1: no neurons left
    head[2, 1], ffn[2, :10] = 0, 0
    masks = fm.UnitMasks(model)
    masks.set(head, ffn)
    masked = logits(model, loader)
    masks.remove()
    sizes = fm.fold_and_strip(model, head, ffn)
    assert sizes == [{"heads": 0, "ffn": 64}, {"heads": 4, "ffn": 0}, {"heads": 3, "ffn": 54}]
    torch.testing.assert_close(logits(model, loader), masked, rtol=0, atol=1e-10)
    TorchModel(model.float(), tokenizer, {}).save(tmp_path)
    reloaded = load_stripped(tmp_path)
    torch.testing.assert_close(logits(reloaded.model, loader), masked.float(), rtol=0, atol=1e-5)


def _ln_inputs(model, masks, loader, layer, kind):
    """Pre-LayerNorm outputs of one sublayer over ``loader`` (non-padding tokens; [CLS] in the last layer)."""
    lay = model.bert.encoder.layer[layer]
    ln = lay.attention.output.LayerNorm if kind == "heads" else lay.output.LayerNorm
    got = []
    handle = ln.register_forward_pre_hook(lambda mod, args: got.append(args[0]))
    out = []
    with torch.no_grad():
        for batch in loader:
            got.clear()
            model(**model_inputs(batch))
            sel = batch["attention_mask"].bool()
            if layer == masks.L - 1:
                sel = torch.zeros_like(sel)
                sel[:, 0] = True
            out.append(got[0][sel])
    handle.remove()
    return torch.cat(out)


def test_mask_tuning_lowers_every_sublayer_error(tokenizer):
    """Each tuned sublayer's output error against the teacher (measured in the network, pre-LayerNorm)
    equals the reported LS error and is lower than with that sublayer's binary mask."""
    model = frozen(make_tiny_model(layers=3, heads=4, ffn=64, seed=1).double())
    loader = batches(tokenizer, n=48)
    masks = fm.UnitMasks(model)
    gen = torch.Generator().manual_seed(1)
    student = ((torch.rand(3, 4, generator=gen) > 0.4).double(), (torch.rand(3, 64, generator=gen) > 0.6).double())
    student[1][0], student[0][1] = 0, 0  # layer 0 without FFN, layer 1 without heads
    teacher = (torch.ones(3, 4, dtype=torch.float64), torch.ones(3, 64, dtype=torch.float64))
    masks.set(*student)
    report = tune_masks(model, masks, loader, teacher, damp=1e-3)
    tuned = (masks.head.clone(), masks.ffn.clone())
    assert [r["status"] for r in report].count("tuned") == sum(int(m[i].any()) for m in student for i in range(3))
    for rec in report:
        if rec["status"] != "tuned":
            continue
        layer, kind = rec["layer"], rec["sublayer"]
        masks.set(*teacher)
        ref = _ln_inputs(model, masks, loader, layer, kind)
        masks.set(*tuned)
        err_after = float(((_ln_inputs(model, masks, loader, layer, kind) - ref) ** 2).sum())
        binary = [t.clone() for t in tuned]
        which = 0 if kind == "heads" else 1
        binary[which][layer] = student[which][layer]
        masks.set(*binary)
        err_before = float(((_ln_inputs(model, masks, loader, layer, kind) - ref) ** 2).sum())
        assert err_after == pytest.approx(rec["error_after"], rel=1e-6)
        assert err_before == pytest.approx(rec["error_before"], rel=1e-6)
        assert err_after < err_before


def test_mask_tuning_to_itself_keeps_the_masks(tokenizer):
    model = frozen(make_tiny_model(layers=2).double())
    masks = fm.UnitMasks(model)
    student = (torch.tensor([[1.0, 0, 1, 1], [1, 1, 0, 1]], dtype=torch.float64), torch.ones(2, 64, dtype=torch.float64))
    masks.set(*[s.clone() for s in student])
    report = tune_masks(model, masks, batches(tokenizer), student)
    torch.testing.assert_close(masks.head, student[0], atol=1e-8, rtol=0)
    assert all(r.get("error_after", 0.0) < 1e-12 for r in report)


def test_solve_is_damped_least_squares():
    from passes.fisher.tune import solve
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    G, r = a.T @ a, torch.randn(5, generator=gen, dtype=torch.float64)
    expected = torch.linalg.solve(G @ G + 4.0 * torch.eye(5, dtype=torch.float64), G @ r)
    torch.testing.assert_close(solve(G, r, damp=2.0), expected)
    torch.testing.assert_close(solve(G[:1, :1], r[:1]), G[0, 0] * r[:1] / (G[0, 0] ** 2 + 1))  # one unknown


def test_mask_tuning_abort_keeps_binary_masks(tokenizer):
    model = frozen(make_tiny_model(layers=2).double())
    masks = fm.UnitMasks(model)
    student = (torch.tensor([[1.0, 0, 1, 1], [1, 1, 0, 1]], dtype=torch.float64),
               (torch.arange(64) % 3 > 0).double().repeat(2, 1))
    masks.set(*[s.clone() for s in student])
    teacher = (torch.ones(2, 4, dtype=torch.float64), torch.ones(2, 64, dtype=torch.float64))
    report = tune_masks(model, masks, batches(tokenizer), teacher, damp=1e-3, limit=0.5)  # any m ~ 1 fails
    assert [r["status"] for r in report] == ["aborted"] * 4
    torch.testing.assert_close(masks.head, student[0], rtol=0, atol=0)
    torch.testing.assert_close(masks.ffn, student[1], rtol=0, atol=0)
