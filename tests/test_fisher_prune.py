"""The ``fisher`` pass (Kwon et al. 2022): masks, Fisher, rearrangement, mask tuning, strip."""

from __future__ import annotations

import pytest
import torch
import transformers

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError, ModelError
from passes import _fisher_masks as fm
from passes._fisher_tune import tune_masks
from passes._train import make_loader, model_inputs, predict_logits
from passes.fisher_prune import Fisher
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
    from passes._fisher_tune import solve
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
    import targets.latency_table as lt
    model = make_tiny_model(layers=3, seed=3)
    shape = lt.ModelShape.from_config(model.config)
    table = lt.LatencyTable(shape, "ms", 1.0, [0.05 + 0.2 * h for h in range(5)], [0, 16, 32, 48, 64],
                            [0.05, 0.3, 0.6, 0.9, 1.2], {})
    asked = []

    class Timer:
        def __init__(self, config, target, batch, seq, runs=10, precision="fp32", min_seconds=0.0):
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
