"""CAP (contrastive pruning): the contrastive loss on hand-computed inputs, memory banks,
criteria (movement top-k, first-order head importance), end-to-end runs and the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError
from passes._contrastive import CapObjective, MemoryBank, contrastive_loss, sentence_rep
from passes._distill import kd_kl
from passes.cap import Cap
from tests.conftest import make_tiny_model, make_toy_task, run_method_cli


def _ref_loss(q, idx, labels, bank, bank_labels, extra_idx, tau, w_u, w_s):
    """Independent numpy version of METHODS.md 1.5 (candidates listed explicitly)."""
    cands, cidx, clab, is_self = [], [], [], []
    for j in range(len(q)):
        cands.append(q[j]); cidx.append(idx[j]); clab.append(labels[j]); is_self.append(j)
        for r in range(bank.shape[1]):
            cands.append(bank[idx[j], r]); cidx.append(idx[j]); clab.append(labels[j]); is_self.append(-1)
    for k in extra_idx:
        for r in range(bank.shape[1]):
            cands.append(bank[k, r]); cidx.append(k); clab.append(bank_labels[k]); is_self.append(-1)
    total = 0.0
    for key, w in ((cidx, w_u), (clab, w_s)):
        rows, count = 0.0, 0
        for i in range(len(q)):
            keep = [c for c in range(len(cands)) if is_self[c] != i]   # self left out entirely
            logits = np.array([q[i] @ cands[c] / tau for c in keep])
            lp = logits - np.log(np.exp(logits).sum())
            own = idx[i] if key is cidx else labels[i]
            pos = [n for n, c in enumerate(keep) if key[c] == own]
            rows += sum(lp[p] for p in pos) / len(pos)
            count += len(pos)
        total += w * (-rows / count)
    return total


def _unit(*xy):
    v = np.array(xy, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_contrastive_loss_matches_hand_computation():
    # Batch q0 (idx 0, label 0), q1 (idx 1, label 1); bank N=3, R=1; one extra example (idx 2).
    # Candidates: [q0, bank0, q1, bank1, bank2]; labels [0, 0, 1, 1, 0]; self (q_i for row i) excluded.
    q = np.stack([_unit(1, 0), _unit(0.6, 0.8)])
    bank = np.stack([[_unit(0.8, 0.6)], [_unit(0, 1)], [_unit(-1, 0.2)]])
    tau, w_u, w_s = 0.5, 0.3, 3.0
    b2 = bank[2, 0]

    def log_softmax(sims):
        z = np.array(sims) / tau
        return z - np.log(np.exp(z).sum())

    lp0 = log_softmax([0.8, 0.6, 0.0, q[0] @ b2])            # row 0 over [bank0, q1, bank1, bank2]
    lp1 = log_softmax([0.6, 0.96, 0.8, q[1] @ b2])           # row 1 over [q0, bank0, bank1, bank2]
    l_u = -(lp0[0] + lp1[2]) / 2                             # positives: own bank entry (1 each)
    l_s = -((lp0[0] + lp0[3]) / 2 + lp1[2]) / 3              # same label: {bank0, bank2} and {bank1}
    want = w_u * l_u + w_s * l_s
    got = contrastive_loss(torch.tensor(q, dtype=torch.float32), torch.tensor([0, 1]), torch.tensor([0, 1]),
                           torch.tensor(bank, dtype=torch.float32), torch.tensor([0, 1, 0]),
                           tau=tau, w_u=w_u, w_s=w_s, extra_idx=torch.tensor([2]))
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert _ref_loss(q, [0, 1], [0, 1], bank, [0, 1, 0], [2], tau, w_u, w_s) == pytest.approx(want, rel=1e-12)


def test_contrastive_loss_random_bank_with_several_columns():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=-1)
    bank = F.normalize(torch.randn(7, 3, 5, generator=g, dtype=torch.float64), dim=-1)
    idx, labels = torch.tensor([0, 3, 5, 6]), torch.tensor([0, 1, 1, 0])
    bank_labels = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    extra = torch.tensor([1, 3, 4])  # may include batch items (3), as in the authors' code
    got = contrastive_loss(q, idx, labels, bank, bank_labels, tau=0.1, w_u=0.1, w_s=10.0, extra_idx=extra)
    want = _ref_loss(q.numpy(), idx.tolist(), labels.tolist(), bank.numpy(), bank_labels.tolist(),
                     extra.tolist(), 0.1, 0.1, 10.0)
    assert float(got) == pytest.approx(want, rel=1e-9)


def test_self_is_excluded():
    # One example, one bank column, no extras: the only non-self candidate is its own bank entry,
    # so with self excluded log_softmax is log(1) = 0; with self included it would be < 0.
    q = F.normalize(torch.tensor([[1.0, 0.2]]), dim=-1)
    bank = F.normalize(torch.tensor([[[0.3, 1.0]]]), dim=-1)
    loss = contrastive_loss(q, torch.tensor([0]), torch.tensor([1]), bank, torch.tensor([1]),
                            tau=0.1, w_u=1.0, w_s=1.0, extra=0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    # the gradient reaches q only through the non-self candidates (self is stop-grad and masked);
    # the extra candidate must differ from the positive, or the loss is log(2) whatever q is
    q2 = q.clone().requires_grad_(True)
    other = F.normalize(torch.tensor([[[1.0, -0.5]]]), dim=-1)
    contrastive_loss(q2, torch.tensor([0]), None, torch.cat([bank, other], 0), None, tau=0.1, w_u=1.0,
                     w_s=0.0, extra_idx=torch.tensor([1])).backward()
    assert q2.grad is not None and q2.grad.abs().sum() > 0


def test_extras_are_capped_by_the_bank_size():
    q = F.normalize(torch.randn(2, 4), dim=-1)
    bank = F.normalize(torch.randn(5, 2, 4), dim=-1)
    loss = contrastive_loss(q, torch.tensor([0, 1]), torch.tensor([0, 1]), bank, torch.tensor([0, 1, 0, 1, 0]),
                            tau=0.1, w_u=1.0, w_s=1.0, extra=4096)  # 4096 // 2 > 5: all 5 drawn
    assert torch.isfinite(loss)


def test_bank_appends_columns_and_keeps_max_snapshots():
    bank = MemoryBank("snc", max_columns=2)
    assert bank.columns == 0 and bank.data is None
    for v in range(3):
        bank.append(torch.full((4, 3), float(v)))
    assert bank.data.shape == (4, 2, 3) and bank.appended == 3
    assert bank.data[0, :, 0].tolist() == [1.0, 2.0]          # the oldest (0) was dropped
    assert bank.nbytes == 4 * 2 * 3 * 4
    with pytest.raises(ValueError):
        bank.append(torch.zeros(5, 3))


def test_objective_without_banks_is_ce_plus_kd():
    g = torch.Generator().manual_seed(1)
    logits, teacher = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    q = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    full_banks = {k: MemoryBank(k) for k in ("prc", "snc", "fic")}
    for b in full_banks.values():
        b.append(F.normalize(torch.randn(6, 4, generator=g), dim=-1))
    want = 0.1 * F.cross_entropy(logits, labels) + 0.9 * kd_kl(logits, teacher, 2.0)
    off = CapObjective(labels, {}, w_ce=0.1, w_kd=0.9, kd_temperature=2.0)
    zero = CapObjective(labels, full_banks, w_u=0.0, w_s=0.0, w_ce=0.1, w_kd=0.9, kd_temperature=2.0)
    on = CapObjective(labels, full_banks, w_ce=0.1, w_kd=0.9, kd_temperature=2.0)
    idx = torch.arange(6)
    assert float(off(logits, labels, q, idx, teacher)) == pytest.approx(float(want), rel=1e-6)
    assert float(zero(logits, labels, q, idx, teacher)) == pytest.approx(float(want), rel=1e-6)
    assert float(on(logits, labels, q, idx, teacher)) > float(want) + 1e-3
    assert set(on.last) == {"ce", "kd", "prc", "snc", "fic"}


def test_per_bank_weight_and_temperature():
    """Each term has its own weight multiplier and temperature; weight 0 switches it off."""
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(4, 2, generator=g), torch.tensor([0, 1, 1, 0])
    q, idx = F.normalize(torch.randn(4, 5, generator=g), dim=-1), torch.arange(4)
    banks = {k: MemoryBank(k) for k in ("prc", "snc", "fic")}
    for b in banks.values():
        b.append(F.normalize(torch.randn(4, 5, generator=g), dim=-1))
    kw = dict(w_u=0.3, w_s=3.0, w_ce=1.0, w_kd=0.0, extra=0)
    obj = CapObjective(labels, banks, tau=0.1, bank_weight={"prc": 0.0, "snc": 2.0},
                       bank_tau={"fic": 0.5}, **kw)
    got = float(obj(logits, labels, q, idx))
    term = {name: float(contrastive_loss(q, idx, labels, banks[name].data, labels, tau=tau, w_u=w * 0.3,
                                         w_s=w * 3.0, extra=0))
            for name, w, tau in (("snc", 2.0, 0.1), ("fic", 1.0, 0.5))}
    assert set(obj.last) == {"ce", "snc", "fic"}            # PrC off: weight 0
    assert obj.last["snc"] == pytest.approx(term["snc"], rel=1e-6)
    assert obj.last["fic"] == pytest.approx(term["fic"], rel=1e-6)
    assert got == pytest.approx(float(F.cross_entropy(logits, labels)) + term["snc"] + term["fic"], rel=1e-6)
    plain = contrastive_loss(q, idx, labels, banks["fic"].data, labels, tau=0.1, w_u=0.3, w_s=3.0, extra=0)
    assert abs(float(plain) - term["fic"]) > 1e-4             # the temperature matters
    for bad in ({"prc_tau": 0.0}, {"snc_weight": -1.0}):
        with pytest.raises(ConfigError):
            Cap(**bad)


def test_sentence_rep_kinds(tokenizer):
    model = make_tiny_model()
    enc = tokenizer(["good film", "a dull plot was bad"], padding=True, return_tensors="pt")
    base = model.bert(**enc)
    pooled = sentence_rep(base, enc["attention_mask"], "pooler")
    assert torch.allclose(pooled, F.normalize(base.pooler_output, dim=-1))
    assert torch.allclose(sentence_rep(base, None, "cls"), F.normalize(base.last_hidden_state[:, 0], dim=-1))
    mean = sentence_rep(base, enc["attention_mask"], "mean")
    n0 = int(enc["attention_mask"][0].sum())
    assert torch.allclose(mean[0], F.normalize(base.last_hidden_state[0, :n0].mean(0), dim=-1), atol=1e-6)


def test_movement_mask_keeps_exactly_top_k():
    from passes._cap_prune import WeightPruner
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
    from passes._cap_prune import WeightPruner
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
    from passes._cap_prune import first_order_importance
    from passes._train import make_loader, model_inputs
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
    from passes._cap_prune import protect_top_head
    from passes._masks import MaskSet
    masks = MaskSet.attach(make_tiny_model(), bias=True)
    heads = torch.tensor([[0.1, 0.2, 0.3, 0.4], [5.0, 6.0, 7.0, 8.0]])   # layer 0 is worst everywhere
    neurons = torch.rand(2, 64)
    keep_h, _ = masks.apply_structured(protect_top_head(heads, masks.structured_keep()[0]), neurons, 0.5)
    assert keep_h[0].tolist() == [False, False, False, True]
    plain = MaskSet.attach(make_tiny_model(), bias=True)
    keep_h, _ = plain.apply_structured(heads, neurons, 0.5)
    assert not keep_h[0].any()   # without protection the whole layer goes (the strip pass copes)


def _ctx(tmp_path, task, teacher):
    return RunContext(workdir=tmp_path, data=task, teacher=teacher, progress=False)


@pytest.fixture
def setup(tokenizer, tmp_path):
    task = make_toy_task(n_train=48, n_eval=16)
    student = TorchModel(make_tiny_model(), tokenizer, {"source": "tiny"})
    teacher = TorchModel(make_tiny_model(seed=1), tokenizer, {})
    return task, student, teacher


def _check_saved(result, folder, target):
    from transformers import AutoModelForSequenceClassification
    model = result.artifact.model
    assert not any("parametrizations" in n for n, _ in model.named_parameters())   # baked
    zeros = total = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".encoder.layer." in f".{name}":
            zeros, total = zeros + int((mod.weight == 0).sum()), total + mod.weight.numel()
    assert abs(zeros / total - target) < 0.005
    assert abs(result.metrics["sparsity"] - target) < 0.005
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder / "model").eval()
    ids = torch.tensor([[101, 2204, 2143, 102]])
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)
    assert set(result.metrics["per_layer"]) == {"0", "1"} and result.metrics["train_seconds"] > 0


@pytest.mark.parametrize("criterion", ["magnitude", "movement", "soft-movement"])
def test_weight_end_to_end(setup, tmp_path, criterion):
    task, student, teacher = setup
    before = copy.deepcopy(student.model.state_dict())
    res = Cap(sparsity=0.6, criterion=criterion, epochs=2, batch_size=16, max_snapshots=1,
              l1_lambda=50.0)(student, _ctx(tmp_path, task, teacher))
    _check_saved(res, tmp_path, 0.6)
    banks = res.metrics["banks"]
    assert banks["prc"]["columns"] == 1 and banks["fic"]["columns"] == 1
    assert banks["snc"]["encoded"] == 1 and banks["snc"]["columns"] == 1   # one epoch boundary
    assert res.metrics["w_s"] == 10.0 and res.metrics["kd_temperature"] == 2.0
    for k, v in student.model.state_dict().items():   # the input model is untouched
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("criterion", ["magnitude", "movement"])
def test_masks_survive_optimizer_steps(setup, tmp_path, monkeypatch, criterion):
    """After every optimizer step the masked weights are exactly 0 (the parametrization), even though
    AdamW keeps updating the underlying tensors; the sparsity follows the cubic ramp."""
    from passes import _train
    from passes._masks import MaskSet
    task, student, teacher = setup
    seen = {"zeros_hold": True, "sparsity": []}
    real_train = _train.train

    def spy_train(model, tokenizer, task, ctx, **kw):
        masks, inner = MaskSet.from_model(model), kw["after_step"]

        def after_step(step, total):
            inner(step, total)
            for name, module in masks.modules.items():
                seen["zeros_hold"] &= bool((module.weight[masks.mask(name) == 0] == 0).all())
            seen["sparsity"].append(masks.sparsity_report()["overall"])
        return real_train(model, tokenizer, task, ctx, **{**kw, "after_step": after_step})

    monkeypatch.setattr(_train, "train", spy_train)
    res = Cap(sparsity=0.7, criterion=criterion, epochs=2, batch_size=8, update_every=1, start=0.0,
              end=0.5, lr=1e-3)(student, _ctx(tmp_path, task, teacher))
    assert seen["zeros_hold"] and len(seen["sparsity"]) == res.metrics["steps"] == 12
    assert seen["sparsity"][0] > 0 and abs(seen["sparsity"][-1] - 0.7) < 0.005
    if criterion == "magnitude":   # masks only shrink
        assert seen["sparsity"] == sorted(seen["sparsity"])


def test_structured_end_to_end_zeroes_whole_heads_and_neurons(setup, tmp_path):
    task, student, teacher = setup
    res = Cap(sparsity=0.5, granularity="structured", stages=2, epochs=2, batch_size=16,
              max_snapshots=4)(student, _ctx(tmp_path, task, teacher))
    _check_saved(res, tmp_path, 0.5)
    m = res.metrics
    assert [s["stage"] for s in m["stages"]] == [1, 2] and m["stages"][0]["sparsity"] < m["stages"][1]["sparsity"]
    assert sum(m["heads_kept"]) == 4 and m["w_u"] == 0.3 and m["kd_temperature"] == 1.0
    assert m["banks"]["snc"]["columns"] == 1 and m["seconds"]["importance"] > 0
    for layer, heads in zip(res.artifact.model.bert.encoder.layer, m["heads_kept"]):
        v = layer.attention.self.value.weight.reshape(4, 8, -1)
        zero_heads = (v == 0).flatten(1).all(1)
        assert int((~zero_heads).sum()) == heads
        o = layer.attention.output.dense.weight.reshape(32, 4, 8)
        assert torch.equal((o == 0).all(2).all(0), zero_heads)
        w1, w2 = layer.intermediate.dense.weight, layer.output.dense.weight
        assert torch.equal((w1 == 0).all(1), (w2 == 0).all(0))


def test_all_contrastive_terms_off_never_call_the_loss(setup, tmp_path, monkeypatch):
    import passes._contrastive as pc
    task, student, teacher = setup

    def boom(*a, **k):
        raise AssertionError("contrastive_loss called with every bank off")
    monkeypatch.setattr(pc, "contrastive_loss", boom)
    res = Cap(sparsity=0.5, criterion="magnitude", epochs=1, batch_size=16, prc=False, snc=False,
              fic=False)(student, _ctx(tmp_path, task, teacher))
    assert res.metrics["banks"] == {} and abs(res.metrics["sparsity"] - 0.5) < 0.005


def test_teacher_required_and_options_checked(setup, tmp_path):
    task, student, teacher = setup
    with pytest.raises(ConfigError, match="needs a fine-tuned teacher"):
        Cap(epochs=1)(student, _ctx(tmp_path, task, None))
    for bad in ({"criterion": "random"}, {"sparsity": 1.0}, {"tau": 0.0}, {"w_u": -2.0}, {"end": 0.1}):
        with pytest.raises(ConfigError):
            Cap(**bad)
    with pytest.raises(ConfigError, match="keep_one_head"):
        Cap(sparsity=0.9, granularity="structured", keep_one_head=True)(student, _ctx(tmp_path, task, teacher))
    assert Cap(granularity="structured", w_s=5.0).hyper() == {"w_u": 0.3, "w_s": 5.0, "kd_temperature": 1.0}


@pytest.mark.parametrize("granularity", ["weight", "structured"])
def test_cli_run(tmp_path, tokenizer, capsys, granularity):
    code, out = run_method_cli(tmp_path, tokenizer, "cap", "--granularity", granularity)
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    step = next(s for s in report["steps"] if s["name"] == "cap")
    assert abs(step["metrics"]["sparsity"] - 0.5) < 0.005


def test_no_pruning_no_distillation_equals_finetune(setup, tmp_path):
    """Equivalence: at sparsity 0 with CE only (weight 1) and every bank off, CAP's training is
    exactly the shared fine-tuning loop (the masks are all ones, same optimizer and data order)."""
    from passes.finetune import Finetune
    task, student, _ = setup
    ctx = _ctx(tmp_path, task, None)
    ref = Finetune(epochs=2, lr=1e-3, batch_size=16, weight_decay=0.01)(student, ctx)
    cap = Cap(sparsity=0.0, criterion="magnitude", epochs=2, lr=1e-3, batch_size=16, weight_decay=0.01,
              w_ce=1.0, w_kd=0.0, prc=False, snc=False, fic=False)(student, ctx)
    ids = torch.tensor([[101, 2204, 2143, 1037, 102], [101, 6659, 5436, 102, 0]])
    torch.testing.assert_close(cap.artifact.model(input_ids=ids).logits,
                               ref.artifact.model(input_ids=ids).logits, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_minilm_structured_then_strip(tmp_path):
    """The real MiniLM: CAP-f to 50% in one short stage, then the strip pass computes the same."""
    from compressor.models import load_model
    from passes.strip import Strip
    pre = load_model("minilm", num_labels=2)
    task = make_toy_task(n_train=16, n_eval=8)
    ctx = _ctx(tmp_path, task, pre)   # the pre-trained model stands in for the teacher
    res = Cap(sparsity=0.5, granularity="structured", stages=1, epochs=1, batch_size=8, max_length=16,
              importance_batches=1)(pre, ctx)
    assert abs(res.metrics["sparsity"] - 0.5) < 0.005
    assert sum(res.metrics["heads_kept"]) == 72 - 36   # 6 layers x 12 heads, half pruned
    stripped = Strip()(res.artifact, ctx).artifact.model
    enc = pre.tokenizer(["a good film", "dull"], padding=True, return_tensors="pt")
    torch.testing.assert_close(stripped(**enc).logits, res.artifact.model(**enc).logits, atol=1e-4, rtol=0)
