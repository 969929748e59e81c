"""CAP's contrastive objective (passes.cap.contrastive, passes.cap.banks): the contrastive loss on
hand-computed inputs, memory banks, the objective's terms and the sentence representations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compressor.errors import ConfigError
from passes._distill import kd_kl
from passes.cap.banks import MemoryBank, sentence_rep
from passes.cap.cap import Cap
from passes.cap.contrastive import CapObjective, contrastive_loss
from tests.conftest import make_tiny_model


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
